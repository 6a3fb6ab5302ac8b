"""Benchmark (not a test): the ledger's write and read paths over a large log on SQLite.

    python bench/bench_ledger.py [--events 1000000] [--batch 1000]

Appends usage events with random UUID event ids through the whole write path (idempotency
look-up, decide, one append transaction per batch), then rebuilds every projection from the
log, replays balances in memory and verifies the log, printing events/s for each.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from _load import START, Plan

from ledger.application import Ledger
from ledger.audit import verify
from ledger.clock import ManualClock
from ledger.log import us_from_datetime
from ledger.rate_card import load_rate_card
from ledger.stores.sqlite import SqliteEventStore
from projections.replay import balances_as_of
from projections.runner import ProjectionRunner
from projections.stores.sqlite import SqliteReadModelStore

PLAN = Plan(subscriptions=1_000, seats_per_subscription=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--dir", type=Path, default=None, help="Where the SQLite files go.")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    rng = random.Random(2026)
    clock = ManualClock(us_from_datetime(START))
    store = SqliteEventStore(folder / "ledger.sqlite3")
    ledger = Ledger(store, load_rate_card(), clock)
    ledger.execute(PLAN.setup())

    rows: list[tuple[str, int, float]] = []
    charged = 0
    started = time.perf_counter()
    for now, items in PLAN.usage_batches(args.events, args.batch, rng):
        clock.set(us_from_datetime(now))
        outcomes = ledger.charge(items)
        charged += sum(outcome.status == "applied" for outcome in outcomes)
    rows.append(
        (f"append (decide + 1 txn per {args.batch})", charged, time.perf_counter() - started)
    )
    assert charged == args.events, f"only {charged} of {args.events} charged"
    head = store.head().position

    read_store = SqliteReadModelStore(folder / "ledger.readmodels.sqlite3", store)
    runner = ProjectionRunner(store, read_store)
    started = time.perf_counter()
    runner.rebuild()
    rows.append(("rebuild all projections (SQLite)", head, time.perf_counter() - started))

    started = time.perf_counter()
    balances_as_of(store, head)
    rows.append(("replay balances in memory", head, time.perf_counter() - started))

    started = time.perf_counter()
    count = sum(1 for _ in store.read())
    rows.append(("read the log", count, time.perf_counter() - started))

    started = time.perf_counter()
    report = verify(store.read(), ledger.rate_card)
    assert report.ok, report.failure
    rows.append(
        ("audit verify (chain + re-price + re-allocate)", head, time.perf_counter() - started)
    )

    print(
        f"\n{args.events:,} usage events, {PLAN.subscriptions:,} subscriptions,"
        " random UUID event ids"
    )
    print(f"{'step':<48} {'events':>10} {'seconds':>8} {'events/s':>10}")
    for name, n, seconds in rows:
        print(f"{name:<48} {n:>10,} {seconds:>8.2f} {n / seconds:>10,.0f}")


if __name__ == "__main__":
    main()
