"""What every event other than a charge must carry, given the state the log folded before it:
the audit's re-derivation of admin and lifecycle events (charges are re-priced and re-allocated
in ledger/audit.py). Each answer is a reason, or None when the event follows from the rules."""

from __future__ import annotations

from datetime import datetime

from ledger.catalog import PACK_CREDITS_UCR, PACK_VALIDITY_MONTHS, SEAT_QUOTA_UCR, TIER_RANK
from ledger.cycles import add_months, cycle_bounds
from ledger.state import LedgerState, SubscriptionState
from schemas.events import (
    CycleStarted,
    LogEvent,
    PackExpired,
    PackPurchased,
    SeatAdded,
    SeatQuotaGranted,
    SeatRemoved,
    SeatTierChanged,
)


def event_problem(state: LedgerState, event: LogEvent, at: datetime) -> str | None:
    """Why `event`, recorded at `at`, does not carry what the rules give; None when it does.
    What the state cannot hold at all (unknown seats, overdrafts) is `evolve`'s to refuse."""
    sub = state.subscriptions.get(event.subscription_id)
    if sub is None:
        return None  # opening, or a subscription never opened: `evolve` names it
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
