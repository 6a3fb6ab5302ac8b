"""The API's write port: commands go to the single writer of the log, off the event loop.

The API never holds a `Ledger` itself. It awaits a `Writer`, whose `execute` returns once the
events are appended *and* the projections the API reads from have folded them, so the state a
write answers with includes that write. `LedgerWriter` is the in-process implementation: a
`Ledger` and the balances the API reads (`LiveBalances` in `ledger serve`, a
`ProjectionRunner` in tests) driven on one executor thread, the same thread (and the same
objects) that ingest and the lifecycle ticker use in `ledger serve`.

`FastLane` is how a write someone waits on (a gateway's hold) gets ahead of usage on that
thread: ingest charges a batch in slices and runs the lane's waiting writes between them, so
a hold waits for one slice at most, never for a whole 1,000-event batch.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from typing import Any, Protocol

from ledger.application import Ledger, Outcome
from projections.live import BalanceSource
from schemas.commands import Command


class Writer(Protocol):
    async def execute(self, commands: Sequence[Command]) -> list[Outcome]:
        """Decide and append `commands` in one batch; one `Outcome` per command, in order.

        Returns only when the projections the API reads have caught up with at least the
        last record appended (so `runner.position >= outcome.records[-1].position`).
        """
        ...


class LedgerWriter:
    """`Writer` over a ledger and the balances folded after it, on `executor`'s one thread.

    `executor` must run one task at a time (`ThreadPoolExecutor(max_workers=1)`), and be the
    thread that opened the read store: SQLite connections stay on the thread that made them.
    """

    def __init__(self, ledger: Ledger, projections: BalanceSource, executor: Executor) -> None:
        self.ledger = ledger
        self.projections = projections
        self.executor = executor

    async def execute(self, commands: Sequence[Command]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.execute_now, list(commands))

    def execute_now(self, commands: Sequence[Command]) -> list[Outcome]:
        """`execute` on the calling thread (which must be the executor's)."""
        outcomes = self.ledger.execute(commands)
        # Always: the log may have grown by another writer's hand (a backfill) since the
        # last fold, and a refused command is answered from the state as it now is.
        self.projections.catch_up()
        assert self.projections.position >= self.ledger.position
        return outcomes


class FastLane(Executor):
    """An `Executor` whose work runs on `writer`'s one thread ahead of what is queued there.

    `submit` queues the work here and a task on `writer` that runs it when its turn comes; a
    usage batch in progress on that thread runs it sooner, between two of its slices
    (`run_waiting`). Either way it runs on the writer thread, one at a time, once."""

    def __init__(self, writer: Executor) -> None:
        self._writer = writer
        self._lock = threading.Lock()
        self._waiting: deque[tuple[Future[Any], Callable[[], Any]]] = deque()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            self._waiting.append((future, lambda: fn(*args, **kwargs)))
        self._writer.submit(self.run_waiting)
        return future

    def run_waiting(self) -> int:
        """On the writer thread: run every waiting write, in order; how many ran."""
        ran = 0
        while True:
            with self._lock:
                if not self._waiting:
                    return ran
                future, work = self._waiting.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(work())
            except BaseException as error:  # the waiting caller gets it, as from `submit`
                future.set_exception(error)
            ran += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """The writer's executor is shut down by its owner; nothing of its own to stop."""
