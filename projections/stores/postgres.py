"""The PostgreSQL read model store: the SQLite store's tables (`rm_` prefix) in the log's own
PostgreSQL schema, so every API process, on any host behind a load balancer, reads one copy of
the read models that one projector keeps up to date, while ingest runs elsewhere.

Same contract as `SqliteReadModelStore` (see `projections.read_store.ReadModelStore`): a batch's
balance upserts, usage rows and checkpoint in one transaction, the checkpoint moved by a
compare-and-set taken first (its row lock makes a racing writer wait, then find the checkpoint
moved and write nothing); a snapshot in one REPEATABLE READ transaction; usage pages from the
very statement the SQLite store runs. Text columns use the "C" collation, so rows load in the
byte order SQLite and Python sort in (and B-tree steps are `memcmp`, not `strcoll`).

The tables are created and migrated by the store when it opens, under the log's migration lock,
and versioned in `rm_schema_version` (apart from the log's `schema_version`: read models are
derived, and may change shape without the log doing so). The one writer, the projector, holds a
session-level advisory lock (`try_lock_writer`) on its connection while it runs, so the
projector of a second API host waits; if that connection is lost, so is the lock, and the store
refuses to write again rather than reconnect (the projector process exits and is started anew,
then waits for the lock like any other).

A batch is the checkpoint's compare-and-set, its usage rows by binary `COPY`, then the balance
upserts (each column one array: `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO UPDATE`)
in pipeline mode, and the commit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Final, LiteralString, TypeVar

import psycopg
from psycopg import sql

from ledger.errors import StoreError
from ledger.log import StoredRecord
from ledger.stores.postgres import (
    DEFAULT_SCHEMA,
    advisory_lock_key,
    check_schema_name,
    connect,
    migrate,
    migration_lock_key,
)
from projections.balances import Balances, Changes
from projections.history import (
    AdminIndexRow,
    HistoryPage,
    HistoryQuery,
    find_admin_record,
    find_latest_admin_record,
    history_page,
)
from projections.read_store import (
    DEFAULT_CHECKPOINT,
    CheckpointMoved,
    balances_from_rows,
    hold_values,
    pack_values,
    seat_values,
    subscription_values,
)
from projections.usage import (
    USAGE_INDEX_NAMES,
    RecordReader,
    UsageIndexRow,
    UsageQuery,
    usage_page,
)
from schemas.read_models import UsagePage

LOCK_TIMEOUT_MS: Final = 30_000
"""How long a write waits for a lock another writer holds (a racing batch, a reset)."""

MIGRATIONS: Final[tuple[tuple[int, LiteralString], ...]] = (
    (
        1,
        """
        CREATE TABLE rm_checkpoints (
            name text COLLATE "C" PRIMARY KEY,
            position bigint NOT NULL
        );
        CREATE TABLE rm_subscriptions (
            subscription_id text COLLATE "C" PRIMARY KEY,
            anchor_us bigint NOT NULL,
            cycle bigint NOT NULL,
            cycle_start_us bigint,
            cycle_end_us bigint,
            uncovered_cycle_ucr bigint NOT NULL,
            uncovered_total_ucr bigint NOT NULL,
            granted_ucr bigint NOT NULL,
            used_ucr bigint NOT NULL,
            expired_ucr bigint NOT NULL
        ) WITH (fillfactor = 80);
        CREATE TABLE rm_seats (
            subscription_id text COLLATE "C" NOT NULL,
            seat_id text COLLATE "C" NOT NULL,
            tier text NOT NULL,
            pending_tier text,
            status text NOT NULL,
            cycle bigint NOT NULL,
            quota_ucr bigint NOT NULL,
            used_ucr bigint NOT NULL,
            pack_used_ucr bigint NOT NULL,
            uncovered_ucr bigint NOT NULL,
            PRIMARY KEY (subscription_id, seat_id)
        ) WITH (fillfactor = 80);
        CREATE TABLE rm_packs (
            subscription_id text COLLATE "C" NOT NULL,
            pack_id text COLLATE "C" NOT NULL,
            credits_ucr bigint NOT NULL,
            remaining_ucr bigint NOT NULL,
            expired_ucr bigint NOT NULL,
            purchased_at_us bigint NOT NULL,
            expires_at_us bigint NOT NULL,
            status text NOT NULL,
            PRIMARY KEY (subscription_id, pack_id)
        ) WITH (fillfactor = 80);
        CREATE TABLE rm_usage (
            position bigint PRIMARY KEY,
            recorded_at_us bigint NOT NULL,
            subscription_id text COLLATE "C" NOT NULL,
            seat_id text COLLATE "C" NOT NULL,
            model text COLLATE "C" NOT NULL
        );
        """,
    ),
    (
        2,
        """
        ALTER TABLE rm_subscriptions ADD COLUMN voided_ucr bigint NOT NULL DEFAULT 0;
        ALTER TABLE rm_seats ADD COLUMN held_ucr bigint NOT NULL DEFAULT 0;
        ALTER TABLE rm_packs ADD COLUMN held_ucr bigint NOT NULL DEFAULT 0;
        ALTER TABLE rm_packs ADD COLUMN voided_ucr bigint NOT NULL DEFAULT 0;
        CREATE TABLE rm_grants (LIKE rm_packs INCLUDING ALL);
        CREATE TABLE rm_holds (
            subscription_id text COLLATE "C" NOT NULL,
            hold_id text COLLATE "C" NOT NULL,
            seat_id text COLLATE "C" NOT NULL,
            status text NOT NULL,
            requested_ucr bigint NOT NULL,
            credits_ucr bigint NOT NULL,
            allocation text NOT NULL,
            ttl_s bigint NOT NULL,
            placed_at_us bigint NOT NULL,
            expires_at_us bigint NOT NULL,
            ended_at_us bigint,
            settled_by text,
            PRIMARY KEY (subscription_id, hold_id)
        ) WITH (fillfactor = 80);
        """,
    ),
    (
        3,
        """
        CREATE TABLE rm_admin (
            position bigint PRIMARY KEY,
            recorded_at_us bigint NOT NULL,
            subscription_id text COLLATE "C" NOT NULL,
            type text COLLATE "C" NOT NULL,
            key text COLLATE "C" NOT NULL,
            charge_event_id text COLLATE "C",
            credits_ucr bigint
        );
        CREATE INDEX rm_admin_by_subscription ON rm_admin (subscription_id, position);
        CREATE INDEX rm_admin_by_key ON rm_admin (subscription_id, type, key);
        CREATE INDEX rm_admin_by_charge ON rm_admin (subscription_id, charge_event_id)
            WHERE charge_event_id IS NOT NULL;
        -- Usage rows of earlier releases lack reversals and nothing indexed admin writes:
        -- the runner folds the log again from the start.
        TRUNCATE rm_subscriptions, rm_seats, rm_packs, rm_grants, rm_holds, rm_usage;
        UPDATE rm_checkpoints SET position = 0;
        """,
    ),
)
"""(version, SQL) in order, run with the store's schema first on the search path. Append new
ones, never edit."""

SCHEMA_VERSION: Final = MIGRATIONS[-1][0]

Connection = psycopg.Connection[tuple[Any, ...]]
_T = TypeVar("_T")

# As the SQLite store's index: paging order, then the filters as key columns (not INCLUDE), so
# B-tree scans check them on each entry and visit the table only for rows that match.
_USAGE_INDEX_SQL: Final = (
    "CREATE INDEX IF NOT EXISTS rm_usage_by_time"
    " ON rm_usage (subscription_id, recorded_at_us, position, seat_id, model)"
)


def _upsert(table: LiteralString, columns: Sequence[tuple[str, str]], key: int) -> str:
    """`INSERT ... SELECT FROM unnest(one array per column) ON CONFLICT (the first `key`
    columns) DO UPDATE` the others."""
    names = ", ".join(name for name, _ in columns)
    arrays = ", ".join(f"%b::{kind}[]" for _, kind in columns)
    keys = ", ".join(name for name, _ in columns[:key])
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name, _ in columns[key:])
    return (
        f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays})"
        f" ON CONFLICT ({keys}) DO UPDATE SET {updates}"
    )


_SUBSCRIPTION_COLUMNS: Final = (
    ("subscription_id", "text"),
    ("anchor_us", "bigint"),
    ("cycle", "bigint"),
    ("cycle_start_us", "bigint"),
    ("cycle_end_us", "bigint"),
    ("uncovered_cycle_ucr", "bigint"),
    ("uncovered_total_ucr", "bigint"),
    ("granted_ucr", "bigint"),
    ("used_ucr", "bigint"),
    ("expired_ucr", "bigint"),
    ("voided_ucr", "bigint"),
)
_SEAT_COLUMNS: Final = (
    ("subscription_id", "text"),
    ("seat_id", "text"),
    ("tier", "text"),
    ("pending_tier", "text"),
    ("status", "text"),
    ("cycle", "bigint"),
    ("quota_ucr", "bigint"),
    ("used_ucr", "bigint"),
    ("pack_used_ucr", "bigint"),
    ("uncovered_ucr", "bigint"),
    ("held_ucr", "bigint"),
)
_PACK_COLUMNS: Final = (
    ("subscription_id", "text"),
    ("pack_id", "text"),
    ("credits_ucr", "bigint"),
    ("remaining_ucr", "bigint"),
    ("expired_ucr", "bigint"),
    ("purchased_at_us", "bigint"),
    ("expires_at_us", "bigint"),
    ("status", "text"),
    ("held_ucr", "bigint"),
    ("voided_ucr", "bigint"),
)
_HOLD_COLUMNS: Final = (
    ("subscription_id", "text"),
    ("hold_id", "text"),
    ("seat_id", "text"),
    ("status", "text"),
    ("requested_ucr", "bigint"),
    ("credits_ucr", "bigint"),
    ("allocation", "text"),
    ("ttl_s", "bigint"),
    ("placed_at_us", "bigint"),
    ("expires_at_us", "bigint"),
    ("ended_at_us", "bigint"),
    ("settled_by", "text"),
)
_UPSERT_SUBSCRIPTIONS: Final = _upsert("rm_subscriptions", _SUBSCRIPTION_COLUMNS, 1)
_UPSERT_SEATS: Final = _upsert("rm_seats", _SEAT_COLUMNS, 2)
_UPSERT_PACKS: Final = _upsert("rm_packs", _PACK_COLUMNS, 2)
_UPSERT_GRANTS: Final = _upsert("rm_grants", _PACK_COLUMNS, 2)
_UPSERT_HOLDS: Final = _upsert("rm_holds", _HOLD_COLUMNS, 2)
_DELETE_HOLDS: Final = (
    "DELETE FROM rm_holds WHERE (subscription_id, hold_id) IN"
    " (SELECT * FROM unnest(%b::text[], %b::text[]))"
)
# Usage rows go by binary COPY: measured four times faster than `unnest` arrays for a
# rebuild's 100,000-row batches (psycopg packs COPY rows in C, arrays in Python).
_COPY_USAGE: Final = (
    "COPY rm_usage (position, recorded_at_us, subscription_id, seat_id, model)"
    " FROM STDIN (FORMAT BINARY)"
)
_USAGE_TYPES: Final = ("int8", "int8", "text", "text", "text")
_INSERT_ADMIN: Final = (
    "INSERT INTO rm_admin"
    " (position, recorded_at_us, subscription_id, type, key, charge_event_id, credits_ucr)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
_SELECT_SUBSCRIPTIONS: Final = (
    f"SELECT {', '.join(n for n, _ in _SUBSCRIPTION_COLUMNS)} FROM rm_subscriptions"
    " ORDER BY subscription_id"
)
_SELECT_SEATS: Final = (
    f"SELECT {', '.join(n for n, _ in _SEAT_COLUMNS)} FROM rm_seats"
    " ORDER BY subscription_id, seat_id"
)
_SELECT_GRANTS: Final = (
    f"SELECT {', '.join(n for n, _ in _PACK_COLUMNS)} FROM rm_grants"
    " ORDER BY subscription_id, pack_id"
)
_SELECT_HOLDS: Final = (
    f"SELECT {', '.join(n for n, _ in _HOLD_COLUMNS)} FROM rm_holds"
    " ORDER BY subscription_id, hold_id"
)
_SELECT_PACKS: Final = (
    f"SELECT {', '.join(n for n, _ in _PACK_COLUMNS)} FROM rm_packs"
    " ORDER BY subscription_id, pack_id"
)
_SELECT_CHECKPOINT: Final = "SELECT position FROM rm_checkpoints WHERE name = %s"
# The compare-and-set: no row yet counts as position 0.
_MOVE_CHECKPOINT: Final = (
    "UPDATE rm_checkpoints SET position = %s WHERE name = %s AND position = %s RETURNING name"
)
_MOVE_CHECKPOINT_FROM_0: Final = (
    "INSERT INTO rm_checkpoints AS c (name, position) VALUES (%s, %s)"
    " ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position WHERE c.position = 0"
    " RETURNING name"
)
_SET_CHECKPOINT: Final = (
    "INSERT INTO rm_checkpoints (name, position) VALUES (%s, %s)"
    " ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position"
)


def writer_lock_key(schema: str = DEFAULT_SCHEMA) -> int:
    """The session advisory lock the one writer of this schema's read models holds."""
    return advisory_lock_key(schema, "read-models-writer")


def _connect(url: str, schema: str, *, read_only: bool) -> Connection:
    """An autocommit connection whose unqualified names resolve in `schema` (only)."""
    return connect(
        url,
        {
            "search_path": sql.Identifier(schema).as_string(),
            "lock_timeout": f"{LOCK_TIMEOUT_MS}ms",
            "default_transaction_read_only": "on" if read_only else "off",
        },
    )


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(width)]


class PostgresReadModelStore:
    """The read model tables in a PostgreSQL schema (the log's); `events` is the log they index
    (usage pages are decoded from its records).

    One connection, used by one thread at a time (a lock guards it). Any number of stores, in
    any processes, may open the same schema; one at a time should write (`try_lock_writer`),
    and the checkpoint's compare-and-set keeps the tables whole if two do.
    """

    def __init__(self, url: str, events: RecordReader, *, schema: str = DEFAULT_SCHEMA) -> None:
        check_schema_name(schema)
        self.schema = schema
        self._url = url
        self._events = events
        self._writer_key = writer_lock_key(schema)
        self._writer_locked = False
        self._lock = threading.RLock()
        self._db = _connect(url, schema, read_only=False)
        try:
            self._migrate()
            self.create_usage_indexes()
        except psycopg.Error as error:
            self._db.close()
            raise StoreError(f"cannot create or migrate the read models: {error}") from error
        except BaseException:
            self._db.close()
            raise

    # -- connection and schema ------------------------------------------------------------

    def _connection(self) -> Connection:
        """The open connection: a broken one is replaced, unless it held the writer lock."""
        if self._db.broken or self._db.closed:
            if self._writer_locked:
                raise StoreError(
                    "the connection holding the read models' writer lock was lost (another"
                    " writer may have taken over): this store writes no more"
                )
            self._db = _connect(self._url, self.schema, read_only=False)
        return self._db

    def _migrate(self) -> None:
        """Create the tables, or apply the migrations they lack (see `migrate`)."""
        migrate(self._db, self.schema, "rm_schema_version", MIGRATIONS, "read models")

    def close(self) -> None:
        with self._lock:
            self.unlock_writer()
            self._db.close()

    def reader(self) -> PostgresReadModelReader:
        return PostgresReadModelReader(self._url, self._events, schema=self.schema)

    # -- the writer lock ------------------------------------------------------------------

    def try_lock_writer(self) -> bool:
        with self._lock:
            if self._writer_locked:
                return True
            row = self._call(
                lambda db: db.execute(
                    "SELECT pg_try_advisory_lock(%s)", (self._writer_key,)
                ).fetchone()
            )
            self._writer_locked = bool(row and row[0])
            return self._writer_locked

    def unlock_writer(self) -> None:
        with self._lock:
            if not self._writer_locked:
                return
            self._writer_locked = False
            if not (self._db.broken or self._db.closed):  # a closed session holds no locks
                self._call(
                    lambda db: db.execute("SELECT pg_advisory_unlock(%s)", (self._writer_key,))
                )

    # -- writes ---------------------------------------------------------------------------

    def create_usage_indexes(self) -> None:
        """Build the usage index when it is missing, then VACUUM ANALYZE the table: after a bulk
        load the planner knows nothing of its rows, and until the visibility map is set every
        index-only scan still visits the table."""
        with self._lock:
            if self.usage_index_names() >= set(USAGE_INDEX_NAMES):
                return

            def create(db: Connection) -> None:
                with db.transaction():
                    db.execute(
                        "SELECT pg_advisory_xact_lock(%s)", (migration_lock_key(self.schema),)
                    )
                    db.execute(_USAGE_INDEX_SQL)
                db.execute("VACUUM (ANALYZE) rm_usage")  # not in a transaction block

            self._call(create)

    def reset(self, name: str = DEFAULT_CHECKPOINT, *, drop_usage_indexes: bool = False) -> None:
        def reset(db: Connection) -> None:
            with db.transaction():
                db.execute(
                    "TRUNCATE rm_subscriptions, rm_seats, rm_packs, rm_grants, rm_holds, rm_usage,"
                    " rm_admin"
                )
                if drop_usage_indexes:
                    for index in USAGE_INDEX_NAMES:
                        db.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(index)))
                db.execute(_SET_CHECKPOINT, (name, 0))

        with self._lock:
            self._call(reset)
            if not drop_usage_indexes:
                self.create_usage_indexes()

    def write_batch(
        self,
        after: int,
        position: int,
        changes: Changes,
        usage_rows: Sequence[UsageIndexRow],
        name: str = DEFAULT_CHECKPOINT,
        admin_rows: Sequence[AdminIndexRow] = (),
    ) -> None:
        """Upsert the changed balance rows, delete the holds forgotten, insert the new usage
        and admin history rows and move the checkpoint from `after` to `position`;
        `CheckpointMoved` when another writer moved it first."""
        packs = [pack_values(p) for p in changes.packs if p.kind == "pack"]
        grants = [pack_values(p) for p in changes.packs if p.kind == "grant"]
        upserts = [
            (statement, _columns(rows, width))
            for statement, rows, width in (
                (
                    _UPSERT_SUBSCRIPTIONS,
                    [subscription_values(s) for s in changes.subscriptions],
                    len(_SUBSCRIPTION_COLUMNS),
                ),
                (_UPSERT_SEATS, [seat_values(s) for s in changes.seats], len(_SEAT_COLUMNS)),
                (_UPSERT_PACKS, packs, len(_PACK_COLUMNS)),
                (_UPSERT_GRANTS, grants, len(_PACK_COLUMNS)),
                (_UPSERT_HOLDS, [hold_values(h) for h in changes.holds], len(_HOLD_COLUMNS)),
                (_DELETE_HOLDS, changes.forgotten_holds, 2),
            )
            if rows
        ]

        def write(db: Connection) -> None:
            with db.transaction():
                if after == 0:
                    moved = db.execute(_MOVE_CHECKPOINT_FROM_0, (name, position)).fetchone()
                else:
                    moved = db.execute(_MOVE_CHECKPOINT, (position, name, after)).fetchone()
                if moved is None:
                    raise CheckpointMoved(f"checkpoint {name!r} is no longer at {after}")
                if usage_rows:
                    with db.cursor().copy(_COPY_USAGE) as copy:
                        copy.set_types(_USAGE_TYPES)
                        for row in usage_rows:
                            copy.write_row(row)
                with db.pipeline():
                    for statement, columns in upserts:
                        db.execute(statement, columns)
                if admin_rows:
                    db.cursor().executemany(_INSERT_ADMIN, admin_rows)

        with self._lock:
            self._call(write)

    # -- reads ----------------------------------------------------------------------------

    def checkpoint(self, name: str = DEFAULT_CHECKPOINT) -> int:
        with self._lock:
            row = self._call(lambda db: db.execute(_SELECT_CHECKPOINT, (name,)).fetchone())
        return int(row[0]) if row else 0

    def snapshot(self, name: str = DEFAULT_CHECKPOINT) -> tuple[Balances, int]:
        """The balances and their checkpoint from one REPEATABLE READ transaction: one
        snapshot of the tables, whatever a writer commits meanwhile."""

        def read(db: Connection) -> tuple[Balances, int]:
            with db.transaction():
                db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                balances = _load_balances(db)
                row = db.execute(_SELECT_CHECKPOINT, (name,)).fetchone()
            return balances, int(row[0]) if row else 0

        with self._lock:
            return self._call(read)

    def load_balances(self) -> Balances:
        with self._lock:
            return self._call(_load_balances)

    def usage(self, query: UsageQuery) -> UsagePage:
        """One page of usage rows. Raises `InvalidUsageQuery` (bad limit or cursor)."""

        def fetch(statement: str, params: list[object]) -> list[tuple[int, int]]:
            with self._lock:
                return self._call(lambda db: db.execute(statement, params).fetchall())

        return usage_page(fetch, self._events, query, "%s")

    def history(self, query: HistoryQuery) -> HistoryPage:
        """One page of a subscription's admin writes. Raises `InvalidHistoryQuery`."""

        def fetch(statement: str, params: list[object]) -> list[tuple[Any, ...]]:
            with self._lock:
                return self._call(lambda db: db.execute(statement, params).fetchall())

        return history_page(fetch, self._events, query, "%s")

    def usage_index_rows(self) -> list[UsageIndexRow]:
        with self._lock:
            rows = self._call(
                lambda db: db.execute(
                    "SELECT position, recorded_at_us, subscription_id, seat_id, model"
                    " FROM rm_usage ORDER BY position"
                ).fetchall()
            )
        return [(p, at_us, sub, seat, model) for p, at_us, sub, seat, model in rows]

    def usage_index_names(self) -> set[str]:
        with self._lock:
            rows = self._call(
                lambda db: db.execute(
                    "SELECT indexname FROM pg_indexes"
                    " WHERE schemaname = %s AND tablename = 'rm_usage'",
                    (self.schema,),
                ).fetchall()
            )
        return {name for (name,) in rows} & set(USAGE_INDEX_NAMES)

    def _call(self, work: Callable[[Connection], _T]) -> _T:
        """`work` on the connection; a PostgreSQL failure becomes a `StoreError`."""
        try:
            return work(self._connection())
        except psycopg.Error as error:
            raise StoreError(f"read model store: {error}") from error


def _load_balances(db: Connection) -> Balances:
    return balances_from_rows(
        db.execute(_SELECT_SUBSCRIPTIONS, binary=True),
        db.execute(_SELECT_SEATS, binary=True),
        db.execute(_SELECT_PACKS, binary=True),
        db.execute(_SELECT_GRANTS, binary=True),
        db.execute(_SELECT_HOLDS, binary=True),
    )


class PostgresReadModelReader:
    """A read-only connection of its own to the read model tables (opened at first use, and
    again after it was lost). Safe to share between threads."""

    def __init__(self, url: str, events: RecordReader, *, schema: str = DEFAULT_SCHEMA) -> None:
        check_schema_name(schema)
        self._url = url
        self._schema = schema
        self._events = events
        self._lock = threading.Lock()
        self._db: Connection | None = None

    def _fetch(self, statement: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._db is None or self._db.broken or self._db.closed:
                if self._db is not None:
                    self._db.close()
                self._db = _connect(self._url, self._schema, read_only=True)
            try:
                return self._db.execute(statement, params).fetchall()
            except psycopg.Error as error:
                raise StoreError(f"read model reader: {error}") from error

    def page(self, query: UsageQuery) -> UsagePage:
        return usage_page(self._fetch, self._events, query, "%s")

    def history(self, query: HistoryQuery) -> HistoryPage:
        return history_page(self._fetch, self._events, query, "%s")

    def admin_record(self, subscription_id: str, type_: str, key: str) -> StoredRecord | None:
        return find_admin_record(self._fetch, self._events, subscription_id, type_, key, "%s")

    def latest_admin_record(
        self, subscription_id: str, type_: str, until: int | None = None
    ) -> StoredRecord | None:
        return find_latest_admin_record(
            self._fetch, self._events, subscription_id, type_, until, "%s"
        )

    def checkpoint(self, name: str = DEFAULT_CHECKPOINT) -> int:
        rows = self._fetch(_SELECT_CHECKPOINT, (name,))
        return int(rows[0][0]) if rows else 0

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
