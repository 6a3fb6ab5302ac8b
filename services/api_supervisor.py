"""The serving process's side of the HTTP API process: spawning it, serving its writes, waiting
until it listens. Light to import: `ledger serve` spawns the API process before it loads the
rest of the service, so that child's start-up (the path to ready) begins at once."""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import TYPE_CHECKING, Final

from services.children import ChildProcess
from services.config import Settings

if TYPE_CHECKING:
    from services.writer import FastLane

API_START_POLL_S: Final = 0.01
API_START_TIMEOUT_S: Final = 60.0
"""Longest wait for the API process to load the balances and listen."""
API_START_ATTEMPTS: Final = 20
API_START_RETRY_S: Final = 0.25
"""Pause between two attempts to start the API process (a port is freed within moments by a
predecessor killed with its serve)."""


def _run_api_process(
    settings: Settings, connection: Connection, ready: Event, writer_open: Event
) -> None:
    # In the child: its imports (the web stack, the app) belong to it alone.
    from services.api_process import run_api_process

    run_api_process(settings, connection, ready, writer_open)


class ApiProcess(ChildProcess):
    """The serving process's handle on its HTTP API process: it loads its balances once
    `writer_open` is set, and sets `ready` once it listens."""

    def __init__(
        self, settings: Settings, connection: Connection, ready: Event, writer_open: Event
    ) -> None:
        super().__init__("ledger-api", _run_api_process, settings, connection, ready, writer_open)


class ApiSupervisor:
    """The HTTP API process and the write channel that serves it, (re)started from the main
    thread (the parent-death signal is tied to the thread that starts a child).

    The first process is spawned before the writer is open, so its interpreter starts while
    this one starts Redis and opens the log; it reads the log once `writer_opened` says so."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._writer_open = self._context.Event()
        self._lane: FastLane | None = None
        self._process: ApiProcess | None = None
        self._channel: Connection | None = None

    def spawn(self) -> None:
        """Start an API process (without waiting for it)."""
        ours, theirs = self._context.Pipe()
        self._ready = self._context.Event()
        self._process = ApiProcess(self.settings, theirs, self._ready, self._writer_open)
        self._process.start()
        theirs.close()  # the child has its own end now
        self._channel = ours
        if self._writer_open.is_set():
            self._serve_writes()

    def writer_opened(self, lane: FastLane) -> None:
        """The writer is open (and the admin token saved): serve the API process's writes on
        `lane` and let it load its balances from the log."""
        self._lane = lane
        self._serve_writes()
        self._writer_open.set()

    def _serve_writes(self) -> None:
        from services.write_channel import WriteChannelServer

        assert self._lane is not None and self._channel is not None
        WriteChannelServer(self._channel, self._lane).start()

    async def start(self) -> None:
        """Wait until the API process listens, spawning one unless one is starting; a port
        still held by a predecessor that is going away is waited for, a port taken for good
        is an error."""
        import asyncio  # here, not above: loaded by the time a loop runs, not before the spawn

        import structlog

        for attempt in range(1, API_START_ATTEMPTS + 1):
            if not self.alive:
                self.spawn()
            if await self._listening():
                return
            structlog.get_logger("ledger.serve").warning(
                "api.start_failed", attempt=attempt, exitcode=self.exitcode
            )
            await asyncio.sleep(API_START_RETRY_S)
        raise OSError(
            f"the HTTP API could not listen on {self.settings.host}:{self.settings.port}"
            f" (exit {self.exitcode}); is another process using that port?"
        )

    async def _listening(self) -> bool:
        import asyncio

        assert self._process is not None
        deadline = time.monotonic() + API_START_TIMEOUT_S
        while not self._ready.is_set():
            if not self._process.alive or time.monotonic() > deadline:
                self.stop()
                return False
            await asyncio.sleep(API_START_POLL_S)
        return True

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.alive

    @property
    def exitcode(self) -> int | None:
        return None if self._process is None else self._process.exitcode

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
        if self._channel is not None:
            self._channel.close()  # ends the channel's thread
            self._channel = None
