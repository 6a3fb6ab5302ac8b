"""Benchmark (not a test): end-to-end ingest, publish to queryable read model, beside a
raw-primitives pipeline run in the same process on the same Redis.

    python bench/bench_ingest.py [--events 200000] [--redis-url URL]

Each pipeline drains its own copy of one backlog of usage events (plain XADD `data` entries
with time-ordered ids), in batches of 1,000:
- raw: redis-py XREADGROUP + msgspec decode + one SQLite transaction per batch + one XACK;
- floor: the raw pipeline plus only what the rules oblige the ledger to store for each charge,
  with the ledger's own functions: the payload digest, the priced `usage.charged` record
  encoded as the log stores it, its hash chained to the one before, the log row and the
  idempotency key row. No decision (no state, no quota, one seat allocation), no duplicate
  look-up, no dead letters, no read models, no framework: a bound on any design that keeps
  the log in SQLite from one writer;
- ledger: the pieces of `ledger serve` (FastStream consumer; decode, idempotency, decide,
  hash-chained append, dead letters; the projector process writing the read
  model tables) until every entry is acknowledged and the read model tables have caught up
  with the log.
Without --redis-url a private Redis (append-only file on, as `ledger serve` runs it) is used.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import redis
import structlog

from ledger.decider import usage_charged
from ledger.idempotency import payload_digest
from ledger.log import EVENT_ENCODER, GENESIS_HASH, record_hash, us_from_datetime
from ledger.pricing import price
from ledger.rate_card import load_rate_card
from ledger.stores.sqlite import usage_key_hash
from schemas.commands import AddSeat, BuyPack, OpenSubscription
from schemas.events import Allocation
from schemas.usage import UsageEvent, usage_of
from services.config import Settings
from services.ingest.consumer import MAX_RECORDS, IngestConfig, IngestService, build_broker
from services.ingest.dead_letters import RedisDeadLetterSink
from services.ingest.processor import IngestProcessor
from services.projector import Projector
from services.redis_server import EmbeddedRedis
from services.serve import Worker

SUBSCRIPTIONS = 200
SEATS = 10
MODELS = ("qwen3.6-plus", "glm-5", "MiniMax-M2.5", "deepseek-v3.2")
DECODER = msgspec.json.Decoder(UsageEvent)
PUBLISH_CHUNK = 5_000


def payloads(count: int, tag: str) -> list[bytes]:
    rng = random.Random(7)
    now = datetime.now(UTC)
    out = []
    for i in range(count):
        sub = rng.randrange(SUBSCRIPTIONS)
        event = UsageEvent(
            event_id=f"{tag}-{i}",
            subscription_id=f"sub-{sub}",
            seat_id=f"sub-{sub}-seat-{rng.randrange(SEATS)}",
            model=rng.choice(MODELS),
            occurred_at=now,
            input_tokens=min(int(rng.paretovariate(1.2) * 2_000), 1_000_000),
            cached_tokens=min(int(rng.paretovariate(1.5) * 10_000), 1_000_000),
            output_tokens=min(int(rng.paretovariate(1.3) * 300), 100_000),
        )
        out.append(msgspec.json.encode(event))
    return out


def publish(client: redis.Redis, stream: str, data: list[bytes]) -> None:
    for first in range(0, len(data), PUBLISH_CHUNK):
        pipe = client.pipeline(transaction=False)
        for item in data[first : first + PUBLISH_CHUNK]:
            pipe.xadd(stream, {"data": item})
        pipe.execute()
    client.xgroup_create(stream, "ledger", id="0", mkstream=True)


def bench_database(path: Path, *schema: str) -> sqlite3.Connection:
    """A SQLite file as the ledger keeps its log: WAL, synchronous NORMAL, autocommit."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    for statement in schema:
        db.execute(statement)
    return db


Entry = tuple[bytes, dict[bytes, bytes]]


def drain(
    client: redis.Redis, stream: str, count: int, store: Callable[[list[Entry]], None]
) -> float:
    """Seconds to read `count` entries with XREADGROUP, `store` each batch, XACK it."""
    done = 0
    started = time.perf_counter()
    while done < count:
        reply = client.xreadgroup("ledger", "bench", {stream: ">"}, count=MAX_RECORDS, block=100)
        if not reply:
            continue
        entries = reply[0][1]
        store(entries)
        client.xack(stream, "ledger", *[entry_id for entry_id, _ in entries])
        done += len(entries)
    return time.perf_counter() - started


def raw_pipeline(client: redis.Redis, stream: str, folder: Path, count: int) -> float:
    db = bench_database(
        folder / "raw.sqlite3",
        "CREATE TABLE usage (id INTEGER PRIMARY KEY, event_id TEXT, subscription_id TEXT,"
        " seat_id TEXT, model TEXT, input INTEGER, cached INTEGER, output INTEGER)",
    )

    def store(entries: list[Entry]) -> None:
        rows = []
        for _, fields in entries:
            e = DECODER.decode(fields[b"data"])
            rows.append(
                (
                    e.event_id,
                    e.subscription_id,
                    e.seat_id,
                    e.model,
                    e.input_tokens,
                    e.cached_tokens,
                    e.output_tokens,
                )
            )
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO usage (event_id, subscription_id, seat_id, model, input, cached, output)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        db.execute("COMMIT")

    return drain(client, stream, count, store)


def floor_pipeline(client: redis.Redis, stream: str, folder: Path, count: int) -> float:
    """The raw pipeline plus the per-charge work the rules oblige (see the module doc)."""
    rate_card = load_rate_card()
    db = bench_database(
        folder / "floor.sqlite3",
        "CREATE TABLE log (position INTEGER PRIMARY KEY, recorded_at_us INTEGER NOT NULL,"
        " subscription_id TEXT NOT NULL, type TEXT NOT NULL, prev_hash BLOB NOT NULL,"
        " hash BLOB NOT NULL, data BLOB NOT NULL)",
        "CREATE TABLE usage_keys (position INTEGER PRIMARY KEY, key INTEGER NOT NULL)",
    )
    position, prev_hash = 0, GENESIS_HASH

    def store(entries: list[Entry]) -> None:
        nonlocal position, prev_hash
        at = datetime.now(UTC)
        at_us = us_from_datetime(at)
        version = rate_card.in_force(at)
        assert version is not None
        rows, keys = [], []
        for _, fields in entries:
            e = DECODER.decode(fields[b"data"])
            rates = version.models[e.model]
            counts = usage_of(e)
            components = price(counts, rates.coefficients)
            credits_ucr = components.total_ucr()
            allocation = (Allocation("seat", e.seat_id, credits_ucr),)
            usage_digest = payload_digest(e)
            data = EVENT_ENCODER.encode(
                usage_charged(
                    e, usage_digest, version, rates, counts, components, credits_ucr, allocation
                )
            )
            position += 1
            digest = record_hash(prev_hash, position, at_us, data)
            rows.append(
                (position, at_us, e.subscription_id, "usage.charged", prev_hash, digest, data)
            )
            keys.append((position, usage_key_hash(e.subscription_id, e.event_id)))
            prev_hash = digest
        db.execute("BEGIN")
        db.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        db.executemany("INSERT INTO usage_keys VALUES (?, ?)", keys)
        db.execute("COMMIT")

    return drain(client, stream, count, store)


async def ledger_pipeline(
    redis_url: str, stream: str, folder: Path, count: int
) -> tuple[float, float]:
    """`ledger serve`'s pieces: the writer thread (the ledger), the FastStream
    consumer, and the projector process writing the read model tables.

    Returns the seconds until every entry was charged and acknowledged, and until the read
    model tables had caught up too."""
    settings = Settings(data_dir=folder, redis_url=redis_url, usage_stream=stream)
    executor = ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    worker = Worker(settings, executor)

    def open_parts() -> None:
        worker.open()
        assert worker.ledger is not None
        setup = []
        for sub in range(SUBSCRIPTIONS):
            setup.append(OpenSubscription(f"sub-{sub}"))
            setup += [AddSeat(f"sub-{sub}", f"sub-{sub}-seat-{s}", "premium") for s in range(SEATS)]
            setup.append(BuyPack(f"sub-{sub}", f"pack-{sub}"))
        worker.ledger.execute(setup)

    await loop.run_in_executor(executor, open_parts)
    assert worker.ledger is not None
    target = worker.ledger.position + count
    projector = Projector(settings)
    projector.start()
    sink = RedisDeadLetterSink.from_url(redis_url, stream)
    processor = IngestProcessor(worker.ledger, None, sink)
    service = IngestService(
        build_broker(redis_url), processor, IngestConfig(stream=stream), executor=executor
    )
    client = redis.Redis.from_url(redis_url)
    last_id = client.xinfo_stream(stream)["last-generated-id"]
    read_models = sqlite3.connect(settings.read_model_path())
    started = time.perf_counter()
    charged_s = None
    await service.start()
    try:
        while True:
            group = client.xinfo_groups(stream)[0]
            drained = group["last-delivered-id"] == last_id and group["pending"] == 0
            if charged_s is None and drained and worker.ledger.position >= target:
                charged_s = time.perf_counter() - started
            (projected,) = read_models.execute(
                "SELECT coalesce(max(position), 0) FROM rm_checkpoints"
            ).fetchone()
            if charged_s is not None and projected >= target:
                return charged_s, time.perf_counter() - started
            await asyncio.sleep(0.005)
    finally:
        await service.stop()
        projector.stop()
        sink.close()
        read_models.close()
        await loop.run_in_executor(executor, worker.close)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("faststream").setLevel(logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    embedded = None
    url = args.redis_url
    if url is None:
        embedded = EmbeddedRedis(folder / "redis")
        embedded.start()
        url = embedded.url
    client = redis.Redis.from_url(url)
    try:
        stamp = time.time_ns()
        raw_stream, floor_stream = f"bench.raw.{stamp}", f"bench.floor.{stamp}"
        ledger_stream = f"bench.ledger.{stamp}"
        publish(client, raw_stream, payloads(args.events, "raw"))
        publish(client, floor_stream, payloads(args.events, "floor"))
        publish(client, ledger_stream, payloads(args.events, "ledger"))
        raw_s = raw_pipeline(client, raw_stream, folder, args.events)
        floor_s = floor_pipeline(client, floor_stream, folder, args.events)
        charged_s, ledger_s = asyncio.run(ledger_pipeline(url, ledger_stream, folder, args.events))
        client.delete(raw_stream, floor_stream, ledger_stream, f"{ledger_stream}.dead")
    finally:
        if embedded is not None:
            embedded.stop()
    raw_rate, ledger_rate = args.events / raw_s, args.events / ledger_s
    floor_rate, charged_rate = args.events / floor_s, args.events / charged_s
    print(f"\n{args.events:,} usage events from a backlog, batches of {MAX_RECORDS:,}")
    rows = [
        ("raw: XREADGROUP + msgspec + 1 SQLite txn/batch + XACK", raw_s, raw_rate),
        ("floor: raw + digest, record, hash chain, key row", floor_s, floor_rate),
        ("ledger: charged and acked (in the log)", charged_s, charged_rate),
        ("ledger: FastStream consumer to queryable read model", ledger_s, ledger_rate),
    ]
    print(f"{'pipeline':<58} {'seconds':>8} {'events/s':>10}")
    for name, seconds, rate in rows:
        print(f"{name:<58} {seconds:>8.2f} {rate:>10,.0f}")
    print(f"{'ratio floor / raw':<58} {'':>8} {floor_rate / raw_rate:>10.0%}")
    print(f"{'ratio ledger / raw':<58} {'':>8} {ledger_rate / raw_rate:>10.0%}")
    print(f"{'ratio ledger / floor':<58} {'':>8} {ledger_rate / floor_rate:>10.0%}")


if __name__ == "__main__":
    main()
