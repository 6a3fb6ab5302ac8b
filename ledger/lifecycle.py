"""Scheduled facts: cycle starts (seat quotas granted, downgrades applied, suspended seats
resumed) and pack expiries, appended once the ledger clock has passed them.

They are emitted in the order they fell due; at the same instant a pack expires before a new
cycle starts. Every cycle that fell due is recorded, even several after a long pause.
"""

from __future__ import annotations

from datetime import datetime

from ledger.catalog import SEAT_QUOTA_UCR
from ledger.cycles import cycle_bounds
from ledger.state import SubscriptionState, copy_subscription, evolve_subscription
from schemas.events import (
    CycleStarted,
    LogEvent,
    PackExpired,
    SeatQuotaGranted,
    SeatResumed,
)


def next_due(sub: SubscriptionState) -> datetime:
    """The earliest instant at which this subscription has something scheduled."""
    assert sub.next_due_at is not None, "set by subscription.cycle_started, which opening emits"
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
        step: list[LogEvent] = [
            PackExpired(working.subscription_id, pack.pack_id, pack.expires_at, pack.remaining_ucr)
            for pack in sorted(working.live_packs.values(), key=lambda p: (p.expires_at, p.pack_id))
            if pack.expires_at == due
        ]
        if working.cycle_end == due:
            step.extend(_cycle_start_events(working))
        for event in step:
            evolve_subscription(working, event)
        events.extend(step)
    return events, working


def _cycle_start_events(sub: SubscriptionState) -> list[LogEvent]:
    cycle = sub.cycle + 1
    start, end = cycle_bounds(sub.anchor, cycle)
    events: list[LogEvent] = [CycleStarted(sub.subscription_id, cycle, start, end)]
    for seat in sorted(sub.seats.values(), key=lambda s: s.seat_id):
        if seat.status == "removed":
            continue
        tier = seat.pending_tier or seat.tier
        events.append(
            SeatQuotaGranted(
                sub.subscription_id,
                seat.seat_id,
                tier,
                cycle,
                SEAT_QUOTA_UCR[tier],
                seat.remaining_ucr,
            )
        )
        if seat.status == "suspended":
            events.append(SeatResumed(sub.subscription_id, seat.seat_id, "cycle_started"))
    return events
