"""Holds: credits a gateway reserves for one seat before it serves a request, so that concurrent
requests of a team can never together spend more than it has.

- A hold takes `credits` from what the seat can spend (its own quota, then the subscription's
  valid packs and grants in deduction order) less what active holds already took; all or
  nothing: when less is available it is refused with what is available. A suspended or
  removed seat gets no hold.
- An active hold's credits are spent by nothing else. It lives `ttl_s` (1 s to 1 h) from when
  it is placed or last extended, then expires; it may be released at any time.
- A usage event naming an active hold of its seat settles it: the hold is released and the
  charge follows in the same append, in the normal deduction order (so what was held is there
  for it; anything beyond is deducted like any charge and may be uncovered). A hold settles
  once; usage naming a hold that is not active is charged as any other, and says so.
- Placing a hold id again with the same seat, credits and ttl answers the hold as it is;
  with anything else it is a conflict. An ended hold is remembered for a day.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ledger.deduction import available_ucr, hold_allocation
from ledger.errors import (
    DuplicateConflict,
    HoldNotActive,
    InsufficientCredits,
    SeatIsRemoved,
    SeatIsSuspended,
    UnknownHold,
)
from ledger.money import format_credits
from ledger.state import HoldState, SeatState, SubscriptionState
from schemas.commands import ExtendHold, PlaceHold, ReleaseHold
from schemas.events import HoldExtended, HoldPlaced, HoldReleased, HoldSettled, LogEvent


def place(
    sub: SubscriptionState, seat: SeatState, command: PlaceHold, at: datetime
) -> list[LogEvent]:
    existing = sub.holds.get(command.hold_id)
    if existing is not None:
        asked = (existing.seat_id, existing.requested_ucr, existing.ttl_s)
        if asked != (command.seat_id, command.credits_ucr, command.ttl_s):
            raise DuplicateConflict(
                f"hold {command.hold_id!r} was placed before with another seat, amount or ttl"
            )
        return []  # a retry: the hold as it is
    if seat.status == "removed":
        raise SeatIsRemoved(f"seat {seat.seat_id!r} was removed and can hold nothing")
    if seat.status == "suspended":
        raise SeatIsSuspended(f"seat {seat.seat_id!r} is suspended and can hold nothing")
    allocation = hold_allocation(sub, seat, command.credits_ucr, at)
    if allocation is None:
        available = available_ucr(sub, seat, at)
        raise InsufficientCredits(
            f"seat {seat.seat_id!r} can spend {format_credits(available)} credits, less than"
            f" the {format_credits(command.credits_ucr)} asked",
            available,
        )
    return [
        HoldPlaced(
            sub.subscription_id,
            seat.seat_id,
            command.hold_id,
            command.credits_ucr,
            allocation,
            command.ttl_s,
            at,
            at + timedelta(seconds=command.ttl_s),
            command.actor,
        )
    ]


def extend(sub: SubscriptionState, command: ExtendHold, at: datetime) -> list[LogEvent]:
    hold = _hold(sub, command.hold_id, command.seat_id)
    if hold.status != "active":
        raise HoldNotActive(f"hold {hold.hold_id!r} is {hold.status}: it cannot be extended")
    expires_at = at + timedelta(seconds=command.ttl_s)
    return [
        HoldExtended(
            sub.subscription_id,
            hold.seat_id,
            hold.hold_id,
            command.ttl_s,
            at,
            expires_at,
            command.actor,
        )
    ]


def release(sub: SubscriptionState, command: ReleaseHold, at: datetime) -> list[LogEvent]:
    hold = _hold(sub, command.hold_id, command.seat_id)
    if hold.status != "active":
        return []  # released, settled or expired already: nothing more to free
    return [
        HoldReleased(
            sub.subscription_id,
            hold.seat_id,
            hold.hold_id,
            hold.credits_ucr,
            at,
            actor=command.actor,
        )
    ]


def release_all_of(sub: SubscriptionState, seat_id: str, at: datetime) -> list[LogEvent]:
    """A seat is removed: its active holds are released first."""
    return [
        HoldReleased(
            sub.subscription_id, seat_id, h.hold_id, h.credits_ucr, at, reason="seat_removed"
        )
        for h in sorted(sub.holds.values(), key=lambda h: (h.placed_at, h.hold_id))
        if h.seat_id == seat_id and h.status == "active"
    ]


def settling(sub: SubscriptionState, seat_id: str, hold_id: str | None) -> HoldState | None:
    """The active hold of this seat that a usage event naming `hold_id` settles, if any."""
    if hold_id is None:
        return None
    hold = sub.holds.get(hold_id)
    if hold is None or hold.status != "active" or hold.seat_id != seat_id:
        return None
    return hold


def settled(sub: SubscriptionState, hold: HoldState, event_id: str, at: datetime) -> HoldSettled:
    return HoldSettled(
        sub.subscription_id, hold.seat_id, hold.hold_id, event_id, hold.credits_ucr, at
    )


def _hold(sub: SubscriptionState, hold_id: str, seat_id: str) -> HoldState:
    """The hold of this seat; another seat's hold is no hold of this one."""
    hold = sub.holds.get(hold_id)
    if hold is None or hold.seat_id != seat_id:
        raise UnknownHold(f"no hold {hold_id!r} for seat {seat_id!r}")
    return hold
