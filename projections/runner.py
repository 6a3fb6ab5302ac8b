"""The projection runner: folds the log into the read models batch by batch, each batch and its
checkpoint committed together, and keeps the in-memory balances in step with the tables.

At start the balances are loaded from the read model tables rather than replayed: loading costs
one row per seat, pack and subscription, a replay one fold per event in the log, and the tables
hold exactly the balances as of their checkpoint (the tests check that both agree).

One runner at a time should write a read store (the projector takes the store's writer lock).
Should two race anyway (say, `ledger export` catching up while a projector runs), the store's
checkpoint compare-and-set refuses the batch of the one that lost, which then takes the tables'
word and goes on from their checkpoint: nothing is written twice or skipped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, Protocol

from ledger.errors import LogInconsistent
from ledger.log import Head, StoredRecord
from projections.balances import (
    Balances,
    ChargeView,
    CompactChargeView,
    assert_conserved,
    fold_data,
)
from projections.history import AdminIndexRow, admin_row
from projections.read_store import CheckpointMoved, ReadModelStore
from projections.usage import UsageIndexRow
from schemas.events import ChargeReversed, UsageCharged

DEFAULT_BATCH_EVENTS: Final = 10_000
"""Events folded and committed per transaction while catching up."""
REBUILD_BATCH_EVENTS: Final = 100_000
"""Events per transaction in a rebuild: fewer, larger commits."""
MAX_BATCH_EVENTS: Final = 1_000_000

ProgressCallback = Callable[[int, int], None]
"""Called after each committed batch with (position, head position)."""


class RecordSource(Protocol):
    """What the runner needs of an event store."""

    def read(self, after: int = 0, until: int | None = None) -> Iterator[StoredRecord]: ...

    def head(self) -> Head: ...


class ProjectionRunner:
    """Keeps the read store's tables (and `balances`) in step with the log.

    Each batch is committed only if the checkpoint is still where this runner left it.
    """

    def __init__(self, event_store: RecordSource, read_store: ReadModelStore) -> None:
        self._events = event_store
        self._store = read_store
        self._lock = threading.Lock()
        self._balances, self._position = self._load()

    @property
    def balances(self) -> Balances:
        """The balances as of `position`; folded in place by every catch-up. Unlocked: for the
        thread that catches up; other threads use `reading`."""
        return self._balances

    @contextmanager
    def reading(self) -> Iterator[Balances]:
        """The balances, held still (no batch folds) for the duration of the `with` block."""
        with self._lock:
            yield self._balances

    @property
    def position(self) -> int:
        return self._position

    def _load(self) -> tuple[Balances, int]:
        return self._store.snapshot()

    def catch_up(
        self,
        batch_size: int = DEFAULT_BATCH_EVENTS,
        on_progress: ProgressCallback | None = None,
    ) -> int:
        """Fold and commit every record after the checkpoint up to the head as of this call."""
        assert 1 <= batch_size <= MAX_BATCH_EVENTS
        head = self._events.head().position
        if head < self._position:
            raise LogInconsistent(f"the log's head {head} is below the checkpoint {self._position}")
        try:
            while self._position < head:
                until = min(self._position + batch_size, head)
                with self._lock:
                    usage_rows, admin_rows = self._fold(self._position, until)
                    changes = self._balances.take_changes()
                    for sub in changes.subscriptions:
                        assert_conserved(self._balances, sub.subscription_id)
                    try:
                        self._store.write_batch(
                            self._position, until, changes, usage_rows, admin_rows=admin_rows
                        )
                    except CheckpointMoved:
                        # Another runner wrote first: go on from what the tables now hold.
                        self._balances, self._position = self._load()
                        continue
                    self._position = until
                if on_progress is not None:
                    on_progress(until, head)
        except BaseException:
            # Memory may hold folds the tables do not: take the tables' word again.
            with self._lock:
                self._balances, self._position = self._load()
            raise
        return self._position

    def _fold(self, after: int, until: int) -> tuple[list[UsageIndexRow], list[AdminIndexRow]]:
        """Fold the records in (after, until]: their usage rows (charges and reversals) and
        admin history rows."""
        balances = self._balances
        usage_rows: list[UsageIndexRow] = []
        admin_rows: list[AdminIndexRow] = []
        add_row = usage_rows.append
        count = position = 0
        for record in self._events.read(after=after, until=until):
            position = record.position
            event = fold_data(balances, record.data)
            if isinstance(event, CompactChargeView | ChargeView | UsageCharged | ChargeReversed):
                add_row(
                    (
                        position,
                        record.recorded_at_us,
                        event.subscription_id,
                        event.seat_id,
                        event.model,
                    )
                )
            if not isinstance(event, CompactChargeView | ChargeView):
                admin = admin_row(position, record.recorded_at_us, event)
                if admin is not None:
                    admin_rows.append(admin)
            count += 1
        # Positions only ever increase, so `count` records ending at `until` leave no gap.
        if count != until - after or position != until:
            raise LogInconsistent(f"the log has a gap between positions {after} and {until}")
        return usage_rows, admin_rows

    def rebuild(
        self,
        batch_size: int = REBUILD_BATCH_EVENTS,
        on_progress: ProgressCallback | None = None,
    ) -> int:
        """Drop every read model row, then fold the whole log again from position 0.

        The usage indexes are built once after the bulk insert, not kept up to date row by row.
        """
        self._store.reset(drop_usage_indexes=True)
        self._balances, self._position = Balances(), 0
        try:
            return self.catch_up(batch_size, on_progress)
        finally:
            self._store.create_usage_indexes()
