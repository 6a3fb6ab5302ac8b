"""Corrections: mistakes are put right by new events, never by editing the log. Each records who
asked (the token's id and role) and why (1 to 500 characters), and a retry with the same id is
a no-op (the same id with another body is a conflict).

- Seat adjustment: credits added to (or taken from) one seat's quota for the current cycle;
  taking more than the seat has left (less what holds took) is refused.
- Grant: shared credits with their own amount and expiry, valid from the ledger clock's now,
  spent like packs in expiry order.
- Reversal of a charge, all of what is left of it or part: the credits go back to the sources
  the charge took them from, last taken first. To a pack or grant that has expired or was
  voided meanwhile (or a seat quota of an earlier cycle) they go back and expire at once; an
  uncovered part is cleared. The reversals of one charge never exceed it.
- Void of a pack or grant (its payment was refunded, say): what it has left is removed and
  recorded as voided; active holds on it shrink first.
- A suspended seat that has credit again (an adjustment, a grant, a reversal) resumes.
"""

from __future__ import annotations

from datetime import datetime

from ledger.cycles import cycle_index
from ledger.errors import (
    DuplicateConflict,
    InsufficientCredits,
    InvalidCommand,
    SeatIsRemoved,
    UnknownCharge,
    UnknownGrant,
    UnknownPack,
)
from ledger.lifecycle import shrink_holds_on
from ledger.money import format_credits
from ledger.state import PackState, SeatState, SubscriptionState
from schemas.commands import (
    AdjustSeat,
    ChargeOnRecord,
    GrantCredits,
    ReverseCharge,
    VoidGrant,
    VoidPack,
)
from schemas.events import (
    ChargeReversed,
    CreditsGranted,
    GrantVoided,
    LogEvent,
    PackVoided,
    ResumeReason,
    ReversalPart,
    SeatAdjusted,
    SeatResumed,
)


def adjust(
    sub: SubscriptionState, seat: SeatState, command: AdjustSeat, at: datetime
) -> list[LogEvent]:
    prior = sub.adjustments.get(command.adjustment_id)
    if prior is not None:
        if prior != (command.seat_id, command.credits_ucr):
            raise DuplicateConflict(
                f"adjustment {command.adjustment_id!r} was made before with another seat or amount"
            )
        return []
    if seat.status == "removed":
        raise SeatIsRemoved(f"seat {seat.seat_id!r} was removed")
    if -command.credits_ucr > seat.spendable_ucr:
        raise InsufficientCredits(
            f"seat {seat.seat_id!r} has {format_credits(seat.spendable_ucr)} credits left this"
            f" cycle: it cannot give up {format_credits(-command.credits_ucr)}",
            seat.spendable_ucr,
        )
    adjusted = SeatAdjusted(
        sub.subscription_id,
        seat.seat_id,
        command.adjustment_id,
        command.credits_ucr,
        sub.cycle,
        command.actor,
        command.reason,
    )
    if command.credits_ucr > 0 and seat.status == "suspended":
        return [adjusted, SeatResumed(sub.subscription_id, seat.seat_id, "seat_adjusted")]
    return [adjusted]


def grant(sub: SubscriptionState, command: GrantCredits, at: datetime) -> list[LogEvent]:
    prior = sub.grants.get(command.grant_id)
    if prior is not None:
        if prior != (command.credits_ucr, command.expires_at):
            raise DuplicateConflict(
                f"grant {command.grant_id!r} was issued before with another amount or expiry"
            )
        return []
    if command.expires_at <= at:
        raise InvalidCommand(f"grant {command.grant_id!r} would expire before it starts")
    events: list[LogEvent] = [
        CreditsGranted(
            sub.subscription_id,
            command.grant_id,
            command.credits_ucr,
            at,
            command.expires_at,
            command.actor,
            command.reason,
        )
    ]
    return events + resume_suspended(sub, "credits_granted")


def reverse(sub: SubscriptionState, command: ReverseCharge) -> list[LogEvent]:
    prior = sub.reversals.get(command.reversal_id)
    if prior is not None:
        # The log keeps what was reversed; a retry without `credits` ("all that was left")
        # asks for the same as the first request did.
        asked = prior[1] if command.credits_ucr is None else command.credits_ucr
        if prior != (command.event_id, asked):
            raise DuplicateConflict(
                f"reversal {command.reversal_id!r} was made before with another charge or amount"
            )
        return []
    on_record = command.on_record
    if on_record is None or on_record.charge.subscription_id != sub.subscription_id:
        raise UnknownCharge(
            f"no charge {command.event_id!r} in subscription {sub.subscription_id!r}"
        )
    charge = on_record.charge
    reversed_ucr = sub.reversed_ucr.get(charge.event_id, 0)
    left_ucr = charge.credits_ucr - reversed_ucr
    amount_ucr = left_ucr if command.credits_ucr is None else command.credits_ucr
    if amount_ucr <= 0 or amount_ucr > left_ucr:
        raise InvalidCommand(
            f"charge {charge.event_id!r} has {format_credits(left_ucr)} credits left to reverse,"
            f" not {format_credits(amount_ucr)}"
        )
    parts = reversal_parts(sub, on_record, reversed_ucr, amount_ucr)
    events: list[LogEvent] = [
        ChargeReversed(
            sub.subscription_id,
            charge.seat_id,
            charge.event_id,
            command.reversal_id,
            amount_ucr,
            parts,
            charge.model,
            cycle_index(sub.anchor, on_record.recorded_at),
            command.actor,
            command.reason,
        )
    ]
    returned = any(part.outcome == "returned" for part in parts)
    return events + (resume_suspended(sub, "charge_reversed", after=parts) if returned else [])


def reversal_parts(
    sub: SubscriptionState, on_record: ChargeOnRecord, reversed_ucr: int, amount_ucr: int
) -> tuple[ReversalPart, ...]:
    """`amount_ucr` of the charge, taken from its last part backwards, past the `reversed_ucr`
    earlier reversals took; each part goes back to its source if that source is still there."""
    charge = on_record.charge
    this_cycle = sub.cycle_start is not None and on_record.recorded_at >= sub.cycle_start
    parts: list[ReversalPart] = []
    skip_ucr, left_ucr = reversed_ucr, amount_ucr
    for part in reversed(charge.allocation):
        available = part.credits_ucr - min(skip_ucr, part.credits_ucr)
        skip_ucr -= part.credits_ucr - available
        taken = min(available, left_ucr)
        if taken <= 0:
            continue
        if part.source == "uncovered":
            outcome = "cleared"
        elif part.source == "seat":
            seat = sub.seats.get(part.id)
            live = this_cycle and seat is not None and seat.status != "removed"
            outcome = "returned" if live else "expired"
        else:
            live_sources = sub.live_packs if part.source == "pack" else sub.live_grants
            outcome = "returned" if part.id in live_sources else "expired"
        parts.append(ReversalPart(part.source, part.id, taken, outcome))  # type: ignore[arg-type]
        left_ucr -= taken
        if left_ucr == 0:
            break
    return tuple(parts)


def void_pack(sub: SubscriptionState, command: VoidPack, at: datetime) -> list[LogEvent]:
    if command.pack_id not in sub.pack_ids:
        raise UnknownPack(f"no pack {command.pack_id!r} in subscription {sub.subscription_id!r}")
    pack = _voidable(sub, sub.live_packs.get(command.pack_id), f"pack:{command.pack_id}")
    if pack is None:
        return []
    return [
        *shrink_holds_on(sub, pack, at),
        PackVoided(
            sub.subscription_id, pack.pack_id, pack.remaining_ucr, command.actor, command.reason
        ),
    ]


def void_grant(sub: SubscriptionState, command: VoidGrant, at: datetime) -> list[LogEvent]:
    if command.grant_id not in sub.grants:
        raise UnknownGrant(f"no grant {command.grant_id!r} in subscription {sub.subscription_id!r}")
    grant_ = _voidable(sub, sub.live_grants.get(command.grant_id), f"grant:{command.grant_id}")
    if grant_ is None:
        return []
    return [
        *shrink_holds_on(sub, grant_, at),
        GrantVoided(
            sub.subscription_id, grant_.pack_id, grant_.remaining_ucr, command.actor, command.reason
        ),
    ]


def _voidable(sub: SubscriptionState, source: PackState | None, key: str) -> PackState | None:
    """The live pack or grant to void; None when it was voided already (a retry)."""
    if key in sub.voided:
        return None
    if source is None:
        raise InvalidCommand(f"{key.replace(':', ' ')} has expired: nothing is left to void")
    return source


def resume_suspended(
    sub: SubscriptionState,
    reason: ResumeReason,
    after: tuple[ReversalPart, ...] = (),
) -> list[LogEvent]:
    """Suspended seats that have credit to spend again resume. Shared credits (a grant, a part
    returned to a pack) resume every suspended seat; a part returned to one seat, that seat."""
    seat_returned = {p.id for p in after if p.source == "seat" and p.outcome == "returned"}
    shared_returned = any(p.source != "seat" and p.outcome == "returned" for p in after)
    events: list[LogEvent] = []
    for seat in sorted(sub.seats.values(), key=lambda s: s.seat_id):
        if seat.status != "suspended":
            continue
        if after and not shared_returned and seat.seat_id not in seat_returned:
            continue
        events.append(SeatResumed(sub.subscription_id, seat.seat_id, reason))
    return events
