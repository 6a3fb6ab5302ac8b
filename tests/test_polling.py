"""Following the log on an idle ledger: the sleep between two looks doubles while they find
nothing, up to its bound, and starts over when one finds work."""

from __future__ import annotations

import pytest

from services.polling import IdleBackoff


def test_idle_looks_sleep_longer_up_to_the_bound_and_work_starts_over() -> None:
    backoff = IdleBackoff(0.005, 0.04)
    assert [backoff.idle_sleep_s() for _ in range(6)] == [0.005, 0.01, 0.02, 0.04, 0.04, 0.04]
    backoff.found_work()
    assert backoff.idle_sleep_s() == 0.005


@pytest.mark.parametrize(("busy_s", "idle_s"), [(0, 1), (0.1, 0.05), (-1, 1)])
def test_a_backoff_needs_a_positive_interval_no_longer_than_its_bound(
    busy_s: float, idle_s: float
) -> None:
    with pytest.raises(ValueError):
        IdleBackoff(busy_s, idle_s)
