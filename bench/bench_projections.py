"""Projection throughput: fold and rebuild a synthetic log of N events (1,000,000 by default).

    python bench/bench_projections.py [--events N] [--sqlite-log | --postgres-log] [--postgres]
        [--url URL]

The log is made of valid facts built directly (no decider): a few hundred subscriptions with
seats, mostly usage charges spread over seat, packs and uncovered, monthly cycle starts with
quota grants, pack purchases and expiries. Reported: the pure fold (decode + apply) in memory,
and a full `ProjectionRunner.rebuild()` into a SQLite read model store (usage rows, balance
rows, checkpoints, indexes built at the end), reading the log from memory or, with
`--sqlite-log` / `--postgres-log`, from the SQLite / PostgreSQL event store. With `--postgres`,
the same into PostgreSQL read models as well (`projections.stores.postgres`), printed after
SQLite's. PostgreSQL is a private server from the local binaries with its default durability
(WAL fsynced at commit) unless `--url` names one.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ledger.catalog import PACK_CREDITS_UCR, SEAT_QUOTA_UCR
from ledger.cycles import cycle_bounds
from ledger.log import (
    EVENT_ENCODER,
    GENESIS_HASH,
    Head,
    StoredRecord,
    record_hash,
    us_from_datetime,
)
from projections.balances import Balances, apply_data, assert_conserved
from projections.read_store import ReadModelStore
from projections.runner import DEFAULT_BATCH_EVENTS, ProjectionRunner
from projections.stores.postgres import PostgresReadModelStore
from projections.stores.sqlite import SqliteReadModelStore
from projections.usage import RecordReader, UsageQuery
from schemas.events import (
    Allocation,
    Coefficients,
    Components,
    CycleStarted,
    LogEvent,
    PackExpired,
    PackPurchased,
    SeatAdded,
    SeatQuotaGranted,
    SubscriptionOpened,
    UsageCharged,
)
from schemas.usage import Usage
from tests.support.postgres_server import LocalPostgres

START = datetime(2026, 1, 1, tzinfo=UTC)
MODELS = ("qwen3.6-plus", "glm-5", "MiniMax-M2.5", "deepseek-v3.2")
TIERS = ("standard", "advanced", "premium")
COEFFICIENTS = Coefficients(200_000, 20_000, 1_200_000)
QUERY_REPEATS = 20
STEADY_TAIL_EVENTS = 100_000


def synthetic_events(count: int, seed: int = 1) -> Iterator[tuple[int, list[LogEvent]]]:
    """(recorded_at_us, events) batches adding up to about `count` valid events."""
    rng = random.Random(seed)
    subs = [f"sub-{i:04d}" for i in range(300)]
    seats = {sub: [f"{sub}-seat-{j}" for j in range(rng.randint(1, 8))] for sub in subs}
    tier: dict[str, str] = {}
    quota: dict[str, int] = {}
    used: dict[str, int] = {}
    packs: dict[str, dict[str, list[object]]] = {sub: {} for sub in subs}
    now = START
    opening: list[LogEvent] = []
    for sub in subs:
        start, end = cycle_bounds(START, 0)
        opening += [SubscriptionOpened(sub, START), CycleStarted(sub, 0, start, end)]
        for seat in seats[sub]:
            tier[seat] = rng.choice(TIERS)
            quota[seat], used[seat] = SEAT_QUOTA_UCR[tier[seat]], 0  # type: ignore[index]
            opening.append(SeatAdded(sub, seat, tier[seat], quota[seat], 0))  # type: ignore[arg-type]
    produced = len(opening)
    yield us_from_datetime(now), opening
    cycle, serial = 0, 0
    expiries: deque[tuple[datetime, str, str]] = deque()
    while produced < count:
        now += timedelta(seconds=20)
        batch: list[LogEvent] = []
        if now >= cycle_bounds(START, cycle)[1]:
            cycle += 1
            start, end = cycle_bounds(START, cycle)
            for sub in subs:
                batch.append(CycleStarted(sub, cycle, start, end))
                for seat in seats[sub]:
                    lapsed = quota[seat] - used[seat]
                    batch.append(
                        SeatQuotaGranted(sub, seat, tier[seat], cycle, quota[seat], lapsed)
                    )  # type: ignore[arg-type]
                    used[seat] = 0
        while expiries and expiries[0][0] <= now:
            expires_at, sub, pack_id = expiries.popleft()
            remaining = packs[sub].pop(pack_id)[0]
            batch.append(PackExpired(sub, pack_id, expires_at, remaining))  # type: ignore[arg-type]
        for _ in range(rng.randint(1, 40)):
            sub = rng.choice(subs)
            serial += 1
            if rng.random() < 0.002:
                expires = now + timedelta(days=30)
                packs[sub][f"pack-{serial}"] = [PACK_CREDITS_UCR, expires]
                expiries.append((expires, sub, f"pack-{serial}"))
                batch.append(PackPurchased(sub, f"pack-{serial}", PACK_CREDITS_UCR, now, expires))
                continue
            seat = rng.choice(seats[sub])
            credits = rng.randint(1, 400_000) * 10_000 * rng.choice((1, 1, 1, 5, 50))
            batch.append(_charge(sub, seat, f"evt-{serial}", credits, now, used, quota, packs))
        produced += len(batch)
        yield us_from_datetime(now), batch


def _charge(
    sub: str,
    seat: str,
    event_id: str,
    credits: int,
    now: datetime,
    used: dict[str, int],
    quota: dict[str, int],
    packs: dict[str, dict[str, list[object]]],
) -> UsageCharged:
    parts: list[Allocation] = []
    left = credits
    from_seat = min(left, quota[seat] - used[seat])
    if from_seat > 0:
        parts.append(Allocation("seat", seat, from_seat))
        used[seat] += from_seat
        left -= from_seat
    for pack_id, pack in packs[sub].items():
        if left == 0:
            break
        from_pack = min(left, pack[0])  # type: ignore[type-var]
        if from_pack > 0:
            parts.append(Allocation("pack", pack_id, from_pack))
            pack[0] = pack[0] - from_pack  # type: ignore[operator]
            left -= from_pack
    if left > 0:
        parts.append(Allocation("uncovered", "", left))
    return UsageCharged(
        subscription_id=sub,
        seat_id=seat,
        event_id=event_id,
        payload_digest="0123456789abcdef0123456789abcdef",
        occurred_at=now,
        model=MODELS[credits % 4],
        product="text",
        usage=Usage(input_tokens=credits // 200, cached_tokens=1_000, output_tokens=300),
        rate_card_version="2026-01-01",
        coefficients=COEFFICIENTS,
        components=Components(input_ucr=credits),
        credits_ucr=credits,
        allocation=tuple(parts),
        request_id=f"req-{event_id}",
        gateway="bench",
    )


class MemoryLog:
    def __init__(self) -> None:
        self.records: list[StoredRecord] = []
        self.visible: int | None = None
        """Hide the records beyond this position (a log that has not grown that far yet)."""

    def append(self, events: list[LogEvent], recorded_at_us: int) -> None:
        prev = self.records[-1].hash if self.records else GENESIS_HASH
        for event in events:
            position = len(self.records) + 1
            data = EVENT_ENCODER.encode(event)
            digest = record_hash(prev, position, recorded_at_us, data)
            self.records.append(StoredRecord(position, recorded_at_us, data, prev, digest))
            prev = digest

    def read(self, after: int = 0, until: int | None = None) -> Iterator[StoredRecord]:
        return iter(self.records[after:until])

    def head(self) -> Head:
        last = self.records[-1 if self.visible is None else self.visible - 1]
        return Head(last.position, last.hash, last.recorded_at_us)


OpenReadStore = Callable[[str, RecordReader], ReadModelStore]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--sqlite-log", action="store_true")
    parser.add_argument("--postgres-log", action="store_true")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL read models too")
    parser.add_argument("--url", help="PostgreSQL's URL (a private server if unset)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-projections-"))

    started = time.perf_counter()
    memory = MemoryLog()
    for at_us, events in synthetic_events(args.events):
        memory.append(events, at_us)
    n = len(memory.records)
    print(f"built {n:,} records in {time.perf_counter() - started:.1f}s ({workdir})")

    started = time.perf_counter()
    balances = Balances()
    for record in memory.records:
        apply_data(balances, record.data)
    fold_s = time.perf_counter() - started
    for sub in balances.subscriptions:
        assert_conserved(balances, sub)
    print(f"fold in memory (decode + apply): {fold_s:.2f}s = {n / fold_s:,.0f} events/s")

    def sqlite_store(name: str, events: RecordReader) -> ReadModelStore:
        return SqliteReadModelStore(workdir / f"{name}.sqlite", events)

    with contextlib.ExitStack() as resources:
        kinds: list[tuple[str, OpenReadStore]] = [("SQLite", sqlite_store)]
        url = ""
        if args.postgres or args.postgres_log:
            url = args.url or resources.enter_context(LocalPostgres(durable=True)).url
        prefix = f"bench_{uuid.uuid4().hex[:8]}"
        if args.postgres:

            def postgres_store(name: str, events: RecordReader) -> ReadModelStore:
                return PostgresReadModelStore(url, events, schema=f"{prefix}_{name}")

            kinds.append(("PostgreSQL", postgres_store))

        source: object = memory
        log_kind = "in-memory log"
        if args.sqlite_log or args.postgres_log:
            from ledger.log import EventStore  # type: ignore[import-not-found]
            from ledger.stores.postgres import PostgresEventStore  # type: ignore[import-not-found]
            from ledger.stores.sqlite import SqliteEventStore  # type: ignore[import-not-found]

            log: EventStore
            if args.postgres_log:
                log, log_kind = PostgresEventStore(url, schema=f"{prefix}_log"), "PostgreSQL log"
            else:
                log, log_kind = SqliteEventStore(workdir / "log.sqlite"), "SQLite log"
            resources.callback(log.close)
            started = time.perf_counter()
            for at_us, events in synthetic_events(args.events):
                log.append(events, at_us)
            print(f"wrote the {log_kind} in {time.perf_counter() - started:.1f}s")
            source = log
        for kind, open_store in kinds:
            print(f"-- {kind} read models")
            bench_store(open_store, source, memory, n, log_kind)


def bench_store(
    open_store: OpenReadStore, source: object, memory: MemoryLog, n: int, log_kind: str
) -> None:
    """Rebuild, restart, steady catch-up and usage pages of one kind of read model store."""
    store = open_store("read_models", source)  # type: ignore[arg-type]
    runner = ProjectionRunner(source, store)  # type: ignore[arg-type]
    started = time.perf_counter()
    head = runner.rebuild()
    rebuild_s = time.perf_counter() - started
    assert head == n
    print(f"rebuild from {log_kind}: {rebuild_s:.2f}s = {n / rebuild_s:,.0f} events/s")

    started = time.perf_counter()
    ProjectionRunner(source, store)  # type: ignore[arg-type]
    print(f"runner start (load balances from tables): {time.perf_counter() - started:.3f}s")

    if source is memory:
        tail = min(STEADY_TAIL_EVENTS, n // 2)
        steady = open_store("steady", memory)
        memory.visible = n - tail
        ProjectionRunner(memory, steady).rebuild()
        memory.visible = None
        runner = ProjectionRunner(memory, steady)
        started = time.perf_counter()
        runner.catch_up()
        took_s = time.perf_counter() - started
        print(
            f"catch-up of the last {tail:,} events (batches of {DEFAULT_BATCH_EVENTS:,},"
            f" index kept up to date): {tail / took_s:,.0f} events/s"
        )
        steady.close()

    sub = "sub-0007"
    for label, query in (
        ("usage page of 100", UsageQuery(sub)),
        ("usage page of 100, one seat", UsageQuery(sub, seat_id=f"{sub}-seat-0")),
        ("usage page of 1000", UsageQuery(sub, limit=1_000)),
    ):
        started = time.perf_counter()
        for _ in range(QUERY_REPEATS):
            page = store.usage(query)
        took_ms = (time.perf_counter() - started) / QUERY_REPEATS * 1_000
        print(f"{label}: {took_ms:.2f} ms ({len(page.items)} rows)")
    store.close()


if __name__ == "__main__":
    main()
