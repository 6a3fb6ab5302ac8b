"""The ledger clock: where the write path gets its `recorded_at`, in microseconds since the epoch.

The system clock in production; a manual clock, moved forward only, in sandboxes and tests.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now_us(self) -> int:
        """Microseconds since the Unix epoch, UTC."""
        ...


class SystemClock:
    def now_us(self) -> int:
        return time.time_ns() // 1_000


class ManualClock:
    """A clock that stands still until it is set or advanced, and never goes back.

    Moving it backwards raises `ValueError`: that is a caller's mistake, not a state of the
    ledger (the store refuses an append earlier than its head on its own, with
    `ClockWentBackwards`). Safe to share between threads.
    """

    def __init__(self, start_us: int) -> None:
        self._now_us = start_us
        self._lock = threading.Lock()

    def now_us(self) -> int:
        return self._now_us

    def set(self, now_us: int) -> None:
        with self._lock:
            if now_us < self._now_us:
                raise ValueError(
                    f"a manual clock only moves forward: {now_us} is before {self._now_us}"
                )
            self._now_us = now_us

    def advance(self, us: int) -> None:
        if us < 0:
            raise ValueError(f"a manual clock only moves forward: cannot advance by {us} µs")
        with self._lock:
            self._now_us += us


class SharedManualClock:
    """A manual clock kept in a small file, so another process (`ledger clock set`) can move
    the clock of a running `ledger serve`. It starts at `start_us`, only moves forward, and is
    read afresh (a stat, and a read when the file changed) on every `now_us`.
    """

    def __init__(self, path: Path, start_us: int) -> None:
        self.path = path
        self._start_us = start_us
        self._seen: tuple[int, int] | None = None  # (mtime_ns, value)
        self._lock = threading.Lock()

    def now_us(self) -> int:
        try:
            mtime_ns = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return self._start_us
        with self._lock:
            if self._seen is None or self._seen[0] != mtime_ns:
                text = self.path.read_text().strip()
                self._seen = (mtime_ns, int(text) if text else self._start_us)
            return max(self._start_us, self._seen[1])

    def set(self, now_us: int) -> None:
        current = self.now_us()
        if now_us < current:
            raise ValueError(f"a manual clock only moves forward: {now_us} is before {current}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_suffix(".tmp")
        staging.write_text(f"{now_us}\n")
        os.replace(staging, self.path)

    def advance(self, us: int) -> None:
        if us < 0:
            raise ValueError(f"a manual clock only moves forward: cannot advance by {us} µs")
        self.set(self.now_us() + us)
