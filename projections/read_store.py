"""What the runner, the projector and the API need of a read model store, whatever database holds
it: `SqliteReadModelStore` (projections/stores/sqlite.py) and `PostgresReadModelStore`
(projections/stores/postgres.py) are each one.

The guarantees every store keeps: a batch's changed balance rows, new usage rows and checkpoint
are committed together, and only when the checkpoint is still where the writer left it (a
compare-and-set), so the tables always hold the read model exactly as of their checkpoint, even
when two writers race; a snapshot's balances and checkpoint agree; usage pages have the bounds,
filters, order and cursor of `projections.usage`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

import msgspec

from ledger.log import StoredRecord, datetime_from_us, us_from_datetime
from projections.balances import Balances, Changes, HoldRow, PackRow, SeatRow, SubscriptionRow
from projections.history import AdminIndexRow, HistoryPage, HistoryQuery
from projections.usage import UsageIndexRow, UsageQuery
from schemas.events import Allocation
from schemas.read_models import SourceKind, UsagePage

DEFAULT_CHECKPOINT: Final = "read_models"


class CheckpointMoved(RuntimeError):
    """A batch was written against a checkpoint that another writer had moved since: nothing
    of the batch was written."""


class ReadModelReader(Protocol):
    """A read-only view of a read model store with a connection of its own (the API's)."""

    def page(self, query: UsageQuery) -> UsagePage:
        """One page of usage rows. Raises `InvalidUsageQuery` (bad limit or cursor)."""
        ...

    def checkpoint(self, name: str = DEFAULT_CHECKPOINT) -> int:
        """The log position the tables hold (0 before the first batch)."""
        ...

    def history(self, query: HistoryQuery) -> HistoryPage:
        """One page of a subscription's admin writes. Raises `InvalidHistoryQuery`."""
        ...

    def admin_record(self, subscription_id: str, type_: str, key: str) -> StoredRecord | None:
        """The record of the admin write of this type (an event tag) about `key` (the id the
        caller named it by), or None when the tables hold none."""
        ...

    def latest_admin_record(
        self, subscription_id: str, type_: str, until: int | None = None
    ) -> StoredRecord | None:
        """The record of the subscription's latest admin write of this type at or before log
        position `until` (None: the latest of all), or None when the tables hold none."""
        ...

    def close(self) -> None: ...


class ReadModelStore(Protocol):
    """The read model tables: balances, the usage index and checkpoints."""

    def checkpoint(self, name: str = DEFAULT_CHECKPOINT) -> int: ...

    def write_batch(
        self,
        after: int,
        position: int,
        changes: Changes,
        usage_rows: Sequence[UsageIndexRow],
        name: str = DEFAULT_CHECKPOINT,
        admin_rows: Sequence[AdminIndexRow] = (),
    ) -> None:
        """Upsert the changed balance rows (delete the holds forgotten), insert the new usage
        and admin history rows and move the checkpoint from `after` to `position`, in one
        transaction. Raises `CheckpointMoved` (and writes nothing) when the checkpoint is no
        longer `after`."""
        ...

    def reset(self, name: str = DEFAULT_CHECKPOINT, *, drop_usage_indexes: bool = False) -> None:
        """Empty every read model table and set the checkpoint to 0, in one transaction; with
        `drop_usage_indexes`, leave the usage table without its indexes for a bulk load."""
        ...

    def create_usage_indexes(self) -> None: ...

    def snapshot(self, name: str = DEFAULT_CHECKPOINT) -> tuple[Balances, int]:
        """The balances and their checkpoint, read consistently with each other."""
        ...

    def load_balances(self) -> Balances:
        """The balances exactly as the tables hold them (as of the checkpoint)."""
        ...

    def usage(self, query: UsageQuery) -> UsagePage: ...

    def history(self, query: HistoryQuery) -> HistoryPage: ...

    def usage_index_rows(self) -> list[UsageIndexRow]:
        """Every usage index row in position order (for audits and tests; unbounded)."""
        ...

    def usage_index_names(self) -> set[str]: ...

    def reader(self) -> ReadModelReader:
        """A new read-only reader of these tables, with a connection of its own."""
        ...

    def try_lock_writer(self) -> bool:
        """Become the one writer of these tables (the projector), without waiting: False when
        another holds the lock. Held until `unlock_writer` or `close`."""
        ...

    def unlock_writer(self) -> None: ...

    def close(self) -> None: ...


def subscription_values(s: SubscriptionRow) -> tuple[Any, ...]:
    """A subscription row as every store writes it: `rm_subscriptions`' columns, in order."""
    return (
        s.subscription_id,
        us_from_datetime(s.anchor),
        s.cycle,
        None if s.cycle_start is None else us_from_datetime(s.cycle_start),
        None if s.cycle_end is None else us_from_datetime(s.cycle_end),
        s.uncovered_cycle_ucr,
        s.uncovered_total_ucr,
        s.granted_ucr,
        s.used_ucr,
        s.expired_ucr,
        s.voided_ucr,
    )


def seat_values(s: SeatRow) -> tuple[Any, ...]:
    """A seat row as every store writes it: `rm_seats`' columns, in order."""
    return (
        s.subscription_id,
        s.seat_id,
        s.tier,
        s.pending_tier,
        s.status,
        s.cycle,
        s.quota_ucr,
        s.used_ucr,
        s.pack_used_ucr,
        s.uncovered_ucr,
        s.held_ucr,
    )


def pack_values(p: PackRow) -> tuple[Any, ...]:
    """A pack or grant row as every store writes it: `rm_packs`' (or `rm_grants`') columns."""
    return (
        p.subscription_id,
        p.pack_id,
        p.credits_ucr,
        p.remaining_ucr,
        p.expired_ucr,
        us_from_datetime(p.purchased_at),
        us_from_datetime(p.expires_at),
        p.status,
        p.held_ucr,
        p.voided_ucr,
    )


def hold_values(h: HoldRow) -> tuple[Any, ...]:
    """A hold row as every store writes it: `rm_holds`' columns, in order (the allocation as
    JSON)."""
    return (
        h.subscription_id,
        h.hold_id,
        h.seat_id,
        h.status,
        h.requested_ucr,
        h.credits_ucr,
        _ALLOCATION_ENCODER.encode(h.allocation).decode(),
        h.ttl_s,
        us_from_datetime(h.placed_at),
        us_from_datetime(h.expires_at),
        None if h.ended_at is None else us_from_datetime(h.ended_at),
        h.settled_by,
    )


_ALLOCATION_ENCODER: Final = msgspec.json.Encoder()
_ALLOCATION_DECODER: Final = msgspec.json.Decoder(tuple[Allocation, ...])


def balances_from_rows(
    subscriptions: Iterable[Sequence[Any]],
    seats: Iterable[Sequence[Any]],
    packs: Iterable[Sequence[Any]],
    grants: Iterable[Sequence[Any]] = (),
    holds: Iterable[Sequence[Any]] = (),
) -> Balances:
    """Balances from the tables' rows as every store selects them: the columns of
    `rm_subscriptions`, `rm_seats`, `rm_packs`, `rm_grants` and `rm_holds` in their declared
    order, instants as microseconds since the epoch."""
    return Balances.from_rows(
        (_subscription_row(*row) for row in subscriptions),
        (SeatRow(*row) for row in seats),
        [
            *(_pack_row(*row) for row in packs),
            *(_pack_row(*row, kind="grant") for row in grants),
        ],
        (_hold_row(*row) for row in holds),
    )


def _subscription_row(
    sub_id: str,
    anchor_us: int,
    cycle: int,
    start_us: int | None,
    end_us: int | None,
    *amounts_ucr: int,
) -> SubscriptionRow:
    return SubscriptionRow(
        sub_id,
        datetime_from_us(anchor_us),
        cycle,
        None if start_us is None else datetime_from_us(start_us),
        None if end_us is None else datetime_from_us(end_us),
        *amounts_ucr,
    )


def _pack_row(
    sub_id: str,
    pack_id: str,
    credits_ucr: int,
    remaining_ucr: int,
    expired_ucr: int,
    purchased_us: int,
    expires_us: int,
    status: Any,
    held_ucr: int,
    voided_ucr: int,
    *,
    kind: SourceKind = "pack",
) -> PackRow:
    return PackRow(
        sub_id,
        pack_id,
        credits_ucr,
        remaining_ucr,
        expired_ucr,
        datetime_from_us(purchased_us),
        datetime_from_us(expires_us),
        status,
        held_ucr,
        voided_ucr,
        kind,
    )


def _hold_row(
    sub_id: str,
    hold_id: str,
    seat_id: str,
    status: Any,
    requested_ucr: int,
    credits_ucr: int,
    allocation: str,
    ttl_s: int,
    placed_us: int,
    expires_us: int,
    ended_us: int | None,
    settled_by: str | None,
) -> HoldRow:
    return HoldRow(
        sub_id,
        hold_id,
        seat_id,
        status,
        requested_ucr,
        credits_ucr,
        _ALLOCATION_DECODER.decode(allocation),
        ttl_s,
        datetime_from_us(placed_us),
        datetime_from_us(expires_us),
        None if ended_us is None else datetime_from_us(ended_us),
        settled_by,
    )
