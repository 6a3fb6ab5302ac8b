"""The decider: `decide(state, command, at, rate_card) -> events`, pure over its arguments.

It reads no clock and touches no store: `at` is the ledger's recorded time for this command,
and an earlier charge of the same event id comes in on the command (`prior_digest`). Every
command first records what fell due by `at` for its subscription (cycle starts, expiries).
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from ledger import corrections, holds
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
    AdjustSeat,
    AdvanceClock,
    BuyPack,
    ChangeTier,
    ChargeUsage,
    Command,
    ExtendHold,
    GrantCredits,
    OpenSubscription,
    PlaceHold,
    ReleaseHold,
    RemoveSeat,
    ReverseCharge,
    SetNotificationSettings,
    VoidGrant,
    VoidPack,
)
from schemas.events import (
    Allocation,
    Components,
    CycleStarted,
    HoldStatus,
    LogEvent,
    NotificationSettingsChanged,
    PackPurchased,
    SeatAdded,
    SeatRemoved,
    SeatResumed,
    SeatSuspended,
    SeatTierChanged,
    SubscriptionOpened,
    UsageCharged,
)
from schemas.notifications import NotificationSettings, settings_problem
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
    return due + _decide_on(sub, command, at)


def _decide_on(sub: SubscriptionState, command: Command, at: datetime) -> list[LogEvent]:
    """A command on one subscription, once what fell due by `at` is folded into `sub`."""
    match command:
        case AddSeat():
            return _add_seat(sub, command)
        case ChangeTier():
            return _change_tier(_seat(sub, command.seat_id), sub, command)
        case RemoveSeat():
            return _remove_seat(_seat(sub, command.seat_id), sub, command, at)
        case BuyPack():
            return _buy_pack(sub, command, at)
        case PlaceHold():
            return holds.place(sub, _seat(sub, command.seat_id), command, at)
        case ExtendHold():
            return holds.extend(sub, command, at)
        case ReleaseHold():
            return holds.release(sub, command, at)
        case AdjustSeat():
            return corrections.adjust(sub, _seat(sub, command.seat_id), command, at)
        case GrantCredits():
            return corrections.grant(sub, command, at)
        case ReverseCharge():
            return corrections.reverse(sub, command)
        case VoidPack():
            return corrections.void_pack(sub, command, at)
        case VoidGrant():
            return corrections.void_grant(sub, command, at)
        case SetNotificationSettings():
            return _set_notification_settings(sub, command)
    raise InvalidCommand(f"the ledger has no rule for {type(command).__name__}")


def _set_notification_settings(
    sub: SubscriptionState, command: SetNotificationSettings
) -> list[LogEvent]:
    """Settings in force from this record on; the settings in force already record nothing."""
    thresholds = tuple(sorted(set(command.thresholds_percent)))
    problem = settings_problem(thresholds, command.credits_low_ucr)
    if problem is not None:
        raise InvalidCommand(f"notification settings: {problem}")
    if sub.notification_settings == NotificationSettings(thresholds, command.credits_low_ucr):
        return []
    return [
        NotificationSettingsChanged(
            command.subscription_id,
            thresholds,
            command.credits_low_ucr,
            command.actor,
            command.reason,
        )
    ]


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
        SubscriptionOpened(command.subscription_id, anchor, command.actor, command.reason),
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
    return [
        SeatAdded(
            sub.subscription_id,
            command.seat_id,
            command.tier,
            quota,
            sub.cycle,
            command.actor,
            command.reason,
        )
    ]


def _change_tier(seat: SeatState, sub: SubscriptionState, command: ChangeTier) -> list[LogEvent]:
    if seat.status == "removed":
        raise SeatIsRemoved(f"seat {seat.seat_id!r} was removed")
    target, current = command.tier, seat.tier
    if TIER_RANK[target] > TIER_RANK[current]:
        quota = SEAT_QUOTA_UCR[target]
        events: list[LogEvent] = [
            SeatTierChanged(
                sub.subscription_id,
                seat.seat_id,
                current,
                target,
                "immediate",
                quota,
                command.actor,
                command.reason,
            )
        ]
        if seat.status == "suspended" and quota > seat.used_ucr + seat.held_ucr:
            events.append(SeatResumed(sub.subscription_id, seat.seat_id, "tier_upgraded"))
        return events
    if target == (seat.pending_tier or current):
        return []  # already the tier it has, or will have next cycle: nothing to record
    return [
        SeatTierChanged(
            sub.subscription_id,
            seat.seat_id,
            current,
            target,
            "next_cycle",
            seat.quota_ucr,
            command.actor,
            command.reason,
        )
    ]


def _remove_seat(
    seat: SeatState, sub: SubscriptionState, command: RemoveSeat, at: datetime
) -> list[LogEvent]:
    if seat.status == "removed":
        return []
    return [
        *holds.release_all_of(sub, seat.seat_id, at),
        SeatRemoved(
            sub.subscription_id, seat.seat_id, seat.remaining_ucr, command.actor, command.reason
        ),
    ]


def _buy_pack(sub: SubscriptionState, command: BuyPack, at: datetime) -> list[LogEvent]:
    if command.pack_id in sub.pack_ids:
        return []  # a retried purchase buys nothing more
    expires_at = add_months(at, PACK_VALIDITY_MONTHS)
    bought = PackPurchased(
        sub.subscription_id,
        command.pack_id,
        PACK_CREDITS_UCR,
        at,
        expires_at,
        command.actor,
        command.reason,
    )
    return [bought, *corrections.resume_suspended(sub, "pack_purchased")]


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
    hold = holds.settling(sub, seat.seat_id, usage.hold_id)
    allocation = allocate(sub, seat, credits_ucr, at, released=hold)
    charged = usage_charged(
        usage, command.payload_digest, version, rates, counts, components, credits_ucr, allocation
    )
    events: list[LogEvent] = list(due)
    if usage.hold_id is not None:
        if hold is not None:
            events.append(holds.settled(sub, hold, usage.event_id, at))
        status: HoldStatus = "not_active" if hold is None else "settled"
        charged = msgspec.structs.replace(charged, hold_id=usage.hold_id, hold_status=status)
    events.append(charged)
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
