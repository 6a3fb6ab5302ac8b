"""The ledger clock: where the write path gets its `recorded_at`, in microseconds since the epoch.

The system clock in production; a manual clock, moved forward only, in sandboxes and tests.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from ledger.errors import ManualClockError
from ledger.log import MAX_RECORDED_AT_US, MIN_RECORDED_AT_US
from schemas.limits import MAX_INSTANT, MIN_INSTANT


class Clock(Protocol):
    def now_us(self) -> int:
        """Microseconds since the Unix epoch, UTC."""
        ...


class SystemClock:
    def now_us(self) -> int:
        return time.time_ns() // 1_000


def check_in_bounds(now_us: int) -> None:
    """Refuse (`ValueError`) a time the ledger could not record: outside its instant bounds."""
    if not MIN_RECORDED_AT_US <= now_us <= MAX_RECORDED_AT_US:
        raise ValueError(
            f"a ledger clock stays within {MIN_INSTANT.isoformat()} .. {MAX_INSTANT.isoformat()}"
        )


def check_forward(now_us: int, current_us: int) -> None:
    if now_us < current_us:
        raise ValueError(f"a manual clock only moves forward: {now_us} is before {current_us}")
    check_in_bounds(now_us)


class ManualClock:
    """A clock that stands still until it is set or advanced, and never goes back.

    Moving it backwards, or outside the ledger's instant bounds, raises `ValueError` and leaves
    it as it was: that is a caller's mistake, not a state of the ledger (the store refuses an
    append earlier than its head on its own, with `ClockWentBackwards`). Safe to share between
    threads.
    """

    def __init__(self, start_us: int) -> None:
        self._now_us = start_us
        self._lock = threading.Lock()

    def now_us(self) -> int:
        return self._now_us

    def set(self, now_us: int) -> None:
        with self._lock:
            check_forward(now_us, self._now_us)
            self._now_us = now_us

    def advance(self, us: int) -> None:
        if us < 0:
            raise ValueError(f"a manual clock only moves forward: cannot advance by {us} µs")
        with self._lock:
            check_forward(self._now_us + us, self._now_us)
            self._now_us += us


class SharedManualClock:
    """A manual clock kept in a small file, so another process (`ledger clock set`) can move
    the clock of a running `ledger serve`. It starts at `start_us` and only moves forward.

    Every `now_us` reads the file's contents (a few microseconds; a timestamp alone can miss a
    second write within its resolution). Every move holds an exclusive lock on a lock file
    beside it while it reads the current time, checks the new one and replaces the file, so two
    processes advancing at once both count; a refused move leaves the file as it was. A file
    that does not hold a time raises `ManualClockError`.
    """

    def __init__(self, path: Path, start_us: int) -> None:
        self.path = path
        self._start_us = start_us
        self._lock_path = path.with_name(path.name + ".lock")

    def now_us(self) -> int:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return self._start_us
        return max(self._start_us, self._parse(text))

    def set(self, now_us: int) -> None:
        with self._exclusive():
            check_forward(now_us, self.now_us())
            self._write(now_us)

    def advance(self, us: int) -> None:
        if us < 0:
            raise ValueError(f"a manual clock only moves forward: cannot advance by {us} µs")
        with self._exclusive():
            current = self.now_us()
            check_forward(current + us, current)
            self._write(current + us)

    def _parse(self, text: str) -> int:
        stripped = text.strip()
        if not stripped:  # never written whole by us (replace is atomic); treat as unset
            return self._start_us
        if not stripped.isascii() or not stripped.lstrip("-").isdigit():
            raise ManualClockError(f"{self.path} holds no time in microseconds: {stripped!r}")
        return int(stripped)

    def _write(self, now_us: int) -> None:
        staging = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        staging.write_text(f"{now_us}\n")
        os.replace(staging, self.path)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock_path.open("a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
