"""SQLite event store throughput: appends with and without usage idempotency keys, and reads.

    python bench/bench_store.py [--events N] [--batch B] [--dir PATH]

Each run appends N events (1,000,000 by default) in batches of B (1,000) to a fresh log:
`usage.charged` events with random uuid4 event ids, each writing an idempotency key; the same
charges through a store that skips the key index (the index's own cost, at equal bytes); the
same charges through a store that merges its keys into the hashed B-tree at every append (what
a plain index over the key costs); and `seat.quota_granted` events, which carry no key. Only
`append` is timed, not building the events. Then `read()` of the whole first log, and
`prior_charges` of one batch of keys.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from ledger.log import EventStore, us_from_datetime
from ledger.stores.sqlite import SqliteEventStore, UsageKey
from schemas.events import (
    Allocation,
    Coefficients,
    Components,
    LogEvent,
    SeatQuotaGranted,
    UsageCharged,
)
from schemas.usage import Usage

SUBSCRIPTIONS = 200
AT = datetime(2026, 3, 1, tzinfo=UTC)
AT_US = us_from_datetime(AT)

Make = Callable[[int, int], list[LogEvent]]
"""Builds `count` events numbered from `start`."""

CHARGE = UsageCharged(
    subscription_id="sub-0000",
    seat_id="seat-0000-00",
    event_id="",
    payload_digest="0123456789abcdef0123456789abcdef",
    occurred_at=AT,
    model="qwen3.6-plus",
    product="text",
    usage=Usage(input_tokens=8_349, cached_tokens=40_794, output_tokens=573),
    rate_card_version="2026-01-01",
    coefficients=Coefficients(
        input_ucr_per_1k=200_000, cached_ucr_per_1k=20_000, output_ucr_per_1k=1_200_000
    ),
    components=Components(input_ucr=1_670_000, cached_ucr=820_000, output_ucr=690_000),
    credits_ucr=3_180_000,
    allocation=(Allocation(source="seat", id="seat-0000-00", credits_ucr=3_180_000),),
)
GRANT = SeatQuotaGranted(
    subscription_id="sub-0000",
    seat_id="seat-0000-00",
    tier="standard",
    cycle=1,
    quota_ucr=25_000_000_000,
    lapsed_ucr=0,
)


class _StoreWithoutKeys(SqliteEventStore):
    """Writes the log rows of every charge but no idempotency key: for comparison only."""

    def _place_keys(
        self, charges: list[tuple[int, UsageKey, str]], hashed: dict[UsageKey, int], first: int
    ) -> tuple[list[tuple[int, int]], list[tuple[str, str, str, int]]]:
        return [], []


def _merging_every_append(path: Path) -> SqliteEventStore:
    """Every append moves its keys into the hashed B-tree at once: one random page write per
    key, as a plain index over the key would cost."""
    return SqliteEventStore(path, recent_usage_keys_max=1)


def charges(count: int, start: int) -> list[LogEvent]:
    return [
        msgspec.structs.replace(
            CHARGE, subscription_id=f"sub-{n % SUBSCRIPTIONS:04d}", event_id=str(uuid.uuid4())
        )
        for n in range(start, start + count)
    ]


def grants(count: int, start: int) -> list[LogEvent]:
    return [
        msgspec.structs.replace(GRANT, subscription_id=f"sub-{n % SUBSCRIPTIONS:04d}")
        for n in range(start, start + count)
    ]


def batches(
    make: Callable[[int, int], list[LogEvent]], events: int, batch: int
) -> Iterator[list[LogEvent]]:
    for start in range(0, events, batch):
        yield make(min(batch, events - start), start)


def timed_appends(store: EventStore, make: Make, events: int, batch: int) -> tuple[float, float]:
    """Seconds spent in `append`, and the slowest single append."""
    spent = slowest = 0.0
    for events_of_batch in batches(make, events, batch):
        started = time.perf_counter()
        store.append(events_of_batch, AT_US)
        took = time.perf_counter() - started
        spent, slowest = spent + took, max(slowest, took)
    return spent, slowest


def file_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--dir", type=Path, help="where the logs go (a temporary folder if unset)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as workdir:
        runs: list[tuple[str, Callable[[Path], SqliteEventStore], Make]] = [
            ("usage.charged, keys written", SqliteEventStore, charges),
            ("usage.charged, no key index", _StoreWithoutKeys, charges),
            ("usage.charged, merge per append", _merging_every_append, charges),
            ("seat.quota_granted (no keys)", SqliteEventStore, grants),
        ]
        print(f"{args.events:,} events, batches of {args.batch:,}")
        print(f"{'append':<32}{'events/s':>12}{'seconds':>10}{'slowest ms':>12}{'file MiB':>10}")
        for index, (label, open_store, make) in enumerate(runs):
            path = Path(workdir) / f"log-{index}.sqlite"
            store = open_store(path)
            spent, slowest = timed_appends(store, make, args.events, args.batch)
            assert store.head().position == args.events
            store.close()
            rate = args.events / spent
            print(
                f"{label:<32}{rate:>12,.0f}{spent:>10.1f}"
                f"{slowest * 1000:>12.0f}{file_mib(path):>10.0f}"
            )

        store = SqliteEventStore(Path(workdir) / "log-0.sqlite")
        started = time.perf_counter()
        count = sum(1 for _ in store.read())
        spent = time.perf_counter() - started
        print(f"{'read() all':<32}{count / spent:>12,.0f}{spent:>10.1f}")

        stored = [(r.event(), r.position) for r in store.read(until=args.batch)]
        present = [
            (e.subscription_id, e.event_id) for e, _ in stored if isinstance(e, UsageCharged)
        ]
        absent = [("sub-0000", str(uuid.uuid4())) for _ in range(args.batch)]
        lookups = [
            ("absent, first call (loads the mirror)", absent),
            ("present", present),
            ("absent", absent),
        ]
        for label, keys in lookups:
            started = time.perf_counter()
            found = store.prior_charges(keys)
            spent = time.perf_counter() - started
            assert len(found) == (len(keys) if keys is present else 0)
            print(f"prior_charges of {len(keys):,} keys, {label}: {spent * 1000:.1f} ms")
        store.close()


if __name__ == "__main__":
    main()
