"""The one-writer lock of a SQLite file: an exclusive `flock` on `<file>.lock` beside it, taken
without waiting. Closing the lock file lets go of it, so a writer that dies lets go too."""

from __future__ import annotations

import fcntl
from typing import IO, Final

WRITER_LOCK_SUFFIX: Final = ".lock"


class WriterFileLock:
    """The writer lock of the SQLite file at `db_path`, held by at most one object at a time
    (in this process or any other)."""

    def __init__(self, db_path: str) -> None:
        self.path = db_path + WRITER_LOCK_SUFFIX
        self._held: IO[str] | None = None

    def try_lock(self) -> bool:
        """Take the lock if it is free, without waiting; True if this object holds it (taking
        it again while holding it is a no-op)."""
        if self._held is not None:
            return True
        lock = open(self.path, "a")  # noqa: SIM115 (held until unlocked; "a" never truncates)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return False
        self._held = lock
        return True

    def unlock(self) -> None:
        lock, self._held = self._held, None
        if lock is not None:
            lock.close()  # closing the file releases the lock
