"""Snapshots taken and read back: the balances' part of a snapshot, the snapshotter that saves
the writer's state and the balances every so many records or seconds, and the balances of one
subscription as of a position from the nearest snapshot before it (ledger/snapshots.py holds
the rest: the checks, the writer's state, the stores' contract)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

import msgspec

from ledger.log import GENESIS_HASH, EventStore
from ledger.snapshots import (
    SnapshotInfo,
    SnapshotStore,
    StoredSnapshot,
    ValidSnapshot,
    decode_state,
    encode_state,
    layout_of,
    newest_valid,
    sealed,
    without_layout,
)
from ledger.state import LedgerState, evolve, initial_state
from projections.balances import (
    Balances,
    HoldRow,
    PackRow,
    SeatRow,
    SubscriptionRow,
    apply,
    apply_data,
)
from projections.snapshot_policy import (
    SNAPSHOT_EVERY_RECORDS,
    SNAPSHOT_EVERY_SECONDS,
    SNAPSHOTS_KEPT,
)


class _BalancesBlob(msgspec.Struct, array_like=True):
    """Every row of a `Balances`, each kind in the order the balances hold it (their indexes
    are rebuilt from the rows, as a read store's load rebuilds them)."""

    subscriptions: list[SubscriptionRow]
    seats: list[SeatRow]
    shared: list[PackRow]
    holds: list[HoldRow]


_BLOB_ENCODER: Final = msgspec.msgpack.Encoder()
_BLOB_DECODER: Final = msgspec.msgpack.Decoder(_BalancesBlob)
BALANCES_LAYOUT: Final = layout_of(_BalancesBlob)


def encode_balances(balances: Balances) -> bytes:
    return BALANCES_LAYOUT + _BLOB_ENCODER.encode(
        _BalancesBlob(
            list(balances.subscriptions.values()),
            list(balances.seats.values()),
            [*balances.packs.values(), *balances.grants.values()],
            list(balances.holds.values()),
        )
    )


def decode_balances(data: bytes, only: str | None = None) -> Balances:
    """The balances a snapshot holds; with `only`, that subscription's rows alone."""
    blob = _BLOB_DECODER.decode(without_layout(BALANCES_LAYOUT, data))
    if only is None:
        return Balances.from_rows(blob.subscriptions, blob.seats, blob.shared, blob.holds)
    return Balances.from_rows(
        [row for row in blob.subscriptions if row.subscription_id == only],
        [row for row in blob.seats if row.subscription_id == only],
        [row for row in blob.shared if row.subscription_id == only],
        [row for row in blob.holds if row.subscription_id == only],
    )


def _both(snapshot: StoredSnapshot) -> tuple[LedgerState, Balances]:
    return decode_state(snapshot.state), decode_balances(snapshot.balances)


def save_snapshot(
    snapshots: SnapshotStore,
    events: EventStore,
    position: int,
    state: LedgerState,
    balances: Balances,
) -> SnapshotInfo:
    """Save the state and balances as of `position` (both folded to exactly there)."""
    records = list(events.read(after=position - 1, until=position)) if position else []
    head_hash = records[0].hash if records else GENESIS_HASH
    snapshot = sealed(
        position, head_hash, encode_state(state), encode_balances(balances), time.time_ns() // 1000
    )
    snapshots.save(snapshot)
    return snapshot.info


def create_snapshot(snapshots: SnapshotStore, events: EventStore) -> SnapshotInfo:
    """A snapshot at the head: the newest valid one (or nothing) folded forward to it."""
    start = newest_valid(snapshots, events, _both)
    state, balances = (initial_state(), Balances()) if start is None else start.value
    position = 0 if start is None else start.position
    for record in events.read(after=position):
        event = record.event()
        evolve(state, event)
        apply(balances, event)
        position = record.position
    balances.forget_changes()
    return save_snapshot(snapshots, events, position, state, balances)


def balances_from_snapshot(
    snapshots: SnapshotStore, events: EventStore, position: int
) -> tuple[Balances, int]:
    """The balances as of `position`: the newest valid snapshot at or before it, then the
    records after it; with the snapshot's position (0 when none served)."""
    start = newest_valid(snapshots, events, lambda s: decode_balances(s.balances), position)
    balances, after = (Balances(), 0) if start is None else (start.value, start.position)
    for chunk in events.read_event_data(after, position):
        for data in chunk:
            apply_data(balances, data)
    balances.forget_changes()
    return balances, after


def further_along(
    snapshots: SnapshotStore, events: EventStore, balances: Balances, position: int
) -> tuple[Balances, int]:
    """Where to start following the log: `balances` at `position` (a read store's tables), or
    the newest valid snapshot's balances when it is further along (after a projector that
    lagged, a start then folds less of the log)."""
    if not any(info.position > position for info in snapshots.infos()):
        return balances, position
    found = newest_valid(snapshots, events, lambda s: decode_balances(s.balances))
    if found is None or found.position <= position:
        return balances, position
    return found.value, found.position


def prune(snapshots: SnapshotStore, keep: int = SNAPSHOTS_KEPT) -> list[int]:
    """Delete all but the newest `keep` snapshots; the positions deleted."""
    if keep < 1:
        raise ValueError(f"keep at least one snapshot, not {keep}")
    gone = [info.position for info in snapshots.infos()[keep:]]
    for position in gone:
        snapshots.delete(position)
    return gone


class Snapshotter:
    """Saves a snapshot once `every_records` records or `every_seconds` seconds have passed
    since the last, from balances someone else folds (the projector's) and a writer's state it
    folds itself, from the newest valid snapshot on."""

    def __init__(
        self,
        snapshots: SnapshotStore,
        events: EventStore,
        *,
        every_records: int = SNAPSHOT_EVERY_RECORDS,
        every_seconds: float = SNAPSHOT_EVERY_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_records < 1 or every_seconds <= 0:
            raise ValueError("snapshots need every_records >= 1 and every_seconds > 0")
        self._snapshots = snapshots
        self._events = events
        self._every_records = every_records
        self._every_seconds = every_seconds
        self._monotonic = monotonic
        start: ValidSnapshot[LedgerState] | None = newest_valid(
            snapshots, events, lambda s: decode_state(s.state)
        )
        self._state = initial_state() if start is None else start.value
        self.position = 0 if start is None else start.position
        self.saved_position = self.position
        self._saved_at = monotonic()

    def due(self, position: int) -> bool:
        moved = position - self.saved_position
        waited = self._monotonic() - self._saved_at
        return moved >= self._every_records or (moved > 0 and waited >= self._every_seconds)

    def take(self, balances: Balances, position: int) -> SnapshotInfo:
        """Save a snapshot at `position`, where `balances` stand."""
        for record in self._events.read(after=self.position, until=position):
            evolve(self._state, record.event())
            self.position = record.position
        info = save_snapshot(self._snapshots, self._events, position, self._state, balances)
        self.saved_position, self._saved_at = position, self._monotonic()
        return info


_CACHED_SNAPSHOTS: Final = 4


class SubscriptionHistory:
    """One subscription's balances as of any position: the nearest valid snapshot at or before
    it, then that subscription's records after the snapshot. Decoded snapshots are cached."""

    def __init__(self, events: EventStore, snapshots: SnapshotStore | None) -> None:
        self._events = events
        self._snapshots = snapshots
        self._cache: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def balances(self, subscription_id: str, position: int) -> Balances:
        start = self._start(position)
        if start is None:
            balances, after = Balances(), 0
        else:
            balances = decode_balances(start[1], only=subscription_id)
            after = start[0]
        for chunk in self._events.read_subscription_data(subscription_id, position, after=after):
            for data in chunk:
                apply_data(balances, data)
        balances.forget_changes()
        return balances

    def _start(self, position: int) -> tuple[int, bytes] | None:
        if self._snapshots is None:
            return None
        with self._lock:
            return self._nearest(position, self._snapshots)

    def _nearest(self, position: int, snapshots: SnapshotStore) -> tuple[int, bytes] | None:
        cached = [p for p in self._cache if p <= position]
        infos = [i for i in snapshots.infos() if i.position <= position]
        if not infos:
            return None
        newest = infos[0].position
        if cached and max(cached) == newest:
            return newest, self._cache[newest]
        found = newest_valid(snapshots, self._events, lambda s: s.balances, position)
        if found is None:
            return None
        if len(self._cache) >= _CACHED_SNAPSHOTS:
            self._cache.pop(min(self._cache))
        self._cache[found.position] = found.value
        return found.position, found.value
