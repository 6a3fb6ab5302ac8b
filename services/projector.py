"""The projector process: keeps the read model tables (balances, usage rows) in step with the
log, on a core of its own, while the serving process appends and acknowledges.

The log is committed before any entry is acknowledged, so nothing here is on the path to an
acknowledgement: a projector that lags, dies or restarts delays what usage pages show, never
what is charged. One projector writes one read store: each holds the store's writer lock while
it runs (SQLite: an exclusive lock on a file beside the read models; PostgreSQL: a session
advisory lock), so a second one (left behind by a serving process killed with SIGKILL, or the
projector of another API host sharing the PostgreSQL read models) waits instead of writing the
same tables. Should two write anyway, the checkpoint's compare-and-set keeps the tables whole.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Final

import structlog

from projections.runner import ProjectionRunner
from projections.snapshots import Snapshotter
from services.bootstrap import open_event_store, open_read_store, open_snapshot_store
from services.children import ChildProcess, die_with_parent
from services.config import Settings
from services.logs import configure_logging
from services.polling import IdleBackoff
from services.single_writer import wait_for_writer_lock

POLL_INTERVAL_S: Final = 0.02
"""Seconds between two catch-ups unless the last one was cut short by the batch bound (then
it goes on at once): under a steady stream, one read-model commit folds tens of records."""
IDLE_POLL_S: Final = 0.2
"""The longest sleep once catch-ups keep finding nothing (an idle ledger)."""
CATCH_UP_BATCH_EVENTS: Final = 20_000
"""Most events folded and committed in one read-model transaction."""
PROJECTOR_NICENESS: Final = 10
"""Added to the projector's nice value: on a busy machine the HTTP API and the writer come
first; the projector only delays usage pages, and catches up in larger batches."""

log = structlog.get_logger("ledger.projector")


def run_projector(settings: Settings, parent_pid: int) -> None:
    """The projector process's main: fold, commit, repeat, until told to stop."""
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    def wanted() -> bool:
        return not stopping and os.getppid() == parent_pid

    configure_logging(settings.log_format)
    os.nice(PROJECTOR_NICENESS)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the serving process decides when to stop
    die_with_parent()
    store = open_event_store(settings)
    read_store = open_read_store(settings, store)
    snapshots = open_snapshot_store(settings)
    try:
        if not wait_for_writer_lock(
            read_store.try_lock_writer,
            wanted,
            log,
            "projector.waiting",
            reason="another projector writes these read models",
        ):
            return
        runner = ProjectionRunner(store, read_store)  # loads the tables once they are its own
        snapshotter = Snapshotter(
            snapshots,
            store,
            every_records=settings.snapshot_every_records,
            every_seconds=settings.snapshot_every_seconds,
        )
        log.info("projector.started", position=runner.position)
        backoff = IdleBackoff(POLL_INTERVAL_S, IDLE_POLL_S)
        while wanted():
            before = runner.position
            folded = runner.catch_up(batch_size=CATCH_UP_BATCH_EVENTS) - before
            if folded:
                backoff.found_work()
            if folded < CATCH_UP_BATCH_EVENTS:
                time.sleep(POLL_INTERVAL_S if folded else backoff.idle_sleep_s())
            _snapshot_if_due(snapshotter, runner)
        log.info("projector.stopped", position=runner.position)
    finally:
        snapshots.close()
        read_store.close()
        store.close()


def _snapshot_if_due(snapshotter: Snapshotter, runner: ProjectionRunner) -> None:
    """Save a snapshot of the writer's state and the runner's balances when one is due. The
    runner folds only on this thread, so its balances stand still here."""
    if snapshotter.due(runner.position):
        started = time.monotonic()
        info = snapshotter.take(runner.balances, runner.position)
        took_ms = round((time.monotonic() - started) * 1000)
        log.info("snapshot.saved", position=info.position, bytes=info.size_bytes, ms=took_ms)


class Projector(ChildProcess):
    """The serving process's handle on its projector process."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("ledger-projector", run_projector, settings, os.getpid())
