"""The decider: `decide(state, command, at, rate_card) -> events`, pure over its arguments.

It reads no clock and touches no store: `at` is the ledger's recorded time for this command,
and an earlier charge of the same event id comes in on the command (`prior_digest`). Every
command first records what fell due by `at` for its subscription (cycle starts, expiries).
"""

from __future__ import annotations

from datetime import UTC, datetime

from ledger.catalog import PACK_CREDITS_UCR, PACK_VALIDITY_MONTHS, SEAT_QUOTA_UCR, TIER_RANK
from ledger.cycles import add_months, cycle_bounds, cycle_index
from ledger.deduction import allocate
from ledger.errors import (
    DuplicateConflict,
    InvalidCommand,
    SeatExists,
    SeatIsRemoved,
    SubscriptionExists,
    UnknownModel,
    UnknownSeat,
    UnknownSubscription,
)
from ledger.lifecycle import due_events
from ledger.pricing import price
from ledger.rate_card import ModelRates, RateCard, RateCardVersion
from ledger.state import LedgerState, SeatState, SubscriptionState, evolve, initial_state
from schemas.commands import (
    AddSeat,
    AdvanceClock,
    BuyPack,
    ChangeTier,
    ChargeUsage,
    Command,
    OpenSubscription,
    RemoveSeat,
)
from schemas.events import (
    Allocation,
    Components,
    CycleStarted,
    LogEvent,
    PackPurchased,
    SeatAdded,
    SeatRemoved,
    SeatResumed,
    SeatSuspended,
    SeatTierChanged,
    SubscriptionOpened,
    UsageCharged,
)
from schemas.usage import Usage, UsageEvent, usage_of

__all__ = ["decide", "evolve", "initial_state"]


def decide(
    state: LedgerState, command: Command, at: datetime, rate_card: RateCard
) -> list[LogEvent]:
    """The events that `command` at `at` causes. Raises a `Rejected` subtype when refused."""
    match command:
        case ChargeUsage():
            return _charge(state, command, at, rate_card)
        case OpenSubscription():
            return _open(state, command, at)
        case AdvanceClock():
            return _advance(state, at)
    sub = _subscription(state, command.subscription_id)
    due, sub = due_events(sub, at)
    match command:
        case AddSeat():
            return due + _add_seat(sub, command)
        case ChangeTier():
            return due + _change_tier(_seat(sub, command.seat_id), sub, command)
        case RemoveSeat():
            return due + _remove_seat(_seat(sub, command.seat_id), sub)
        case BuyPack():
            return due + _buy_pack(sub, command, at)
    raise AssertionError(f"unhandled command {command!r}")


def _subscription(state: LedgerState, subscription_id: str) -> SubscriptionState:
    sub = state.subscriptions.get(subscription_id)
    if sub is None:
        raise UnknownSubscription(f"subscription {subscription_id!r} does not exist")
    return sub


def _seat(sub: SubscriptionState, seat_id: str) -> SeatState:
    """The seat of this subscription; a seat id names a seat within its subscription only, so
    nothing another subscription holds changes the answer."""
    seat = sub.seats.get(seat_id)
    if seat is None:
        raise UnknownSeat(f"no seat {seat_id!r} in subscription {sub.subscription_id!r}")
    return seat


def _open(state: LedgerState, command: OpenSubscription, at: datetime) -> list[LogEvent]:
    if command.subscription_id in state.subscriptions:
        raise SubscriptionExists(f"subscription {command.subscription_id!r} already exists")
    # Cycles are counted in UTC: a month is added to the anchor's UTC date and time.
    anchor = at if command.anchor is None else command.anchor.astimezone(UTC)
    if anchor > at:
        raise InvalidCommand("a subscription's anchor cannot be later than the ledger clock")
    cycle = cycle_index(anchor, at)
    start, end = cycle_bounds(anchor, cycle)
    return [
        SubscriptionOpened(command.subscription_id, anchor),
        CycleStarted(command.subscription_id, cycle, start, end),
    ]


def _advance(state: LedgerState, at: datetime) -> list[LogEvent]:
    events: list[LogEvent] = []
    for subscription_id in sorted(state.subscriptions):
        due, _ = due_events(state.subscriptions[subscription_id], at)
        events.extend(due)
    return events


def _add_seat(sub: SubscriptionState, command: AddSeat) -> list[LogEvent]:
    if command.seat_id in sub.seats:
        raise SeatExists(
            f"seat {command.seat_id!r} already exists in subscription {sub.subscription_id!r}"
        )
    quota = SEAT_QUOTA_UCR[command.tier]
    return [SeatAdded(sub.subscription_id, command.seat_id, command.tier, quota, sub.cycle)]


def _change_tier(seat: SeatState, sub: SubscriptionState, command: ChangeTier) -> list[LogEvent]:
    if seat.status == "removed":
        raise SeatIsRemoved(f"seat {seat.seat_id!r} was removed")
    target, current = command.tier, seat.tier
    if TIER_RANK[target] > TIER_RANK[current]:
        quota = SEAT_QUOTA_UCR[target]
        events: list[LogEvent] = [
            SeatTierChanged(sub.subscription_id, seat.seat_id, current, target, "immediate", quota)
        ]
        if seat.status == "suspended" and quota > seat.used_ucr:
            events.append(SeatResumed(sub.subscription_id, seat.seat_id, "tier_upgraded"))
        return events
    if target == (seat.pending_tier or current):
        return []  # already the tier it has, or will have next cycle: nothing to record
    return [
        SeatTierChanged(
            sub.subscription_id, seat.seat_id, current, target, "next_cycle", seat.quota_ucr
        )
    ]


def _remove_seat(seat: SeatState, sub: SubscriptionState) -> list[LogEvent]:
    if seat.status == "removed":
        return []
    return [SeatRemoved(sub.subscription_id, seat.seat_id, seat.remaining_ucr)]


def _buy_pack(sub: SubscriptionState, command: BuyPack, at: datetime) -> list[LogEvent]:
    if command.pack_id in sub.pack_ids:
        return []  # a retried purchase buys nothing more
    expires_at = add_months(at, PACK_VALIDITY_MONTHS)
    events: list[LogEvent] = [
        PackPurchased(sub.subscription_id, command.pack_id, PACK_CREDITS_UCR, at, expires_at)
    ]
    for seat in sorted(sub.seats.values(), key=lambda s: s.seat_id):
        if seat.status == "suspended":
            events.append(SeatResumed(sub.subscription_id, seat.seat_id, "pack_purchased"))
    return events


def _charge(
    state: LedgerState, command: ChargeUsage, at: datetime, rate_card: RateCard
) -> list[LogEvent]:
    usage = command.usage
    if command.prior_digest is not None:
        if command.prior_digest == command.payload_digest:
            return []  # the same event delivered again: charged once already
        raise DuplicateConflict(
            f"event {usage.event_id!r} was already charged with a different payload"
        )
    sub = _subscription(state, usage.subscription_id)
    seat = _seat(sub, usage.seat_id)
    if seat.status == "removed":
        raise SeatIsRemoved(f"seat {usage.seat_id!r} was removed and can no longer spend")
    version = rate_card.in_force(at)
    rates = version.models.get(usage.model) if version is not None else None
    if version is None or rates is None:
        raise UnknownModel(f"model {usage.model!r} is not on the rate card in force")
    due, sub = due_events(sub, at)
    seat = sub.seats[usage.seat_id]
    counts = usage_of(usage)
    components = price(counts, rates.coefficients)
    credits_ucr = components.total_ucr()
    allocation = allocate(sub, seat, credits_ucr, at)
    charged = usage_charged(
        usage, command.payload_digest, version, rates, counts, components, credits_ucr, allocation
    )
    events: list[LogEvent] = [*due, charged]
    if allocation and allocation[-1].source == "uncovered" and seat.status == "active":
        events.append(
            SeatSuspended(sub.subscription_id, seat.seat_id, "credits_exhausted", usage.event_id)
        )
    return events


def usage_charged(
    usage: UsageEvent,
    payload_digest: str,
    version: RateCardVersion,
    rates: ModelRates,
    counts: Usage,
    components: Components,
    credits_ucr: int,
    allocation: tuple[Allocation, ...],
) -> UsageCharged:
    """The `usage.charged` record of a request priced by `rates` and allocated."""
    return UsageCharged(
        subscription_id=usage.subscription_id,
        seat_id=usage.seat_id,
        event_id=usage.event_id,
        payload_digest=payload_digest,
        occurred_at=usage.occurred_at.astimezone(UTC),
        model=usage.model,
        product=rates.product,
        usage=counts,
        rate_card_version=version.version,
        coefficients=rates.coefficients,
        components=components,
        credits_ucr=credits_ucr,
        allocation=allocation,
        request_id=usage.request_id,
        api_key_id=usage.api_key_id,
        gateway=usage.gateway,
    )
