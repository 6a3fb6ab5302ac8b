"""How long a process that follows the log sleeps between two looks at it: the shortest
interval while records keep coming, doubling while none do, up to a bound. An idle ledger then
costs a few looks a second instead of a hundred or more, and the first record after a quiet
spell is seen within the bound."""

from __future__ import annotations


class IdleBackoff:
    """Sleeps after looks that found nothing: `busy_s` after the first, twice the last one
    after each next, at most `idle_s`; a look that finds work starts over (`found_work`)."""

    def __init__(self, busy_s: float, idle_s: float) -> None:
        if not 0 < busy_s <= idle_s:
            raise ValueError(f"need 0 < busy_s <= idle_s, got {busy_s} and {idle_s}")
        self.busy_s = busy_s
        self.idle_s = idle_s
        self._next_s = busy_s

    def found_work(self) -> None:
        self._next_s = self.busy_s

    def idle_sleep_s(self) -> float:
        """The sleep after a look that found nothing (and the next one doubles)."""
        sleep_s = self._next_s
        self._next_s = min(self._next_s * 2, self.idle_s)
        return sleep_s
