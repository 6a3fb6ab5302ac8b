"""Deduction order (docs/rules.md): the seat's own quota first, then the subscription's packs
and grants valid at that instant, soonest-expiring first (ties: earlier purchase or grant, then
id, packs before grants); what nothing covers is uncovered. Credits an active hold took are
spent by nothing but that hold: each source offers what it has less what holds took from it.
"""

from __future__ import annotations

from datetime import datetime

from ledger.state import HoldState, PackState, SeatState, SubscriptionState
from schemas.events import Allocation


def sources_in_deduction_order(
    sub: SubscriptionState, at: datetime, released: HoldState | None = None
) -> list[tuple[PackState, int]]:
    """Each pack and grant valid at `at` with something to spend, and what it offers."""
    offers = [
        (source, source.spendable_ucr + _released_from(released, source.kind, source.pack_id))
        for source in sub.shared_sources()
        if source.purchased_at <= at < source.expires_at
    ]
    offered = [(source, amount) for source, amount in offers if amount > 0]
    offered.sort(key=lambda o: (o[0].expires_at, o[0].purchased_at, o[0].pack_id, o[0].kind))
    return offered


def allocate(
    sub: SubscriptionState,
    seat: SeatState,
    amount_ucr: int,
    at: datetime,
    released: HoldState | None = None,
) -> tuple[Allocation, ...]:
    """Split a charge across seat, packs, grants and uncovered; the parts add up to the charge.

    `released`: the hold this charge settles, whose credits are counted as free again.
    """
    parts, left_ucr = _take(sub, seat, amount_ucr, at, released)
    if left_ucr > 0:
        parts.append(Allocation("uncovered", "", left_ucr))
    return tuple(parts)


def hold_allocation(
    sub: SubscriptionState, seat: SeatState, amount_ucr: int, at: datetime
) -> tuple[Allocation, ...] | None:
    """Where a hold of `amount_ucr` for this seat would take its credits; None when the seat
    cannot spend that much (a hold is all or nothing, never uncovered)."""
    parts, left_ucr = _take(sub, seat, amount_ucr, at, None)
    return None if left_ucr > 0 else tuple(parts)


def available_ucr(sub: SubscriptionState, seat: SeatState, at: datetime) -> int:
    """What this seat can still spend at `at`: its quota and the valid shared credits, less
    what active holds took."""
    shared = sum(amount for _, amount in sources_in_deduction_order(sub, at))
    return seat.spendable_ucr + shared


def _take(
    sub: SubscriptionState,
    seat: SeatState,
    amount_ucr: int,
    at: datetime,
    released: HoldState | None,
) -> tuple[list[Allocation], int]:
    parts: list[Allocation] = []
    left_ucr = amount_ucr
    seat_offer = seat.spendable_ucr + _released_from(released, "seat", seat.seat_id)
    from_seat = min(left_ucr, seat_offer) if seat.status != "removed" else 0
    if from_seat > 0:
        parts.append(Allocation("seat", seat.seat_id, from_seat))
        left_ucr -= from_seat
    if left_ucr > 0:
        for source, offer_ucr in sources_in_deduction_order(sub, at, released):
            taken = min(left_ucr, offer_ucr)
            parts.append(Allocation(source.kind, source.pack_id, taken))
            left_ucr -= taken
            if left_ucr == 0:
                break
    return parts, left_ucr


def _released_from(released: HoldState | None, source: str, source_id: str) -> int:
    if released is None:
        return 0
    return sum(p.credits_ucr for p in released.parts if (p.source, p.id) == (source, source_id))
