"""Scheduled facts, appended once the ledger clock has passed them: holds expiring, packs and
grants expiring (the holds on them shrinking first), and cycle starts (seat quotas granted,
downgrades applied, suspended seats resumed).

They are emitted in the order they fell due; at one instant, holds expire first (what they held
is free again), then packs and grants, then the new cycle starts. Every cycle that fell due is
recorded, even several after a long pause.
"""

from __future__ import annotations

from datetime import datetime

from ledger.catalog import SEAT_QUOTA_UCR
from ledger.cycles import cycle_bounds
from ledger.errors import LogInconsistent
from ledger.state import HoldState, PackState, SubscriptionState, copy_subscription
from ledger.state import evolve_subscription as fold
from schemas.events import (
    CycleStarted,
    GrantExpired,
    HoldExpired,
    HoldShrunk,
    LogEvent,
    PackExpired,
    SeatQuotaGranted,
    SeatResumed,
)


def next_due(sub: SubscriptionState) -> datetime:
    """The earliest instant at which this subscription has something scheduled."""
    if sub.next_due_at is None:
        raise LogInconsistent(f"subscription {sub.subscription_id!r} has no cycle yet")
    return sub.next_due_at


def due_events(sub: SubscriptionState, at: datetime) -> tuple[list[LogEvent], SubscriptionState]:
    """What fell due by `at`, and the subscription as it is after those events.

    The given state is never changed: when something is due, a copy is evolved and returned.
    """
    if next_due(sub) > at:
        return [], sub
    working = copy_subscription(sub)
    events: list[LogEvent] = []
    while (due := next_due(working)) <= at:
        for step in (_hold_expiries, _source_expiries, _cycle_start):
            for event in step(working, due):
                fold(working, event)
                events.append(event)
    return events, working


def _hold_expiries(sub: SubscriptionState, due: datetime) -> list[LogEvent]:
    return [
        HoldExpired(sub.subscription_id, hold.seat_id, hold.hold_id, hold.credits_ucr, due)
        for hold in sorted(sub.holds.values(), key=lambda h: (h.placed_at, h.hold_id))
        if hold.status == "active" and hold.expires_at == due
    ]


def _source_expiries(sub: SubscriptionState, due: datetime) -> list[LogEvent]:
    """Packs and grants reaching their expiry, each after the holds on it shrank."""
    ending = [s for s in sub.shared_sources() if s.expires_at == due]
    events: list[LogEvent] = []
    for source in sorted(ending, key=lambda s: (s.expires_at, s.pack_id, s.kind)):
        events.extend(shrink_holds_on(sub, source, due))
        if source.kind == "pack":
            events.append(
                PackExpired(sub.subscription_id, source.pack_id, due, source.remaining_ucr)
            )
        else:
            events.append(
                GrantExpired(sub.subscription_id, source.pack_id, due, source.remaining_ucr)
            )
    return events


def shrink_holds_on(sub: SubscriptionState, source: PackState, at: datetime) -> list[LogEvent]:
    """A pack or grant goes away: every active hold takes its part on it with it."""
    events: list[LogEvent] = []
    for hold in _active_holds(sub):
        for part in hold.parts:
            if (part.source, part.id) == (source.kind, source.pack_id) and part.credits_ucr:
                events.append(
                    HoldShrunk(
                        sub.subscription_id,
                        hold.seat_id,
                        hold.hold_id,
                        source.kind,
                        source.pack_id,
                        part.credits_ucr,
                        at,
                    )
                )
    return events


def _cycle_start(sub: SubscriptionState, due: datetime) -> list[LogEvent]:
    if sub.cycle_end != due:
        return []
    cycle = sub.cycle + 1
    start, end = cycle_bounds(sub.anchor, cycle)
    events: list[LogEvent] = [CycleStarted(sub.subscription_id, cycle, start, end)]
    for seat in sorted(sub.seats.values(), key=lambda s: s.seat_id):
        if seat.status == "removed":
            continue
        tier = seat.pending_tier or seat.tier
        quota_ucr = SEAT_QUOTA_UCR[tier]
        events.extend(_shrink_seat_holds(sub, seat.seat_id, seat.held_ucr - quota_ucr, due))
        events.append(
            SeatQuotaGranted(
                sub.subscription_id, seat.seat_id, tier, cycle, quota_ucr, seat.remaining_ucr
            )
        )
        if seat.status == "suspended":
            events.append(SeatResumed(sub.subscription_id, seat.seat_id, "cycle_started"))
    return events


def _shrink_seat_holds(
    sub: SubscriptionState, seat_id: str, excess_ucr: int, at: datetime
) -> list[LogEvent]:
    """A new cycle grants less than the seat's holds took from it (a downgrade): the newest
    holds give up their seat part first, just enough to fit."""
    events: list[LogEvent] = []
    for hold in reversed(_active_holds(sub)):
        if excess_ucr <= 0:
            break
        if hold.seat_id != seat_id:
            continue
        part = next((p for p in hold.parts if p.source == "seat"), None)
        if part is None or part.credits_ucr == 0:
            continue
        by_ucr = min(part.credits_ucr, excess_ucr)
        events.append(
            HoldShrunk(sub.subscription_id, seat_id, hold.hold_id, "seat", seat_id, by_ucr, at)
        )
        excess_ucr -= by_ucr
    return events


def _active_holds(sub: SubscriptionState) -> list[HoldState]:
    """Active holds, oldest placed first."""
    active = [hold for hold in sub.holds.values() if hold.status == "active"]
    active.sort(key=lambda h: (h.placed_at, h.hold_id))
    return active
