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
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from typing import Protocol

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


class FastLane:
    """Commands someone waits on (the API's writes, a gateway's holds), decided on the writer
    thread ahead of the usage batches queued there.

    `submit` queues the commands here and a task on `writer` that runs them when its turn
    comes; a usage batch on that thread runs them sooner, before each of its
    slices (`run_waiting`). Whatever waits then goes in one `Ledger.execute`: one append for
    all of it (a group commit), each command still decided alone, on the state the ones before
    it left."""

    def __init__(self, ledger: Ledger, writer: Executor) -> None:
        self._ledger = ledger
        self._writer = writer
        self._lock = threading.Lock()
        self._waiting: list[tuple[Future[list[Outcome]], list[Command]]] = []

    def submit(self, commands: Sequence[Command]) -> Future[list[Outcome]]:
        """The outcomes of `commands`, once decided and appended (or the error that befell
        the group they were decided in)."""
        future: Future[list[Outcome]] = Future()
        with self._lock:
            self._waiting.append((future, list(commands)))
        self._writer.submit(self.run_waiting)
        return future

    def run_waiting(self) -> int:
        """On the writer thread: decide and append every waiting command, in the order they
        came, in one append; how many callers were answered."""
        with self._lock:
            group, self._waiting = self._waiting, []
        group = [
            (future, asked) for future, asked in group if future.set_running_or_notify_cancel()
        ]
        if not group:
            return 0
        try:
            outcomes = self._ledger.execute([command for _, asked in group for command in asked])
        except BaseException as error:  # every caller of the group gets it, as from `submit`
            for future, _ in group:
                future.set_exception(error)
            return len(group)
        start = 0
        for future, asked in group:
            future.set_result(outcomes[start : start + len(asked)])
            start += len(asked)
        return len(group)
