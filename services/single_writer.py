"""Waiting to become the one writer of a store: a process that writes shared tables (the
projector, the notifier) tries the store's writer lock until it gets it or is told to stop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from structlog.typing import FilteringBoundLogger

WRITER_LOCK_POLL_S: Final = 0.5
"""Seconds between two tries at a store's writer lock while another process holds it."""


def wait_for_writer_lock(
    try_lock: Callable[[], bool],
    wanted: Callable[[], bool],
    log: FilteringBoundLogger,
    waiting_event: str,
    reason: str,
    poll_s: float = WRITER_LOCK_POLL_S,
) -> bool:
    """Try `try_lock` every `poll_s` seconds: True once it succeeds, False as soon as the
    process is no longer `wanted`. Logs `waiting_event` once, at the first refusal (a second
    process may wait for hours: one line says why it is idle)."""
    waiting = False
    while not try_lock():
        if not waiting:
            log.info(waiting_event, reason=reason)
            waiting = True
        if not wanted():
            return False
        time.sleep(poll_s)
    return True
