"""Log events: the facts the ledger records, one tagged msgspec Struct each with a stable tag.

Every amount is an integer of micro-credits (`_ucr`). A breaking change is a new tag plus an
upcaster; new fields only ever arrive with defaults.
"""

from datetime import datetime
from typing import Final, Literal

import msgspec

from schemas.usage import Usage

Tier = Literal["standard", "advanced", "premium"]
Product = Literal["text", "image"]
AllocationSource = Literal["seat", "pack", "grant", "uncovered"]
TierChangeEffect = Literal["immediate", "next_cycle"]
SuspendReason = Literal["credits_exhausted"]
ResumeReason = Literal[
    "pack_purchased",
    "cycle_started",
    "tier_upgraded",
    "credits_granted",
    "seat_adjusted",
    "charge_reversed",
]
HoldReleaseReason = Literal["released", "seat_removed"]
HoldStatus = Literal["settled", "not_active"]
ReversalOutcome = Literal["returned", "expired", "cleared"]
"""What became of one part of a reversal: back in its source, back in a source that has expired
(and so expired at once), or an uncovered part cleared."""


class Actor(msgspec.Struct, frozen=True, gc=False):
    """Who asked for an admin write: the API token's id and its role."""

    token_id: str
    role: str


class _LogEvent(msgspec.Struct, frozen=True, gc=False, omit_defaults=True, tag_field="type"):
    """Base of every log event. Events hold no reference cycles, so the garbage collector
    need not track them (`gc=False`): millions of them are folded in a replay."""

    subscription_id: str


class SubscriptionOpened(_LogEvent, frozen=True, tag="subscription.opened"):
    anchor: datetime
    actor: Actor | None = None
    reason: str | None = None


class CycleStarted(_LogEvent, frozen=True, tag="subscription.cycle_started"):
    """The subscription entered billing cycle `cycle` = [cycle_start, cycle_end)."""

    cycle: int
    cycle_start: datetime
    cycle_end: datetime


class SeatAdded(_LogEvent, frozen=True, tag="seat.added"):
    """A seat joined; it is granted its full tier quota for the current cycle at once."""

    seat_id: str
    tier: Tier
    quota_ucr: int
    cycle: int
    actor: Actor | None = None
    reason: str | None = None


class SeatTierChanged(_LogEvent, frozen=True, tag="seat.tier_changed"):
    """An upgrade applies now (`quota_ucr` is the new quota this cycle); a downgrade next cycle."""

    seat_id: str
    from_tier: Tier
    to_tier: Tier
    effect: TierChangeEffect
    quota_ucr: int
    actor: Actor | None = None
    reason: str | None = None


class SeatRemoved(_LogEvent, frozen=True, tag="seat.removed"):
    """The seat can no longer spend; what was left of its quota this cycle is forfeited."""

    seat_id: str
    forfeited_ucr: int
    actor: Actor | None = None
    reason: str | None = None


class SeatQuotaGranted(_LogEvent, frozen=True, tag="seat.quota_granted"):
    """A new cycle's full quota; `lapsed_ucr` is last cycle's unused quota (no roll-over)."""

    seat_id: str
    tier: Tier
    cycle: int
    quota_ucr: int
    lapsed_ucr: int


class PackPurchased(_LogEvent, frozen=True, tag="pack.purchased"):
    pack_id: str
    credits_ucr: int
    purchased_at: datetime
    expires_at: datetime
    actor: Actor | None = None
    reason: str | None = None


class PackExpired(_LogEvent, frozen=True, tag="pack.expired"):
    """The pack reached `expires_at`; `expired_ucr` credits were left in it and are gone."""

    pack_id: str
    expires_at: datetime
    expired_ucr: int


class Allocation(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """One part of a charge: from the seat's quota, one pack, or uncovered (`id` is empty)."""

    source: AllocationSource
    id: str
    credits_ucr: int


class Components(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """Per-component credits, each rounded half-up to 0.01 credit before summing."""

    input_ucr: int = 0
    cached_ucr: int = 0
    output_ucr: int = 0
    thinking_ucr: int = 0
    tools_ucr: int = 0
    images_ucr: int = 0

    def total_ucr(self) -> int:
        return (
            self.input_ucr
            + self.cached_ucr
            + self.output_ucr
            + self.thinking_ucr
            + self.tools_ucr
            + self.images_ucr
        )


class Coefficients(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """The deduction coefficients a charge used, in micro-credits per unit named."""

    input_ucr_per_1k: int = 0
    cached_ucr_per_1k: int = 0
    output_ucr_per_1k: int = 0
    thinking_ucr_per_1k: int = 0
    tool_call_ucr: int = 0
    image_ucr: int = 0


class UsageCharged(_LogEvent, frozen=True, tag="usage.charged"):
    """One priced request and where its credits came from; allocation sums to `credits_ucr`."""

    seat_id: str
    event_id: str
    payload_digest: str
    occurred_at: datetime
    model: str
    product: Product
    usage: Usage
    rate_card_version: str
    coefficients: Coefficients
    components: Components
    credits_ucr: int
    allocation: tuple[Allocation, ...]
    request_id: str | None = None
    api_key_id: str | None = None
    gateway: str | None = None
    hold_id: str | None = None
    """The hold the request was served under, as the gateway named it."""
    hold_status: HoldStatus | None = None
    """`settled`: the hold was active and its `hold.settled` precedes this charge in the same
    append; `not_active`: it had ended (or never existed), and the charge was made as any other."""

    def uncovered_ucr(self) -> int:
        return sum(part.credits_ucr for part in self.allocation if part.source == "uncovered")


class SeatSuspended(_LogEvent, frozen=True, tag="seat.suspended"):
    seat_id: str
    reason: SuspendReason
    event_id: str


class SeatResumed(_LogEvent, frozen=True, tag="seat.resumed"):
    seat_id: str
    reason: ResumeReason


# -- holds: credits reserved for a seat before serving ---------------------------------------


class HoldPlaced(_LogEvent, frozen=True, tag="hold.placed"):
    """`credits_ucr` reserved for one seat, taken per `allocation` (seat, then packs and grants
    in deduction order): what nothing else may spend until the hold ends."""

    seat_id: str
    hold_id: str
    credits_ucr: int
    allocation: tuple[Allocation, ...]
    ttl_s: int
    placed_at: datetime
    expires_at: datetime
    actor: Actor | None = None


class HoldExtended(_LogEvent, frozen=True, tag="hold.extended"):
    seat_id: str
    hold_id: str
    ttl_s: int
    extended_at: datetime
    expires_at: datetime
    actor: Actor | None = None


class HoldReleased(_LogEvent, frozen=True, tag="hold.released"):
    """The hold ended before use; what it still held is free again."""

    seat_id: str
    hold_id: str
    released_ucr: int
    released_at: datetime
    reason: HoldReleaseReason = "released"
    actor: Actor | None = None


class HoldExpired(_LogEvent, frozen=True, tag="hold.expired"):
    seat_id: str
    hold_id: str
    released_ucr: int
    expires_at: datetime


class HoldSettled(_LogEvent, frozen=True, tag="hold.settled"):
    """The usage event `event_id` named this active hold: its credits are free again, for the
    charge that follows in the same append."""

    seat_id: str
    hold_id: str
    event_id: str
    released_ucr: int
    settled_at: datetime


class HoldShrunk(_LogEvent, frozen=True, tag="hold.shrunk"):
    """A source the hold took credits from went away (a pack or grant expired or voided, a
    seat's new cycle granted less than it held): the hold is `by_ucr` smaller."""

    seat_id: str
    hold_id: str
    source: AllocationSource
    id: str
    by_ucr: int
    at: datetime


# -- corrections: new events, never edits --------------------------------------------------


class SeatAdjusted(_LogEvent, frozen=True, tag="seat.adjusted"):
    """`credits_ucr` (signed) added to the seat's quota for the current cycle `cycle`."""

    seat_id: str
    adjustment_id: str
    credits_ucr: int
    cycle: int
    actor: Actor | None = None
    reason: str | None = None


class CreditsGranted(_LogEvent, frozen=True, tag="grant.issued"):
    """Shared credits given to the subscription, spent like packs in expiry order."""

    grant_id: str
    credits_ucr: int
    granted_at: datetime
    expires_at: datetime
    actor: Actor | None = None
    reason: str | None = None


class GrantExpired(_LogEvent, frozen=True, tag="grant.expired"):
    grant_id: str
    expires_at: datetime
    expired_ucr: int


class ReversalPart(msgspec.Struct, frozen=True, gc=False):
    """Credits of one allocation part of the reversed charge, and what became of them."""

    source: AllocationSource
    id: str
    credits_ucr: int
    outcome: ReversalOutcome


class ChargeReversed(_LogEvent, frozen=True, tag="usage.reversed"):
    """`credits_ucr` of charge `event_id` given back, last part taken first (`parts`)."""

    seat_id: str
    event_id: str
    reversal_id: str
    credits_ucr: int
    parts: tuple[ReversalPart, ...]
    model: str
    """The charge's model, so usage details can show the reversal beside it."""
    charge_cycle: int
    """The billing cycle the charge was made in."""
    actor: Actor | None = None
    reason: str | None = None


class PackVoided(_LogEvent, frozen=True, tag="pack.voided"):
    """The pack is withdrawn (its payment was refunded, say): `voided_ucr` it had left are gone."""

    pack_id: str
    voided_ucr: int
    actor: Actor | None = None
    reason: str | None = None


class GrantVoided(_LogEvent, frozen=True, tag="grant.voided"):
    grant_id: str
    voided_ucr: int
    actor: Actor | None = None
    reason: str | None = None


class NotificationSettingsChanged(_LogEvent, frozen=True, tag="notification.settings_changed"):
    """From this record on, a seat notifies when its spent share of its cycle quota reaches each
    of `thresholds_percent` (ascending, distinct), and the subscription when what it can still
    spend falls below `credits_low_ucr` (None: never)."""

    thresholds_percent: tuple[int, ...]
    credits_low_ucr: int | None = None
    actor: Actor | None = None
    reason: str | None = None


LogEvent = (
    SubscriptionOpened
    | CycleStarted
    | SeatAdded
    | SeatTierChanged
    | SeatRemoved
    | SeatQuotaGranted
    | PackPurchased
    | PackExpired
    | UsageCharged
    | SeatSuspended
    | SeatResumed
    | HoldPlaced
    | HoldExtended
    | HoldReleased
    | HoldExpired
    | HoldSettled
    | HoldShrunk
    | SeatAdjusted
    | CreditsGranted
    | GrantExpired
    | ChargeReversed
    | PackVoided
    | GrantVoided
    | NotificationSettingsChanged
)

CORRECTION_EVENTS: Final = (SeatAdjusted, CreditsGranted, ChargeReversed, PackVoided, GrantVoided)
"""The corrections: each records who asked and why."""
ADMIN_EVENTS: Final = (
    SubscriptionOpened,
    SeatAdded,
    SeatTierChanged,
    SeatRemoved,
    PackPurchased,
    NotificationSettingsChanged,
    *CORRECTION_EVENTS,
)
"""The admin writes: each records who asked (and, optional outside corrections, why)."""
