"""The HTTP API process's way to the single writer: commands (admin writes, holds) go over a
pipe to the serving process, whose writer thread decides and appends them (so the log keeps
one writer).

A request is a `(number, kind, payload)` tuple answered by `(number, "ok", value)` or
`(number, "error", message)`; commands and outcomes are msgspec Structs, which pickle. Requests
are pipelined: the API process sends the next one without waiting for the answer to the last,
and the serving process answers each as soon as it is appended. The writer thread only queues
an answer; a thread of the channel sends it, so an API process that stops reading (frozen,
say) blocks that thread on a full pipe, never the writer and the ingest behind it. The
commands of every request that came in while the previous one was being sent go together (a
group commit), and the writer's `FastLane` groups again what waits there: one append for all
of them, each command still decided alone, in the order sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
    """In the serving process: a thread receiving one API process's requests and handing each
    command batch to the writer thread's `FastLane`, and one sending the answers back."""

    def __init__(self, connection: Connection, lane: FastLane) -> None:
        self._connection = connection
        self._lane = lane
        self._answers: queue.SimpleQueue[tuple[int, str, Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="write-channel", daemon=True)
        self._sender = threading.Thread(
            target=self._send_answers, name="write-channel-answers", daemon=True
        )

    def start(self) -> None:
        self._sender.start()
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                number, kind, payload = self._connection.recv()
            except (EOFError, OSError):
                self._answers.put(None)
                return  # the API process is gone; a new one gets a new channel
            if kind != EXECUTE:
                self._reply(number, WriteChannelError(f"unknown request {kind!r}"))
                continue
            # The writer thread queues the answer as it sets the result (a callback, no wait).
            self._lane.submit(payload).add_done_callback(functools.partial(self._answer, number))

    def _answer(self, number: int, done: Future[list[Outcome]]) -> None:
        error = done.exception()
        self._reply(number, done.result() if error is None else error)

    def _reply(self, number: int, value: list[Outcome] | BaseException) -> None:
        if isinstance(value, BaseException):
            log.error("write_channel.request_failed", exc_info=value)
            reply: tuple[int, str, Any] = (number, "error", f"{type(value).__name__}: {value}")
        else:
            reply = (number, "ok", value)
        self._answers.put(reply)

    def _send_answers(self) -> None:
        while (reply := self._answers.get()) is not None:
            try:
                self._connection.send(reply)
            except (EOFError, OSError):
                return  # the API process is gone; its requests die with it


class RemoteWriter:
    """In the API process: a `Writer` whose commands run on the serving process's writer
    thread. `execute` returns once `caught_up` (this process's live balances folding the log)
    has run after the append, so the state a write answers with includes that write."""

    def __init__(self, connection: Connection, caught_up: Callable[[], Awaitable[int]]) -> None:
        self._connection = connection
        self._caught_up = caught_up
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="write-channel")
        """The one thread that sends on the connection (a send may block on a full pipe)."""
        self._waiting: list[tuple[list[Command], asyncio.Future[list[Outcome]]]] = []
        self._sending = False
        self._sent: dict[int, list[tuple[list[Command], asyncio.Future[list[Outcome]]]]] = {}
        """The groups sent and not answered yet, by request number."""
        self._numbers = 0
        self._reader: threading.Thread | None = None
        self._sender: asyncio.Task[None] | None = None

    async def execute(self, commands: Sequence[Command]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        if self._reader is None:
            self._reader = threading.Thread(
                target=self._read, args=(loop,), name="write-channel-answers", daemon=True
            )
            self._reader.start()
        answer: asyncio.Future[list[Outcome]] = loop.create_future()
        self._waiting.append((list(commands), answer))
        if not self._sending:
            self._sending = True
            self._sender = loop.create_task(self._send_waiting())
        outcomes = await answer
        await self._caught_up()
        return outcomes

    async def _send_waiting(self) -> None:
        """Send what waits as one request, until nothing does; a group that cannot be sent is
        answered with the error."""
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                self._numbers += 1
                number = self._numbers
                self._sent[number] = group
                commands = [command for asked, _ in group for command in asked]
                try:
                    await loop.run_in_executor(
                        self._io, self._connection.send, (number, EXECUTE, commands)
                    )
                except Exception as error:
                    self._answer(number, "error", f"{type(error).__name__}: {error}")
        finally:
            self._sending = False

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        """On a thread of its own: each answer to the loop, as it comes."""
        while True:
            try:
                number, status, value = self._connection.recv()
            except (EOFError, OSError) as error:
                message = f"the write channel closed: {type(error).__name__}"
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    loop.call_soon_threadsafe(self._fail_all, message)
                return
            loop.call_soon_threadsafe(self._answer, number, status, value)

    def _answer(self, number: int, status: str, value: Any) -> None:
        """Each caller of request `number` its own outcomes (or the error that befell them
        all); a request given up on is answered by no one."""
        group = self._sent.pop(number, [])
        start = 0
        for asked, answer in group:
            if answer.done():
                pass
            elif status != "ok":
                answer.set_exception(WriteChannelError(str(value)))
            else:
                answer.set_result(value[start : start + len(asked)])
            start += len(asked)

    def _fail_all(self, message: str) -> None:
        for number in list(self._sent):
            self._answer(number, "error", message)

    def close(self) -> None:
        self._io.shutdown(wait=False)
        # Wakes the reader thread out of its `recv` (closing the descriptor alone would not).
        with (
            contextlib.suppress(OSError),
            socket.socket(fileno=os.dup(self._connection.fileno())) as end,
        ):
            end.shutdown(socket.SHUT_RDWR)
        self._connection.close()
