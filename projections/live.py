"""Balances kept in memory and in step with the log, for answers that must include the last
append at once and must not touch a database (the gateway pre-check, admin write replies).

The writer thread folds new records in (`catch_up`); readers on other threads take `reading()`
for a consistent view. The fold takes the lock per chunk of records, so a reader waits at most
one chunk, and never sees a record half applied.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Final, Protocol

from ledger.errors import LogInconsistent
from ledger.log import Head
from projections.balances import Balances, apply_data

FOLD_CHUNK_RECORDS: Final = 100
"""Records folded per hold of the lock: ~0.3 ms, the longest a reader waits."""


class EventDataSource(Protocol):
    """What the live balances need of an event store."""

    def read_event_data(self, after: int, until: int) -> Iterator[list[bytes]]: ...

    def head(self) -> Head: ...


class BalanceSource(Protocol):
    """Balances folded on one thread and read on others: `LiveBalances`, `ProjectionRunner`."""

    @property
    def position(self) -> int: ...

    def reading(self) -> AbstractContextManager[Balances]:
        """The balances, held still for the duration of the `with` block."""
        ...

    def catch_up(self) -> int:
        """Fold what the log holds beyond `position` (on the folding thread only)."""
        ...


class LiveBalances:
    """The balances as of `position`, folded from `events` after a starting point."""

    def __init__(self, events: EventDataSource, balances: Balances, position: int) -> None:
        self._events = events
        self._balances = balances
        self._position = position
        self._lock = threading.Lock()

    @property
    def position(self) -> int:
        return self._position

    @property
    def balances(self) -> Balances:
        """Unlocked: for the writer thread, the only one that folds. Readers use `reading`."""
        return self._balances

    @contextmanager
    def reading(self) -> Iterator[Balances]:
        """The balances, held still for the duration of the `with` block."""
        with self._lock:
            yield self._balances

    def catch_up(self) -> int:
        """Fold every record after `position` up to the head as of this call."""
        head = self._events.head().position
        for records in self._events.read_event_data(self._position, head):
            for first in range(0, len(records), FOLD_CHUNK_RECORDS):
                self._fold(records[first : first + FOLD_CHUNK_RECORDS])
        if self._position != head:
            raise LogInconsistent(f"the log has a gap before position {head}")
        return self._position

    def _fold(self, chunk: list[bytes]) -> None:
        """Fold the records that follow `position`, in order (positions are gap-free)."""
        balances = self._balances
        with self._lock:
            for data in chunk:
                apply_data(balances, data)
            self._position += len(chunk)
            balances.forget_changes()
