"""End to end on PostgreSQL: `ledger serve --role ingest` workers drain a backlog of usage
events spread over the partitions of the stream, with 1, 2, ... workers; beside them the same
workload through the embedded default (`ledger serve`, role `all`, the log in SQLite). After
each run the whole log is replayed into balances in memory, from its store.

    python bench/bench_pg_workers.py [--events N] [--partitions P] [--workers 1,2] [--url URL]

Each run gets a fresh schema and fresh streams: the setup (subscriptions, seats) is written with
`ledger backfill`, the workers start and share the partitions, then the backlog is published
(pipelined XADDs) and the clock runs until every partition's consumer group has read and
acknowledged everything. PostgreSQL is `--url`, else a private durable cluster from the local
binaries; Redis is a private server. Not a test: run it by hand on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import redis
from psycopg import sql

from ledger.partitions import partition_streams
from ledger.stores.postgres import PostgresEventStore
from projections.replay import balances_as_of
from schemas.usage import UsageEvent
from services.bootstrap import open_event_store
from services.client import UsagePublisher
from services.config import Settings
from services.redis_server import EmbeddedRedis, free_loopback_port
from tests.support.postgres_server import LocalPostgres

SUBSCRIPTIONS = 400
SEATS_PER_SUBSCRIPTION = 3
MODELS = ("qwen3.6-plus", "glm-5", "MiniMax-M2.5", "deepseek-v3.2")
START_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 600.0
POLL_S = 0.05
LEASE_TTL_MS = 3_000


def setup_lines() -> str:
    lines = []
    for s in range(SUBSCRIPTIONS):
        lines.append({"type": "subscription.open", "subscription_id": f"sub-{s}"})
        lines += [
            {
                "type": "seat.add",
                "subscription_id": f"sub-{s}",
                "seat_id": f"sub-{s}-{n}",
                "tier": "premium",
            }
            for n in range(SEATS_PER_SUBSCRIPTION)
        ]
    return "".join(json.dumps(line) + "\n" for line in lines)


def workload(events: int, rng: random.Random) -> list[UsageEvent]:
    now = datetime.now(UTC)
    out = []
    for _ in range(events):
        s = rng.randrange(SUBSCRIPTIONS)
        out.append(
            UsageEvent(
                event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                subscription_id=f"sub-{s}",
                seat_id=f"sub-{s}-{rng.randrange(SEATS_PER_SUBSCRIPTION)}",
                model=rng.choice(MODELS),
                input_tokens=rng.randint(0, 5_000),
                cached_tokens=rng.randint(0, 20_000),
                output_tokens=rng.randint(0, 500),
                occurred_at=now,
            )
        )
    return out


def drained(client: redis.Redis, streams: list[str]) -> bool:
    for stream in streams:
        if not client.exists(stream):
            return False
        info = client.xinfo_stream(stream)
        groups = client.xinfo_groups(stream)
        if not groups:
            return False
        group = groups[0]
        if group["last-delivered-id"] != info["last-generated-id"] or group["pending"]:
            return False
    return True


def replay_rate(settings: Settings) -> float:
    """Records per second folding the whole log into balances (what `ledger replay` does)."""
    store = open_event_store(settings)
    try:
        head = store.head().position
        started = time.perf_counter()
        balances_as_of(store, head)
        return head / (time.perf_counter() - started)
    finally:
        store.close()


def drain(redis_url: str, stream: str, partitions: int, events: int) -> float:
    """Publish the workload, then wait until every partition's group acknowledged it all."""
    items = workload(events, random.Random(2026))
    client = redis.Redis.from_url(redis_url)
    streams = partition_streams(stream, partitions)
    started = time.perf_counter()
    with UsagePublisher(redis_url, stream, partitions=partitions) as publisher:
        publisher.publish_many(items)
    published = time.perf_counter() - started
    while not drained(client, streams):
        if time.perf_counter() - started > DRAIN_TIMEOUT_S:
            raise SystemExit("not drained in time")
        time.sleep(POLL_S)
    elapsed = time.perf_counter() - started
    client.delete(*streams)
    client.close()
    print(f"  published in {published:.2f} s", flush=True)
    return elapsed


def run_sqlite(redis_url: str, workdir: Path, events: int) -> tuple[float, float]:
    """The embedded default: one `ledger serve` (role all), the log in SQLite, 1 partition."""
    stream = f"bench.{uuid.uuid4().hex[:8]}.usage"
    data_dir = workdir / f"sqlite-{stream}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(
        LEDGER_REDIS_URL=redis_url,
        LEDGER_USAGE_STREAM=stream,
        LEDGER_DATA_DIR=str(data_dir),
        LEDGER_PORT=str(free_loopback_port()),
    )
    command = [sys.executable, "-m", "services.cli"]
    setup = subprocess.run(
        [*command, "backfill", "-"], input=setup_lines(), env=env, text=True, capture_output=True
    )
    if setup.returncode != 0:
        raise SystemExit(f"backfill failed: {setup.stderr[-2000:]}")
    log = (workdir / f"sqlite-{stream}.log").open("wb")
    process = subprocess.Popen([*command, "serve"], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while b"ledger.started" not in (workdir / f"sqlite-{stream}.log").read_bytes():
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("ledger serve did not start")
            time.sleep(POLL_S)
        elapsed = drain(redis_url, stream, 1, events)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    return elapsed, replay_rate(Settings(data_dir=data_dir))


def run(
    url: str, redis_url: str, workdir: Path, events: int, partitions: int, workers: int
) -> tuple[float, float]:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    stream = f"bench.{uuid.uuid4().hex[:8]}.usage"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(
        LEDGER_DATABASE_URL=url,
        LEDGER_DATABASE_SCHEMA=schema,
        LEDGER_REDIS_URL=redis_url,
        LEDGER_USAGE_STREAM=stream,
        LEDGER_PARTITIONS=str(partitions),
        LEDGER_LEASE_TTL_MS=str(LEASE_TTL_MS),
        LEDGER_DATA_DIR=str(workdir / f"{schema}-cli"),
    )
    Path(env["LEDGER_DATA_DIR"]).mkdir(parents=True)
    command = [sys.executable, "-m", "services.cli"]
    setup = subprocess.run(
        [*command, "backfill", "-"], input=setup_lines(), env=env, text=True, capture_output=True
    )
    if setup.returncode != 0:
        raise SystemExit(f"backfill failed: {setup.stderr[-2000:]}")
    processes = []
    try:
        for n in range(workers):
            worker_env = {**env, "LEDGER_DATA_DIR": str(workdir / f"{schema}-w{n}")}
            log = (workdir / f"{schema}-w{n}.log").open("wb")
            processes.append(
                subprocess.Popen(
                    [*command, "serve", "--role", "ingest"], env=worker_env, stdout=log, stderr=log
                )
            )
        leases = PostgresEventStore(url, schema=schema)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            live = {p: h for p, h in leases.holders().items() if h.live}
            if len(live) == partitions and len({h.owner for h in live.values()}) == workers:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"workers did not share the partitions: {live}")
            time.sleep(POLL_S)
        leases.close()
        elapsed = drain(redis_url, stream, partitions, events)
        replay = replay_rate(Settings(database_url=url, database_schema=schema))
        return elapsed, replay
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(60)
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--url", default=None)
    args = parser.parse_args()
    with ExitStack() as resources:
        workdir = Path(resources.enter_context(tempfile.TemporaryDirectory()))
        url = args.url or resources.enter_context(LocalPostgres(durable=True)).url
        embedded = resources.enter_context(EmbeddedRedis(workdir / "redis", appendonly=False))
        print(
            f"{args.events:,} usage events, {SUBSCRIPTIONS} subscriptions; end to end = from"
            " publishing to all acknowledged; replay = the whole log folded in memory"
        )
        rows = []
        seconds, replay = run_sqlite(embedded.url, workdir, args.events)
        rows.append(("SQLite, ledger serve (role all)", 1, seconds, replay))
        for workers in (int(w) for w in args.workers.split(",")):
            seconds, replay = run(url, embedded.url, workdir, args.events, args.partitions, workers)
            name = f"PostgreSQL, {args.partitions} partitions, --role ingest"
            rows.append((name, workers, seconds, replay))
        print(f"\n{'store':<44} {'workers':>7} {'seconds':>8} {'events/s':>10} {'replay/s':>10}")
        for name, workers, seconds, replay in rows:
            print(
                f"{name:<44} {workers:>7} {seconds:>8.2f} {args.events / seconds:>10,.0f}"
                f" {replay:>10,.0f}"
            )


if __name__ == "__main__":
    main()
