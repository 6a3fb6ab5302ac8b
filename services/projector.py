"""The projector process: keeps the read model tables (balances, usage rows) in step with the
log, on a core of its own, while the serving process appends and acknowledges.

The log is committed before any entry is acknowledged, so nothing here is on the path to an
acknowledgement: a projector that lags, dies or restarts delays what usage pages show, never
what is charged. One projector writes one read store: each holds an exclusive lock on a file
beside the read models while it runs, so a second one (say, left behind by a serving process
killed with SIGKILL) waits instead of writing the same tables.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from typing import Final

import structlog

from projections.runner import ProjectionRunner
from services.bootstrap import open_event_store, open_read_store
from services.children import ChildProcess, die_with_parent
from services.config import Settings

POLL_INTERVAL_S: Final = 0.02
"""Seconds between two catch-ups unless the last one was cut short by the batch bound (then
it goes on at once): under a steady stream, one read-model commit folds tens of records."""
CATCH_UP_BATCH_EVENTS: Final = 20_000
"""Most events folded and committed in one read-model transaction."""
LOCK_SUFFIX: Final = ".lock"
PROJECTOR_NICENESS: Final = 10
"""Added to the projector's nice value: on a busy machine the HTTP API and the writer come
first; the projector only delays usage pages, and catches up in larger batches."""

log = structlog.get_logger("ledger.projector")


def lock_path(settings: Settings) -> str:
    return str(settings.read_model_path()) + LOCK_SUFFIX


def run_projector(settings: Settings, parent_pid: int) -> None:
    """The projector process's main: fold, commit, repeat, until told to stop."""
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    from services.serve import configure_logging  # the serving process imports this module

    configure_logging()
    os.nice(PROJECTOR_NICENESS)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the serving process decides when to stop
    die_with_parent()
    with open(lock_path(settings), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        store = open_event_store(settings)
        read_store = open_read_store(settings, store)
        try:
            runner = ProjectionRunner(store, read_store)
            log.info("projector.started", position=runner.position)
            while not stopping and os.getppid() == parent_pid:
                before = runner.position
                if runner.catch_up(batch_size=CATCH_UP_BATCH_EVENTS) - before < (
                    CATCH_UP_BATCH_EVENTS
                ):
                    time.sleep(POLL_INTERVAL_S)
            log.info("projector.stopped", position=runner.position)
        finally:
            read_store.close()
            store.close()


class Projector(ChildProcess):
    """The serving process's handle on its projector process."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("ledger-projector", run_projector, settings, os.getpid())
