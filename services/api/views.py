"""What the API answers with: the response Structs (credits as decimal strings, instants as
RFC 3339) and the functions that build them from the balances, the read models and the log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from ledger.log import StoredRecord
from ledger.money import format_credits
from ledger.records import event_json
from projections.balances import (
    Balances,
    HoldRow,
    grant_balances,
    held_ucr,
    overview,
    seat_spendable_ucr,
    shared_available_ucr,
)
from schemas.commands import Tier
from schemas.events import CycleStarted, PackExpired
from schemas.read_models import (
    HoldLifecycle,
    PackBalance,
    PackStatus,
    SeatBalance,
    SeatStatus,
    UsageRow,
)
from services.auth.tokens import Role


class SeatView(msgspec.Struct, frozen=True):
    subscription_id: str
    seat_id: str
    tier: Tier
    pending_tier: Tier | None
    status: SeatStatus
    quota: str
    used: str
    remaining: str
    held: str
    """What active holds of this seat hold (from its quota, packs and grants)."""
    available: str
    """What the seat can still spend now: its quota and the valid packs and grants, less
    what every active hold took from them."""
    pack_used: str
    uncovered: str
    cycle_start: datetime | None
    cycle_end: datetime | None


class PackView(msgspec.Struct, frozen=True):
    pack_id: str
    credits: str
    remaining: str
    expired: str
    purchased_at: datetime
    expires_at: datetime
    expires_in_seconds: int
    status: PackStatus


class PackList(msgspec.Struct, frozen=True):
    items: list[PackView]


class OverviewView(msgspec.Struct, frozen=True):
    subscription_id: str
    cycle: int
    cycle_start: datetime | None
    cycle_end: datetime | None
    quota_total: str
    quota_used: str
    utilization_percent: str
    seats: list[SeatView]
    packs_remaining: str
    held: str
    """What the subscription's active holds hold."""
    uncovered: str
    uncovered_total: str
    grants_remaining: str
    """What is left of the grants not expired nor voided."""
    voided: str
    """Credits removed by voids of packs and grants, all-time."""


class NextExpiration(msgspec.Struct, frozen=True):
    pack_id: str
    expires_at: datetime
    expires_in_seconds: int


class BillingView(msgspec.Struct, frozen=True):
    subscription_id: str
    total_credits: str
    """Seat quotas of this cycle (seats not removed) plus the credits of the packs and grants
    neither expired nor voided."""
    remaining: str
    """What is left of them: seat quota remaining plus what those packs and grants have left.
    A reversal puts back what it returned; an adjustment changes the seat's quota."""
    held: str
    """What the subscription's active holds hold."""
    available: str
    """What the seats that are not removed can still spend now, together: their quotas and
    the valid packs and grants, less what active holds took."""
    next_expiration: NextExpiration | None


class UsageCounts(msgspec.Struct, frozen=True):
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    tool_calls: int
    images: int
    thinking: bool


class ComponentsView(msgspec.Struct, frozen=True):
    input: str
    cached: str
    output: str
    thinking: str
    tools: str
    images: str


class CoefficientsView(msgspec.Struct, frozen=True):
    """Credits per 1K tokens, per tool call and per image."""

    input_per_1k: str
    cached_per_1k: str
    output_per_1k: str
    thinking_per_1k: str
    tool_call: str
    image: str


class AllocationView(msgspec.Struct, frozen=True):
    source: str
    id: str
    credits: str


class UsageRowView(msgspec.Struct, frozen=True):
    position: int
    event_id: str
    recorded_at: datetime
    occurred_at: datetime
    seat_id: str
    model: str
    product: str | None
    """text / image; null on a reversal row."""
    usage: UsageCounts
    components: ComponentsView
    coefficients: CoefficientsView
    rate_card_version: str
    credits: str
    allocation: list[AllocationView]
    request_id: str | None
    api_key_id: str | None
    gateway: str | None
    kind: str
    """charge, or reversal: a row of its own, with negative credits and allocation."""
    reverses: str | None
    """A reversal row: the event id of the charge it gives back."""
    reversed: str
    """A charge row: what its reversals gave back so far ("0.00" on a reversal row)."""
    reason: str | None
    """A reversal row: why."""


class UsagePageView(msgspec.Struct, frozen=True):
    items: list[UsageRowView]
    next_cursor: str | None


class AuthorizationView(msgspec.Struct, frozen=True):
    allowed: bool
    available: str
    """What the seat can spend now, less what active holds took."""
    held: str
    """What this seat's active holds hold."""
    reason: str
    """ok / suspended / removed / unknown / exhausted."""


class HoldView(msgspec.Struct, frozen=True):
    """Credits reserved for one seat: what the hold holds now, and where it took them."""

    subscription_id: str
    hold_id: str
    seat_id: str
    status: HoldLifecycle
    credits: str
    """What the hold holds (what was asked, less what shrank with an expired or voided source);
    once ended, what it held when it ended."""
    requested: str
    allocation: list[AllocationView]
    ttl_s: int
    placed_at: datetime
    expires_at: datetime
    expires_in_seconds: int
    ended_at: datetime | None
    settled_by: str | None
    """The usage event that settled it."""


class LogRecordView(msgspec.Struct, frozen=True):
    position: int
    recorded_at: datetime
    hash: str
    prev_hash: str
    event: dict[str, Any]


class LogPage(msgspec.Struct, frozen=True):
    items: list[LogRecordView]
    next_after: int | None
    """Pass as `after` for the next page; null when this page reached the end."""


class DigestView(msgspec.Struct, frozen=True):
    position: int
    hash: str


class HealthView(msgspec.Struct, frozen=True):
    status: str


class ReadyView(msgspec.Struct, frozen=True):
    status: str
    position: int
    head: int


class TokenCreated(msgspec.Struct, frozen=True):
    token_id: str
    token: str
    """Shown once: only its hash is kept."""
    role: Role
    subscription_ids: list[str] | None


class ClockView(msgspec.Struct, frozen=True):
    now: datetime
    manual: bool
    """True when `POST /v1/clock` may move it (LEDGER_CLOCK=manual)."""


class CycleStartedView(msgspec.Struct, frozen=True):
    subscription_id: str
    cycle: int
    cycle_start: datetime
    cycle_end: datetime


class PackExpiredView(msgspec.Struct, frozen=True):
    subscription_id: str
    pack_id: str
    expires_at: datetime
    expired: str
    """The credits the pack still had when it expired."""


class ClockAdvanced(msgspec.Struct, frozen=True):
    now: datetime
    cycles_started: list[CycleStartedView]
    packs_expired: list[PackExpiredView]
    """What fell due by this move: appended by it, or by the ticker of `ledger serve` in
    between (cycle starts and expiries appended after the request came in)."""


# -- request bodies: the fields of schemas/commands.py, with the subscription from the path ---


class TokenSelfView(msgspec.Struct, frozen=True):
    """Who the bearer is (for the console: which actions to offer, which subscription to open)."""

    token_id: str
    role: Role
    subscription_ids: list[str] | None
    """None: every subscription."""
    now: datetime
    """The ledger clock's now, which a manual clock may hold far from the wall clock."""


def seat_available_ucr(balances: Balances, sub_id: str, seat_id: str, now: datetime) -> int:
    """What the seat can spend at `now`: its own quota and the shared credits valid then, less
    what active holds took (0 for a removed or unknown seat)."""
    row = balances.seats.get((sub_id, seat_id))
    if row is None or row.status == "removed":
        return 0
    return seat_spendable_ucr(row) + shared_available_ucr(balances, sub_id, now)


def seat_view(seat: SeatBalance, balances: Balances, now: datetime) -> SeatView:
    sub = balances.subscriptions[seat.subscription_id]
    sub_id, seat_id = seat.subscription_id, seat.seat_id
    return SeatView(
        subscription_id=seat.subscription_id,
        seat_id=seat.seat_id,
        tier=seat.tier,
        pending_tier=seat.pending_tier,
        status=seat.status,
        quota=format_credits(seat.quota_ucr),
        used=format_credits(seat.used_ucr),
        remaining=format_credits(seat.remaining_ucr),
        held=format_credits(held_ucr(balances, sub_id, seat_id)),
        available=format_credits(seat_available_ucr(balances, sub_id, seat_id, now)),
        pack_used=format_credits(seat.pack_used_ucr),
        uncovered=format_credits(seat.uncovered_ucr),
        cycle_start=sub.cycle_start,
        cycle_end=sub.cycle_end,
    )


def hold_view(hold: HoldRow, now: datetime) -> HoldView:
    return HoldView(
        subscription_id=hold.subscription_id,
        hold_id=hold.hold_id,
        seat_id=hold.seat_id,
        status=hold.status,
        credits=format_credits(hold.credits_ucr),
        requested=format_credits(hold.requested_ucr),
        allocation=[
            AllocationView(a.source, a.id, format_credits(a.credits_ucr)) for a in hold.allocation
        ],
        ttl_s=hold.ttl_s,
        placed_at=hold.placed_at,
        expires_at=hold.expires_at,
        expires_in_seconds=seconds_until(hold.expires_at, now) if hold.status == "active" else 0,
        ended_at=hold.ended_at,
        settled_by=hold.settled_by,
    )


def seconds_until(instant: datetime, now: datetime) -> int:
    """Whole seconds from `now` to `instant`, 0 once it has passed."""
    return max(0, int((instant - now).total_seconds()))


def pack_view(pack: PackBalance, now: datetime) -> PackView:
    return PackView(
        pack_id=pack.pack_id,
        credits=format_credits(pack.credits_ucr),
        remaining=format_credits(pack.remaining_ucr),
        expired=format_credits(pack.expired_ucr),
        purchased_at=pack.purchased_at,
        expires_at=pack.expires_at,
        expires_in_seconds=seconds_until(pack.expires_at, now),
        status=pack.status,
    )


def percent(basis_points: int) -> str:
    return f"{basis_points // 100}.{basis_points % 100:02d}"


def overview_view(balances: Balances, sub: str, now: datetime) -> OverviewView:
    view = overview(balances, sub)
    assert view is not None, f"subscription {sub!r} is in the balances"
    return OverviewView(
        subscription_id=sub,
        cycle=view.cycle,
        cycle_start=view.cycle_start,
        cycle_end=view.cycle_end,
        quota_total=format_credits(view.quota_total_ucr),
        quota_used=format_credits(view.quota_used_ucr),
        utilization_percent=percent(view.utilization_basis_points),
        seats=[seat_view(seat, balances, now) for seat in view.seats],
        packs_remaining=format_credits(view.packs_remaining_ucr),
        held=format_credits(held_ucr(balances, sub)),
        uncovered=format_credits(view.uncovered_ucr),
        uncovered_total=format_credits(view.uncovered_total_ucr),
        grants_remaining=format_credits(
            sum(g.remaining_ucr for g in grant_balances(balances, sub) if g.status == "active")
        ),
        voided=format_credits(balances.subscriptions[sub].voided_ucr),
    )


def usage_row_view(row: UsageRow) -> UsageRowView:
    c, k, u = row.components, row.coefficients, row.usage
    return UsageRowView(
        position=row.position,
        event_id=row.event_id,
        recorded_at=row.recorded_at,
        occurred_at=row.occurred_at,
        seat_id=row.seat_id,
        model=row.model,
        product=row.product,
        usage=UsageCounts(
            u.input_tokens, u.cached_tokens, u.output_tokens, u.tool_calls, u.images, u.thinking
        ),
        components=ComponentsView(
            input=format_credits(c.input_ucr),
            cached=format_credits(c.cached_ucr),
            output=format_credits(c.output_ucr),
            thinking=format_credits(c.thinking_ucr),
            tools=format_credits(c.tools_ucr),
            images=format_credits(c.images_ucr),
        ),
        coefficients=CoefficientsView(
            input_per_1k=format_credits(k.input_ucr_per_1k),
            cached_per_1k=format_credits(k.cached_ucr_per_1k),
            output_per_1k=format_credits(k.output_ucr_per_1k),
            thinking_per_1k=format_credits(k.thinking_ucr_per_1k),
            tool_call=format_credits(k.tool_call_ucr),
            image=format_credits(k.image_ucr),
        ),
        rate_card_version=row.rate_card_version,
        credits=format_credits(row.credits_ucr),
        allocation=[
            AllocationView(a.source, a.id, format_credits(a.credits_ucr)) for a in row.allocation
        ],
        request_id=row.request_id,
        api_key_id=row.api_key_id,
        gateway=row.gateway,
        kind=row.kind,
        reverses=row.reverses,
        reversed=format_credits(row.reversed_ucr),
        reason=row.reason,
    )


def authorization(
    balances: Balances, sub_id: str, seat_id: str, now: datetime
) -> AuthorizationView:
    """May this seat spend now? Its quota left plus the subscription's valid packs and grants,
    less what active holds took."""
    seat = balances.seats.get((sub_id, seat_id))
    if seat is None:
        return AuthorizationView(False, format_credits(0), format_credits(0), "unknown")
    held = format_credits(held_ucr(balances, sub_id, seat_id))
    if seat.status == "removed":
        return AuthorizationView(False, format_credits(0), held, "removed")
    available_ucr = seat_available_ucr(balances, sub_id, seat_id, now)
    available = format_credits(available_ucr)
    if seat.status == "suspended":
        return AuthorizationView(False, available, held, "suspended")
    if available_ucr <= 0:
        return AuthorizationView(False, available, held, "exhausted")
    return AuthorizationView(True, available, held, "ok")


def billing_view(balances: Balances, sub: str, now: datetime) -> BillingView:
    """What the subscription bought and has left, and the next pack to expire."""
    view = overview(balances, sub)
    assert view is not None, f"subscription {sub!r} is in the balances"
    live_packs = [p for p in view.packs if p.status not in ("expired", "voided")]
    upcoming = [p for p in live_packs if p.status == "active" and p.expires_at > now]
    live_grants = [
        g for g in grant_balances(balances, sub) if g.status not in ("expired", "voided")
    ]
    granted = sum(g.credits_ucr for g in live_grants)
    grants_remaining = sum(g.remaining_ucr for g in live_grants)
    seats_remaining = sum(s.remaining_ucr for s in view.seats if s.status != "removed")
    seats_spendable = sum(seat_spendable_ucr(balances.seats[(sub, s.seat_id)]) for s in view.seats)
    return BillingView(
        subscription_id=sub,
        total_credits=format_credits(
            view.quota_total_ucr + sum(p.credits_ucr for p in live_packs) + granted
        ),
        remaining=format_credits(seats_remaining + view.packs_remaining_ucr + grants_remaining),
        held=format_credits(held_ucr(balances, sub)),
        available=format_credits(seats_spendable + shared_available_ucr(balances, sub, now)),
        next_expiration=(
            NextExpiration(
                upcoming[0].pack_id,
                upcoming[0].expires_at,
                seconds_until(upcoming[0].expires_at, now),
            )
            if upcoming
            else None
        ),
    )


def log_record_view(record: StoredRecord) -> LogRecordView:
    return LogRecordView(
        position=record.position,
        recorded_at=record.recorded_at,
        hash=record.hash.hex(),
        prev_hash=record.prev_hash.hex(),
        event=msgspec.json.decode(event_json(record.data)),
    )


def clock_advanced(now: datetime, appended: list[CycleStarted | PackExpired]) -> ClockAdvanced:
    return ClockAdvanced(
        now=now,
        cycles_started=[
            CycleStartedView(e.subscription_id, e.cycle, e.cycle_start, e.cycle_end)
            for e in appended
            if isinstance(e, CycleStarted)
        ],
        packs_expired=[
            PackExpiredView(
                e.subscription_id, e.pack_id, e.expires_at, format_credits(e.expired_ucr)
            )
            for e in appended
            if isinstance(e, PackExpired)
        ],
    )
