"""PostgreSQL event store throughput beside SQLite's: appends and reads, one table.

    python bench/bench_pg_store.py [--events N] [--batch B] [--url URL] [--dir PATH]

Each store gets a fresh log and the same work: N `usage.charged` events (200,000 by default)
with random uuid4 event ids, each writing an idempotency key, appended in batches of B (1,000);
then N `seat.quota_granted` events (no keys) into a second log; then `read()` and
`read_event_data()` of the whole first log, and `prior_charges` of one batch of stored keys.
Only the store calls are timed, not building the events.

PostgreSQL is `--url` when given (each run in a schema of its own, dropped afterwards), else a
private server started from the local binaries with PostgreSQL's default durability (the WAL
fsynced at every commit). SQLite runs in WAL mode with synchronous=NORMAL, as the ledger does:
durable against a crash of the process, not of the machine; see docs/design.md, "The log".
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psycopg
from bench_store import AT_US, Make, charges, grants, timed_appends
from psycopg import sql

from ledger.log import EventStore
from ledger.stores.postgres import PostgresEventStore
from ledger.stores.sqlite import SqliteEventStore
from schemas.events import UsageCharged
from tests.support.postgres_server import LocalPostgres

OpenStore = Callable[[str], EventStore]
"""Opens a fresh log named by the argument."""


@contextmanager
def postgres_logs(url: str) -> Iterator[OpenStore]:
    schemas: list[str] = []

    def open_store(name: str) -> EventStore:
        schema = f"bench_{name}_{uuid.uuid4().hex[:8]}"
        schemas.append(schema)
        return PostgresEventStore(url, schema=schema)

    try:
        yield open_store
    finally:
        with psycopg.connect(url, autocommit=True) as connection:
            for schema in schemas:
                drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                connection.execute(drop)


def measure(open_store: OpenStore, events: int, batch: int) -> dict[str, float]:
    """Events (or records) per second of each step, and the prior_charges time in ms."""
    figures: dict[str, float] = {}
    runs: list[tuple[str, Make]] = [("charges", charges), ("grants", grants)]
    logs: dict[str, EventStore] = {}
    for name, make in runs:
        store = logs[name] = open_store(name)
        spent, _ = timed_appends(store, make, events, batch)
        assert store.head().position == events
        figures[f"append {name}"] = events / spent

    store = logs["charges"]
    started = time.perf_counter()
    count = sum(1 for _ in store.read())
    figures["read()"] = count / (time.perf_counter() - started)
    started = time.perf_counter()
    count = sum(len(chunk) for chunk in store.read_event_data(0, events))
    figures["read_event_data()"] = count / (time.perf_counter() - started)
    keys = [
        (event.subscription_id, event.event_id)
        for record in store.read(until=batch)
        if isinstance(event := record.event(), UsageCharged)
    ]
    store.prior_charges(keys)  # once to warm up, as the ingest's steady state is
    started = time.perf_counter()
    assert len(store.prior_charges(keys)) == len(keys)
    figures["prior_charges ms"] = (time.perf_counter() - started) * 1000
    store.append(charges(1, events), AT_US)  # the log stays appendable after the reads
    for one in logs.values():
        one.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--url", help="a PostgreSQL URL (a private server if unset)")
    parser.add_argument("--dir", type=Path, help="where SQLite logs go (temporary if unset)")
    args = parser.parse_args()

    with ExitStack() as resources:
        workdir = Path(resources.enter_context(tempfile.TemporaryDirectory(dir=args.dir)))
        url = args.url or resources.enter_context(LocalPostgres(durable=True)).url

        def sqlite_log(name: str) -> EventStore:
            return SqliteEventStore(workdir / f"{name}.sqlite3")

        results = {
            "SQLite": measure(sqlite_log, args.events, args.batch),
            "PostgreSQL": measure(
                resources.enter_context(postgres_logs(url)), args.events, args.batch
            ),
        }

    print(f"{args.events:,} events per log, batches of {args.batch:,}")
    steps = list(results["SQLite"])
    print(f"{'':<22}" + "".join(f"{step:>20}" for step in steps))
    for store_name, figures in results.items():
        print(f"{store_name:<22}" + "".join(f"{figures[step]:>20,.0f}" for step in steps))


if __name__ == "__main__":
    main()
