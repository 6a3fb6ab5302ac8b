"""The projector process: keeps the read model tables (balances, usage rows) in step with the
log, on a core of its own, while the serving process appends and acknowledges.

The log is committed before any entry is acknowledged, so nothing here is on the path to an
acknowledgement: a projector that lags, dies or restarts delays what usage pages show, never
what is charged. One projector writes one read store: each holds an exclusive lock on a file
beside the read models while it runs, so a second one (say, left behind by a serving process
killed with SIGKILL) waits instead of writing the same tables.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import multiprocessing
import os
import signal
import time
from multiprocessing.process import BaseProcess
from typing import Final

import structlog

from projections.runner import ProjectionRunner
from services.bootstrap import open_event_store, open_read_store
from services.config import Settings

IDLE_POLL_S: Final = 0.005
"""Seconds between two looks at the log's head when there was nothing new to fold."""
CATCH_UP_BATCH_EVENTS: Final = 20_000
"""Most events folded and committed in one read-model transaction."""
STOP_TIMEOUT_S: Final = 15.0
"""Seconds a stopping serve waits for the projector to commit its batch and exit."""
LOCK_SUFFIX: Final = ".lock"
_PR_SET_PDEATHSIG: Final = 1

log = structlog.get_logger("ledger.projector")


def lock_path(settings: Settings) -> str:
    return str(settings.read_model_path()) + LOCK_SUFFIX


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM when the parent dies (a SIGKILL gives it no chance to ask)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def run_projector(settings: Settings, parent_pid: int) -> None:
    """The projector process's main: fold, commit, repeat, until told to stop."""
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    from services.serve import configure_logging  # the serving process imports this module

    configure_logging()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the serving process decides when to stop
    _die_with_parent()
    with open(lock_path(settings), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        store = open_event_store(settings)
        read_store = open_read_store(settings, store)
        try:
            runner = ProjectionRunner(store, read_store)
            log.info("projector.started", position=runner.position)
            while not stopping and os.getppid() == parent_pid:
                before = runner.position
                if runner.catch_up(batch_size=CATCH_UP_BATCH_EVENTS) == before:
                    time.sleep(IDLE_POLL_S)
            log.info("projector.stopped", position=runner.position)
        finally:
            read_store.close()
            store.close()


class Projector:
    """The serving process's handle on its projector process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._process: BaseProcess | None = None

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._process = context.Process(
            target=run_projector,
            args=(self.settings, os.getpid()),
            name="ledger-projector",
            daemon=True,
        )
        self._process.start()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def exitcode(self) -> int | None:
        return None if self._process is None else self._process.exitcode

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.is_alive():
            process.terminate()  # SIGTERM: the batch in hand is committed, then it exits
            process.join(STOP_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join()
