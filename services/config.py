"""Configuration from the environment (the LEDGER_* variables); flags of `ledger` may override."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Literal, get_args

from ledger.leases import LEASE_TTL_MS, MIN_LEASE_TTL_MS
from ledger.partitions import MAX_PARTITIONS, PartitionError, partition_stream
from projections.snapshot_policy import SNAPSHOT_EVERY_RECORDS, SNAPSHOT_EVERY_SECONDS
from schemas.instants import InstantOutOfRange, bounded_utc

ClockKind = Literal["system", "manual"]
LogFormat = Literal["json", "console"]
"""How log lines are rendered: JSON lines, or structlog's console renderer for people."""
Role = Literal["all", "ingest", "api"]
"""What `ledger serve` runs: everything in one process (the default), the ingest workers'
part (ingest under partition leases, lifecycle ticker), or the API's (HTTP, projector)."""
DEFAULT_DATA_DIR = "./var"
DEFAULT_STREAM = "ledger.usage"
CLAIM_IDLE_MS = 30_000
"""Milliseconds an entry stays pending, unacknowledged, before another consumer reclaims it."""
MAX_CLAIM_IDLE_MS = 24 * 3_600_000
USAGE_RETENTION_S = 3_600
"""Seconds an acknowledged usage entry stays in the stream before `ledger serve` deletes it."""
MAX_USAGE_RETENTION_S = 366 * 86_400
KEEP_FOREVER = "forever"
DATABASE_FILE = "ledger.sqlite3"
DEFAULT_DATABASE_SCHEMA = "public"
POSTGRES_URL_PREFIXES = ("postgresql://", "postgres://")
REDIS_URL_PREFIXES = ("redis://", "rediss://", "unix://")
DEFAULT_NOTIFICATION_STREAM = "ledger.notifications"
NOTIFICATION_STREAM_MAXLEN = 100_000
"""Entries the notification stream keeps (about: `XADD MAXLEN ~`)."""
WEBHOOK_TIMEOUT_S = 10
"""A webhook request's whole budget (connecting takes at most `WEBHOOK_CONNECT_TIMEOUT_S`)."""
WEBHOOK_RETRY_BASE_MS = 1_000
"""The first retry's delay; each further one doubles it (with jitter), up to an hour."""
WEBHOOK_RETRY_WINDOW_S = 86_400
"""How long an endpoint may fail without a success before it is disabled: a whole day."""
NOTIFICATIONS_FILE = "ledger.notifications.sqlite3"


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    database_url: str | None = None
    database_schema: str = DEFAULT_DATABASE_SCHEMA
    redis_url: str | None = None
    redis_cluster: bool = False
    """LEDGER_REDIS_CLUSTER=1: LEDGER_REDIS_URL is one node of a Redis Cluster."""
    host: str = "127.0.0.1"
    port: int = 8080
    usage_stream: str = DEFAULT_STREAM
    admin_token: str | None = None
    metrics_token: str | None = None
    """LEDGER_METRICS_TOKEN: when set, GET /metrics needs `Authorization: Bearer <it>`."""
    rate_card: Path | None = None
    clock: ClockKind = "system"
    clock_start: datetime | None = None
    partitions: int = 1
    lease_ttl_ms: int = LEASE_TTL_MS
    role: Role = "all"
    claim_idle_ms: int = CLAIM_IDLE_MS
    """LEDGER_CLAIM_IDLE_MS: how long an entry may sit pending on a consumer before another
    takes it over (a crashed consumer's entries wait this long)."""
    usage_retention_s: int | None = USAGE_RETENTION_S
    """LEDGER_USAGE_RETENTION_S: acknowledged entries older than this are deleted from the usage
    stream (None, `forever`: never)."""
    notification_stream: str = DEFAULT_NOTIFICATION_STREAM
    """LEDGER_NOTIFICATION_STREAM: the Redis stream notifications are published on."""
    notification_stream_maxlen: int = NOTIFICATION_STREAM_MAXLEN
    """LEDGER_NOTIFICATION_STREAM_MAXLEN: about how many entries that stream keeps."""
    webhook_allow_private: bool = False
    """LEDGER_WEBHOOK_ALLOW_PRIVATE=1: webhook URLs may name private and loopback addresses
    (link-local and cloud metadata addresses are refused regardless)."""
    webhook_timeout_s: int = WEBHOOK_TIMEOUT_S
    webhook_retry_base_ms: int = WEBHOOK_RETRY_BASE_MS
    webhook_retry_window_s: int = WEBHOOK_RETRY_WINDOW_S
    snapshot_every_records: int = SNAPSHOT_EVERY_RECORDS
    """LEDGER_SNAPSHOT_EVERY_RECORDS: records after which the projector saves a snapshot."""
    snapshot_every_seconds: int = SNAPSHOT_EVERY_SECONDS
    """LEDGER_SNAPSHOT_EVERY_SECONDS: seconds after which it saves one if the log moved."""
    log_format: LogFormat | None = None
    """LEDGER_LOG_FORMAT: `json` or `console`; None (unset) renders for a person when stderr is
    a terminal and as JSON lines otherwise."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        clock = env.get("LEDGER_CLOCK", "system")
        if clock not in ("system", "manual"):
            raise ConfigError(f"LEDGER_CLOCK must be 'system' or 'manual', not {clock!r}")
        port_text = env.get("LEDGER_PORT", "8080")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"LEDGER_PORT must be a TCP port, not {port_text!r}")
        start = env.get("LEDGER_CLOCK_START")
        partitions = _int_in(env, "LEDGER_PARTITIONS", 1, 1, MAX_PARTITIONS)
        stream = env.get("LEDGER_USAGE_STREAM", DEFAULT_STREAM)
        try:
            partition_stream(stream, 0, partitions)  # refuses what cannot be partitioned
        except PartitionError as error:
            raise ConfigError(f"LEDGER_USAGE_STREAM with LEDGER_PARTITIONS > 1: {error}") from None
        role = env.get("LEDGER_ROLE", "all")
        if role not in get_args(Role):
            raise ConfigError(f"LEDGER_ROLE must be one of {', '.join(get_args(Role))}: {role!r}")
        log_format = env.get("LEDGER_LOG_FORMAT") or None
        if log_format is not None and log_format not in get_args(LogFormat):
            raise ConfigError(f"LEDGER_LOG_FORMAT must be json or console, not {log_format!r}")
        return cls(
            data_dir=Path(env.get("LEDGER_DATA_DIR", DEFAULT_DATA_DIR)),
            database_url=env.get("LEDGER_DATABASE_URL") or None,
            database_schema=env.get("LEDGER_DATABASE_SCHEMA") or DEFAULT_DATABASE_SCHEMA,
            redis_url=check_redis_url(env.get("LEDGER_REDIS_URL") or None, "LEDGER_REDIS_URL"),
            redis_cluster=_flag(env, "LEDGER_REDIS_CLUSTER"),
            host=env.get("LEDGER_HOST", "127.0.0.1"),
            port=int(port_text),
            usage_stream=stream,
            admin_token=env.get("LEDGER_ADMIN_TOKEN") or None,
            metrics_token=env.get("LEDGER_METRICS_TOKEN") or None,
            rate_card=Path(env["LEDGER_RATE_CARD"]) if env.get("LEDGER_RATE_CARD") else None,
            clock=clock,  # type: ignore[arg-type]
            clock_start=parse_instant(start, "LEDGER_CLOCK_START") if start else None,
            partitions=partitions,
            lease_ttl_ms=_int_in(
                env, "LEDGER_LEASE_TTL_MS", LEASE_TTL_MS, MIN_LEASE_TTL_MS, 24 * 3_600_000
            ),
            role=role,  # type: ignore[arg-type]
            claim_idle_ms=_int_in(env, "LEDGER_CLAIM_IDLE_MS", CLAIM_IDLE_MS, 1, MAX_CLAIM_IDLE_MS),
            usage_retention_s=None
            if env.get("LEDGER_USAGE_RETENTION_S", "").strip().lower() == KEEP_FOREVER
            else _int_in(
                env, "LEDGER_USAGE_RETENTION_S", USAGE_RETENTION_S, 0, MAX_USAGE_RETENTION_S
            ),
            log_format=log_format,  # type: ignore[arg-type]
            snapshot_every_records=_int_in(
                env, "LEDGER_SNAPSHOT_EVERY_RECORDS", SNAPSHOT_EVERY_RECORDS, 1, 10**9
            ),
            snapshot_every_seconds=_int_in(
                env, "LEDGER_SNAPSHOT_EVERY_SECONDS", SNAPSHOT_EVERY_SECONDS, 1, 366 * 86_400
            ),
            notification_stream=env.get("LEDGER_NOTIFICATION_STREAM")
            or DEFAULT_NOTIFICATION_STREAM,
            notification_stream_maxlen=_int_in(
                env, "LEDGER_NOTIFICATION_STREAM_MAXLEN", NOTIFICATION_STREAM_MAXLEN, 1, 10**9
            ),
            webhook_allow_private=_flag(env, "LEDGER_WEBHOOK_ALLOW_PRIVATE"),
            webhook_timeout_s=_int_in(env, "LEDGER_WEBHOOK_TIMEOUT_S", WEBHOOK_TIMEOUT_S, 1, 60),
            webhook_retry_base_ms=_int_in(
                env, "LEDGER_WEBHOOK_RETRY_BASE_MS", WEBHOOK_RETRY_BASE_MS, 1, 3_600_000
            ),
            webhook_retry_window_s=_int_in(
                env, "LEDGER_WEBHOOK_RETRY_WINDOW_S", WEBHOOK_RETRY_WINDOW_S, 1, 7 * 86_400
            ),
        )

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]

    def usage_retention_ms(self) -> int | None:
        return None if self.usage_retention_s is None else self.usage_retention_s * 1_000

    def partition_stream(self, partition: int) -> str:
        """The usage stream of one partition (`usage_stream` itself with one partition)."""
        return partition_stream(self.usage_stream, partition, self.partitions)

    def postgres_url(self) -> str | None:
        """The URL of the PostgreSQL database holding the log, or None when it is SQLite."""
        url = self.database_url
        if url is not None and url.startswith(POSTGRES_URL_PREFIXES):
            return url
        return None

    def log_location(self) -> str:
        """Where the log is, for logs and messages (a PostgreSQL URL without its password)."""
        url = self.postgres_url()
        if url is None:
            return str(self.sqlite_path())
        scheme, _, rest = url.partition("://")
        credentials, at, host = rest.rpartition("@")
        user = credentials.partition(":")[0]
        return f"{scheme}://{user}{at}{host}" if at else url

    def sqlite_path(self) -> Path:
        """The SQLite file of the log, beside which the read models' file lives.

        With the log in PostgreSQL there is no such file (nor a read models' file: they are in
        PostgreSQL too): this is then `<data dir>/ledger.sqlite3`, never created.
        """
        url = self.database_url
        if url is None or self.postgres_url() is not None:
            return self.data_dir / DATABASE_FILE
        if url.startswith("sqlite:///"):
            return Path(url.removeprefix("sqlite:///"))
        raise ConfigError(
            f"LEDGER_DATABASE_URL must be sqlite:///PATH or postgresql://..., not {url!r}"
        )

    def manual_clock_path(self) -> Path:
        """Where LEDGER_CLOCK=manual keeps its time, so `ledger clock set` can move it."""
        return self.data_dir / "manual-clock"

    def notifications_path(self) -> Path:
        """The notification tables' SQLite file, beside the log's (with the log in SQLite)."""
        return self.sqlite_path().with_name(NOTIFICATIONS_FILE)

    def snapshot_path(self) -> Path:
        """The snapshots' SQLite file, beside the log's (with the log in SQLite)."""
        log = self.sqlite_path()
        return log.with_name(log.stem + ".snapshots" + log.suffix)

    def read_model_path(self) -> Path:
        """The read models' SQLite file: beside the log's, derived and disposable (used only
        when the log is in SQLite)."""
        log = self.sqlite_path()
        return log.with_name(log.stem + ".readmodels" + log.suffix)


def default_consumer_name() -> str:
    """Unique per process: `<hostname>-<pid>`; an ingest worker's consumer name, lease owner id
    and PostgreSQL `application_name`."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _int_in(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = env.get(name) or str(default)
    if not text.isdigit() or not low <= int(text) <= high:
        raise ConfigError(f"{name} must be an integer in {low}..{high}, not {text!r}")
    return int(text)


def _flag(env: Mapping[str, str], name: str) -> bool:
    text = env.get(name, "").strip().lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise ConfigError(f"{name} must be 1/true/yes or 0/false/no, not {text!r}")


def check_redis_url(url: str | None, what: str) -> str | None:
    """`url` when it names a Redis (redis://, rediss:// or unix://), else a `ConfigError`."""
    if url is not None and not url.startswith(REDIS_URL_PREFIXES):
        raise ConfigError(f"{what} must be a redis://, rediss:// or unix:// URL, not {url!r}")
    return url


def parse_instant(text: str, what: str) -> datetime:
    """An RFC 3339 instant with an offset ('Z' accepted)."""
    try:
        instant = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"{what}: {text!r} is not an RFC 3339 instant") from exc
    try:
        return bounded_utc(instant, what)
    except InstantOutOfRange as error:
        raise ConfigError(str(error)) from None
