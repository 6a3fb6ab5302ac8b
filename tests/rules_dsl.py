"""Given/when/then for the decider: `then(given(...), when)` with no fixtures and no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import reduce

import msgspec

from ledger.catalog import PACK_CREDITS_UCR, SEAT_QUOTA_UCR
from ledger.cycles import add_months, cycle_bounds
from ledger.decider import decide, evolve, initial_state
from ledger.idempotency import payload_digest
from ledger.rate_card import RateCard, load_rate_card
from ledger.state import LedgerState
from schemas.commands import ChargeUsage, Command, Tier
from schemas.events import (
    CycleStarted,
    LogEvent,
    PackPurchased,
    SeatAdded,
    SubscriptionOpened,
)
from schemas.usage import UsageEvent

RATE_CARD: RateCard = load_rate_card()
CREDIT = 1_000_000
SUB = "team-1"
ANCHOR = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)


def at(day: str) -> datetime:
    """An instant from 'YYYY-MM-DD' or 'YYYY-MM-DDTHH:MM'."""
    text = day if "T" in day else f"{day}T12:00"
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def given(*events: LogEvent) -> LedgerState:
    return reduce(evolve, events, initial_state())


def when(state: LedgerState, command: Command, instant: datetime) -> list[LogEvent]:
    return decide(state, command, instant, RATE_CARD)


def opened(anchor: datetime = ANCHOR, sub: str = SUB, cycle: int = 0) -> list[LogEvent]:
    start, end = cycle_bounds(anchor, cycle)
    return [SubscriptionOpened(sub, anchor), CycleStarted(sub, cycle, start, end)]


def seat_added(seat: str, tier: Tier = "standard", sub: str = SUB, cycle: int = 0) -> SeatAdded:
    return SeatAdded(sub, seat, tier, SEAT_QUOTA_UCR[tier], cycle)


def pack_bought(pack: str, instant: datetime, sub: str = SUB) -> PackPurchased:
    return PackPurchased(sub, pack, PACK_CREDITS_UCR, instant, add_months(instant, 1))


def usage(
    event_id: str,
    seat: str,
    *,
    sub: str = SUB,
    model: str = "qwen3.6-plus",
    input_tokens: int = 0,
    cached_tokens: int = 0,
    output_tokens: int = 0,
    images: int = 0,
) -> UsageEvent:
    return UsageEvent(
        event_id=event_id,
        subscription_id=sub,
        seat_id=seat,
        model=model,
        occurred_at=ANCHOR,
        input_tokens=input_tokens,
        cached_tokens=cached_tokens,
        output_tokens=output_tokens,
        images=images,
    )


def charge(event: UsageEvent, prior: UsageEvent | None = None) -> ChargeUsage:
    return ChargeUsage(event, payload_digest(event), payload_digest(prior) if prior else None)


def costing(credits: int, event_id: str, seat: str, sub: str = SUB) -> UsageEvent:
    """A request priced at exactly `credits` whole credits: input tokens at 0.2 / 1K on qwen."""
    return usage(event_id, seat, sub=sub, input_tokens=credits * 5_000)


def types(events: Sequence[LogEvent]) -> list[str]:
    return [type(e).__struct_config__.tag for e in events]  # type: ignore[misc]


def play(state: LedgerState, command: Command, instant: datetime) -> list[LogEvent]:
    """Decide `command` at `instant` and fold its events into `state` (a story step)."""
    events = when(state, command, instant)
    for event in events:
        evolve(state, event)
    return events


def costing_with_hold(credits: int, event_id: str, seat: str, hold_id: str) -> UsageEvent:
    """A request priced at exactly `credits` whole credits, served under hold `hold_id`."""
    return msgspec.structs.replace(costing(credits, event_id, seat), hold_id=hold_id)
