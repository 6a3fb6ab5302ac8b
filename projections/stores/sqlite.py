"""The SQLite read model store: balance tables, usage rows and projection checkpoints.

Its tables are prefixed `rm_`, so it may share the log's SQLite file or live in its own (a file
of its own keeps projection writes off the log's write lock). A batch's changed balance rows,
new usage rows and checkpoint are written in one transaction: the tables always hold the read
model exactly as of their checkpoint. The one writer (the projector) holds an exclusive lock on
a file beside the tables (`<file>.lock`); readers with a connection of their own open the file
read-only.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from ledger.log import StoredRecord
from projections.balances import Balances, Changes
from projections.history import (
    ADMIN_INDEXES_SQL,
    ADMIN_TABLE_SQL,
    INSERT_ADMIN_SQL,
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
from projections.stores.writer_lock import WriterFileLock
from projections.usage import (
    INSERT_USAGE_SQL,
    USAGE_INDEX_NAMES,
    USAGE_INDEXES_SQL,
    USAGE_TABLE_SQL,
    RecordReader,
    UsageIndexRow,
    UsageQuery,
    usage_page,
)
from schemas.read_models import UsagePage

BUSY_TIMEOUT_MS: Final = 10_000
"""How long a write waits for another connection's write lock (a shared file) before failing."""

_TABLES_SQL: Final = (
    """
    CREATE TABLE IF NOT EXISTS rm_checkpoints (
        name TEXT PRIMARY KEY,
        position INTEGER NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS rm_subscriptions (
        subscription_id TEXT PRIMARY KEY,
        anchor_us INTEGER NOT NULL,
        cycle INTEGER NOT NULL,
        cycle_start_us INTEGER,
        cycle_end_us INTEGER,
        uncovered_cycle_ucr INTEGER NOT NULL,
        uncovered_total_ucr INTEGER NOT NULL,
        granted_ucr INTEGER NOT NULL,
        used_ucr INTEGER NOT NULL,
        expired_ucr INTEGER NOT NULL,
        voided_ucr INTEGER NOT NULL DEFAULT 0
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS rm_seats (
        subscription_id TEXT NOT NULL,
        seat_id TEXT NOT NULL,
        tier TEXT NOT NULL,
        pending_tier TEXT,
        status TEXT NOT NULL,
        cycle INTEGER NOT NULL,
        quota_ucr INTEGER NOT NULL,
        used_ucr INTEGER NOT NULL,
        pack_used_ucr INTEGER NOT NULL,
        uncovered_ucr INTEGER NOT NULL,
        held_ucr INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (subscription_id, seat_id)
    )
    """,
    *(
        f"""
        CREATE TABLE IF NOT EXISTS {table} (
            subscription_id TEXT NOT NULL,
            pack_id TEXT NOT NULL,
            credits_ucr INTEGER NOT NULL,
            remaining_ucr INTEGER NOT NULL,
            expired_ucr INTEGER NOT NULL,
            purchased_at_us INTEGER NOT NULL,
            expires_at_us INTEGER NOT NULL,
            status TEXT NOT NULL,
            held_ucr INTEGER NOT NULL DEFAULT 0,
            voided_ucr INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (subscription_id, pack_id)
        )
        """
        for table in ("rm_packs", "rm_grants")
    ),
    """
    CREATE TABLE IF NOT EXISTS rm_holds (
        subscription_id TEXT NOT NULL,
        hold_id TEXT NOT NULL,
        seat_id TEXT NOT NULL,
        status TEXT NOT NULL,
        requested_ucr INTEGER NOT NULL,
        credits_ucr INTEGER NOT NULL,
        allocation TEXT NOT NULL,
        ttl_s INTEGER NOT NULL,
        placed_at_us INTEGER NOT NULL,
        expires_at_us INTEGER NOT NULL,
        ended_at_us INTEGER,
        settled_by TEXT,
        PRIMARY KEY (subscription_id, hold_id)
    )
    """,
    USAGE_TABLE_SQL,
    ADMIN_TABLE_SQL,
)
_ADDED_COLUMNS: Final = (
    ("rm_subscriptions", "voided_ucr INTEGER NOT NULL DEFAULT 0"),
    ("rm_seats", "held_ucr INTEGER NOT NULL DEFAULT 0"),
    ("rm_packs", "held_ucr INTEGER NOT NULL DEFAULT 0"),
    ("rm_packs", "voided_ucr INTEGER NOT NULL DEFAULT 0"),
)
"""Columns a file made by an earlier release lacks; its rows hold exactly the defaults."""
_READ_MODEL_TABLES: Final = (
    "rm_subscriptions",
    "rm_seats",
    "rm_packs",
    "rm_grants",
    "rm_holds",
    "rm_usage",
    "rm_admin",
)
_SELECT_CHECKPOINT: Final = "SELECT position FROM rm_checkpoints WHERE name = ?"

_SUBSCRIPTION_COLUMNS: Final = (
    "subscription_id, anchor_us, cycle, cycle_start_us, cycle_end_us, uncovered_cycle_ucr,"
    " uncovered_total_ucr, granted_ucr, used_ucr, expired_ucr, voided_ucr"
)
_SEAT_COLUMNS: Final = (
    "subscription_id, seat_id, tier, pending_tier, status, cycle, quota_ucr, used_ucr,"
    " pack_used_ucr, uncovered_ucr, held_ucr"
)
_PACK_COLUMNS: Final = (
    "subscription_id, pack_id, credits_ucr, remaining_ucr, expired_ucr, purchased_at_us,"
    " expires_at_us, status, held_ucr, voided_ucr"
)
_HOLD_COLUMNS: Final = (
    "subscription_id, hold_id, seat_id, status, requested_ucr, credits_ucr, allocation, ttl_s,"
    " placed_at_us, expires_at_us, ended_at_us, settled_by"
)


def _upsert(table: str, columns: str) -> str:
    marks = ", ".join("?" * (columns.count(",") + 1))
    return f"INSERT OR REPLACE INTO {table} ({columns}) VALUES ({marks})"


_UPSERT_SUBSCRIPTION: Final = _upsert("rm_subscriptions", _SUBSCRIPTION_COLUMNS)
_UPSERT_SEAT: Final = _upsert("rm_seats", _SEAT_COLUMNS)
_UPSERT_PACK: Final = _upsert("rm_packs", _PACK_COLUMNS)
_UPSERT_GRANT: Final = _upsert("rm_grants", _PACK_COLUMNS)
_UPSERT_HOLD: Final = _upsert("rm_holds", _HOLD_COLUMNS)


class SqliteReadModelStore:
    """The read model tables in the SQLite file at `path`; `events` is the log they index
    (usage pages are decoded from its records)."""

    def __init__(self, path: str | Path, events: RecordReader) -> None:
        self.path = str(path)
        self._events = events
        self._writer_lock = WriterFileLock(self.path)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode = WAL")
        # Read models are rebuildable from the log: NORMAL may lose the last commits on power
        # loss, never corrupt; the checkpoint goes back with them.
        self._db.execute("PRAGMA synchronous = NORMAL")
        with self._transaction():
            indexed_admin_writes = self._has_table("rm_admin")
            self._create_tables()
            self.create_usage_indexes()
        if not indexed_admin_writes and self.checkpoint() > 0:
            # A file of an earlier release: its usage rows lack reversals and it has no admin
            # history; the runner folds the log again from the start.
            self.reset()

    def _has_table(self, table: str) -> bool:
        found = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        return found is not None

    def close(self) -> None:
        self.unlock_writer()
        self._db.close()

    def reader(self) -> SqliteReadModelReader:
        return SqliteReadModelReader(self.path, self._events)

    def try_lock_writer(self) -> bool:
        return self._writer_lock.try_lock()

    def unlock_writer(self) -> None:
        self._writer_lock.unlock()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _create_tables(self) -> None:
        for sql in _TABLES_SQL:
            self._db.execute(sql)
        for table, column in _ADDED_COLUMNS:
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column.split()[0] not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        for sql in ADMIN_INDEXES_SQL:
            self._db.execute(sql)

    def create_usage_indexes(self) -> None:
        for sql in USAGE_INDEXES_SQL:
            self._db.execute(sql)

    def checkpoint(self, name: str = DEFAULT_CHECKPOINT) -> int:
        found = self._db.execute(_SELECT_CHECKPOINT, (name,)).fetchone()
        return int(found[0]) if found else 0

    def reset(self, name: str = DEFAULT_CHECKPOINT, *, drop_usage_indexes: bool = False) -> None:
        """Empty every read model table and set the checkpoint to 0, in one transaction.

        With `drop_usage_indexes`, the usage table is left without its indexes, so a rebuild's
        bulk insert is cheaper; `create_usage_indexes` (or reopening the store) restores them.
        """
        with self._transaction():
            for table in _READ_MODEL_TABLES:
                self._db.execute(f"DROP TABLE IF EXISTS {table}")
            self._create_tables()
            if not drop_usage_indexes:
                self.create_usage_indexes()
            self._set_checkpoint(name, 0)

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
        packs = [p for p in changes.packs if p.kind == "pack"]
        grants = [p for p in changes.packs if p.kind == "grant"]
        with self._transaction():
            self._move_checkpoint(name, after, position)
            db = self._db
            db.executemany(_UPSERT_SUBSCRIPTION, map(subscription_values, changes.subscriptions))
            db.executemany(_UPSERT_SEAT, map(seat_values, changes.seats))
            db.executemany(_UPSERT_PACK, map(pack_values, packs))
            db.executemany(_UPSERT_GRANT, map(pack_values, grants))
            db.executemany(_UPSERT_HOLD, map(hold_values, changes.holds))
            db.executemany(
                "DELETE FROM rm_holds WHERE subscription_id = ? AND hold_id = ?",
                changes.forgotten_holds,
            )
            db.executemany(INSERT_USAGE_SQL, usage_rows)
            db.executemany(INSERT_ADMIN_SQL, admin_rows)

    def _move_checkpoint(self, name: str, after: int, position: int) -> None:
        """The compare-and-set that fences a writer that lost a race (no row yet counts as 0)."""
        moved = self._db.execute(
            "UPDATE rm_checkpoints SET position = ? WHERE name = ? AND position = ?",
            (position, name, after),
        ).rowcount
        if moved == 0 and after == 0:
            moved = self._db.execute(
                "INSERT OR IGNORE INTO rm_checkpoints (name, position) VALUES (?, ?)",
                (name, position),
            ).rowcount
        if moved != 1:
            raise CheckpointMoved(f"checkpoint {name!r} is no longer at {after}")

    def _set_checkpoint(self, name: str, position: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO rm_checkpoints (name, position) VALUES (?, ?)", (name, position)
        )

    def snapshot(self, name: str = DEFAULT_CHECKPOINT) -> tuple[Balances, int]:
        """The balances and their checkpoint read in one transaction, so they agree even while
        another process writes the tables."""
        self._db.execute("BEGIN")
        try:
            return self.load_balances(), self.checkpoint(name)
        finally:
            self._db.execute("COMMIT")

    def load_balances(self) -> Balances:
        """The balances exactly as the tables hold them (as of the checkpoint)."""
        return balances_from_rows(
            self._db.execute(
                f"SELECT {_SUBSCRIPTION_COLUMNS} FROM rm_subscriptions ORDER BY subscription_id"
            ),
            self._db.execute(
                f"SELECT {_SEAT_COLUMNS} FROM rm_seats ORDER BY subscription_id, seat_id"
            ),
            self._db.execute(
                f"SELECT {_PACK_COLUMNS} FROM rm_packs ORDER BY subscription_id, pack_id"
            ),
            self._db.execute(
                f"SELECT {_PACK_COLUMNS} FROM rm_grants ORDER BY subscription_id, pack_id"
            ),
            self._db.execute(
                f"SELECT {_HOLD_COLUMNS} FROM rm_holds ORDER BY subscription_id, hold_id"
            ),
        )

    def usage(self, query: UsageQuery) -> UsagePage:
        """One page of usage rows. Raises `InvalidUsageQuery` (bad limit or cursor)."""
        return usage_page(lambda s, p: self._db.execute(s, p).fetchall(), self._events, query)

    def history(self, query: HistoryQuery) -> HistoryPage:
        """One page of a subscription's admin writes. Raises `InvalidHistoryQuery`."""
        return history_page(lambda s, p: self._db.execute(s, p).fetchall(), self._events, query)

    def usage_index_rows(self) -> list[UsageIndexRow]:
        """Every usage index row in position order (for audits and tests; unbounded)."""
        rows = self._db.execute(
            "SELECT position, recorded_at_us, subscription_id, seat_id, model"
            " FROM rm_usage ORDER BY position"
        )
        return [(p, at_us, sub, seat, model) for p, at_us, sub, seat, model in rows]

    def usage_index_names(self) -> set[str]:
        rows = self._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'rm_usage'"
        )
        return {name for (name,) in rows} & set(USAGE_INDEX_NAMES)


class SqliteReadModelReader:
    """A read-only connection of its own to the read model file (opened at first use, so the
    file may be created after the reader). Safe to share between threads."""

    def __init__(self, path: str | Path, events: RecordReader) -> None:
        self._uri = Path(path).resolve().as_uri() + "?mode=ro"
        self._events = events
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = sqlite3.connect(
                self._uri, uri=True, isolation_level=None, check_same_thread=False
            )
        return self._connection

    def page(self, query: UsageQuery) -> UsagePage:
        with self._lock:
            db = self._connect()
            return usage_page(lambda s, p: db.execute(s, p).fetchall(), self._events, query)

    def _fetch(self, statement: str, params: Sequence[object]) -> list[tuple[object, ...]]:
        with self._lock:
            return self._connect().execute(statement, params).fetchall()

    def history(self, query: HistoryQuery) -> HistoryPage:
        return history_page(self._fetch, self._events, query)

    def admin_record(self, subscription_id: str, type_: str, key: str) -> StoredRecord | None:
        return find_admin_record(self._fetch, self._events, subscription_id, type_, key)

    def latest_admin_record(
        self, subscription_id: str, type_: str, until: int | None = None
    ) -> StoredRecord | None:
        return find_latest_admin_record(self._fetch, self._events, subscription_id, type_, until)

    def checkpoint(self, name: str = DEFAULT_CHECKPOINT) -> int:
        with self._lock:
            row = self._connect().execute(_SELECT_CHECKPOINT, (name,)).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
