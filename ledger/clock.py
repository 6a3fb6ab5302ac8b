"""The ledger clock: where the write path gets its `recorded_at`, in microseconds since the epoch.

The system clock in production; a manual clock, moved forward only, in sandboxes and tests.
"""

from __future__ import annotations

import threading
import time
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
