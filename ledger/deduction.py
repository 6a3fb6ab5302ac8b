"""Deduction order (docs/rules.md): the seat's own quota first, then the subscription's packs
valid at that instant, soonest-expiring first (ties: earlier purchase, then pack id); what
nothing covers is uncovered.
"""

from __future__ import annotations

from datetime import datetime

from ledger.state import SeatState, SubscriptionState
from schemas.events import Allocation


def packs_in_deduction_order(sub: SubscriptionState, at: datetime) -> list[str]:
    valid = [
        pack
        for pack in sub.live_packs.values()
        if pack.purchased_at <= at < pack.expires_at and pack.remaining_ucr > 0
    ]
    valid.sort(key=lambda pack: (pack.expires_at, pack.purchased_at, pack.pack_id))
    return [pack.pack_id for pack in valid]


def allocate(
    sub: SubscriptionState, seat: SeatState, amount_ucr: int, at: datetime
) -> tuple[Allocation, ...]:
    """Split a charge across seat, packs and uncovered; the parts always add up to `amount_ucr`."""
    assert amount_ucr >= 0
    parts: list[Allocation] = []
    left_ucr = amount_ucr
    from_seat = min(left_ucr, max(seat.remaining_ucr, 0))
    if from_seat > 0:
        parts.append(Allocation("seat", seat.seat_id, from_seat))
        left_ucr -= from_seat
    for pack_id in packs_in_deduction_order(sub, at) if left_ucr > 0 else ():
        from_pack = min(left_ucr, sub.live_packs[pack_id].remaining_ucr)
        parts.append(Allocation("pack", pack_id, from_pack))
        left_ucr -= from_pack
        if left_ucr == 0:
            break
    if left_ucr > 0:
        parts.append(Allocation("uncovered", "", left_ucr))
    assert sum(part.credits_ucr for part in parts) == amount_ucr, "allocation must add up"
    return tuple(parts)
