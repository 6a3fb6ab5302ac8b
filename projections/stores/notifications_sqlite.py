"""The notification tables in a SQLite file of their own beside the read models' (the notifier
writes them while the projector writes the read models: two files, no shared write lock). The
one notifier holds an exclusive lock on `<file>.lock`; the API process opens the same file to
read the feed and manage webhooks."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from projections.notification_store import SqlNotificationStore, table_statements
from projections.stores.writer_lock import WriterFileLock

BUSY_TIMEOUT_MS: Final = 10_000


class SqliteNotificationStore(SqlNotificationStore):
    """The notification tables in the SQLite file at `path`; one connection, shared by the
    threads of one process under a lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._writer_lock = WriterFileLock(self.path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        with self._begin() as run:
            for statement in table_statements("INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER"):
                run(statement, ())
        super().__init__(self._run_one, self._begin)

    def _run_one(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(statement, params).fetchall()

    @contextmanager
    def _begin(self) -> Iterator[Any]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield lambda s, p: self._db.execute(s, p).fetchall()
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def try_lock_writer(self) -> bool:
        """Become the one notifier of these tables, without waiting."""
        return self._writer_lock.try_lock()

    def close(self) -> None:
        self._writer_lock.unlock()
        self._db.close()
