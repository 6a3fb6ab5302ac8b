"""One writer at a time for a SQLite file: the lock on `<file>.lock` is held by one object, in
this process or another, and let go when its holder unlocks, closes its store or dies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from projections.stores.notifications_sqlite import SqliteNotificationStore
from projections.stores.writer_lock import WriterFileLock

HOLD_AND_WAIT = """
import sys
from projections.stores.writer_lock import WriterFileLock
lock = WriterFileLock(sys.argv[1])
print(lock.try_lock(), flush=True)
sys.stdin.read()
"""


def test_one_lock_object_at_a_time_holds_it(tmp_path: Path) -> None:
    db = str(tmp_path / "tables.sqlite3")
    first, second = WriterFileLock(db), WriterFileLock(db)
    assert first.try_lock()
    assert first.try_lock(), "taking it again while holding it is a no-op"
    assert not second.try_lock()
    first.unlock()
    assert second.try_lock()
    assert not first.try_lock()
    assert Path(db + ".lock").exists()


def test_a_lock_held_by_another_process_is_free_once_that_process_dies(tmp_path: Path) -> None:
    db = str(tmp_path / "tables.sqlite3")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_WAIT, db],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "True"
        mine = WriterFileLock(db)
        assert not mine.try_lock()
    finally:
        holder.kill()
        holder.wait()
    assert mine.try_lock()


def test_one_notification_store_at_a_time_is_the_notifier(tmp_path: Path) -> None:
    path = tmp_path / "notifications.sqlite3"
    first, second = SqliteNotificationStore(path), SqliteNotificationStore(path)
    try:
        assert first.try_lock_writer()
        assert not second.try_lock_writer()
        first.close()
        assert second.try_lock_writer(), "closing a store lets go of its lock"
    finally:
        second.close()
