"""Failover of ingest workers on PostgreSQL (issue 5, "must show" 2): three `ledger serve --role
ingest` processes share the partitions of the usage stream under load; one is killed with
SIGKILL, one is frozen with SIGSTOP past its lease and then resumed with SIGCONT. (And two
workers on a Redis Cluster, each partition's keys on one slot, the partitions on all nodes.)

Afterwards an independent tally must match exactly: every valid usage event charged once at
the price the test computes itself (`crash_support`), every invalid entry (bad JSON, unknown
model or seat, no payload, an event published on another partition's stream) dead-lettered
once with its reason, nothing pending on any partition, `ledger audit verify` passing, and no
append from the frozen worker accepted after its lease was taken over: the store records the
fencing token and the database time of its check with every fenced append
(`fenced_appends`), and every takeover (`lease_takeovers`), so the test checks that no batch
was checked under a token after a newer token of its partition had been handed out.

Set `FAILOVER_TEST_SEED` to replay one random workload.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import redis.cluster
from msgspec.structs import replace
from psycopg import sql

from ledger.leases import LeaseHolder
from ledger.partitions import partition_of, partition_stream
from ledger.stores.postgres import PostgresEventStore
from schemas.usage import UsageEvent
from services.client import UsagePublisher, encode_usage
from services.ingest.dead_letters import dead_letter_index, dead_letter_stream
from services.redis_server import (
    EmbeddedRedis,
    RedisBinaryNotFoundError,
    find_redis_binary,
)
from tests.conftest import no_service
from tests.crash_support import (
    GROUP,
    KILL_TIMEOUT_S,
    LEDGER_COMMAND,
    RETRYABLE,
    START_TIMEOUT_S,
    STARTED_EVENT,
    STOP_TIMEOUT_S,
    TEST_RATE_CARD_VERSION,
    ServeRun,
    drained,
    entry_key,
    entry_key_of_dead,
    expected_components,
    killed_with_parent,
    ledger_env,
    read_stream,
    run_ledger,
    write_rate_card,
)
from tests.support.redis_cluster import EmbeddedRedisCluster

PARTITIONS = 4
WORKERS = 3
LEASE_TTL_MS = 1_500
CLAIM_IDLE_MS = 500
FREEZE_S = 3 * LEASE_TTL_MS / 1000
"""How long the frozen worker stays stopped: three TTLs, so its leases are surely taken."""
SHARE_TIMEOUT_S = 20.0
"""Every worker holds a partition within this (they start one by one and rebalance)."""
TAKEOVER_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 40.0
PUBLISH_CHUNK = 40
PUBLISH_INTERVAL_S = 0.1
KILL_AFTER_S = 1.5
FREEZE_AFTER_S = 1.5
"""After the kill: the frozen worker stops while the publisher is still going."""

SUBSCRIPTIONS = tuple(f"fo-team-{n}" for n in range(8))
SEATS_PER_SUBSCRIPTION = 2
VALID_EVENTS = 3_000
DUPLICATES = 150
INVALID_EVENTS = 250


def _seat(subscription: str, n: int) -> str:
    return f"{subscription}-seat-{n}"


def _stream(base: str, subscription: str) -> str:
    return partition_stream(base, partition_of(subscription, PARTITIONS), PARTITIONS)


@dataclass(frozen=True)
class Entry:
    """One XADD of the workload: where it goes, and what the ledger must make of it."""

    stream: str
    fields: dict[bytes, bytes]
    kind: str  # valid | duplicate | invalid
    event_id: str | None = None
    reason: str | None = None


@dataclass
class FailoverWorkload:
    entries: list[Entry]
    events: dict[str, dict[str, Any]] = field(default_factory=dict)

    def by_key(self) -> dict[tuple[str, bytes], Entry]:
        found: dict[tuple[str, bytes], Entry] = {}
        for entry in self.entries:
            found.setdefault((entry.stream, entry_key(entry.fields)), entry)
        return found


def _encode(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def make_failover_workload(rng: random.Random, base: str, tag: str) -> FailoverWorkload:
    occurred = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    workload = FailoverWorkload([])
    streams = [partition_stream(base, k, PARTITIONS) for k in range(PARTITIONS)]
    for n in range(VALID_EVENTS):
        subscription = rng.choice(SUBSCRIPTIONS)
        event: dict[str, Any] = {
            "event_id": f"{tag}-ev-{n:06d}",
            "subscription_id": subscription,
            "seat_id": _seat(subscription, rng.randrange(SEATS_PER_SUBSCRIPTION)),
            "model": rng.choice(("t-alpha", "t-odd", "i-gamma")),
            "occurred_at": (occurred + timedelta(milliseconds=n))
            .isoformat()
            .replace("+00:00", "Z"),
        }
        if event["model"] == "i-gamma":
            event["images"] = rng.randint(1, 4)
        else:
            event["input_tokens"] = rng.randint(0, 20_000)
            event["cached_tokens"] = rng.randint(0, 60_000)
            event["output_tokens"] = rng.randint(0, 4_000)
            event["thinking"] = rng.random() < 0.3
            event["tool_calls"] = rng.choice((0, 0, 3))
        workload.events[event["event_id"]] = event
        workload.entries.append(
            Entry(
                _stream(base, subscription), {b"data": _encode(event)}, "valid", event["event_id"]
            )
        )
    for n in range(INVALID_EVENTS):
        subscription = rng.choice(SUBSCRIPTIONS)
        home = _stream(base, subscription)
        base_event = {
            "event_id": f"{tag}-bad-{n:05d}",
            "subscription_id": subscription,
            "seat_id": _seat(subscription, 0),
            "model": "t-alpha",
            "input_tokens": 10 + n,
            "occurred_at": occurred.isoformat().replace("+00:00", "Z"),
        }
        kind = n % 5
        if kind == 0:
            text = _encode(base_event)
            entry = Entry(rng.choice(streams), {b"data": text[: len(text) // 2]}, "invalid")
            entry = Entry(entry.stream, entry.fields, "invalid", reason="invalid_json")
        elif kind == 1:
            data = _encode({**base_event, "model": "gpt-99"})
            entry = Entry(home, {b"data": data}, "invalid", reason="unknown_model")
        elif kind == 2:
            data = _encode({**base_event, "seat_id": f"ghost-{n}"})
            entry = Entry(home, {b"data": data}, "invalid", reason="unknown_seat")
        elif kind == 3:
            fields = {b"payload": f"{tag}-no-data-{n}".encode()}
            entry = Entry(rng.choice(streams), fields, "invalid", reason="missing_data")
        else:  # a valid event on another partition's stream: never charged
            elsewhere = rng.choice([s for s in streams if s != home])
            entry = Entry(
                elsewhere, {b"data": _encode(base_event)}, "invalid", reason="wrong_partition"
            )
        workload.entries.append(entry)
    rng.shuffle(workload.entries)
    for _ in range(DUPLICATES):
        index = rng.randrange(len(workload.entries))
        while workload.entries[index].kind != "valid":
            index = rng.randrange(len(workload.entries))
        original = workload.entries[index]
        at = rng.randint(index + 1, len(workload.entries))
        workload.entries.insert(
            at, Entry(original.stream, dict(original.fields), "duplicate", original.event_id)
        )
    return workload


class MultiStreamPublisher(threading.Thread):
    """Publishes the entries in order, `PUBLISH_CHUNK` per pipelined round trip, pacing."""

    def __init__(self, redis_url: str, entries: list[Entry]) -> None:
        super().__init__(name="failover-publisher", daemon=True)
        self.client = redis.Redis.from_url(redis_url, socket_timeout=5.0)
        self.entries = entries
        self.published = 0
        self.error: BaseException | None = None
        self.stop_now = threading.Event()

    def run(self) -> None:
        try:
            for start in range(0, len(self.entries), PUBLISH_CHUNK):
                if self.stop_now.is_set():
                    return
                pipe = self.client.pipeline(transaction=False)
                chunk = self.entries[start : start + PUBLISH_CHUNK]
                for entry in chunk:
                    pipe.xadd(entry.stream, entry.fields)
                pipe.execute()
                self.published += len(chunk)
                self.stop_now.wait(PUBLISH_INTERVAL_S)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.client.close()


@dataclass
class Worker:
    name: str
    run: ServeRun

    @property
    def pid(self) -> int:
        return self.run.process.pid

    @property
    def owner(self) -> str:
        return f"{socket.gethostname()}-{self.pid}"


def spawn_worker(env: Mapping[str, str], log_dir: Path, name: str) -> Worker:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*LEDGER_COMMAND, "serve", "--role", "ingest"],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=killed_with_parent,
        )
    return Worker(name, ServeRun(process, log_path, time.monotonic()))


def wait_started(worker: Worker) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if STARTED_EVENT in worker.run.log_text():
            return
        if worker.run.process.poll() is not None:
            raise AssertionError(f"{worker.name} exited with {worker.run.process.returncode}")
        time.sleep(0.02)
    raise AssertionError(f"{worker.name} did not start within {START_TIMEOUT_S:g} s")


def wait_until(condition: Any, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout_s:g} s")


def log_events(worker: Worker, event: str) -> list[dict[str, Any]]:
    found = []
    for line in worker.run.log_text().splitlines():
        if f'"event": "{event}"' in line:
            with contextlib.suppress(json.JSONDecodeError):
                found.append(json.loads(line))
    return found


def worker_env(
    data_dir: Path,
    *,
    redis_url: str,
    stream: str,
    rate_card: Path,
    postgres_url: str,
    postgres_schema: str,
    cluster: bool = False,
) -> dict[str, str]:
    """The environment of one ingest worker (or of the CLI) on the shared PostgreSQL log."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = ledger_env(
        data_dir=data_dir,
        redis_url=redis_url,
        stream=stream,
        rate_card=rate_card,
        claim_idle_ms=CLAIM_IDLE_MS,
    )
    env.update(
        LEDGER_DATABASE_URL=postgres_url,
        LEDGER_DATABASE_SCHEMA=postgres_schema,
        LEDGER_PARTITIONS=str(PARTITIONS),
        LEDGER_LEASE_TTL_MS=str(LEASE_TTL_MS),
    )
    if cluster:
        env["LEDGER_REDIS_CLUSTER"] = "1"
    return env


def _seed() -> int:
    seed = int(os.environ.get("FAILOVER_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"FAILOVER_TEST_SEED={seed}")
    return seed


def _setup_lines() -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for subscription in SUBSCRIPTIONS:
        lines.append({"type": "subscription.open", "subscription_id": subscription})
        lines += [
            {
                "type": "seat.add",
                "subscription_id": subscription,
                "seat_id": _seat(subscription, n),
                "tier": "premium",
            }
            for n in range(SEATS_PER_SUBSCRIPTION)
        ]
        lines.append(
            {"type": "pack.buy", "subscription_id": subscription, "pack_id": f"{subscription}-p"}
        )
    return lines


@pytest.mark.slow
def test_ingest_workers_fail_over_without_losing_or_double_charging_and_fencing_holds(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    embedded_redis: EmbeddedRedis,
    postgres_url: str,
    postgres_schema: str,
) -> None:
    seed = _seed()
    rng = random.Random(seed)
    assert {partition_of(s, PARTITIONS) for s in SUBSCRIPTIONS} == set(range(PARTITIONS))
    base = f"failover.{os.urandom(4).hex()}.usage"
    rate_card = write_rate_card(tmp_path / "rate-card.toml")

    def env_for(data_dir: Path) -> dict[str, str]:
        return worker_env(
            data_dir,
            redis_url=embedded_redis.url,
            stream=base,
            rate_card=rate_card,
            postgres_url=postgres_url,
            postgres_schema=postgres_schema,
        )

    cli_env = env_for(tmp_path / "cli")
    setup = run_ledger(
        cli_env, "backfill", "-", stdin="".join(json.dumps(x) + "\n" for x in _setup_lines())
    )
    assert setup.returncode == 0, setup.stderr
    workload = make_failover_workload(rng, base, f"f{seed}")
    client = redis.Redis.from_url(embedded_redis.url)
    request.addfinalizer(client.close)
    leases = PostgresEventStore(postgres_url, schema=postgres_schema)
    request.addfinalizer(leases.close)

    def holders() -> dict[int, LeaseHolder]:
        return {p: h for p, h in leases.holders().items() if h.live}

    workers: list[Worker] = []
    publisher = MultiStreamPublisher(embedded_redis.url, workload.entries)
    request.addfinalizer(publisher.stop_now.set)
    started = time.monotonic()
    try:
        for n in range(WORKERS):
            workers.append(spawn_worker(env_for(tmp_path / f"worker-{n}"), tmp_path, f"w{n}"))
        for worker in workers:
            wait_started(worker)
        owners = {w.owner for w in workers}
        wait_until(
            lambda: (
                len(holders()) == PARTITIONS and {h.owner for h in holders().values()} == owners
            ),
            SHARE_TIMEOUT_S,
            "every partition held and every worker holding one",
        )
        print(f"shared: {sorted((p, h.owner[-6:]) for p, h in holders().items())}")
        publisher.start()

        # SIGKILL one worker; its partitions are taken over once its leases expire.
        time.sleep(KILL_AFTER_S)
        killed, frozen, survivor = workers
        killed_partitions = {p for p, h in holders().items() if h.owner == killed.owner}
        killed.run.process.send_signal(signal.SIGKILL)
        killed.run.process.wait(KILL_TIMEOUT_S)
        killed.run.ended = "SIGKILL"
        print(f"killed {killed.name} holding {sorted(killed_partitions)} at {publisher.published}")

        # SIGSTOP another past its lease, then SIGCONT.
        time.sleep(FREEZE_AFTER_S)
        frozen_leases = {p: h for p, h in holders().items() if h.owner == frozen.owner}
        frozen.run.process.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        print(f"froze {frozen.name} holding {sorted(frozen_leases)} at {publisher.published}")
        takeover_s = wait_until(
            lambda: all(
                (h := holders().get(p)) is not None and h.owner == survivor.owner
                for p in range(PARTITIONS)
            ),
            TAKEOVER_TIMEOUT_S + FREEZE_S,
            "the survivor holding every partition",
        )
        time.sleep(max(0.0, FREEZE_S - (time.monotonic() - stopped_at)))
        frozen.run.process.send_signal(signal.SIGCONT)
        print(
            f"resumed {frozen.name} after {time.monotonic() - stopped_at:.1f} s "
            f"(survivor held all {takeover_s:.1f} s after the freeze) at {publisher.published}"
        )

        publisher.join(DRAIN_TIMEOUT_S)
        assert not publisher.is_alive() and publisher.error is None, publisher.error
        assert publisher.published == len(workload.entries)
        streams = sorted({entry.stream for entry in workload.entries})
        drain_s = wait_until(
            lambda: all(_drained_quietly(client, stream) for stream in streams),
            DRAIN_TIMEOUT_S,
            "every partition drained: " + "; ".join(_state(client, s) for s in streams),
        )
        for worker in (frozen, survivor):
            assert worker.run.process.poll() is None, f"{worker.name} died"
            worker.run.process.send_signal(signal.SIGTERM)
        for worker in (frozen, survivor):
            code = worker.run.process.wait(STOP_TIMEOUT_S)
            worker.run.ended = f"SIGTERM, exit {code}"
            assert code == 0, f"{worker.name} exited {code}"

        problems = verify_failover(client, workload, streams, cli_env)
        fencing = fencing_violations(postgres_url, postgres_schema)
        frozen_stats = frozen_worker_appends(postgres_url, postgres_schema, frozen.owner)
        lost = log_events(frozen, "lease.lost")
        refused = log_events(frozen, "ingest.lease_lost") + log_events(
            frozen, "ingest.reclaim_lease_lost"
        )
        print(
            f"drained {drain_s:.1f} s after publishing; {len(workload.entries)} entries; frozen "
            f"worker: {len(lost)} leases lost after resuming, {len(refused)} batches refused "
            f"(LeaseLost), {frozen_stats}; fenced appends checked: {fencing[0]}; "
            f"total {time.monotonic() - started:.1f} s"
        )
        assert not problems, "\n".join(problems)
        assert fencing[1] == [], f"appends accepted under a superseded token: {fencing[1][:5]}"
        assert frozen_leases, "the frozen worker held no partition when it was frozen"
        # Each lease it held when frozen: dropped when refused or found expired (`lease.lost`),
        # or let go because its consumer could not start across the freeze (`lease.released`).
        given_up = {
            (e["partition"], e["token"]) for e in lost + log_events(frozen, "lease.released")
        }
        assert {(p, h.token) for p, h in frozen_leases.items()} <= given_up, given_up
        assert frozen_stats["after_takeover"] == 0, frozen_stats
    except BaseException:
        for worker in workers:
            print(f"--- {worker.name} ({worker.owner}, {worker.run.ended}):\n{worker.run.tail(40)}")
        raise
    finally:
        for worker in workers:
            if worker.run.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.run.process.send_signal(signal.SIGCONT)
                worker.run.process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.run.process.wait(KILL_TIMEOUT_S)


def _drained_quietly(client: redis.Redis, stream: str) -> bool:
    with contextlib.suppress(*RETRYABLE):
        return drained(client, stream)[0]
    return False


def _state(client: redis.Redis, stream: str) -> str:
    with contextlib.suppress(Exception):
        return f"{stream}: {drained(client, stream)[1]}"
    return f"{stream}: unknown"


def verify_failover(
    client: redis.Redis, workload: FailoverWorkload, streams: list[str], env: Mapping[str, str]
) -> list[str]:
    """The tally against the stream entries, the usage export, the dead letters and the audit."""
    problems: list[str] = []
    by_key = workload.by_key()
    valid_ids: set[str] = set()
    expected_dead: dict[tuple[str, str], Entry] = {}
    for stream in streams:
        for entry_id, fields in read_stream(client, stream):
            entry = by_key.get((stream, entry_key(fields)))
            if entry is None:
                problems.append(f"{stream} {entry_id}: an entry the workload did not publish")
            elif entry.kind == "invalid":
                expected_dead[(stream, entry_id)] = entry
            else:
                assert entry.event_id is not None
                valid_ids.add(entry.event_id)
        done, state = drained(client, stream)
        if not done:
            problems.append(f"{stream} not drained: {state}")
        pending = client.xpending(stream, GROUP)["pending"]
        if pending:
            problems.append(f"{stream}: {pending} entries still pending")

    export = run_ledger(env, "export", "usage", "--format", "jsonl")
    if export.returncode != 0:
        return [*problems, f"ledger export usage exited {export.returncode}: {export.stderr}"]
    rows = [json.loads(line) for line in export.stdout.splitlines() if line.strip()]
    charged = Counter(row["event_id"] for row in rows)
    twice = sorted(e for e, n in charged.items() if n > 1)
    if twice:
        problems.append(f"{len(twice)} events charged more than once, e.g. {twice[:5]}")
    if set(charged) != valid_ids:
        problems.append(
            f"charged {len(charged)} events, {len(valid_ids)} valid; never charged "
            f"{sorted(valid_ids - set(charged))[:5]}, "
            f"not valid {sorted(set(charged) - valid_ids)[:5]}"
        )
    total = expected_total = 0
    mispriced = []
    for row in rows:
        event = workload.events.get(row["event_id"])
        if event is None:
            continue
        want = expected_components(event)
        got = {k: row["components"].get(k, 0) for k in want}
        if got != want or row["credits_ucr"] != sum(want.values()):
            mispriced.append((row["event_id"], row["credits_ucr"], sum(want.values())))
        if row["rate_card_version"] != TEST_RATE_CARD_VERSION:
            mispriced.append((row["event_id"], row["rate_card_version"]))
        total += row["credits_ucr"]
    expected_total = sum(sum(expected_components(workload.events[e]).values()) for e in valid_ids)
    if mispriced:
        problems.append(f"{len(mispriced)} rows priced wrong, e.g. {mispriced[:5]}")
    if total != expected_total:
        problems.append(f"charged {total} µcr in all, the tally says {expected_total} µcr")

    dead: dict[tuple[str, str], dict[bytes, bytes]] = {}
    repeated = 0
    for stream in streams:
        for _, fields in read_stream(client, f"{stream}.dead"):
            source = (stream, fields[b"source_id"].decode())
            repeated += source in dead
            dead[source] = fields
    if repeated:
        problems.append(f"{repeated} entries dead-lettered more than once")
    if set(dead) != set(expected_dead):
        problems.append(
            f"{len(dead)} dead letters, {len(expected_dead)} expected; missing "
            f"{sorted(set(expected_dead) - set(dead))[:5]}, unexpected "
            f"{sorted(set(dead) - set(expected_dead))[:5]}"
        )
    wrong = [
        (source, fields[b"reason"].decode(), expected_dead[source].reason)
        for source, fields in dead.items()
        if source in expected_dead
        and (
            fields[b"reason"].decode() != expected_dead[source].reason
            or entry_key_of_dead(fields) != entry_key(expected_dead[source].fields)
        )
    ]
    if wrong:
        problems.append(f"{len(wrong)} dead letters with a wrong reason or bytes: {wrong[:5]}")
    reasons = Counter(entry.reason for entry in expected_dead.values())
    if reasons["wrong_partition"] == 0:
        problems.append("no wrong_partition entry was published")

    audit = run_ledger(env, "audit", "verify")
    if audit.returncode != 0:
        problems.append(f"ledger audit verify exited {audit.returncode}: {audit.stderr.strip()}")
    return problems


def fencing_violations(url: str, schema: str) -> tuple[int, list[tuple[Any, ...]]]:
    """(fenced appends checked, those whose fence check came after a newer token of their
    partition had been handed out)."""
    with psycopg.connect(url) as db:
        (count,) = db.execute(
            sql.SQL("SELECT count(*) FROM {}.fenced_appends").format(sql.Identifier(schema))
        ).fetchone() or (0,)
        rows = db.execute(
            sql.SQL(
                "SELECT a.first_position, a.partition, a.owner, a.token, a.checked_at,"
                " t.token, t.owner, t.taken_at"
                " FROM {s}.fenced_appends a JOIN {s}.lease_takeovers t"
                " ON t.partition = a.partition AND t.token > a.token"
                " AND t.taken_at <= a.checked_at"
            ).format(s=sql.Identifier(schema))
        ).fetchall()
    return int(count), rows


def frozen_worker_appends(url: str, schema: str, owner: str) -> dict[str, int]:
    """The frozen worker's fenced appends: in all, and after a takeover of their partition."""
    with psycopg.connect(url) as db:
        total, after = db.execute(
            sql.SQL(
                "SELECT count(*), count(*) FILTER (WHERE EXISTS ("
                "  SELECT 1 FROM {s}.lease_takeovers t WHERE t.partition = a.partition"
                "  AND t.owner <> a.owner AND t.token > a.token AND t.taken_at <= a.checked_at))"
                " FROM {s}.fenced_appends a WHERE a.owner = %s"
            ).format(s=sql.Identifier(schema)),
            (owner,),
        ).fetchone() or (0, 0)
    return {"appends": int(total), "after_takeover": int(after)}


# -- ingest workers on a Redis Cluster ------------------------------------------------------------

CLUSTER_WORKERS = 2
CLUSTER_EVENTS = 200


@pytest.mark.slow
def test_ingest_workers_share_partitions_whose_keys_live_on_different_cluster_nodes(
    tmp_path: Path, postgres_url: str, postgres_schema: str
) -> None:
    """Each partition's stream, dead letters and index share a slot; the partitions spread
    over the nodes. Two workers charge every event once and dead-letter a stray one."""
    try:
        find_redis_binary()
    except RedisBinaryNotFoundError as error:
        no_service(f"no redis-server for a local cluster: {error}")
    base = f"clusterfo.{os.urandom(4).hex()}.usage"
    rate_card = write_rate_card(tmp_path / "rate-card.toml")
    with EmbeddedRedisCluster(tmp_path / "cluster", masters=3) as cluster:
        client = redis.cluster.RedisCluster.from_url(cluster.url)

        def env_for(data_dir: Path) -> dict[str, str]:
            return worker_env(
                data_dir,
                redis_url=cluster.url,
                stream=base,
                rate_card=rate_card,
                postgres_url=postgres_url,
                postgres_schema=postgres_schema,
                cluster=True,
            )

        streams = [partition_stream(base, k, PARTITIONS) for k in range(PARTITIONS)]
        for stream in streams:
            slots = {client.keyslot(k) for k in (stream, dead_letter_stream(stream))}
            assert slots == {client.keyslot(dead_letter_index(stream))}
        assert len({client.keyslot(stream) for stream in streams}) == PARTITIONS
        cli_env = env_for(tmp_path / "cli")
        setup = run_ledger(
            cli_env, "backfill", "-", stdin="".join(json.dumps(x) + "\n" for x in _setup_lines())
        )
        assert setup.returncode == 0, setup.stderr
        workers = [
            spawn_worker(env_for(tmp_path / f"cw-{n}"), tmp_path, f"cw{n}")
            for n in range(CLUSTER_WORKERS)
        ]
        try:
            for worker in workers:
                wait_started(worker)
            wait_until(
                lambda: (
                    {h.owner for h in _live_holders(postgres_url, postgres_schema).values()}
                    == {w.owner for w in workers}
                ),
                SHARE_TIMEOUT_S,
                "both workers holding partitions",
            )
            events = [
                UsageEvent(
                    event_id=f"c-{n}",
                    subscription_id=SUBSCRIPTIONS[n % len(SUBSCRIPTIONS)],
                    seat_id=_seat(SUBSCRIPTIONS[n % len(SUBSCRIPTIONS)], n % 2),
                    model="t-alpha",
                    input_tokens=1_000 + n,
                    occurred_at=datetime.now(UTC),
                )
                for n in range(CLUSTER_EVENTS)
            ]
            with UsagePublisher(cluster.url, base, partitions=PARTITIONS, cluster=True) as pub:
                pub.publish_many(events)
                home = _stream(base, "fo-team-0")
                stray = next(s for s in streams if s != home)
                client.xadd(stray, {b"data": encode_usage(replace(events[0], event_id="stray"))})
            wait_until(
                lambda: all(_drained_quietly(client, s) for s in streams),
                DRAIN_TIMEOUT_S,
                "every partition drained",
            )
        finally:
            for worker in workers:
                worker.run.process.send_signal(signal.SIGTERM)
            for worker in workers:
                worker.run.process.wait(STOP_TIMEOUT_S)
        export = run_ledger(cli_env, "export", "usage", "--format", "jsonl")
        charged = sorted(json.loads(line)["event_id"] for line in export.stdout.splitlines())
        assert charged == sorted(event.event_id for event in events)
        letters = read_stream(client, dead_letter_stream(stray))
        assert [fields[b"reason"] for _, fields in letters] == [b"wrong_partition"]
        client.close()


def _live_holders(url: str, schema: str) -> dict[int, LeaseHolder]:
    store = PostgresEventStore(url, schema=schema)
    try:
        return {p: h for p, h in store.holders().items() if h.live}
    finally:
        store.close()
