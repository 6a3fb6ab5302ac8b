"""A process that writes shared tables waits for their writer lock while it is wanted: it gets
on once the lock is free, gives up as soon as it is no longer wanted, and says once why it
waits."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from structlog.testing import capture_logs

from services.single_writer import wait_for_writer_lock

log = structlog.get_logger("test.single_writer")


def refusing(times: int) -> tuple[list[int], Callable[[], bool]]:
    """A lock that is refused `times` times, then granted; the list counts the tries."""
    tries: list[int] = []

    def try_lock() -> bool:
        tries.append(1)
        return len(tries) > times

    return tries, try_lock


def test_a_free_lock_is_taken_at_once_and_nothing_is_logged() -> None:
    tries, try_lock = refusing(0)
    with capture_logs() as logs:
        assert wait_for_writer_lock(try_lock, lambda: True, log, "x.waiting", "busy", poll_s=0)
    assert len(tries) == 1
    assert logs == []


def test_a_held_lock_is_tried_again_until_free_and_the_wait_is_logged_once() -> None:
    tries, try_lock = refusing(3)
    with capture_logs() as logs:
        assert wait_for_writer_lock(try_lock, lambda: True, log, "x.waiting", "busy", poll_s=0)
    assert len(tries) == 4
    assert logs == [{"event": "x.waiting", "reason": "busy", "log_level": "info"}]


def test_a_process_no_longer_wanted_stops_waiting() -> None:
    tries, try_lock = refusing(1_000)
    wanted = iter([True, True, False])
    with capture_logs() as logs:
        got = wait_for_writer_lock(try_lock, lambda: next(wanted), log, "x.waiting", "busy", 0)
    assert not got
    assert len(tries) == 3
    assert len(logs) == 1
