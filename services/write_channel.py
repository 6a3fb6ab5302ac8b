"""The HTTP API process's way to the single writer: commands (admin writes, holds) go over a
pipe to the serving process, whose writer thread decides and appends them (so the log keeps
one writer).

One request at a time per pipe; each is a `(kind, payload)` tuple answered by `("ok", value)`
or `("error", message)`. Commands and outcomes are msgspec Structs, which pickle. The commands
of every request that came in while the previous one was on its way go together as the next
one: one trip and one append for all of them (a group commit), each still decided alone. On
the serving side they run in the writer's `FastLane`, ahead of the usage batches.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, Final

import structlog

from ledger.application import Outcome
from schemas.commands import Command
from services.writer import FastLane

EXECUTE: Final = "execute"

log = structlog.get_logger("ledger.write_channel")


class WriteChannelError(RuntimeError):
    """The serving process could not carry a request out (the message says why)."""


class WriteChannelServer:
    """In the serving process: a thread answering one API process's requests, running each
    command batch on the writer thread through its `FastLane`."""

    def __init__(self, connection: Connection, lane: FastLane) -> None:
        self._connection = connection
        self._lane = lane
        self._thread = threading.Thread(target=self._serve, name="write-channel", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                kind, payload = self._connection.recv()
            except (EOFError, OSError):
                return  # the API process is gone; a new one gets a new channel
            try:
                reply: tuple[str, Any] = ("ok", self._answer(kind, payload))
            except Exception as error:
                log.exception("write_channel.request_failed", kind=kind)
                reply = ("error", f"{type(error).__name__}: {error}")
            try:
                self._connection.send(reply)
            except (EOFError, OSError):
                return

    def _answer(self, kind: str, payload: Any) -> Any:
        if kind == EXECUTE:
            return self._lane.submit(payload).result()
        raise WriteChannelError(f"unknown request {kind!r}")


class RemoteWriter:
    """In the API process: a `Writer` whose commands run on the serving process's writer
    thread. `execute` returns once `caught_up` (this process's live balances folding the log)
    has run after the append, so the state a write answers with includes that write."""

    def __init__(self, connection: Connection, caught_up: Callable[[], Awaitable[int]]) -> None:
        self._connection = connection
        self._caught_up = caught_up
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="write-channel")
        """The one thread that uses the connection: a request and its answer never interleave
        with another's."""
        self._waiting: list[tuple[list[Command], asyncio.Future[list[Outcome]]]] = []
        self._sending = False

    def _call(self, kind: str, payload: Any) -> Any:
        self._connection.send((kind, payload))
        status, value = self._connection.recv()
        if status != "ok":
            raise WriteChannelError(str(value))
        return value

    async def _request(self, kind: str, payload: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, self._call, kind, payload)

    async def execute(self, commands: Sequence[Command]) -> list[Outcome]:
        answer: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self._waiting.append((list(commands), answer))
        if not self._sending:
            self._sending = True
            asyncio.get_running_loop().create_task(self._send_waiting())
        outcomes = await answer
        await self._caught_up()
        return outcomes

    async def _send_waiting(self) -> None:
        """Send what waits as one request, until nothing does; answer each its own outcomes
        (or the error that befell them all)."""
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                commands = [command for asked, _ in group for command in asked]
                try:
                    outcomes: list[Outcome] = await self._request(EXECUTE, commands)
                except Exception as error:
                    for _, answer in group:
                        if not answer.done():  # a request given up on is answered by no one
                            answer.set_exception(error)
                    continue
                start = 0
                for asked, answer in group:
                    if not answer.done():
                        answer.set_result(outcomes[start : start + len(asked)])
                    start += len(asked)
        finally:
            self._sending = False

    def close(self) -> None:
        self._io.shutdown(wait=False)
        self._connection.close()
