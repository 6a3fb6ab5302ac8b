"""What the API answers about admin writes: one shape for each entry of a subscription's history
and for the answer of a correction, built from the log record that holds it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from ledger.log import StoredRecord
from ledger.money import format_credits
from projections.balances import Balances
from projections.history import ADMIN_EVENT_TYPES, AdminEvent, event_key, event_type
from schemas.events import (
    ChargeReversed,
    CreditsGranted,
    GrantVoided,
    PackPurchased,
    PackVoided,
    SeatAdded,
    SeatAdjusted,
    SeatRemoved,
    SeatTierChanged,
)


class ActorView(msgspec.Struct, frozen=True):
    token_id: str
    role: str


class ReversalPartView(msgspec.Struct, frozen=True):
    source: str
    id: str
    credits: str
    outcome: str
    """returned / expired (went back to a source that has expired, and expired at once) /
    cleared (an uncovered part)."""


class AdminActionView(msgspec.Struct, frozen=True):
    """One admin write as the log holds it: what, about which id, by whom and why."""

    position: int
    recorded_at: datetime
    type: str
    """The log event's type: subscription.opened, seat.added, seat.tier_changed, seat.removed,
    pack.purchased, notification.settings_changed, seat.adjusted, grant.issued, usage.reversed,
    pack.voided, grant.voided."""
    subscription_id: str
    id: str
    """The id the write is about: the subscription (opened, notification settings), the seat,
    pack, grant, adjustment or reversal."""
    seat_id: str | None
    event_id: str | None
    """A reversal's charge."""
    credits: str | None
    """Signed for an adjustment; what was granted, bought, reversed or voided otherwise."""
    expires_at: datetime | None
    parts: list[ReversalPartView] | None
    """Where a reversal's credits went, last part of the charge first."""
    actor: ActorView | None
    """Who asked (None for writes recorded before actors were)."""
    reason: str | None
    event: dict[str, Any]
    """The log event itself, as GET /v1/log shows it."""


class GrantView(msgspec.Struct, frozen=True):
    grant_id: str
    credits: str
    remaining: str
    expired: str
    voided: str
    granted_at: datetime
    expires_at: datetime
    expires_in_seconds: int
    status: str
    """active / exhausted / expired / voided."""


class GrantList(msgspec.Struct, frozen=True):
    items: list[GrantView]


def grant_views(balances: Balances, sub: str, now: datetime) -> GrantList:
    """The subscription's grants, soonest expiry first (ties: when granted, then id)."""
    rows = [balances.grants[(sub, grant_id)] for grant_id in balances.grant_ids.get(sub, ())]
    rows.sort(key=lambda g: (g.expires_at, g.purchased_at, g.pack_id))
    return GrantList(
        [
            GrantView(
                grant_id=row.pack_id,
                credits=format_credits(row.credits_ucr),
                remaining=format_credits(row.remaining_ucr),
                expired=format_credits(row.expired_ucr),
                voided=format_credits(row.voided_ucr),
                granted_at=row.purchased_at,
                expires_at=row.expires_at,
                expires_in_seconds=max(0, int((row.expires_at - now).total_seconds())),
                status=row.status,
            )
            for row in rows
        ]
    )


class HistoryPageView(msgspec.Struct, frozen=True):
    items: list[AdminActionView]
    next_after: int | None
    """Pass as `after` for the next page; null when this page reached the end."""


def _credits_ucr(event: AdminEvent) -> int | None:
    if isinstance(event, SeatAdjusted | CreditsGranted | ChargeReversed | PackPurchased):
        return event.credits_ucr
    if isinstance(event, PackVoided | GrantVoided):
        return event.voided_ucr
    if isinstance(event, SeatAdded | SeatTierChanged):
        return event.quota_ucr
    if isinstance(event, SeatRemoved):
        return event.forfeited_ucr
    return None


def admin_action_view(record: StoredRecord) -> AdminActionView:
    event = record.event()
    if not isinstance(event, ADMIN_EVENT_TYPES):
        raise TypeError(f"not an admin write: {event_type(event)}")
    credits_ucr = _credits_ucr(event)
    reversal = event if isinstance(event, ChargeReversed) else None
    expiring = event if isinstance(event, CreditsGranted | PackPurchased) else None
    return AdminActionView(
        position=record.position,
        recorded_at=record.recorded_at,
        type=event_type(event),
        subscription_id=event.subscription_id,
        id=event_key(event),
        seat_id=getattr(event, "seat_id", None),
        event_id=None if reversal is None else reversal.event_id,
        credits=None if credits_ucr is None else format_credits(credits_ucr),
        expires_at=None if expiring is None else expiring.expires_at,
        parts=None
        if reversal is None
        else [
            ReversalPartView(p.source, p.id, format_credits(p.credits_ucr), p.outcome)
            for p in reversal.parts
        ],
        actor=None if event.actor is None else ActorView(event.actor.token_id, event.actor.role),
        reason=event.reason,
        event=msgspec.to_builtins(event),
    )
