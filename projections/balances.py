"""The balances projection: seat, pack and subscription balances folded from the log.

`apply` folds one event into a `Balances` in place (a copy per event would cost more than the
fold itself). It never decides: every amount comes from the event, and explicit checks (never
`assert`, which `python -O` removes) refuse, with `LogInconsistent`, amounts that would not keep
the books balanced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from ledger.errors import LedgerError, LogInconsistent
from ledger.log import EVENT_DECODER, StoredRecord
from schemas.commands import Tier
from schemas.events import (
    CycleStarted,
    LogEvent,
    PackExpired,
    PackPurchased,
    SeatAdded,
    SeatQuotaGranted,
    SeatRemoved,
    SeatResumed,
    SeatSuspended,
    SeatTierChanged,
    SubscriptionOpened,
    UsageCharged,
)
from schemas.read_models import (
    Overview,
    PackBalance,
    PackStatus,
    SeatBalance,
    SeatStatus,
    SubscriptionBalance,
)

SeatKey = tuple[str, str]
"""(subscription_id, seat_id)."""
PackKey = tuple[str, str]
"""(subscription_id, pack_id)."""

BASIS_POINTS: Final = 10_000


class SeatRow(msgspec.Struct):
    """A seat as the projection keeps it (mutable); `SeatBalance` is its published snapshot."""

    subscription_id: str
    seat_id: str
    tier: Tier
    pending_tier: Tier | None
    status: SeatStatus
    cycle: int
    quota_ucr: int
    used_ucr: int
    pack_used_ucr: int
    uncovered_ucr: int

    @property
    def remaining_ucr(self) -> int:
        return 0 if self.status == "removed" else self.quota_ucr - self.used_ucr


class PackRow(msgspec.Struct):
    subscription_id: str
    pack_id: str
    credits_ucr: int
    remaining_ucr: int
    expired_ucr: int
    purchased_at: datetime
    expires_at: datetime
    status: PackStatus


class SubscriptionRow(msgspec.Struct):
    subscription_id: str
    anchor: datetime
    cycle: int
    cycle_start: datetime | None
    cycle_end: datetime | None
    uncovered_cycle_ucr: int
    uncovered_total_ucr: int
    granted_ucr: int
    used_ucr: int
    expired_ucr: int


class Balances:
    """The whole balances read model, plus which rows changed since `take_changes`.

    `seat_ids` and `pack_ids` index the flat dicts by subscription; they are derived, so
    `dump` leaves them out and `from_rows` rebuilds them.
    """

    __slots__ = (
        "changed_packs",
        "changed_seats",
        "changed_subscriptions",
        "pack_ids",
        "packs",
        "seat_ids",
        "seats",
        "subscriptions",
    )

    def __init__(self) -> None:
        self.subscriptions: dict[str, SubscriptionRow] = {}
        self.seats: dict[SeatKey, SeatRow] = {}
        self.packs: dict[PackKey, PackRow] = {}
        self.seat_ids: dict[str, list[str]] = {}
        self.pack_ids: dict[str, list[str]] = {}
        self.changed_subscriptions: set[str] = set()
        self.changed_seats: set[SeatKey] = set()
        self.changed_packs: set[PackKey] = set()

    @classmethod
    def from_rows(
        cls,
        subscriptions: Iterable[SubscriptionRow],
        seats: Iterable[SeatRow],
        packs: Iterable[PackRow],
    ) -> Balances:
        """Balances as loaded from a store, with nothing marked changed."""
        balances = cls()
        for sub in subscriptions:
            balances.subscriptions[sub.subscription_id] = sub
            balances.seat_ids[sub.subscription_id] = []
            balances.pack_ids[sub.subscription_id] = []
        for seat in seats:
            balances.seats[(seat.subscription_id, seat.seat_id)] = seat
            balances.seat_ids[seat.subscription_id].append(seat.seat_id)
        for pack in packs:
            balances.packs[(pack.subscription_id, pack.pack_id)] = pack
            balances.pack_ids[pack.subscription_id].append(pack.pack_id)
        return balances

    def take_changes(
        self,
    ) -> tuple[list[SubscriptionRow], list[SeatRow], list[PackRow]]:
        """The rows changed since the last call (in key order), and forget them."""
        changes = (
            [self.subscriptions[k] for k in sorted(self.changed_subscriptions)],
            [self.seats[k] for k in sorted(self.changed_seats)],
            [self.packs[k] for k in sorted(self.changed_packs)],
        )
        self.forget_changes()
        return changes

    def forget_changes(self) -> None:
        """Stop tracking the rows changed so far (for balances that are never written out)."""
        self.changed_subscriptions.clear()
        self.changed_seats.clear()
        self.changed_packs.clear()


class PartView(msgspec.Struct, frozen=True, gc=False):
    """An `Allocation` as the hot path decodes it: `source` unchecked, no cycle tracking."""

    source: str
    id: str
    credits_ucr: int


class ChargeView(msgspec.Struct, frozen=True, gc=False):
    """The part of a `usage.charged` event the balances need; decoding only this is the hot path.

    Its JSON's other fields (and the `type` tag) are skipped by the decoder. An unknown
    `source` cannot slip through: `apply` asserts the parts add up, and counts only known ones.
    """

    subscription_id: str
    seat_id: str
    model: str
    credits_ucr: int
    allocation: tuple[PartView, ...]


ProjectedEvent = LogEvent | ChargeView

_CHARGE_PREFIX: Final = b'{"type":"usage.charged",'
"""`EVENT_ENCODER` writes the tag first, so a charge's bytes start with this."""
_CHARGE_DECODER: Final = msgspec.json.Decoder(ChargeView)


def decode(data: bytes) -> ProjectedEvent:
    """The event in a record's bytes; a `ChargeView` for charges, the full event otherwise."""
    if data.startswith(_CHARGE_PREFIX):
        return _CHARGE_DECODER.decode(data)
    return EVENT_DECODER.decode(data)


def apply(balances: Balances, item: StoredRecord | ProjectedEvent) -> None:
    """Fold one event (or a stored record's event) into `balances`, in place."""
    handler = _HANDLERS.get(type(item))
    if handler is None:
        assert isinstance(item, StoredRecord), f"not a log event: {type(item).__name__}"
        item = decode(item.data)
        handler = _HANDLERS[type(item)]
    handler(balances, item)


def apply_data(balances: Balances, data: bytes) -> ChargeView | UsageCharged | None:
    """Fold the event in a record's bytes; return it when it is a charge (for usage rows).

    The runner's hot path: `decode` and `apply` in one call, without the type dispatch.
    """
    if data.startswith(_CHARGE_PREFIX):
        charge = _CHARGE_DECODER.decode(data)
        _charge(balances, charge)
        return charge
    event = EVENT_DECODER.decode(data)
    _HANDLERS[type(event)](balances, event)
    return event if type(event) is UsageCharged else None


def _charge(b: Balances, e: ChargeView | UsageCharged) -> None:
    sub_id = e.subscription_id
    sub = b.subscriptions[sub_id]
    seat_key = (sub_id, e.seat_id)
    seat = b.seats[seat_key]
    total = covered = 0
    for part in e.allocation:
        amount = part.credits_ucr
        if amount < 0:
            raise LogInconsistent("no allocation part is negative")
        total += amount
        source = part.source
        if source == "seat":
            if part.id != e.seat_id:
                raise LogInconsistent("a seat part draws on the charged seat")
            seat.used_ucr += amount
            if seat.used_ucr > seat.quota_ucr:
                raise LogInconsistent("seat quota overdrawn")
            covered += amount
        elif source == "pack":
            pack_key = (sub_id, part.id)
            pack = b.packs[pack_key]
            if pack.status == "expired":
                raise LogInconsistent("an expired pack cannot be drawn on")
            pack.remaining_ucr -= amount
            if pack.remaining_ucr < 0:
                raise LogInconsistent("pack overdrawn")
            if pack.remaining_ucr == 0:
                pack.status = "exhausted"
            b.changed_packs.add(pack_key)
            seat.pack_used_ucr += amount
            covered += amount
        else:
            if source != "uncovered":
                raise LogInconsistent(f"unknown allocation source {source!r}")
            seat.uncovered_ucr += amount
            sub.uncovered_cycle_ucr += amount
            sub.uncovered_total_ucr += amount
    if total != e.credits_ucr:
        raise LogInconsistent("a charge's parts add up to the charge")
    sub.used_ucr += covered
    b.changed_seats.add(seat_key)
    b.changed_subscriptions.add(sub_id)


def _opened(b: Balances, e: SubscriptionOpened) -> None:
    sub_id = e.subscription_id
    if sub_id in b.subscriptions:
        raise LogInconsistent("a subscription is opened once")
    # Read models hold UTC instants (an old log may record an anchor with its offset).
    anchor = e.anchor.astimezone(UTC)
    b.subscriptions[sub_id] = SubscriptionRow(sub_id, anchor, -1, None, None, 0, 0, 0, 0, 0)
    b.seat_ids[sub_id] = []
    b.pack_ids[sub_id] = []
    b.changed_subscriptions.add(sub_id)


def _cycle_started(b: Balances, e: CycleStarted) -> None:
    sub = b.subscriptions[e.subscription_id]
    if e.cycle <= sub.cycle:
        raise LogInconsistent("cycles only move forward")
    sub.cycle = e.cycle
    sub.cycle_start, sub.cycle_end = e.cycle_start.astimezone(UTC), e.cycle_end.astimezone(UTC)
    sub.uncovered_cycle_ucr = 0
    b.changed_subscriptions.add(e.subscription_id)


def _seat_added(b: Balances, e: SeatAdded) -> None:
    sub = b.subscriptions[e.subscription_id]
    key = (e.subscription_id, e.seat_id)
    if key in b.seats:
        raise LogInconsistent("a seat is added once")
    if e.quota_ucr < 0:
        raise LogInconsistent("a quota is never negative")
    b.seats[key] = SeatRow(
        e.subscription_id, e.seat_id, e.tier, None, "active", e.cycle, e.quota_ucr, 0, 0, 0
    )
    b.seat_ids[e.subscription_id].append(e.seat_id)
    sub.granted_ucr += e.quota_ucr
    b.changed_seats.add(key)
    b.changed_subscriptions.add(e.subscription_id)


def _tier_changed(b: Balances, e: SeatTierChanged) -> None:
    key = (e.subscription_id, e.seat_id)
    seat = b.seats[key]
    if e.effect == "immediate":
        if seat.status == "removed":
            raise LogInconsistent("a removed seat changes no tier")
        sub = b.subscriptions[e.subscription_id]
        sub.granted_ucr += e.quota_ucr - seat.quota_ucr
        seat.tier, seat.quota_ucr, seat.pending_tier = e.to_tier, e.quota_ucr, None
        if seat.used_ucr > seat.quota_ucr:
            raise LogInconsistent("an immediate change leaves remaining >= 0")
        b.changed_subscriptions.add(e.subscription_id)
    else:
        # Changing back to the tier in force cancels a pending downgrade, as the write side does.
        seat.pending_tier = None if e.to_tier == seat.tier else e.to_tier
    b.changed_seats.add(key)


def _seat_removed(b: Balances, e: SeatRemoved) -> None:
    key = (e.subscription_id, e.seat_id)
    seat = b.seats[key]
    if seat.status == "removed":
        raise LogInconsistent("a seat is removed once")
    if e.forfeited_ucr != seat.quota_ucr - seat.used_ucr:
        raise LogInconsistent("forfeited = what was left")
    seat.status = "removed"
    b.subscriptions[e.subscription_id].expired_ucr += e.forfeited_ucr
    b.changed_seats.add(key)
    b.changed_subscriptions.add(e.subscription_id)


def _quota_granted(b: Balances, e: SeatQuotaGranted) -> None:
    key = (e.subscription_id, e.seat_id)
    seat = b.seats[key]
    sub = b.subscriptions[e.subscription_id]
    if seat.status == "removed":
        raise LogInconsistent("a removed seat is granted nothing")
    if e.lapsed_ucr != seat.quota_ucr - seat.used_ucr:
        raise LogInconsistent("lapsed = last cycle's unused quota")
    if e.quota_ucr < 0:
        raise LogInconsistent("a quota is never negative")
    sub.expired_ucr += e.lapsed_ucr
    sub.granted_ucr += e.quota_ucr
    seat.tier, seat.pending_tier, seat.cycle = e.tier, None, e.cycle
    seat.quota_ucr, seat.used_ucr, seat.pack_used_ucr, seat.uncovered_ucr = e.quota_ucr, 0, 0, 0
    b.changed_seats.add(key)
    b.changed_subscriptions.add(e.subscription_id)


def _pack_purchased(b: Balances, e: PackPurchased) -> None:
    sub = b.subscriptions[e.subscription_id]
    key = (e.subscription_id, e.pack_id)
    if key in b.packs:
        raise LogInconsistent("a pack is bought once")
    if e.credits_ucr < 0:
        raise LogInconsistent("a pack's credits are never negative")
    status: PackStatus = "active" if e.credits_ucr > 0 else "exhausted"
    b.packs[key] = PackRow(
        e.subscription_id,
        e.pack_id,
        e.credits_ucr,
        e.credits_ucr,
        0,
        e.purchased_at,
        e.expires_at,
        status,
    )
    b.pack_ids[e.subscription_id].append(e.pack_id)
    sub.granted_ucr += e.credits_ucr
    b.changed_packs.add(key)
    b.changed_subscriptions.add(e.subscription_id)


def _pack_expired(b: Balances, e: PackExpired) -> None:
    key = (e.subscription_id, e.pack_id)
    pack = b.packs[key]
    if pack.status == "expired":
        raise LogInconsistent("a pack expires once")
    if e.expired_ucr != pack.remaining_ucr:
        raise LogInconsistent("expired = what was left in the pack")
    pack.remaining_ucr, pack.expired_ucr, pack.status = 0, e.expired_ucr, "expired"
    b.subscriptions[e.subscription_id].expired_ucr += e.expired_ucr
    b.changed_packs.add(key)
    b.changed_subscriptions.add(e.subscription_id)


def _seat_suspended(b: Balances, e: SeatSuspended) -> None:
    _set_seat_status(b, (e.subscription_id, e.seat_id), "suspended")


def _seat_resumed(b: Balances, e: SeatResumed) -> None:
    _set_seat_status(b, (e.subscription_id, e.seat_id), "active")


def _set_seat_status(b: Balances, key: SeatKey, status: SeatStatus) -> None:
    seat = b.seats[key]
    if seat.status == "removed":
        raise LogInconsistent("a removed seat is neither suspended nor resumed")
    seat.status = status
    b.changed_seats.add(key)


_HANDLERS: Final[dict[type[Any], Callable[[Balances, Any], None]]] = {
    ChargeView: _charge,
    UsageCharged: _charge,
    SubscriptionOpened: _opened,
    CycleStarted: _cycle_started,
    SeatAdded: _seat_added,
    SeatTierChanged: _tier_changed,
    SeatRemoved: _seat_removed,
    SeatQuotaGranted: _quota_granted,
    PackPurchased: _pack_purchased,
    PackExpired: _pack_expired,
    SeatSuspended: _seat_suspended,
    SeatResumed: _seat_resumed,
}


class NotConserved(LedgerError):
    """granted != remaining + used + expired for a subscription: the books do not balance."""


def assert_conserved(balances: Balances, subscription_id: str) -> None:
    """Raise `NotConserved` unless the subscription's credits are all accounted for."""
    sub = balances.subscriptions[subscription_id]
    seats_remaining = 0
    for seat_id in balances.seat_ids[subscription_id]:
        seat = balances.seats[(subscription_id, seat_id)]
        if seat.remaining_ucr < 0 or seat.used_ucr < 0:
            raise NotConserved(f"seat {seat_id!r} has a negative balance")
        seats_remaining += seat.remaining_ucr
    packs_remaining = 0
    for pack_id in balances.pack_ids[subscription_id]:
        pack = balances.packs[(subscription_id, pack_id)]
        if pack.remaining_ucr < 0:
            raise NotConserved(f"pack {pack_id!r} has a negative balance")
        packs_remaining += pack.remaining_ucr
    accounted = seats_remaining + packs_remaining + sub.used_ucr + sub.expired_ucr
    if accounted != sub.granted_ucr:
        raise NotConserved(
            f"subscription {subscription_id!r}: granted {sub.granted_ucr} != "
            f"seats remaining {seats_remaining} + packs remaining {packs_remaining} "
            f"+ used {sub.used_ucr} + expired {sub.expired_ucr}"
        )


def seat_balance(row: SeatRow) -> SeatBalance:
    return SeatBalance(
        subscription_id=row.subscription_id,
        seat_id=row.seat_id,
        tier=row.tier,
        pending_tier=row.pending_tier,
        status=row.status,
        cycle=row.cycle,
        quota_ucr=row.quota_ucr,
        used_ucr=row.used_ucr,
        remaining_ucr=row.remaining_ucr,
        pack_used_ucr=row.pack_used_ucr,
        uncovered_ucr=row.uncovered_ucr,
    )


def pack_balance(row: PackRow) -> PackBalance:
    return PackBalance(
        subscription_id=row.subscription_id,
        pack_id=row.pack_id,
        credits_ucr=row.credits_ucr,
        remaining_ucr=row.remaining_ucr,
        expired_ucr=row.expired_ucr,
        purchased_at=row.purchased_at,
        expires_at=row.expires_at,
        status=row.status,
    )


def subscription_balance(row: SubscriptionRow) -> SubscriptionBalance:
    return SubscriptionBalance(
        subscription_id=row.subscription_id,
        anchor=row.anchor,
        cycle=row.cycle,
        cycle_start=row.cycle_start,
        cycle_end=row.cycle_end,
        uncovered_cycle_ucr=row.uncovered_cycle_ucr,
        uncovered_total_ucr=row.uncovered_total_ucr,
        granted_ucr=row.granted_ucr,
        used_ucr=row.used_ucr,
        expired_ucr=row.expired_ucr,
    )


def seat_balances(balances: Balances, subscription_id: str) -> list[SeatBalance]:
    """Every seat of the subscription (removed ones included), by seat id."""
    return [
        seat_balance(balances.seats[(subscription_id, seat_id)])
        for seat_id in sorted(balances.seat_ids.get(subscription_id, ()))
    ]


def pack_balances(balances: Balances, subscription_id: str) -> list[PackBalance]:
    """Every pack of the subscription, soonest expiry first (ties: purchase, then pack id)."""
    packs = [
        balances.packs[(subscription_id, pack_id)]
        for pack_id in balances.pack_ids.get(subscription_id, ())
    ]
    packs.sort(key=lambda p: (p.expires_at, p.purchased_at, p.pack_id))
    return [pack_balance(pack) for pack in packs]


def overview(balances: Balances, subscription_id: str) -> Overview | None:
    """The subscription at a glance; None when the read model has no such subscription."""
    sub = balances.subscriptions.get(subscription_id)
    if sub is None:
        return None
    seats = seat_balances(balances, subscription_id)
    packs = pack_balances(balances, subscription_id)
    live = [seat for seat in seats if seat.status != "removed"]
    quota_total = sum(seat.quota_ucr for seat in live)
    quota_used = sum(seat.used_ucr for seat in live)
    return Overview(
        subscription_id=subscription_id,
        cycle=sub.cycle,
        cycle_start=sub.cycle_start,
        cycle_end=sub.cycle_end,
        quota_total_ucr=quota_total,
        quota_used_ucr=quota_used,
        utilization_basis_points=quota_used * BASIS_POINTS // quota_total if quota_total else 0,
        seats=tuple(seats),
        packs=tuple(packs),
        packs_remaining_ucr=sum(pack.remaining_ucr for pack in packs),
        uncovered_ucr=sub.uncovered_cycle_ucr,
        uncovered_total_ucr=sub.uncovered_total_ucr,
    )


class _Dump(msgspec.Struct, frozen=True):
    subscriptions: list[SubscriptionBalance]
    seats: list[SeatBalance]
    packs: list[PackBalance]


_DUMP_ENCODER: Final = msgspec.json.Encoder(order="sorted")


def dump(balances: Balances) -> bytes:
    """The whole read model as canonical JSON (rows in key order, keys sorted)."""
    return _DUMP_ENCODER.encode(
        _Dump(
            subscriptions=[
                subscription_balance(balances.subscriptions[k])
                for k in sorted(balances.subscriptions)
            ],
            seats=[seat_balance(balances.seats[k]) for k in sorted(balances.seats)],
            packs=[pack_balance(balances.packs[k]) for k in sorted(balances.packs)],
        )
    )
