"""Replay to a point of the log: the balances as of a position, and `as_of` specs resolved to one.

An `as_of` spec is `position:N` or an instant written as schemas/limits.py's INSTANT_PATTERN
says (RFC 3339 with its offset, within the bounds); an instant means the last record recorded
at or before it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Final, Protocol

from ledger.log import Head, StoredRecord, us_from_datetime
from projections.balances import Balances, apply_data, fold_all
from schemas.instants import instant_from_text

POSITION_PREFIX: Final = "position:"
MAX_AS_OF_CHARS: Final = 64
PREFETCH_CHUNKS: Final = 2
"""Chunks of event bytes the replay reader may fetch ahead of the fold."""
PROGRESS_EVERY_RECORDS: Final = 10_000
"""The most records one progress report covers."""


class InvalidAsOf(ValueError):
    """An `as_of` that is neither `position:N` nor an instant within the bounds."""


class AsOfBeyondHead(InvalidAsOf):
    """A `position:N` past the log's head: the log has not reached that point (yet)."""


class AsOfSource(Protocol):
    def read(self, after: int = 0, until: int | None = None) -> Iterator[StoredRecord]: ...

    def read_event_data(self, after: int, until: int) -> Iterator[list[bytes]]: ...

    def read_subscription_data(
        self, subscription_id: str, until: int, after: int = 0
    ) -> Iterator[list[bytes]]: ...

    def head(self) -> Head: ...

    def position_at(self, recorded_at_us: int) -> int: ...


def balances_as_of(
    event_store: AsOfSource,
    until_position: int,
    on_progress: Callable[[int], None] | None = None,
) -> Balances:
    """The balances folded from records 1..until_position, in memory.

    A reader thread fetches the next chunk of event bytes while this one folds the last (the
    database releases the interpreter lock while it reads), so reading and folding overlap.
    `on_progress(n)` is told, after each chunk, how many more records were folded since it was
    last told, at most `PROGRESS_EVERY_RECORDS` at a time (the shape of a progress bar's `update`).
    """
    assert until_position >= 0
    balances = Balances()
    for chunk in _prefetched(event_store.read_event_data(0, until_position)):
        fold_all(balances, chunk)
        if on_progress is not None:
            for first in range(0, len(chunk), PROGRESS_EVERY_RECORDS):
                on_progress(min(PROGRESS_EVERY_RECORDS, len(chunk) - first))
    balances.forget_changes()
    return balances


def subscription_as_of(
    event_store: AsOfSource, subscription_id: str, until_position: int
) -> Balances:
    """The balances of one subscription folded from its own records 1..until_position: every
    event names its subscription and changes no other's rows, so the others need not be read."""
    balances = Balances()
    for chunk in event_store.read_subscription_data(subscription_id, until_position):
        for data in chunk:
            apply_data(balances, data)
    balances.forget_changes()
    return balances


_DONE: Final = object()


def _prefetched(chunks: Iterator[list[bytes]]) -> Iterator[list[bytes]]:
    """Iterate `chunks`, produced on a thread of their own at most `PREFETCH_CHUNKS` ahead."""
    handoff: queue.Queue[object] = queue.Queue(maxsize=PREFETCH_CHUNKS)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                handoff.put(chunk)
            handoff.put(_DONE)
        except BaseException as error:  # handed to the consumer, raised there
            handoff.put(error)

    reader = threading.Thread(target=produce, name="replay-reader", daemon=True)
    reader.start()
    try:
        while (item := handoff.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, list)
            yield item
    finally:
        stop.set()
        while reader.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                handoff.get_nowait()
            reader.join(timeout=0.01)


def resolve_as_of(event_store: AsOfSource, spec: str) -> int:
    """The log position an `as_of` spec stands for. Raises `InvalidAsOf`."""
    if len(spec) > MAX_AS_OF_CHARS:
        raise InvalidAsOf(f"as_of is longer than {MAX_AS_OF_CHARS} characters")
    if spec.startswith(POSITION_PREFIX):
        digits = spec.removeprefix(POSITION_PREFIX)
        if not digits.isascii() or not digits.isdigit():
            raise InvalidAsOf(f"as_of {spec!r}: a position is position:N, N a whole number")
        position = int(digits)
        head = event_store.head().position
        if position > head:
            raise AsOfBeyondHead(f"as_of {spec!r} is beyond the log's head position {head}")
        return position
    try:
        instant = instant_from_text(spec)
    except ValueError as error:
        raise InvalidAsOf(f"as_of {error}; or position:N") from None
    return event_store.position_at(us_from_datetime(instant))
