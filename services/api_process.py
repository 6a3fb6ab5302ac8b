"""The HTTP API process of `ledger serve`: uvicorn (httptools parser, uvloop event loop)
serving the Litestar app on a core (and an interpreter lock) of its own, so the gateway
pre-check is not held up by ingest.

It keeps its own balances in memory (`LiveBalances`), loaded from a consistent snapshot of the
read model tables and then folded from the log by a follower thread every `FOLLOW_INTERVAL_S`;
reads answer from them without touching a database. Writes go over a pipe to the serving
process's writer thread (`services.write_channel`), and are answered once the follower has
folded them. The process exits with its parent (SIGKILL: it holds nothing to save, and its
port must be free for the next serve at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import TYPE_CHECKING, Final

import structlog

from ledger.log import EventStore
from projections.live import LiveBalances
from projections.snapshots import further_along
from services.bootstrap import (
    make_clock,
    open_event_store,
    open_notification_store,
    open_read_model_reader,
    open_read_store,
    open_snapshot_store,
    open_token_store,
)
from services.children import die_with_parent
from services.config import Settings
from services.logs import configure_logging
from services.write_channel import RemoteWriter

if TYPE_CHECKING:
    import uvicorn
    from litestar import Litestar

FOLLOW_INTERVAL_S: Final = 0.005
"""Seconds between two looks at the log for records to fold into this process's balances."""
GIL_SWITCH_INTERVAL_S: Final = 0.000_5
"""How long a thread holds the interpreter lock while another waits (the default is 5 ms)."""

log = structlog.get_logger("ledger.api")


class Follower:
    """This process's live balances and the one thread that folds the log into them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-follower")
        self._events: EventStore | None = None
        self._live: LiveBalances | None = None

    @property
    def live(self) -> LiveBalances:
        assert self._live is not None, "open() first"
        return self._live

    def _open(self) -> None:
        events = open_event_store(self.settings)
        read_store = open_read_store(self.settings, events)
        snapshots = open_snapshot_store(self.settings)
        try:
            balances, position = further_along(snapshots, events, *read_store.snapshot())
        finally:
            snapshots.close()
            read_store.close()
        self._events = events
        self._live = LiveBalances(events, balances, position)
        self._live.catch_up()

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._open)

    async def catch_up(self) -> int:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self.live.catch_up)

    async def follow(self) -> None:
        # A fixed short sleep, idle or not: the pre-check must see a suspension another
        # process appended within milliseconds, even after a quiet spell.
        while True:
            try:
                await self.catch_up()
            except Exception:
                log.exception("api.follow_failed")
            await asyncio.sleep(FOLLOW_INTERVAL_S)

    def close(self) -> None:
        if self._events is not None:
            self._thread.submit(self._events.close).result()
        self._thread.shutdown(wait=True)


def run_api_process(
    settings: Settings, connection: Connection, ready: Event, writer_open: Event
) -> None:
    """The API process's main: serve until SIGTERM (or the parent's death)."""
    # Imported here, in the API process only: the serving process never loads the web stack.
    import uvloop

    configure_logging(settings.log_format)
    die_with_parent(signal.SIGKILL)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    uvloop.run(_serve(settings, connection, ready, writer_open))


async def _serve(
    settings: Settings, connection: Connection, ready: Event, writer_open: Event
) -> None:
    import uvicorn

    from services.api.app import create_app

    # The serving process opens the writer (which creates the tables of a new log) and saves
    # the admin token while this process starts: the log is read only after both.
    await asyncio.to_thread(writer_open.wait)
    log.info("api.loading")  # the serve log's milestone between writer.opened and api.listening
    follower = Follower(settings)
    await follower.open()
    tokens = open_token_store(settings)
    events = open_event_store(settings)
    writer = RemoteWriter(connection, follower.catch_up)
    notices = open_notification_store(settings)
    snapshots = open_snapshot_store(settings)
    app = create_app(
        events=events,
        read_models=open_read_model_reader(settings, events),
        runner=follower.live,
        tokens=tokens,
        clock=make_clock(settings),
        writer=writer,
        metrics_token=settings.metrics_token,
        notices=notices,
        allow_private_webhooks=settings.webhook_allow_private,
        snapshots=snapshots,
    )
    server = uvicorn.Server(server_config(settings, app))
    following = asyncio.create_task(follower.follow(), name="follower")
    announcing = asyncio.create_task(_announce(server, ready), name="announce")
    try:
        await server.serve()  # handles SIGTERM and SIGINT itself: a graceful shutdown
    finally:
        for task in (following, announcing):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        writer.close()
        notices.close()
        snapshots.close()
        events.close()
        tokens.close()
        follower.close()


def server_config(settings: Settings, app: Litestar) -> uvicorn.Config:
    """uvicorn's configuration. No WebSocket protocol: the API has no WebSocket route, and
    loading one (wsproto) costs uvicorn's start about 0.03 s of CPU on the path to ready."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http="httptools",
        ws="none",
        log_config=None,
        access_log=False,
        lifespan="on",
    )


async def _announce(server: uvicorn.Server, ready: Event) -> None:
    while not server.started:
        await asyncio.sleep(0.01)
    log.info("api.listening", pid=os.getpid())
    ready.set()
