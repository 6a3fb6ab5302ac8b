"""The write side's state and `evolve`: what the decider needs to know, folded from the log.

`evolve` updates the state in place and returns it (a full copy per event would cost more
than the decision itself); `decide` never mutates a state it is given. `evolve` refuses, with
`LogInconsistent` and before changing anything, an event that cannot follow from the state:
it would overdraw a seat, a pack or a grant, hold more than is there, add anything twice, move
a cycle backwards, or name what does not exist. The audit relies on these checks, so they are
explicit, never `assert`.

Seats are keyed by their subscription: a seat id names a seat within its subscription only.
Holds reserve credits without spending them: a seat's `held_ucr` and a pack's `held_ucr` are
the parts of active holds that sit in them, which nothing but their hold may spend.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from ledger.errors import LogInconsistent
from schemas.commands import Tier
from schemas.events import (
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
from schemas.notifications import DEFAULT_SETTINGS, NotificationSettings, settings_problem

SeatStatus = Literal["active", "suspended", "removed"]
SourceKind = Literal["pack", "grant"]
HoldLifecycle = Literal["active", "settled", "released", "expired"]
HOLD_MEMORY = timedelta(seconds=HOLD_MEMORY_S)


@dataclass(slots=True)
class SeatState:
    seat_id: str
    tier: Tier
    quota_ucr: int
    used_ucr: int = 0
    status: SeatStatus = "active"
    pending_tier: Tier | None = None
    held_ucr: int = 0
    """What active holds of this seat took from its own quota."""

    @property
    def remaining_ucr(self) -> int:
        return 0 if self.status == "removed" else self.quota_ucr - self.used_ucr

    @property
    def spendable_ucr(self) -> int:
        """What the seat's own quota still has that no hold took."""
        return max(0, self.remaining_ucr - self.held_ucr)


@dataclass(slots=True)
class PackState:
    """A pack or a grant (`kind`): shared credits of the subscription, valid until `expires_at`."""

    pack_id: str
    credits_ucr: int
    remaining_ucr: int
    purchased_at: datetime
    expires_at: datetime
    held_ucr: int = 0
    """What active holds took from it."""
    kind: SourceKind = "pack"

    @property
    def spendable_ucr(self) -> int:
        return self.remaining_ucr - self.held_ucr


@dataclass(slots=True)
class HoldPart:
    """What a hold took from one source (the seat, a pack or a grant), less what shrank away."""

    source: str
    id: str
    credits_ucr: int


@dataclass(slots=True)
class HoldState:
    hold_id: str
    seat_id: str
    requested_ucr: int
    """The credits asked for (what a retry must ask for again)."""
    ttl_s: int
    credits_ucr: int
    """What the hold holds now: `requested_ucr` less what shrank away."""
    parts: list[HoldPart]
    """As placed, in deduction order."""
    placed_at: datetime
    expires_at: datetime
    status: HoldLifecycle = "active"
    ended_at: datetime | None = None
    settled_by: str | None = None


@dataclass(slots=True)
class SubscriptionState:
    subscription_id: str
    anchor: datetime
    cycle: int = -1
    cycle_start: datetime | None = None
    cycle_end: datetime | None = None
    seats: dict[str, SeatState] = field(default_factory=dict)
    live_packs: dict[str, PackState] = field(default_factory=dict)
    """Packs not yet expired nor voided (exhausted ones included: they expire on schedule)."""
    pack_ids: set[str] = field(default_factory=set)
    """Every pack id ever bought here, expired ones included."""
    next_due_at: datetime | None = None
    """The earliest cycle end, pack or grant expiry or hold expiry: kept so a charge need not
    look."""
    live_grants: dict[str, PackState] = field(default_factory=dict)
    grants: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    """Every grant id ever issued here: (credits, expires_at), for retries."""
    voided: set[str] = field(default_factory=set)
    """`pack:<id>` and `grant:<id>` of what was voided."""
    holds: dict[str, HoldState] = field(default_factory=dict)
    """Active holds, and ended ones for `HOLD_MEMORY` after they ended (retries and reads)."""
    ended_holds: deque[tuple[datetime, str]] = field(default_factory=deque)
    """(ended_at, hold_id) in the order holds ended: which to forget first."""
    adjustments: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Every adjustment id: (seat id, credits), for retries."""
    reversals: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    """Every reversal id: (charge event id, credits asked or None for all), for retries."""
    reversed_ucr: dict[str, int] = field(default_factory=dict)
    """Credits reversed so far, by the event id of the charge (charges reversed only)."""
    notification_settings: NotificationSettings = DEFAULT_SETTINGS
    """What the last `notification.settings_changed` put in force (a repeat records nothing)."""

    def refresh_next_due(self) -> None:
        if self.cycle_end is None:
            raise LogInconsistent(f"subscription {self.subscription_id!r} has no cycle yet")
        self.next_due_at = min(
            [
                self.cycle_end,
                *(p.expires_at for p in self.live_packs.values()),
                *(g.expires_at for g in self.live_grants.values()),
                *(h.expires_at for h in self.holds.values() if h.status == "active"),
            ]
        )

    def seat(self, seat_id: str) -> SeatState:
        """The seat, which the log says exists; `LogInconsistent` when it does not."""
        seat = self.seats.get(seat_id)
        if seat is None:
            raise LogInconsistent(
                f"seat {seat_id!r} is not in subscription {self.subscription_id!r}"
            )
        return seat

    def live_seat(self, seat_id: str) -> SeatState:
        """The seat, which must not have been removed."""
        seat = self.seat(seat_id)
        if seat.status == "removed":
            raise LogInconsistent(f"seat {seat_id!r} was removed")
        return seat

    def live_pack(self, pack_id: str) -> PackState:
        pack = self.live_packs.get(pack_id)
        if pack is None:
            raise LogInconsistent(f"pack {pack_id!r} is not live in {self.subscription_id!r}")
        return pack

    def live_grant(self, grant_id: str) -> PackState:
        grant = self.live_grants.get(grant_id)
        if grant is None:
            raise LogInconsistent(f"grant {grant_id!r} is not live in {self.subscription_id!r}")
        return grant

    def live_source(self, source: str, source_id: str) -> PackState:
        """The live pack or grant an allocation part names."""
        return self.live_pack(source_id) if source == "pack" else self.live_grant(source_id)

    def active_hold(self, hold_id: str) -> HoldState:
        hold = self.holds.get(hold_id)
        if hold is None or hold.status != "active":
            raise LogInconsistent(f"hold {hold_id!r} is not active in {self.subscription_id!r}")
        return hold

    def shared_sources(self) -> list[PackState]:
        """Live packs and grants, in no particular order."""
        return [*self.live_packs.values(), *self.live_grants.values()]


@dataclass(slots=True)
class LedgerState:
    subscriptions: dict[str, SubscriptionState] = field(default_factory=dict)


def initial_state() -> LedgerState:
    return LedgerState()


def copy_subscription(sub: SubscriptionState) -> SubscriptionState:
    """A copy sharing nothing mutable with `sub`, field by field (`deepcopy`: 40x slower)."""
    return replace(
        sub,
        seats={seat_id: replace(seat) for seat_id, seat in sub.seats.items()},
        live_packs={pack_id: replace(pack) for pack_id, pack in sub.live_packs.items()},
        pack_ids=set(sub.pack_ids),
        live_grants={grant_id: replace(g) for grant_id, g in sub.live_grants.items()},
        grants=dict(sub.grants),
        voided=set(sub.voided),
        holds={
            hold_id: replace(hold, parts=[replace(part) for part in hold.parts])
            for hold_id, hold in sub.holds.items()
        },
        ended_holds=deque(sub.ended_holds),
        adjustments=dict(sub.adjustments),
        reversals=dict(sub.reversals),
        reversed_ucr=dict(sub.reversed_ucr),
    )


def evolve(state: LedgerState, event: LogEvent) -> LedgerState:
    """Fold one log event into the state (in place) and return it."""
    if isinstance(event, SubscriptionOpened):
        if event.subscription_id in state.subscriptions:
            raise LogInconsistent(f"subscription {event.subscription_id!r} is opened twice")
        state.subscriptions[event.subscription_id] = SubscriptionState(
            event.subscription_id, event.anchor
        )
        return state
    sub = state.subscriptions.get(event.subscription_id)
    if sub is None:
        raise LogInconsistent(f"subscription {event.subscription_id!r} was never opened")
    evolve_subscription(sub, event)
    return state


def revert_charge(sub: SubscriptionState, event: UsageCharged) -> SubscriptionState:
    """Undo `evolve_subscription(sub, event)` for a charge folded speculatively (its append was
    refused): the credits go back where they came from."""
    for part in event.allocation:
        if part.source == "seat":
            sub.seats[part.id].used_ucr -= part.credits_ucr
        elif part.source in ("pack", "grant"):
            sub.live_source(part.source, part.id).remaining_ucr += part.credits_ucr
    return sub


def evolve_subscription(sub: SubscriptionState, event: LogEvent) -> SubscriptionState:
    fold = _FOLDS.get(type(event))
    if fold is None:
        raise LogInconsistent(f"{type(event).__name__} is folded at the ledger level")
    fold(sub, event)
    return sub


# -- the core: cycles, seats, packs, charges ------------------------------------------------


def fold_charge(sub: SubscriptionState, event: UsageCharged) -> None:
    """Draw a charge's parts, once all of them are known to be covered (by what no hold took:
    a settled hold was released just before its charge). Reads only the charge's fields, so
    the audit folds a charge's stored mirror (ledger/records.py) through here as it is."""
    seat = sub.live_seat(event.seat_id)
    total_ucr = seat_ucr = 0
    shared_ucr: dict[tuple[str, str], int] = {}
    for part in event.allocation:
        _check_amount(part.credits_ucr, "allocation part")
        total_ucr += part.credits_ucr
        if part.source == "seat":
            if part.id != event.seat_id:
                raise LogInconsistent(f"charge {event.event_id!r} draws on another seat")
            seat_ucr += part.credits_ucr
        elif part.source != "uncovered":
            key = (part.source, part.id)
            shared_ucr[key] = shared_ucr.get(key, 0) + part.credits_ucr
    if total_ucr != event.credits_ucr:
        raise LogInconsistent(f"the parts of charge {event.event_id!r} do not add up to it")
    if seat_ucr > seat.spendable_ucr:
        raise LogInconsistent(f"charge {event.event_id!r} overdraws seat {seat.seat_id!r}")
    for (source, source_id), amount_ucr in shared_ucr.items():
        if sub.live_source(source, source_id).spendable_ucr < amount_ucr:
            raise LogInconsistent(f"charge {event.event_id!r} overdraws {source} {source_id!r}")
    seat.used_ucr += seat_ucr
    for (source, source_id), amount_ucr in shared_ucr.items():
        sub.live_source(source, source_id).remaining_ucr -= amount_ucr


def _cycle_started(sub: SubscriptionState, event: CycleStarted) -> None:
    if event.cycle <= sub.cycle or event.cycle_start >= event.cycle_end:
        raise LogInconsistent(
            f"cycle {event.cycle} does not move {sub.subscription_id!r} forward"
            f" from cycle {sub.cycle}"
        )
    sub.cycle, sub.cycle_start, sub.cycle_end = event.cycle, event.cycle_start, event.cycle_end
    sub.refresh_next_due()


def _seat_added(sub: SubscriptionState, event: SeatAdded) -> None:
    if event.seat_id in sub.seats:
        raise LogInconsistent(f"seat {event.seat_id!r} is added twice")
    _check_amount(event.quota_ucr, "quota")
    sub.seats[event.seat_id] = SeatState(event.seat_id, event.tier, event.quota_ucr)


def _tier_changed(sub: SubscriptionState, event: SeatTierChanged) -> None:
    seat = sub.live_seat(event.seat_id)
    if event.effect == "immediate":
        if event.quota_ucr < seat.used_ucr + seat.held_ucr:
            raise LogInconsistent(f"a tier change overdraws seat {seat.seat_id!r}")
        seat.tier, seat.quota_ucr, seat.pending_tier = event.to_tier, event.quota_ucr, None
    else:
        seat.pending_tier = None if event.to_tier == seat.tier else event.to_tier


def _seat_removed(sub: SubscriptionState, event: SeatRemoved) -> None:
    seat = sub.live_seat(event.seat_id)
    if seat.held_ucr:
        raise LogInconsistent(f"seat {seat.seat_id!r} is removed while holds take from it")
    seat.status = "removed"


def _quota_granted(sub: SubscriptionState, event: SeatQuotaGranted) -> None:
    seat = sub.live_seat(event.seat_id)
    _check_amount(event.quota_ucr, "quota")
    if event.quota_ucr < seat.held_ucr:
        raise LogInconsistent(f"seat {seat.seat_id!r} holds more than its new quota")
    seat.tier, seat.quota_ucr, seat.used_ucr = event.tier, event.quota_ucr, 0
    seat.pending_tier = None


def _pack_purchased(sub: SubscriptionState, event: PackPurchased) -> None:
    if event.pack_id in sub.pack_ids:
        raise LogInconsistent(f"pack {event.pack_id!r} is bought twice")
    _check_amount(event.credits_ucr, "pack credits")
    sub.live_packs[event.pack_id] = PackState(
        event.pack_id, event.credits_ucr, event.credits_ucr, event.purchased_at, event.expires_at
    )
    sub.pack_ids.add(event.pack_id)
    sub.refresh_next_due()


def _pack_expired(sub: SubscriptionState, event: PackExpired) -> None:
    _end_source(sub, sub.live_pack(event.pack_id), event.expired_ucr)
    del sub.live_packs[event.pack_id]
    sub.refresh_next_due()


def _suspended(sub: SubscriptionState, event: SeatSuspended) -> None:
    sub.live_seat(event.seat_id).status = "suspended"


def _resumed(sub: SubscriptionState, event: SeatResumed) -> None:
    sub.live_seat(event.seat_id).status = "active"


# -- holds ----------------------------------------------------------------------------------


def _hold_placed(sub: SubscriptionState, event: HoldPlaced) -> None:
    _forget_ended_holds(sub, event.placed_at)
    if event.hold_id in sub.holds:
        raise LogInconsistent(f"hold {event.hold_id!r} is placed twice")
    seat = sub.live_seat(event.seat_id)
    if seat.status != "active":
        raise LogInconsistent(f"seat {seat.seat_id!r} is {seat.status}: it holds nothing")
    total_ucr = 0
    for part in event.allocation:
        _check_amount(part.credits_ucr, "hold part")
        total_ucr += part.credits_ucr
        if part.source == "seat":
            if part.id != seat.seat_id or part.credits_ucr > seat.spendable_ucr:
                raise LogInconsistent(f"hold {event.hold_id!r} overdraws seat {part.id!r}")
        elif part.source in ("pack", "grant"):
            if part.credits_ucr > sub.live_source(part.source, part.id).spendable_ucr:
                raise LogInconsistent(f"hold {event.hold_id!r} overdraws {part.source} {part.id!r}")
        else:
            raise LogInconsistent(f"hold {event.hold_id!r} holds what nothing covers")
    if total_ucr != event.credits_ucr or event.expires_at <= event.placed_at:
        raise LogInconsistent(f"hold {event.hold_id!r} does not add up")
    for part in event.allocation:
        _source_of(sub, seat, part.source, part.id).held_ucr += part.credits_ucr
    sub.holds[event.hold_id] = HoldState(
        event.hold_id,
        event.seat_id,
        event.credits_ucr,
        event.ttl_s,
        event.credits_ucr,
        [HoldPart(part.source, part.id, part.credits_ucr) for part in event.allocation],
        event.placed_at,
        event.expires_at,
    )
    sub.refresh_next_due()


def _hold_extended(sub: SubscriptionState, event: HoldExtended) -> None:
    hold = _hold_of(sub, event.hold_id, event.seat_id)
    if event.expires_at <= event.extended_at:
        raise LogInconsistent(f"hold {event.hold_id!r} is extended into the past")
    hold.expires_at, hold.ttl_s = event.expires_at, event.ttl_s
    sub.refresh_next_due()


def _hold_released(sub: SubscriptionState, event: HoldReleased) -> None:
    _end_hold(sub, event.hold_id, event.seat_id, event.released_ucr, "released", event.released_at)


def _hold_expired(sub: SubscriptionState, event: HoldExpired) -> None:
    _end_hold(sub, event.hold_id, event.seat_id, event.released_ucr, "expired", event.expires_at)


def _hold_settled(sub: SubscriptionState, event: HoldSettled) -> None:
    hold = _end_hold(
        sub, event.hold_id, event.seat_id, event.released_ucr, "settled", event.settled_at
    )
    hold.settled_by = event.event_id


def _hold_shrunk(sub: SubscriptionState, event: HoldShrunk) -> None:
    hold = _hold_of(sub, event.hold_id, event.seat_id)
    part = next((p for p in hold.parts if (p.source, p.id) == (event.source, event.id)), None)
    _check_amount(event.by_ucr, "shrink")
    if part is None or part.credits_ucr < event.by_ucr:
        raise LogInconsistent(f"hold {event.hold_id!r} shrinks by more than it took there")
    part.credits_ucr -= event.by_ucr
    hold.credits_ucr -= event.by_ucr
    seat = sub.live_seat(hold.seat_id)
    _source_of(sub, seat, event.source, event.id).held_ucr -= event.by_ucr


def _hold_of(sub: SubscriptionState, hold_id: str, seat_id: str) -> HoldState:
    hold = sub.active_hold(hold_id)
    if hold.seat_id != seat_id:
        raise LogInconsistent(f"hold {hold_id!r} belongs to another seat")
    return hold


def _end_hold(
    sub: SubscriptionState,
    hold_id: str,
    seat_id: str,
    released_ucr: int,
    status: HoldLifecycle,
    at: datetime,
) -> HoldState:
    hold = _hold_of(sub, hold_id, seat_id)
    if released_ucr != hold.credits_ucr:
        raise LogInconsistent(f"hold {hold_id!r} releases another amount than it holds")
    seat = sub.seat(hold.seat_id)
    for part in hold.parts:
        if part.credits_ucr:  # a part shrunk to nothing may name a pack that is gone
            _source_of(sub, seat, part.source, part.id).held_ucr -= part.credits_ucr
    hold.status, hold.ended_at = status, at
    sub.ended_holds.append((at, hold_id))
    sub.refresh_next_due()
    return hold


def _forget_ended_holds(sub: SubscriptionState, now: datetime) -> None:
    """Ended holds are remembered for `HOLD_MEMORY`; the log's own times decide when they are
    forgotten, so every fold of the log forgets them at the same event."""
    ended = sub.ended_holds
    while ended and ended[0][0] + HOLD_MEMORY < now:
        _, hold_id = ended.popleft()
        hold = sub.holds.get(hold_id)
        if hold is not None and hold.status != "active":
            del sub.holds[hold_id]


def _source_of(
    sub: SubscriptionState, seat: SeatState, source: str, source_id: str
) -> SeatState | PackState:
    """Where a hold part sits: the seat itself, or a live pack or grant. A part on a pack or
    grant that has gone was shrunk away before it went."""
    if source == "seat":
        return seat
    return sub.live_source(source, source_id)


# -- corrections ----------------------------------------------------------------------------


def _seat_adjusted(sub: SubscriptionState, event: SeatAdjusted) -> None:
    if event.adjustment_id in sub.adjustments:
        raise LogInconsistent(f"adjustment {event.adjustment_id!r} is made twice")
    seat = sub.live_seat(event.seat_id)
    if seat.quota_ucr + event.credits_ucr < seat.used_ucr + seat.held_ucr:
        raise LogInconsistent(f"adjustment {event.adjustment_id!r} takes more than remains")
    seat.quota_ucr += event.credits_ucr
    sub.adjustments[event.adjustment_id] = (event.seat_id, event.credits_ucr)


def _credits_granted(sub: SubscriptionState, event: CreditsGranted) -> None:
    if event.grant_id in sub.grants:
        raise LogInconsistent(f"grant {event.grant_id!r} is issued twice")
    _check_amount(event.credits_ucr, "grant credits")
    if event.expires_at <= event.granted_at:
        raise LogInconsistent(f"grant {event.grant_id!r} expires before it starts")
    sub.live_grants[event.grant_id] = PackState(
        event.grant_id,
        event.credits_ucr,
        event.credits_ucr,
        event.granted_at,
        event.expires_at,
        kind="grant",
    )
    sub.grants[event.grant_id] = (event.credits_ucr, event.expires_at)
    sub.refresh_next_due()


def _grant_expired(sub: SubscriptionState, event: GrantExpired) -> None:
    _end_source(sub, sub.live_grant(event.grant_id), event.expired_ucr)
    del sub.live_grants[event.grant_id]
    sub.refresh_next_due()


def _charge_reversed(sub: SubscriptionState, event: ChargeReversed) -> None:
    if event.reversal_id in sub.reversals:
        raise LogInconsistent(f"reversal {event.reversal_id!r} is made twice")
    seat = sub.seat(event.seat_id)
    total_ucr = 0
    for part in event.parts:
        _check_amount(part.credits_ucr, "reversal part")
        total_ucr += part.credits_ucr
        if part.outcome != "returned":
            continue
        if part.source == "seat":
            if part.id != seat.seat_id or part.credits_ucr > seat.used_ucr:
                raise LogInconsistent(f"reversal {event.reversal_id!r} returns what was not used")
        else:
            source = sub.live_source(part.source, part.id)
            if source.remaining_ucr + part.credits_ucr > source.credits_ucr:
                raise LogInconsistent(f"reversal {event.reversal_id!r} overfills {part.id!r}")
    if total_ucr != event.credits_ucr:
        raise LogInconsistent(f"the parts of reversal {event.reversal_id!r} do not add up")
    for part in event.parts:
        if part.outcome == "returned" and part.source == "seat":
            seat.used_ucr -= part.credits_ucr
        elif part.outcome == "returned":
            sub.live_source(part.source, part.id).remaining_ucr += part.credits_ucr
    sub.reversals[event.reversal_id] = (event.event_id, event.credits_ucr)
    sub.reversed_ucr[event.event_id] = sub.reversed_ucr.get(event.event_id, 0) + total_ucr


def _pack_voided(sub: SubscriptionState, event: PackVoided) -> None:
    _end_source(sub, sub.live_pack(event.pack_id), event.voided_ucr)
    del sub.live_packs[event.pack_id]
    sub.voided.add(f"pack:{event.pack_id}")
    sub.refresh_next_due()


def _grant_voided(sub: SubscriptionState, event: GrantVoided) -> None:
    _end_source(sub, sub.live_grant(event.grant_id), event.voided_ucr)
    del sub.live_grants[event.grant_id]
    sub.voided.add(f"grant:{event.grant_id}")
    sub.refresh_next_due()


def _settings_changed(sub: SubscriptionState, event: NotificationSettingsChanged) -> None:
    """Settings move no money; settings that could not be in force are refused."""
    problem = settings_problem(event.thresholds_percent, event.credits_low_ucr)
    if problem is not None:
        raise LogInconsistent(f"notification settings: {problem}")
    sub.notification_settings = NotificationSettings(
        event.thresholds_percent, event.credits_low_ucr
    )


def _end_source(sub: SubscriptionState, source: PackState, gone_ucr: int) -> None:
    """A pack or grant expires or is voided: what it had left is gone, and no hold may still
    take from it (holds on it were shrunk first)."""
    if gone_ucr != source.remaining_ucr or source.held_ucr:
        raise LogInconsistent(
            f"{source.kind} {source.pack_id!r} ends with another amount than it had, or held"
        )


def _check_amount(amount_ucr: int, what: str) -> None:
    if amount_ucr < 0:
        raise LogInconsistent(f"{what} of {amount_ucr} µcr is negative")


_FOLDS: dict[type[Any], Callable[[SubscriptionState, Any], None]] = {
    UsageCharged: fold_charge,
    CycleStarted: _cycle_started,
    SeatAdded: _seat_added,
    SeatTierChanged: _tier_changed,
    SeatRemoved: _seat_removed,
    SeatQuotaGranted: _quota_granted,
    PackPurchased: _pack_purchased,
    PackExpired: _pack_expired,
    SeatSuspended: _suspended,
    SeatResumed: _resumed,
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
    NotificationSettingsChanged: _settings_changed,
}
"""How each event other than `subscription.opened` folds into its subscription."""
