"""The commands the decider receives: admin writes (each with who asked and why), holds,
corrections, the usage charge and the clock's advance."""

from datetime import datetime
from typing import Annotated

import msgspec

from schemas.events import Actor, UsageCharged
from schemas.events import Tier as Tier  # where the commands that name a tier import it
from schemas.instants import bounded_utc
from schemas.limits import (
    DEFAULT_HOLD_TTL_S,
    MAX_ADMIN_CREDITS_UCR,
    MAX_HOLD_TTL_S,
    MAX_REASON_CHARS,
    MIN_HOLD_TTL_S,
)
from schemas.usage import PathId, UsageEvent, UtcInstant

Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_REASON_CHARS)]
"""Why an admin did something: 1 to 500 characters, in the log for good."""
HoldTtl = Annotated[int, msgspec.Meta(ge=MIN_HOLD_TTL_S, le=MAX_HOLD_TTL_S)]
PositiveCredits = Annotated[int, msgspec.Meta(ge=1, le=MAX_ADMIN_CREDITS_UCR)]
SignedCredits = Annotated[int, msgspec.Meta(ge=-MAX_ADMIN_CREDITS_UCR, le=MAX_ADMIN_CREDITS_UCR)]


class OpenSubscription(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="subscription.open"
):
    subscription_id: PathId
    anchor: UtcInstant | None = None
    """The billing anchor; the ledger clock's now when absent."""
    actor: Actor | None = None
    reason: Reason | None = None

    def __post_init__(self) -> None:
        if self.anchor is not None:
            bounded_utc(self.anchor, "anchor")


class AddSeat(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="seat.add"):
    subscription_id: PathId
    seat_id: PathId
    tier: Tier
    actor: Actor | None = None
    reason: Reason | None = None


class ChangeTier(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="seat.change_tier"):
    subscription_id: PathId
    seat_id: PathId
    tier: Tier
    actor: Actor | None = None
    reason: Reason | None = None


class RemoveSeat(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="seat.remove"):
    subscription_id: PathId
    seat_id: PathId
    actor: Actor | None = None
    reason: Reason | None = None


class BuyPack(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="pack.buy"):
    subscription_id: PathId
    pack_id: PathId
    actor: Actor | None = None
    reason: Reason | None = None


# -- holds ----------------------------------------------------------------------------------


class PlaceHold(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="hold.place"):
    subscription_id: PathId
    seat_id: PathId
    hold_id: PathId
    credits_ucr: PositiveCredits
    ttl_s: HoldTtl = DEFAULT_HOLD_TTL_S
    actor: Actor | None = None


class ExtendHold(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="hold.extend"):
    subscription_id: PathId
    seat_id: PathId
    hold_id: PathId
    ttl_s: HoldTtl
    """The hold then expires `ttl_s` after the ledger clock's now."""
    actor: Actor | None = None


class ReleaseHold(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="hold.release"):
    subscription_id: PathId
    seat_id: PathId
    hold_id: PathId
    actor: Actor | None = None


# -- corrections ----------------------------------------------------------------------------


class AdjustSeat(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="seat.adjust"):
    subscription_id: PathId
    seat_id: PathId
    adjustment_id: PathId
    credits_ucr: SignedCredits
    reason: Reason
    actor: Actor | None = None


class GrantCredits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="grant.issue"):
    subscription_id: PathId
    grant_id: PathId
    credits_ucr: PositiveCredits
    expires_at: UtcInstant
    reason: Reason
    actor: Actor | None = None

    def __post_init__(self) -> None:
        bounded_utc(self.expires_at, "expires_at")


class ChargeOnRecord(msgspec.Struct, frozen=True, gc=False):
    """A charge as the log holds it, and when it was recorded (found by the write path)."""

    charge: UsageCharged
    recorded_at: datetime


class ReverseCharge(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="usage.reverse"):
    """Give back `credits_ucr` of charge `event_id` (all that is left of it when None).

    `on_record` is the charge as the log holds it: the write path looks it up (None when the
    log has no such charge), as it does earlier charges of a usage event.
    """

    subscription_id: PathId
    event_id: PathId
    reversal_id: PathId
    reason: Reason
    credits_ucr: PositiveCredits | None = None
    actor: Actor | None = None
    on_record: ChargeOnRecord | None = None


class VoidPack(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="pack.void"):
    subscription_id: PathId
    pack_id: PathId
    reason: Reason
    actor: Actor | None = None


class VoidGrant(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="grant.void"):
    subscription_id: PathId
    grant_id: PathId
    reason: Reason
    actor: Actor | None = None


class SetNotificationSettings(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="notification.set_settings"
):
    """Put these notification settings in force for the subscription (see
    `NotificationSettingsChanged`); the decider refuses settings that cannot be."""

    subscription_id: PathId
    thresholds_percent: tuple[int, ...]
    credits_low_ucr: int | None = None
    actor: Actor | None = None
    reason: Reason | None = None


class ChargeUsage(msgspec.Struct, frozen=True, gc=False, tag="usage.charge"):
    """A usage event to charge.

    `payload_digest` identifies its content; `prior_digest` is the digest of an earlier charge
    of the same (subscription_id, event_id) found in the log, None when there is none.
    """

    usage: UsageEvent
    payload_digest: str
    prior_digest: str | None = None


class AdvanceClock(msgspec.Struct, frozen=True, tag="clock.advance"):
    """Append whatever cycle starts and pack expiries are due by the command's time."""


AdminCommand = (
    OpenSubscription
    | AddSeat
    | ChangeTier
    | RemoveSeat
    | BuyPack
    | AdjustSeat
    | GrantCredits
    | ReverseCharge
    | VoidPack
    | VoidGrant
    | SetNotificationSettings
)
HoldCommand = PlaceHold | ExtendHold | ReleaseHold
Command = AdminCommand | HoldCommand | ChargeUsage | AdvanceClock
