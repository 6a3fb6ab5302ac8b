"""The one place that wires the parts together: store, clock, rate card, writer, projections.

The PostgreSQL adapters are imported only where a postgresql:// URL chooses them: psycopg is
the largest import of a start (every process of `ledger serve`, every command), and a SQLite
deployment never uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ledger.application import Ledger
from ledger.clock import Clock, SharedManualClock, SystemClock
from ledger.leases import LeaseStore
from ledger.log import EventStore, us_from_datetime
from ledger.rate_card import RateCard, load_rate_card
from ledger.snapshots import SnapshotStore
from ledger.stores.sqlite import SqliteEventStore, SqliteSnapshotStore
from projections.notification_store import SqlNotificationStore
from projections.read_store import ReadModelReader, ReadModelStore
from projections.runner import ProjectionRunner
from projections.stores.notifications_sqlite import SqliteNotificationStore
from projections.stores.sqlite import SqliteReadModelReader, SqliteReadModelStore
from services.auth.tokens import TOKENS_FILE, SqliteTokenStore, TokenStore
from services.config import ConfigError, Settings, default_consumer_name

if TYPE_CHECKING:
    from ledger.stores.postgres import PostgresEventStore


def open_event_store(settings: Settings) -> EventStore:
    """PostgreSQL when `LEDGER_DATABASE_URL` is a postgresql:// URL, else the SQLite file."""
    return _open_log_store(settings)


def _open_log_store(settings: Settings) -> SqliteEventStore | PostgresEventStore:
    url = settings.postgres_url()
    if url is not None:
        return _postgres(settings, url)
    return SqliteEventStore(settings.sqlite_path())


def _postgres(settings: Settings, url: str) -> PostgresEventStore:
    """A session frozen inside an append is ended within a lease's TTL, which frees the
    append lock for the partition's next owner."""
    from ledger.stores.postgres import IDLE_IN_TRANSACTION_TIMEOUT_MS, PostgresEventStore

    idle_ms = min(IDLE_IN_TRANSACTION_TIMEOUT_MS, settings.lease_ttl_ms)
    return PostgresEventStore(
        url,
        schema=settings.database_schema,
        idle_in_transaction_timeout_ms=idle_ms,
        application_name=default_consumer_name() if settings.role == "ingest" else None,
    )


def open_lease_store(settings: Settings) -> LeaseStore:
    """The leases live in the log's store; an ingest worker opens a second connection for
    them, so a renewal never waits behind an append."""
    return _open_log_store(settings)


def open_read_store(settings: Settings, store: EventStore) -> ReadModelStore:
    """With the log in PostgreSQL, the read models are in its schema, shared by every API
    process; with SQLite, in a file of their own beside the log's, so a rebuild never holds
    the log's write lock."""
    url = settings.postgres_url()
    if url is not None:
        from projections.stores.postgres import PostgresReadModelStore

        return PostgresReadModelStore(url, store, schema=settings.database_schema)
    return SqliteReadModelStore(settings.read_model_path(), store)


def open_read_model_reader(settings: Settings, store: EventStore) -> ReadModelReader:
    """A read-only reader of the read models `open_read_store` opens, on a connection of its
    own (it connects at first use)."""
    url = settings.postgres_url()
    if url is not None:
        from projections.stores.postgres import PostgresReadModelReader

        return PostgresReadModelReader(url, store, schema=settings.database_schema)
    return SqliteReadModelReader(settings.read_model_path(), store)


def open_notification_store(settings: Settings) -> SqlNotificationStore:
    """The notification tables: in the log's PostgreSQL schema, or a SQLite file of their own
    beside the log's."""
    url = settings.postgres_url()
    if url is not None:
        from projections.stores.notifications_postgres import PostgresNotificationStore

        return PostgresNotificationStore(url, schema=settings.database_schema)
    return SqliteNotificationStore(settings.notifications_path())


def open_token_store(settings: Settings) -> TokenStore:
    """With the log in PostgreSQL, the API tokens are in its schema, shared by every API
    process (a revocation holds on all of them at once); with SQLite, in a file of their own
    in the data dir."""
    url = settings.postgres_url()
    if url is not None:
        from services.auth.postgres_tokens import PostgresTokenStore

        return PostgresTokenStore(url, schema=settings.database_schema)
    return SqliteTokenStore(settings.data_dir / TOKENS_FILE)


def make_clock(settings: Settings) -> Clock:
    if settings.clock == "system":
        return SystemClock()
    if settings.clock_start is None:
        raise ConfigError("LEDGER_CLOCK=manual needs LEDGER_CLOCK_START (an RFC 3339 instant)")
    return SharedManualClock(settings.manual_clock_path(), us_from_datetime(settings.clock_start))


@dataclass
class Parts:
    """Everything one process of the ledger runs with."""

    settings: Settings
    store: EventStore
    read_store: ReadModelStore
    rate_card: RateCard
    clock: Clock
    snapshots: SnapshotStore

    def ledger(self) -> Ledger:
        """The writer, started from the newest valid snapshot and the records after it."""
        return Ledger(self.store, self.rate_card, self.clock, self.snapshots)

    def projections(self) -> ProjectionRunner:
        return ProjectionRunner(self.store, self.read_store)

    def close(self) -> None:
        self.snapshots.close()
        self.read_store.close()
        self.store.close()


def bootstrap(settings: Settings, clock: Clock | None = None) -> Parts:
    rate_card = load_rate_card(settings.rate_card)
    store = open_event_store(settings)
    return Parts(
        settings,
        store,
        open_read_store(settings, store),
        rate_card,
        clock or make_clock(settings),
        open_snapshot_store(settings),
    )


def open_snapshot_store(settings: Settings) -> SnapshotStore:
    """Snapshots: a SQLite file beside the log's, or the `snapshots` table of its PostgreSQL
    schema (the log's store, opened first, creates it)."""
    url = settings.postgres_url()
    if url is not None:
        from ledger.stores.postgres import PostgresSnapshotStore

        return PostgresSnapshotStore(url, schema=settings.database_schema)
    return SqliteSnapshotStore(settings.snapshot_path())
