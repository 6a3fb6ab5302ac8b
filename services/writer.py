"""The API's write port: commands go to the single writer of the log, off the event loop.

The API never holds a `Ledger` itself. It awaits a `Writer`, whose `execute` returns once the
events are appended *and* the projections the API reads from have folded them, so the state a
write answers with includes that write. `LedgerWriter` is the in-process implementation: a
`Ledger` and the balances the API reads (`LiveBalances` in `ledger serve`, a
`ProjectionRunner` in tests) driven on one executor thread, the same thread (and the same
objects) that ingest and the lifecycle ticker use in `ledger serve`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Executor
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
