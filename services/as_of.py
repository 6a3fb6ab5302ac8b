"""Reads of the past (`as_of`) off the event loop: a small pool of threads behind a bounded
queue, so a burst of them waits its turn or is turned away, and never stalls the loop that
answers the gateway's pre-check and every current read from memory."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final, TypeVar

AS_OF_WORKERS: Final = 2
"""Threads that compute past balances at once."""
AS_OF_QUEUE_DEPTH: Final = 8
"""Past reads that may wait for a worker; one more is refused (`AsOfBusy`)."""

T = TypeVar("T")


class AsOfBusy(Exception):
    """Every worker is busy and the queue is full: the caller should retry a little later."""


class AsOfPool:
    """Runs past reads on `workers` threads, at most `queue_depth` more waiting.

    A slot is held from admission until the work itself ends (not until its caller stops
    waiting), so a client that hangs up cannot make room for more work than the bound.
    """

    def __init__(self, workers: int = AS_OF_WORKERS, queue_depth: int = AS_OF_QUEUE_DEPTH) -> None:
        if workers < 1 or queue_depth < 0:
            raise ValueError(f"workers {workers} must be >= 1, queue_depth {queue_depth} >= 0")
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="as-of")
        self._capacity = workers + queue_depth
        self._admitted = 0
        self._lock = threading.Lock()

    @property
    def admitted(self) -> int:
        """Past reads running or waiting now."""
        return self._admitted

    async def run(self, work: Callable[[], T]) -> T:
        """`work()`'s result, computed on a worker thread; `AsOfBusy` when the bound is reached."""
        with self._lock:
            if self._admitted >= self._capacity:
                raise AsOfBusy(f"{self._capacity} past reads are running or waiting")
            self._admitted += 1
        try:
            future: Future[T] = self._executor.submit(work)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _: object = None) -> None:
        with self._lock:
            self._admitted -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
