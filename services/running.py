"""The `ledger serve` running on a data dir: the lock that makes it the only one there, and the
file that tells the other commands where it answers (its HTTP API, its Redis and stream).

`ledger serve` (role `all`) holds an exclusive `flock` on `<data dir>/serve.lock` while it
runs, and once it serves writes `<data dir>/serve.json` (mode 0600: an external Redis URL may
carry a password); a clean stop removes the file. The kernel releases the lock when the
process dies however it dies, so a file left by a killed serve is known stale: its lock is
free. Readers probe the lock with a shared, non-blocking `flock` held for an instant, which a
starting serve outwaits (`LOCK_WAIT_S`).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import msgspec

from services.config import Settings, check_redis_url

LOCK_FILE: Final = "serve.lock"
SERVICE_FILE: Final = "serve.json"
LOCK_WAIT_S: Final = 1.0
"""How long a starting serve tries for the lock: a reader's probe holds it for microseconds."""
LOCK_RETRY_S: Final = 0.05
SERVICE_FILE_MODE: Final = 0o600
ANY_IPV4: Final = "0.0.0.0"
ANY_IPV6: Final = "::"


class DataDirInUse(OSError):
    """Another `ledger serve` holds the data dir."""


class ServiceNotRunning(OSError):
    """No `ledger serve` runs on the data dir, and the command needs one."""


class RunningService(msgspec.Struct, frozen=True):
    """What `serve.json` says: where the serve of this data dir answers."""

    pid: int
    http_url: str | None
    redis_url: str | None
    usage_stream: str
    partitions: int
    redis_cluster: bool
    started_at: str


_DECODER: Final = msgspec.json.Decoder(RunningService)


@contextmanager
def hold_data_dir(data_dir: Path) -> Iterator[None]:
    """Hold the data dir's serve lock for the block, or raise `DataDirInUse` naming the serve
    that holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = (data_dir / LOCK_FILE).open("a")  # never truncates what another serve holds
    try:
        _lock_within(lock, LOCK_WAIT_S, data_dir)
        yield
    finally:
        lock.close()  # closing releases the flock


def _lock_within(lock: IO[str], wait_s: float, data_dir: Path) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise DataDirInUse(_in_use_message(data_dir)) from None
            time.sleep(LOCK_RETRY_S)


def _in_use_message(data_dir: Path) -> str:
    service = _read(data_dir)
    holder = "another `ledger serve`"
    if service is not None:
        where = f", {service.http_url}" if service.http_url else ""
        holder += f" (pid {service.pid}{where})"
    return (
        f"the data dir {data_dir.resolve()} is in use by {holder}; stop it or pick another data dir"
    )


def publish_service(data_dir: Path, service: RunningService) -> Path:
    """Write `serve.json` atomically (a reader never sees half a file); returns its path."""
    path = data_dir / SERVICE_FILE
    staging = path.with_name(f".{SERVICE_FILE}.{os.getpid()}")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, SERVICE_FILE_MODE)
    with os.fdopen(descriptor, "wb") as file:
        file.write(msgspec.json.encode(service))
    os.replace(staging, path)
    return path


def withdraw_service(data_dir: Path) -> None:
    """Remove `serve.json` (a clean stop)."""
    (data_dir / SERVICE_FILE).unlink(missing_ok=True)


def running_service(data_dir: Path) -> RunningService | None:
    """The serve running on `data_dir`, or None: no file, an unreadable one, or one left by a
    serve that is gone (its lock is free)."""
    service = _read(data_dir)
    if service is None or not _lock_held(data_dir):
        return None
    return service


def _read(data_dir: Path) -> RunningService | None:
    try:
        return _DECODER.decode((data_dir / SERVICE_FILE).read_bytes())
    except (OSError, msgspec.DecodeError):
        return None


def _lock_held(data_dir: Path) -> bool:
    try:
        lock = (data_dir / LOCK_FILE).open("r")
    except OSError:
        return False
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False  # closing the file releases the probe's shared lock


def http_url(host: str, port: int) -> str:
    """The URL a local client reaches a server listening on `host:port` at (a wildcard address
    is reached on the loopback interface)."""
    if host in (ANY_IPV4, ""):
        host = "127.0.0.1"
    elif host == ANY_IPV6:
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def not_running(data_dir: Path, then: str) -> ServiceNotRunning:
    """The one-line error of a command that needs the serve of `data_dir`; `then` says what
    that leaves the user to do."""
    stale = _read(data_dir)
    note = f" (its {SERVICE_FILE} is left from pid {stale.pid}, which stopped)" if stale else ""
    return ServiceNotRunning(
        f"no `ledger serve` is running on the data dir {data_dir.resolve()}{note}; {then}"
    )


@dataclass(frozen=True)
class UsageTarget:
    """Where usage events go: a Redis, a stream and its partitions; `http_url` is the API of
    the serve that reads them, when it is the data dir's running serve."""

    redis_url: str
    stream: str
    partitions: int
    cluster: bool
    http_url: str | None


def usage_target(
    settings: Settings, redis_url: str | None = None, stream: str | None = None
) -> UsageTarget:
    """`redis_url` (a flag), else LEDGER_REDIS_URL with the configured stream; with neither, the
    Redis and stream of the serve running on the data dir (`ServiceNotRunning` without one)."""
    service = running_service(settings.data_dir)
    explicit = check_redis_url(redis_url, "--redis-url") or settings.redis_url
    if explicit is None:
        if service is None or service.redis_url is None:
            raise not_running(
                settings.data_dir, "start one, or name a Redis (LEDGER_REDIS_URL or --redis-url)"
            )
        return UsageTarget(
            service.redis_url,
            stream or service.usage_stream,
            service.partitions,
            service.redis_cluster,
            service.http_url,
        )
    stream = stream or settings.usage_stream
    same = service is not None and (service.redis_url, service.usage_stream) == (explicit, stream)
    return UsageTarget(
        explicit,
        stream,
        settings.partitions,
        settings.redis_cluster,
        service.http_url if same and service is not None else None,
    )
