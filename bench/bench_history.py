"""Benchmark (not a test): what history costs on a large SQLite log, with snapshots.

    python bench/bench_history.py [--records 100000 1000000] [--snapshot-every 100000]
        [--serve-restarts 3] [--dir DIR [--reuse]]

For each size, appends usage through the ledger's own writer (idempotency look-up, decide, one
append per batch of 1,000) in a fresh folder, taking a snapshot every `--snapshot-every`
records as the projector would, then measures: the writer's start from the newest snapshot
(and from nothing, up to 1M), one subscription `as_of` at random positions (p50/p99, from the
nearest snapshot), a full replay and a full audit (records/s), and bytes per charge on disk (the
log's file: records, their subscription index and the idempotency index). With
`--serve-restarts N`, also starts `ledger serve` on that folder N times (its private Redis, the
system clock) and times each from launch to a 200 from `/readyz`, then stops it. With
`--reuse`, a folder `DIR/<records>` that holds a log already (from an earlier run, or from one
stopped part-way through its appends) is measured as it is, at whatever length it has.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _load import START, Plan, percentile

from ledger.application import Ledger
from ledger.audit import verify
from ledger.clock import ManualClock
from ledger.log import find_charge, us_from_datetime
from ledger.rate_card import RateCard, load_rate_card
from ledger.stores.sqlite import SqliteEventStore, SqliteSnapshotStore
from projections.replay import balances_as_of
from projections.snapshots import SubscriptionHistory, create_snapshot
from services.redis_server import free_loopback_port

PLAN = Plan(subscriptions=100, seats_per_subscription=5, seat_id="seat-{seat}")
BATCH = 1_000
AS_OF_SAMPLES = 200
FULL_START_MAX_RECORDS = 1_000_000
READY_POLL_S = 0.01
"""Between two looks at `/readyz` while `ledger serve` starts (the resolution of the figure)."""


def build(folder: Path, records: int, snapshot_every: int, rate_card: RateCard) -> float:
    """Append `records` charges (after the set-up); the seconds the appends took."""
    rng = random.Random(2026)
    clock = ManualClock(us_from_datetime(START))
    store = SqliteEventStore(folder / "ledger.sqlite3")
    snapshots = SqliteSnapshotStore(folder / "ledger.snapshots.sqlite3")
    ledger = Ledger(store, rate_card, clock)
    ledger.execute(PLAN.setup())
    appending = 0.0
    last_snapshot = 0
    for now, items in PLAN.usage_batches(records, BATCH, rng):
        clock.set(us_from_datetime(now))
        started = time.perf_counter()
        ledger.charge(items)
        appending += time.perf_counter() - started
        if ledger.position - last_snapshot >= snapshot_every:
            last_snapshot = create_snapshot(snapshots, store).position
    snapshots.close()
    store.close()
    return appending


def bytes_per_charge(path: Path, charges: int) -> tuple[float, dict[str, float]]:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        try:
            rows = db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall()
        except sqlite3.OperationalError:  # SQLite built without dbstat
            rows = []
    parts = {name: size / charges for name, size in rows if size / charges >= 1}
    return path.stat().st_size / charges, parts


def measure(folder: Path, records: int, rate_card: RateCard) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    store = SqliteEventStore(folder / "ledger.sqlite3")
    snapshots = SqliteSnapshotStore(folder / "ledger.snapshots.sqlite3")
    head = store.head().position
    clock = ManualClock(store.head().recorded_at_us)

    started = time.perf_counter()
    Ledger(store, rate_card, clock, snapshots)
    rows.append(("writer start from the newest snapshot", f"{time.perf_counter() - started:.3f} s"))
    if head <= FULL_START_MAX_RECORDS:
        started = time.perf_counter()
        Ledger(store, rate_card, clock)
        rows.append(("writer start from nothing", f"{time.perf_counter() - started:.3f} s"))

    rng = random.Random(7)
    history = SubscriptionHistory(store, snapshots)
    took_ms = []
    for _ in range(AS_OF_SAMPLES):
        sub, position = f"sub-{rng.randrange(PLAN.subscriptions)}", rng.randrange(1, head + 1)
        started = time.perf_counter()
        history.balances(sub, position)
        took_ms.append((time.perf_counter() - started) * 1000)
    rows.append(
        (
            f"as_of, one subscription, {AS_OF_SAMPLES} random positions",
            f"p50 {statistics.median(took_ms):.1f} ms, p99 {percentile(took_ms, 0.99):.1f} ms",
        )
    )

    started = time.perf_counter()
    balances_as_of(store, head)
    rows.append(
        (
            "replay (all records, in memory)",
            f"{head / (time.perf_counter() - started):,.0f} records/s",
        )
    )

    started = time.perf_counter()
    report = verify(store.read(), rate_card, charges=lambda s, e: find_charge(store, s, e))
    assert report.ok, report.failure
    rows.append(
        (
            "audit verify (chain + re-derivation)",
            f"{head / (time.perf_counter() - started):,.0f} records/s",
        )
    )
    snapshots.close()
    store.close()

    per_charge, parts = bytes_per_charge(folder / "ledger.sqlite3", records)
    detail = ", ".join(f"{name} {size:.0f}" for name, size in sorted(parts.items()))
    rows.append(("bytes per charge (log file)", f"{per_charge:.0f} B ({detail})"))
    return rows


def restart_to_ready(folder: Path) -> float:
    """Seconds from launching `ledger serve` on `folder` to its first ready answer."""
    port = free_loopback_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(LEDGER_DATA_DIR=str(folder), LEDGER_PORT=str(port), LEDGER_ADMIN_TOKEN="bench")
    with (folder / "serve.log").open("ab") as log:
        started = time.perf_counter()
        serve = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve"], env=env, stdout=log, stderr=log
        )
        try:
            while True:
                if serve.poll() is not None:
                    raise SystemExit(f"ledger serve exited; see {folder / 'serve.log'}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                        return time.perf_counter() - started
                except OSError:
                    time.sleep(READY_POLL_S)
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--snapshot-every", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=None, help="Where the SQLite files go.")
    parser.add_argument(
        "--reuse", action="store_true", help="Measure the logs in --dir as they are."
    )
    parser.add_argument("--serve-restarts", type=int, default=0)
    args = parser.parse_args()
    if args.reuse and args.dir is None:
        parser.error("--reuse needs --dir")
    rate_card = load_rate_card()
    for records in args.records:
        folder = (args.dir or Path(tempfile.mkdtemp(prefix="bench-history-"))) / str(records)
        folder.mkdir(parents=True, exist_ok=True)
        rows: list[tuple[str, str]] = []
        if args.reuse and (folder / "ledger.sqlite3").exists():
            records = log_length(folder)
        else:
            appending = build(folder, records, args.snapshot_every, rate_card)
            rows.append(("append through the writer", f"{records / appending:,.0f} charges/s"))
        rows += measure(folder, records, rate_card)
        if args.serve_restarts:
            took = [restart_to_ready(folder) for _ in range(args.serve_restarts)]
            figures = ", ".join(f"{t:.2f} s" for t in took)
            rows.append(
                (
                    "ledger serve, launch to ready",
                    f"{figures} (median {statistics.median(took):.2f} s)",
                )
            )
        print(
            f"\n{records:,} charges, {PLAN.subscriptions} subscriptions"
            f" x {PLAN.seats_per_subscription} seats, a snapshot every"
            f" {args.snapshot_every:,} records"
        )
        for name, figure in rows:
            print(f"  {name:<52} {figure}")


def log_length(folder: Path) -> int:
    """The charges in a log built by `build`."""
    with sqlite3.connect(folder / "ledger.sqlite3") as db:
        query = "SELECT count(*) FROM log WHERE type = 'usage.charged'"
        charges: int = db.execute(query).fetchone()[0]
    return charges


if __name__ == "__main__":
    main()
