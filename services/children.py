"""The child processes of `ledger serve` (the projector, the HTTP API): spawned fresh (no
state inherited by fork), stopped with SIGTERM and then SIGKILL, and never outliving the
serving process, even one killed with SIGKILL."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import signal
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any, Final

STOP_TIMEOUT_S: Final = 15.0
"""Seconds a child gets, after SIGTERM, to finish what it has in hand and exit."""
_PR_SET_PDEATHSIG: Final = 1


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """In the child: ask Linux to send `signum` when the parent dies (a SIGKILL gives the
    parent no chance to stop its children itself)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)


class ChildProcess:
    """One child: `target(*args)` in a fresh interpreter. Start it from the main thread (Linux
    ties the parent-death signal to the thread that forked)."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        self.name = name
        self._target = target
        self._args = args
        self._process: BaseProcess | None = None

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._process = context.Process(
            target=self._target, args=self._args, name=self.name, daemon=True
        )
        self._process.start()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def exitcode(self) -> int | None:
        return None if self._process is None else self._process.exitcode

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.is_alive():
            process.terminate()
            process.join(timeout_s)
        if process.is_alive():
            process.kill()
            process.join()
