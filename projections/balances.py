"""The balances projection: seat, pack and subscription balances folded from the log.

`apply` folds one event into a `Balances` in place (a copy per event would cost more than the
fold itself). It never decides: every amount comes from the event, and explicit checks (never
`assert`, which `python -O` removes) refuse, with `LogInconsistent`, amounts that would not keep
the books balanced.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from ledger.errors import LedgerError, LogInconsistent
from ledger.log import EVENT_DECODER, StoredRecord
from ledger.records import COMPACT_PREFIX, compact_tag, compact_view_decoder, is_compact
from schemas.commands import Tier
from schemas.events import (
    Allocation,
    ChargeReversed,
    CreditsGranted,
    CycleStarted,
    GrantExpired,
    GrantVoided,
    HoldExpired,
    HoldExtended,
    HoldPlaced,
    HoldReleased,
    HoldSettled,
    HoldShrunk,
    LogEvent,
    NotificationSettingsChanged,
    PackExpired,
    PackPurchased,
    PackVoided,
    SeatAdded,
    SeatAdjusted,
    SeatQuotaGranted,
    SeatRemoved,
    SeatResumed,
    SeatSuspended,
    SeatTierChanged,
    SubscriptionOpened,
    UsageCharged,
)
from schemas.limits import HOLD_MEMORY_S
from schemas.read_models import (
    HoldLifecycle,
    Overview,
    PackBalance,
    PackStatus,
    SeatBalance,
    SeatStatus,
    SourceKind,
    SubscriptionBalance,
)

SeatKey = tuple[str, str]
"""(subscription_id, seat_id)."""
PackKey = tuple[str, str]
"""(subscription_id, pack_id), or (subscription_id, grant_id) among grants."""
HoldKey = tuple[str, str]
"""(subscription_id, hold_id)."""
HOLD_MEMORY: Final = timedelta(seconds=HOLD_MEMORY_S)

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
    held_ucr: int = 0
    """What active holds of this seat took from its own quota."""

    @property
    def remaining_ucr(self) -> int:
        return 0 if self.status == "removed" else self.quota_ucr - self.used_ucr


class PackRow(msgspec.Struct):
    """A pack, or a grant (`kind`): shared credits of the subscription with an expiry."""

    subscription_id: str
    pack_id: str
    credits_ucr: int
    remaining_ucr: int
    expired_ucr: int
    purchased_at: datetime
    expires_at: datetime
    status: PackStatus
    held_ucr: int = 0
    voided_ucr: int = 0
    kind: SourceKind = "pack"


class HoldRow(msgspec.Struct):
    """A hold as the projection keeps it: active, or ended within the last `HOLD_MEMORY`."""

    subscription_id: str
    hold_id: str
    seat_id: str
    status: HoldLifecycle
    requested_ucr: int
    credits_ucr: int
    allocation: tuple[Allocation, ...]
    ttl_s: int
    placed_at: datetime
    expires_at: datetime
    ended_at: datetime | None = None
    settled_by: str | None = None


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
    voided_ucr: int = 0


class Balances:
    """The whole balances read model, plus which rows changed since `take_changes`.

    `seat_ids`, `pack_ids`, `grant_ids`, `active_holds` and `ended_holds` index the flat dicts
    by subscription; they are derived, so `dump` leaves them out and `from_rows` rebuilds them.
    """

    __slots__ = (
        "active_holds",
        "changed_grants",
        "changed_holds",
        "changed_packs",
        "changed_seats",
        "changed_subscriptions",
        "ended_holds",
        "grant_ids",
        "grants",
        "holds",
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
        self.grants: dict[PackKey, PackRow] = {}
        self.holds: dict[HoldKey, HoldRow] = {}
        self.seat_ids: dict[str, list[str]] = {}
        self.pack_ids: dict[str, list[str]] = {}
        self.grant_ids: dict[str, list[str]] = {}
        self.ended_holds: dict[str, deque[tuple[datetime, str]]] = {}
        self.active_holds: dict[str, set[str]] = {}
        """The ids of each subscription's active holds."""
        self.changed_subscriptions: set[str] = set()
        self.changed_seats: set[SeatKey] = set()
        self.changed_packs: set[PackKey] = set()
        self.changed_grants: set[PackKey] = set()
        self.changed_holds: set[HoldKey] = set()

    @classmethod
    def from_rows(
        cls,
        subscriptions: Iterable[SubscriptionRow],
        seats: Iterable[SeatRow],
        packs: Iterable[PackRow],
        holds: Iterable[HoldRow] = (),
    ) -> Balances:
        """Balances as loaded from a store, with nothing marked changed. Packs and grants come
        in one iterable, told apart by `kind`."""
        balances = cls()
        for sub in subscriptions:
            balances._add_subscription(sub)
        for seat in seats:
            balances.seats[(seat.subscription_id, seat.seat_id)] = seat
            balances.seat_ids[seat.subscription_id].append(seat.seat_id)
        for pack in packs:
            rows, ids = balances._shared(pack.kind)
            rows[(pack.subscription_id, pack.pack_id)] = pack
            ids[pack.subscription_id].append(pack.pack_id)
        ended: list[HoldRow] = []
        for hold in holds:
            balances.holds[(hold.subscription_id, hold.hold_id)] = hold
            if hold.ended_at is not None:
                ended.append(hold)
            elif hold.status == "active":
                balances.active_holds[hold.subscription_id].add(hold.hold_id)
        for hold in sorted(ended, key=lambda h: (h.ended_at, h.hold_id)):
            assert hold.ended_at is not None
            balances.ended_holds[hold.subscription_id].append((hold.ended_at, hold.hold_id))
        return balances

    def _add_subscription(self, sub: SubscriptionRow) -> None:
        sub_id = sub.subscription_id
        self.subscriptions[sub_id] = sub
        self.seat_ids[sub_id], self.pack_ids[sub_id], self.grant_ids[sub_id] = [], [], []
        self.ended_holds[sub_id] = deque()
        self.active_holds[sub_id] = set()

    def _shared(self, kind: str) -> tuple[dict[PackKey, PackRow], dict[str, list[str]]]:
        return (self.packs, self.pack_ids) if kind == "pack" else (self.grants, self.grant_ids)

    def take_changes(self) -> Changes:
        """The rows changed since the last call (in key order), and forget them."""
        changes = Changes(
            [self.subscriptions[k] for k in sorted(self.changed_subscriptions)],
            [self.seats[k] for k in sorted(self.changed_seats)],
            [self.packs[k] for k in sorted(self.changed_packs)]
            + [self.grants[k] for k in sorted(self.changed_grants)],
            [self.holds[k] for k in sorted(self.changed_holds) if k in self.holds],
            [k for k in sorted(self.changed_holds) if k not in self.holds],
        )
        self.forget_changes()
        return changes

    def forget_changes(self) -> None:
        """Stop tracking the rows changed so far (for balances that are never written out)."""
        self.changed_subscriptions.clear()
        self.changed_seats.clear()
        self.changed_packs.clear()
        self.changed_grants.clear()
        self.changed_holds.clear()


class Changes(msgspec.Struct, frozen=True):
    """What a batch changed: rows to upsert (packs and grants together, by `kind`), and the
    holds forgotten (to delete)."""

    subscriptions: list[SubscriptionRow]
    seats: list[SeatRow]
    packs: list[PackRow]
    holds: list[HoldRow]
    forgotten_holds: list[HoldKey]


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


class CompactPartView(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """A `PartView` read from a compact record."""

    source: str
    id: str
    credits_ucr: int


class CompactChargeView(
    msgspec.Struct, frozen=True, gc=False, array_like=True, tag=compact_tag(UsageCharged)
):
    """A `ChargeView` read from a compact record: the leading fields of a charge's array."""

    subscription_id: str
    seat_id: str
    model: str
    credits_ucr: int
    allocation: tuple[CompactPartView, ...]


ProjectedEvent = LogEvent | ChargeView | CompactChargeView

_CHARGE_PREFIX: Final = b'{"type":"usage.charged",'
"""`EVENT_ENCODER` writes the tag first, so a charge's bytes start with this."""
_CHARGE_DECODER: Final = msgspec.json.Decoder(ChargeView)


_COMPACT_DECODER: Final = compact_view_decoder(UsageCharged, CompactChargeView)


def decode(data: bytes) -> ProjectedEvent:
    """The event in a record's bytes; a charge view for charges, the full event otherwise."""
    if is_compact(data):
        decoded: ProjectedEvent = _COMPACT_DECODER(data)
        return decoded
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


def apply_data(
    balances: Balances, data: bytes
) -> ChargeView | CompactChargeView | UsageCharged | None:
    """Fold the event in a record's bytes; return it when it is a charge."""
    event = fold_data(balances, data)
    if isinstance(event, CompactChargeView | ChargeView | UsageCharged):
        return event
    return None


def fold_data(balances: Balances, data: bytes) -> ProjectedEvent:
    """Fold the event in a record's bytes and return it (for usage and history rows).

    The runner's hot path: `decode` and `apply` in one call, without the type dispatch.
    """
    if is_compact(data):
        found = _COMPACT_DECODER(data)
        if type(found) is CompactChargeView:
            _charge(balances, found)
            return found
        _HANDLERS[type(found)](balances, found)
        event: ProjectedEvent = found
        return event
    if data.startswith(_CHARGE_PREFIX):
        charge = _CHARGE_DECODER.decode(data)
        _charge(balances, charge)
        return charge
    logged = EVENT_DECODER.decode(data)
    _HANDLERS[type(logged)](balances, logged)
    return logged


def fold_all(balances: Balances, chunk: Iterable[bytes]) -> None:
    """Fold the events in many records' bytes, in order: `fold_data`'s loop with its look-ups
    hoisted out (replays fold every record of a log through here)."""
    decode_compact, charge, handlers = _COMPACT_DECODER, _charge, _HANDLERS
    for data in chunk:
        if data[:1] != COMPACT_PREFIX:
            fold_data(balances, data)
            continue
        found = decode_compact(data)
        if type(found) is CompactChargeView:
            charge(balances, found)
        else:
            handlers[type(found)](balances, found)


def _charge(b: Balances, e: ChargeView | CompactChargeView | UsageCharged) -> None:
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
            if seat.used_ucr + seat.held_ucr > seat.quota_ucr:
                raise LogInconsistent("seat quota overdrawn")
            covered += amount
        elif source == "pack" or source == "grant":
            _draw_shared(b, source, (sub_id, part.id), amount)
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


def _draw_shared(b: Balances, source: str, key: PackKey, amount_ucr: int) -> None:
    rows, _ = b._shared(source)
    pack = rows[key]
    if pack.status in ("expired", "voided"):
        raise LogInconsistent(f"an {pack.status} {source} cannot be drawn on")
    pack.remaining_ucr -= amount_ucr
    if pack.remaining_ucr < pack.held_ucr:
        raise LogInconsistent(f"{source} overdrawn")
    if pack.remaining_ucr == 0:
        pack.status = "exhausted"
    _changed_shared(b, pack)


def _changed_shared(b: Balances, pack: PackRow) -> None:
    changed = b.changed_packs if pack.kind == "pack" else b.changed_grants
    changed.add((pack.subscription_id, pack.pack_id))


def _opened(b: Balances, e: SubscriptionOpened) -> None:
    sub_id = e.subscription_id
    if sub_id in b.subscriptions:
        raise LogInconsistent("a subscription is opened once")
    # Read models hold UTC instants (an old log may record an anchor with its offset).
    anchor = e.anchor.astimezone(UTC)
    b._add_subscription(SubscriptionRow(sub_id, anchor, -1, None, None, 0, 0, 0, 0, 0))
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
    _end_shared(b, b.packs[(e.subscription_id, e.pack_id)], e.expired_ucr, "expired")


def _end_shared(b: Balances, pack: PackRow, gone_ucr: int, how: PackStatus) -> None:
    """A pack or grant expires or is voided: what it had left is gone (no hold may still take
    from it: holds on it shrank first)."""
    if pack.status in ("expired", "voided"):
        raise LogInconsistent(f"a {pack.kind} ends once")
    if gone_ucr != pack.remaining_ucr or pack.held_ucr:
        raise LogInconsistent(f"what ends with a {pack.kind} is what was left in it, unheld")
    sub = b.subscriptions[pack.subscription_id]
    pack.remaining_ucr, pack.status = 0, how
    if how == "expired":
        pack.expired_ucr += gone_ucr
        sub.expired_ucr += gone_ucr
    else:
        pack.voided_ucr += gone_ucr
        sub.voided_ucr += gone_ucr
    _changed_shared(b, pack)
    b.changed_subscriptions.add(pack.subscription_id)


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


# -- holds ----------------------------------------------------------------------------------


def _hold_placed(b: Balances, e: HoldPlaced) -> None:
    sub_id = e.subscription_id
    _forget_ended_holds(b, sub_id, e.placed_at)
    key = (sub_id, e.hold_id)
    if key in b.holds:
        raise LogInconsistent("a hold is placed once")
    b.holds[key] = HoldRow(
        sub_id,
        e.hold_id,
        e.seat_id,
        "active",
        e.credits_ucr,
        e.credits_ucr,
        e.allocation,
        e.ttl_s,
        e.placed_at,
        e.expires_at,
    )
    for part in e.allocation:
        _hold_part(b, sub_id, e.seat_id, part.source, part.id, part.credits_ucr)
    b.active_holds[sub_id].add(e.hold_id)
    b.changed_holds.add(key)


def _hold_part(
    b: Balances, sub_id: str, seat_id: str, source: str, source_id: str, held_ucr: int
) -> None:
    """Count `held_ucr` (negative: freed) as held in the seat, pack or grant of a hold part."""
    if source == "seat":
        seat = b.seats[(sub_id, seat_id)]
        seat.held_ucr += held_ucr
        if seat.held_ucr < 0 or seat.used_ucr + seat.held_ucr > seat.quota_ucr:
            raise LogInconsistent("a hold overdraws its seat")
        b.changed_seats.add((sub_id, seat_id))
        return
    if not held_ucr:
        return  # a part shrunk to nothing may name a pack or grant that is gone
    rows, _ = b._shared(source)
    pack = rows[(sub_id, source_id)]
    pack.held_ucr += held_ucr
    if pack.held_ucr < 0 or pack.held_ucr > pack.remaining_ucr:
        raise LogInconsistent(f"a hold overdraws its {source}")
    _changed_shared(b, pack)


def _hold_extended(b: Balances, e: HoldExtended) -> None:
    hold = _active_hold(b, e.subscription_id, e.hold_id)
    hold.expires_at, hold.ttl_s = e.expires_at, e.ttl_s
    b.changed_holds.add((e.subscription_id, e.hold_id))


def _hold_released(b: Balances, e: HoldReleased) -> None:
    _end_hold(b, e.subscription_id, e.hold_id, e.released_ucr, "released", e.released_at)


def _hold_expired(b: Balances, e: HoldExpired) -> None:
    _end_hold(b, e.subscription_id, e.hold_id, e.released_ucr, "expired", e.expires_at)


def _hold_settled(b: Balances, e: HoldSettled) -> None:
    hold = _end_hold(b, e.subscription_id, e.hold_id, e.released_ucr, "settled", e.settled_at)
    hold.settled_by = e.event_id


def _hold_shrunk(b: Balances, e: HoldShrunk) -> None:
    hold = _active_hold(b, e.subscription_id, e.hold_id)
    parts, shrunk = [], False
    for part in hold.allocation:
        if not shrunk and (part.source, part.id) == (e.source, e.id):
            if part.credits_ucr < e.by_ucr:
                raise LogInconsistent("a hold shrinks by more than it took there")
            part = Allocation(part.source, part.id, part.credits_ucr - e.by_ucr)
            shrunk = True
        parts.append(part)
    if not shrunk:
        raise LogInconsistent("a hold shrinks where it took nothing")
    hold.allocation, hold.credits_ucr = tuple(parts), hold.credits_ucr - e.by_ucr
    _hold_part(b, e.subscription_id, hold.seat_id, e.source, e.id, -e.by_ucr)
    b.changed_holds.add((e.subscription_id, e.hold_id))


def _active_hold(b: Balances, sub_id: str, hold_id: str) -> HoldRow:
    hold = b.holds.get((sub_id, hold_id))
    if hold is None or hold.status != "active":
        raise LogInconsistent(f"hold {hold_id!r} is not active")
    return hold


def _end_hold(
    b: Balances, sub_id: str, hold_id: str, released_ucr: int, how: HoldLifecycle, at: datetime
) -> HoldRow:
    hold = _active_hold(b, sub_id, hold_id)
    if released_ucr != hold.credits_ucr:
        raise LogInconsistent("a hold releases what it holds")
    for part in hold.allocation:
        _hold_part(b, sub_id, hold.seat_id, part.source, part.id, -part.credits_ucr)
    hold.status, hold.ended_at = how, at
    b.active_holds[sub_id].discard(hold_id)
    b.ended_holds[sub_id].append((at, hold_id))
    b.changed_holds.add((sub_id, hold_id))
    return hold


def _forget_ended_holds(b: Balances, sub_id: str, now: datetime) -> None:
    """Ended holds are kept for `HOLD_MEMORY`, forgotten at the same events as the writer's."""
    ended = b.ended_holds[sub_id]
    while ended and ended[0][0] + HOLD_MEMORY < now:
        _, hold_id = ended.popleft()
        key = (sub_id, hold_id)
        hold = b.holds.get(key)
        if hold is not None and hold.status != "active":
            del b.holds[key]
            b.changed_holds.add(key)


# -- corrections ----------------------------------------------------------------------------


def _seat_adjusted(b: Balances, e: SeatAdjusted) -> None:
    key = (e.subscription_id, e.seat_id)
    seat = b.seats[key]
    seat.quota_ucr += e.credits_ucr
    if seat.status == "removed" or seat.used_ucr + seat.held_ucr > seat.quota_ucr:
        raise LogInconsistent("an adjustment takes more than the seat has left")
    b.subscriptions[e.subscription_id].granted_ucr += e.credits_ucr
    b.changed_seats.add(key)
    b.changed_subscriptions.add(e.subscription_id)


def _credits_granted(b: Balances, e: CreditsGranted) -> None:
    key = (e.subscription_id, e.grant_id)
    if key in b.grants or e.credits_ucr < 0:
        raise LogInconsistent("a grant is issued once, for a positive amount")
    b.grants[key] = PackRow(
        e.subscription_id,
        e.grant_id,
        e.credits_ucr,
        e.credits_ucr,
        0,
        e.granted_at,
        e.expires_at,
        "active" if e.credits_ucr else "exhausted",
        kind="grant",
    )
    b.grant_ids[e.subscription_id].append(e.grant_id)
    b.subscriptions[e.subscription_id].granted_ucr += e.credits_ucr
    b.changed_grants.add(key)
    b.changed_subscriptions.add(e.subscription_id)


def _grant_expired(b: Balances, e: GrantExpired) -> None:
    _end_shared(b, b.grants[(e.subscription_id, e.grant_id)], e.expired_ucr, "expired")


def _pack_voided(b: Balances, e: PackVoided) -> None:
    _end_shared(b, b.packs[(e.subscription_id, e.pack_id)], e.voided_ucr, "voided")


def _grant_voided(b: Balances, e: GrantVoided) -> None:
    _end_shared(b, b.grants[(e.subscription_id, e.grant_id)], e.voided_ucr, "voided")


def _no_balance_change(_b: Balances, _e: NotificationSettingsChanged) -> None:
    """Notification settings move no credits (the notifier and the history read them)."""


def _charge_reversed(b: Balances, e: ChargeReversed) -> None:
    sub = b.subscriptions[e.subscription_id]
    seat_key = (e.subscription_id, e.seat_id)
    seat = b.seats[seat_key]
    this_cycle = e.charge_cycle == seat.cycle
    for part in e.parts:
        amount = part.credits_ucr
        if part.outcome == "cleared":
            sub.uncovered_total_ucr -= amount
            if this_cycle:
                sub.uncovered_cycle_ucr -= amount
                seat.uncovered_ucr -= amount
            continue
        sub.used_ucr -= amount
        if part.outcome == "expired":
            sub.expired_ucr += amount
        elif part.source == "seat":
            seat.used_ucr -= amount
        else:
            _return_shared(b, part.source, (e.subscription_id, part.id), amount)
        if part.source != "seat" and this_cycle:
            seat.pack_used_ucr -= amount
    if min(seat.used_ucr, seat.pack_used_ucr, seat.uncovered_ucr, sub.uncovered_total_ucr) < 0:
        raise LogInconsistent("a reversal gives back more than was taken")
    b.changed_seats.add(seat_key)
    b.changed_subscriptions.add(e.subscription_id)


def _return_shared(b: Balances, source: str, key: PackKey, amount_ucr: int) -> None:
    rows, _ = b._shared(source)
    pack = rows[key]
    pack.remaining_ucr += amount_ucr
    if pack.status in ("expired", "voided") or pack.remaining_ucr > pack.credits_ucr:
        raise LogInconsistent(f"a reversal overfills {source} {key[1]!r}")
    pack.status = "active"
    _changed_shared(b, pack)


_HANDLERS: Final[dict[type[Any], Callable[[Balances, Any], None]]] = {
    ChargeView: _charge,
    CompactChargeView: _charge,
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
    HoldPlaced: _hold_placed,
    HoldExtended: _hold_extended,
    HoldReleased: _hold_released,
    HoldExpired: _hold_expired,
    HoldSettled: _hold_settled,
    HoldShrunk: _hold_shrunk,
    SeatAdjusted: _seat_adjusted,
    CreditsGranted: _credits_granted,
    GrantExpired: _grant_expired,
    ChargeReversed: _charge_reversed,
    PackVoided: _pack_voided,
    GrantVoided: _grant_voided,
    NotificationSettingsChanged: _no_balance_change,
}


class NotConserved(LedgerError):
    """granted != remaining + used + expired + voided for a subscription: the books do not
    balance."""


def assert_conserved(balances: Balances, subscription_id: str) -> None:
    """Raise `NotConserved` unless the subscription's credits are all accounted for."""
    sub = balances.subscriptions[subscription_id]
    seats_remaining = 0
    for seat_id in balances.seat_ids[subscription_id]:
        seat = balances.seats[(subscription_id, seat_id)]
        if seat.remaining_ucr < 0 or seat.used_ucr < 0:
            raise NotConserved(f"seat {seat_id!r} has a negative balance")
        seats_remaining += seat.remaining_ucr
    shared_remaining = 0
    for rows, ids in ((balances.packs, balances.pack_ids), (balances.grants, balances.grant_ids)):
        for pack_id in ids[subscription_id]:
            pack = rows[(subscription_id, pack_id)]
            if pack.remaining_ucr < 0:
                raise NotConserved(f"{pack.kind} {pack_id!r} has a negative balance")
            shared_remaining += pack.remaining_ucr
    accounted = seats_remaining + shared_remaining + sub.used_ucr + sub.expired_ucr
    if accounted + sub.voided_ucr != sub.granted_ucr:
        raise NotConserved(
            f"subscription {subscription_id!r}: granted {sub.granted_ucr} != "
            f"seats remaining {seats_remaining} + packs and grants remaining {shared_remaining} "
            f"+ used {sub.used_ucr} + expired {sub.expired_ucr} + voided {sub.voided_ucr}"
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


def grant_balances(balances: Balances, subscription_id: str) -> list[PackBalance]:
    """Every grant of the subscription, soonest expiry first (ties: when granted, then id)."""
    grants = [
        balances.grants[(subscription_id, grant_id)]
        for grant_id in balances.grant_ids.get(subscription_id, ())
    ]
    grants.sort(key=lambda g: (g.expires_at, g.purchased_at, g.pack_id))
    return [pack_balance(grant) for grant in grants]


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


# -- what a seat can spend: holds taken into account ----------------------------------------


def shared_available_ucr(balances: Balances, subscription_id: str, now: datetime) -> int:
    """What the subscription's packs and grants valid at `now` still offer, less what active
    holds took from them."""
    offered = 0
    for rows, ids in ((balances.packs, balances.pack_ids), (balances.grants, balances.grant_ids)):
        for pack_id in ids.get(subscription_id, ()):
            pack = rows[(subscription_id, pack_id)]
            if pack.status in ("expired", "voided"):
                continue
            if pack.purchased_at <= now < pack.expires_at:
                offered += max(0, pack.remaining_ucr - pack.held_ucr)
    return offered


def seat_spendable_ucr(row: SeatRow) -> int:
    """What the seat's own quota still has that no hold took (0 once removed)."""
    return max(0, row.remaining_ucr - row.held_ucr)


def held_ucr(balances: Balances, subscription_id: str, seat_id: str | None = None) -> int:
    """What the active holds of the subscription (of one seat, given `seat_id`) hold."""
    holds = (
        balances.holds[(subscription_id, h)] for h in balances.active_holds.get(subscription_id, ())
    )
    return sum(hold.credits_ucr for hold in holds if seat_id is None or hold.seat_id == seat_id)
