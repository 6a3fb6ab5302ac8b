"""Replay to a point of the log: the balances as of a position, and `as_of` specs resolved to one.

An `as_of` spec is `position:N` or an RFC 3339 instant (with its offset); an instant means the
last record recorded at or before it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final, Protocol

import msgspec

from ledger.log import Head, StoredRecord, us_from_datetime
from projections.balances import Balances, apply_data
from schemas.usage import UtcInstant

POSITION_PREFIX: Final = "position:"
MAX_AS_OF_CHARS: Final = 64
PROGRESS_EVERY_RECORDS: Final = 10_000


class InvalidAsOf(ValueError):
    """An `as_of` that is neither `position:N` (0 <= N <= head) nor an RFC 3339 instant."""


class AsOfSource(Protocol):
    def read(self, after: int = 0, until: int | None = None) -> Iterator[StoredRecord]: ...

    def head(self) -> Head: ...

    def position_at(self, recorded_at_us: int) -> int: ...


def balances_as_of(
    event_store: AsOfSource,
    until_position: int,
    on_progress: Callable[[int], None] | None = None,
) -> Balances:
    """The balances folded from records 1..until_position, in memory.

    `on_progress(n)` is told, every `PROGRESS_EVERY_RECORDS` records and at the end, how many
    more records were folded since it was last told (the shape of a progress bar's `update`).
    """
    assert until_position >= 0
    balances = Balances()
    folded = 0
    for record in event_store.read(after=0, until=until_position):
        apply_data(balances, record.data)
        folded += 1
        if on_progress is not None and folded == PROGRESS_EVERY_RECORDS:
            on_progress(folded)
            folded = 0
    if on_progress is not None and folded:
        on_progress(folded)
    balances.take_changes()
    return balances


def resolve_as_of(event_store: AsOfSource, spec: str) -> int:
    """The log position an `as_of` spec stands for. Raises `InvalidAsOf`."""
    if len(spec) > MAX_AS_OF_CHARS:
        raise InvalidAsOf(f"as_of is longer than {MAX_AS_OF_CHARS} characters")
    if spec.startswith(POSITION_PREFIX):
        digits = spec.removeprefix(POSITION_PREFIX)
        if not digits.isascii() or not digits.isdigit():
            raise InvalidAsOf(f"as_of {spec!r}: a position is a non-negative integer")
        position = int(digits)
        head = event_store.head().position
        if position > head:
            raise InvalidAsOf(f"as_of {spec!r} is beyond the log's head position {head}")
        return position
    try:
        instant = msgspec.convert(spec, UtcInstant)
    except msgspec.ValidationError as error:
        raise InvalidAsOf(
            f"as_of {spec!r} is neither position:N nor an RFC 3339 instant with an offset"
        ) from error
    return event_store.position_at(us_from_datetime(instant))
