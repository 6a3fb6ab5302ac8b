"""What every event other than a charge must carry, given the state the log folded before it:
the audit's re-derivation of admin, lifecycle, hold and correction events (charges are
re-priced and re-allocated in ledger/audit.py). Each answer is a reason, or None when the
event follows from the rules."""

from __future__ import annotations

from datetime import datetime, timedelta

from ledger.catalog import PACK_CREDITS_UCR, PACK_VALIDITY_MONTHS, SEAT_QUOTA_UCR, TIER_RANK
from ledger.corrections import reversal_parts
from ledger.cycles import add_months, cycle_bounds, cycle_index
from ledger.deduction import hold_allocation
from ledger.state import LedgerState, SubscriptionState
from schemas.commands import ChargeOnRecord
from schemas.events import (
    ChargeReversed,
    CreditsGranted,
    CycleStarted,
    GrantExpired,
    HoldExpired,
    HoldExtended,
    HoldPlaced,
    HoldReleased,
    HoldSettled,
    LogEvent,
    PackExpired,
    PackPurchased,
    SeatAdded,
    SeatAdjusted,
    SeatQuotaGranted,
    SeatRemoved,
    SeatTierChanged,
)


def event_problem(
    state: LedgerState, event: LogEvent, at: datetime, charge: ChargeOnRecord | None = None
) -> str | None:
    """Why `event`, recorded at `at`, does not carry what the rules give; None when it does.
    What the state cannot hold at all (unknown seats, overdrafts) is `evolve`'s to refuse.
    `charge`: for a reversal, the charge it reverses as the log holds it."""
    sub = state.subscriptions.get(event.subscription_id)
    if sub is None:
        return None  # opening, or a subscription never opened: `evolve` names it
    problem = _core_problem(sub, event, at)
    if problem is None:
        problem = hold_problem(sub, event, at)
    if problem is None:
        problem = correction_problem(sub, event, at, charge)
    return problem


def _core_problem(sub: SubscriptionState, event: LogEvent, at: datetime) -> str | None:
    match event:
        case CycleStarted():
            return _cycle_problem(sub, event, at)
        case SeatAdded():
            if event.quota_ucr != SEAT_QUOTA_UCR[event.tier] or event.cycle != sub.cycle:
                return (
                    f"seat {event.seat_id!r} is added with another quota or cycle than its tier's"
                )
        case SeatTierChanged():
            return _tier_problem(sub, event)
        case SeatRemoved():
            seat = sub.seats.get(event.seat_id)
            if seat is not None and event.forfeited_ucr != seat.remaining_ucr:
                return f"seat {event.seat_id!r} forfeits another amount than it had left"
        case SeatQuotaGranted():
            return _grant_problem(sub, event)
        case PackPurchased():
            expected = (PACK_CREDITS_UCR, at, add_months(at, PACK_VALIDITY_MONTHS))
            if (event.credits_ucr, event.purchased_at, event.expires_at) != expected:
                return f"pack {event.pack_id!r} is not a pack of the catalog bought at {at}"
        case PackExpired():
            pack = sub.live_packs.get(event.pack_id)
            if pack is not None and (
                event.expired_ucr != pack.remaining_ucr
                or event.expires_at != pack.expires_at
                or at < pack.expires_at
            ):
                return f"pack {event.pack_id!r} expires early or with another amount than it had"
    return None


def hold_problem(sub: SubscriptionState, event: LogEvent, at: datetime) -> str | None:
    match event:
        case HoldPlaced():
            seat = sub.seats.get(event.seat_id)
            if seat is None:
                return None
            expected = hold_allocation(sub, seat, event.credits_ucr, at)
            expires_at = at + timedelta(seconds=event.ttl_s)
            if (event.allocation, event.placed_at, event.expires_at) != (expected, at, expires_at):
                return f"hold {event.hold_id!r} takes otherwise than the deduction order gives"
        case HoldExtended():
            if (event.extended_at, event.expires_at) != (at, at + timedelta(seconds=event.ttl_s)):
                return f"hold {event.hold_id!r} is extended to another time than its ttl gives"
        case HoldReleased() if event.released_at != at:
            return f"hold {event.hold_id!r} is released at another time than recorded"
        case HoldSettled() if event.settled_at != at:
            return f"hold {event.hold_id!r} is settled at another time than recorded"
        case HoldExpired():
            hold = sub.holds.get(event.hold_id)
            if hold is not None and (event.expires_at != hold.expires_at or at < hold.expires_at):
                return f"hold {event.hold_id!r} expires before its time"
    return None


def correction_problem(
    sub: SubscriptionState, event: LogEvent, at: datetime, charge: ChargeOnRecord | None
) -> str | None:
    match event:
        case SeatAdjusted() if event.cycle != sub.cycle:
            return f"adjustment {event.adjustment_id!r} names another cycle than the current"
        case CreditsGranted() if event.granted_at != at or event.expires_at <= at:
            return f"grant {event.grant_id!r} is not valid from when it was recorded"
        case GrantExpired():
            grant = sub.live_grants.get(event.grant_id)
            if grant is not None and (
                event.expires_at != grant.expires_at or at < grant.expires_at
            ):
                return f"grant {event.grant_id!r} expires before its time"
        case ChargeReversed():
            return _reversal_problem(sub, event, charge)
    return None


def _reversal_problem(
    sub: SubscriptionState, event: ChargeReversed, charge: ChargeOnRecord | None
) -> str | None:
    if charge is None or charge.charge.seat_id != event.seat_id:
        return f"reversal {event.reversal_id!r} names a charge the log does not hold"
    reversed_ucr = sub.reversed_ucr.get(event.event_id, 0)
    if event.credits_ucr > charge.charge.credits_ucr - reversed_ucr:
        return f"reversal {event.reversal_id!r} gives back more than is left of the charge"
    if event.parts != reversal_parts(sub, charge, reversed_ucr, event.credits_ucr):
        return f"reversal {event.reversal_id!r} gives back otherwise than last taken first"
    cycle = cycle_index(sub.anchor, charge.recorded_at)
    if (event.model, event.charge_cycle) != (charge.charge.model, cycle):
        return f"reversal {event.reversal_id!r} names another model or cycle than its charge"
    return None


def _cycle_problem(sub: SubscriptionState, event: CycleStarted, at: datetime) -> str | None:
    if (event.cycle_start, event.cycle_end) != cycle_bounds(sub.anchor, event.cycle):
        return f"cycle {event.cycle} has other bounds than its anchor gives"
    opening = sub.cycle == -1 and sub.cycle_end is None
    if not opening and (event.cycle != sub.cycle + 1 or at < event.cycle_start):
        return f"cycle {event.cycle} does not follow cycle {sub.cycle} when it falls due"
    return None


def _tier_problem(sub: SubscriptionState, event: SeatTierChanged) -> str | None:
    seat = sub.seats.get(event.seat_id)
    if seat is None:
        return None
    upgrade = TIER_RANK[event.to_tier] > TIER_RANK[seat.tier]
    if event.from_tier != seat.tier or upgrade != (event.effect == "immediate"):
        return f"seat {event.seat_id!r} changes tier against the rules"
    quota = SEAT_QUOTA_UCR[event.to_tier] if upgrade else seat.quota_ucr
    if event.quota_ucr != quota:
        return f"seat {event.seat_id!r} changes tier with another quota than the tier's"
    return None


def _grant_problem(sub: SubscriptionState, event: SeatQuotaGranted) -> str | None:
    seat = sub.seats.get(event.seat_id)
    if seat is None:
        return None
    tier = seat.pending_tier or seat.tier
    expected = (tier, sub.cycle, SEAT_QUOTA_UCR[tier], seat.remaining_ucr)
    if (event.tier, event.cycle, event.quota_ucr, event.lapsed_ucr) != expected:
        return f"seat {event.seat_id!r} is granted another quota than its tier's for the cycle"
    return None
