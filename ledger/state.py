"""The write side's state and `evolve`: what the decider needs to know, folded from the log.

`evolve` updates the state in place and returns it (a full copy per event would cost more
than the decision itself); `decide` never mutates a state it is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

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

SeatStatus = Literal["active", "suspended", "removed"]


@dataclass(slots=True)
class SeatState:
    seat_id: str
    tier: Tier
    quota_ucr: int
    used_ucr: int = 0
    status: SeatStatus = "active"
    pending_tier: Tier | None = None

    @property
    def remaining_ucr(self) -> int:
        return 0 if self.status == "removed" else self.quota_ucr - self.used_ucr


@dataclass(slots=True)
class PackState:
    pack_id: str
    credits_ucr: int
    remaining_ucr: int
    purchased_at: datetime
    expires_at: datetime


@dataclass(slots=True)
class SubscriptionState:
    subscription_id: str
    anchor: datetime
    cycle: int = -1
    cycle_start: datetime | None = None
    cycle_end: datetime | None = None
    seats: dict[str, SeatState] = field(default_factory=dict)
    live_packs: dict[str, PackState] = field(default_factory=dict)
    """Packs not yet expired (exhausted ones included: they expire on schedule too)."""
    pack_ids: set[str] = field(default_factory=set)
    """Every pack id ever bought here, expired ones included."""
    next_due_at: datetime | None = None
    """The earliest cycle end or pack expiry: derived, kept so a charge need not look."""

    def refresh_next_due(self) -> None:
        assert self.cycle_end is not None, "an open subscription always has a current cycle"
        self.next_due_at = min([self.cycle_end, *(p.expires_at for p in self.live_packs.values())])


@dataclass(slots=True)
class LedgerState:
    subscriptions: dict[str, SubscriptionState] = field(default_factory=dict)
    seat_owner: dict[str, str] = field(default_factory=dict)
    """Seat ids are unique across the ledger: which subscription holds each."""


def initial_state() -> LedgerState:
    return LedgerState()


def copy_subscription(sub: SubscriptionState) -> SubscriptionState:
    """A copy sharing nothing mutable with `sub`, field by field (`deepcopy`: 40x slower)."""
    return SubscriptionState(
        sub.subscription_id,
        sub.anchor,
        sub.cycle,
        sub.cycle_start,
        sub.cycle_end,
        {
            seat_id: SeatState(s.seat_id, s.tier, s.quota_ucr, s.used_ucr, s.status, s.pending_tier)
            for seat_id, s in sub.seats.items()
        },
        {
            pack_id: PackState(
                p.pack_id, p.credits_ucr, p.remaining_ucr, p.purchased_at, p.expires_at
            )
            for pack_id, p in sub.live_packs.items()
        },
        set(sub.pack_ids),
        sub.next_due_at,
    )


def evolve(state: LedgerState, event: LogEvent) -> LedgerState:
    """Fold one log event into the state (in place) and return it."""
    if isinstance(event, SubscriptionOpened):
        state.subscriptions[event.subscription_id] = SubscriptionState(
            event.subscription_id, event.anchor
        )
        return state
    evolve_subscription(state.subscriptions[event.subscription_id], event)
    if isinstance(event, SeatAdded):
        state.seat_owner[event.seat_id] = event.subscription_id
    return state


def revert_charge(sub: SubscriptionState, event: UsageCharged) -> SubscriptionState:
    """Undo `evolve_subscription(sub, event)` for a charge folded speculatively (its append was
    refused): the credits go back where they came from."""
    for part in event.allocation:
        if part.source == "seat":
            sub.seats[part.id].used_ucr -= part.credits_ucr
        elif part.source == "pack":
            sub.live_packs[part.id].remaining_ucr += part.credits_ucr
    return sub


def evolve_subscription(sub: SubscriptionState, event: LogEvent) -> SubscriptionState:
    match event:
        case UsageCharged():
            for part in event.allocation:
                if part.source == "seat":
                    seat = sub.seats[part.id]
                    seat.used_ucr += part.credits_ucr
                    assert seat.used_ucr <= seat.quota_ucr, "seat quota overdrawn"
                elif part.source == "pack":
                    pack = sub.live_packs[part.id]
                    pack.remaining_ucr -= part.credits_ucr
                    assert pack.remaining_ucr >= 0, "pack overdrawn"
        case CycleStarted():
            sub.cycle, sub.cycle_start, sub.cycle_end = (
                event.cycle,
                event.cycle_start,
                event.cycle_end,
            )
            sub.refresh_next_due()
        case SeatAdded():
            sub.seats[event.seat_id] = SeatState(event.seat_id, event.tier, event.quota_ucr)
        case SeatTierChanged():
            seat = sub.seats[event.seat_id]
            if event.effect == "immediate":
                seat.tier, seat.quota_ucr, seat.pending_tier = event.to_tier, event.quota_ucr, None
            else:
                seat.pending_tier = None if event.to_tier == seat.tier else event.to_tier
        case SeatRemoved():
            sub.seats[event.seat_id].status = "removed"
        case SeatQuotaGranted():
            seat = sub.seats[event.seat_id]
            seat.tier, seat.quota_ucr, seat.used_ucr = event.tier, event.quota_ucr, 0
            seat.pending_tier = None
        case PackPurchased():
            sub.live_packs[event.pack_id] = PackState(
                event.pack_id,
                event.credits_ucr,
                event.credits_ucr,
                event.purchased_at,
                event.expires_at,
            )
            sub.pack_ids.add(event.pack_id)
            sub.refresh_next_due()
        case PackExpired():
            del sub.live_packs[event.pack_id]
            sub.refresh_next_due()
        case SeatSuspended():
            sub.seats[event.seat_id].status = "suspended"
        case SeatResumed():
            sub.seats[event.seat_id].status = "active"
        case SubscriptionOpened():
            raise AssertionError("subscription.opened is folded at the ledger level")
    return sub
