"""Log events: the facts the ledger records, one tagged msgspec Struct each with a stable tag.

Every amount is an integer of micro-credits (`_ucr`). A breaking change is a new tag plus an
upcaster; new fields only ever arrive with defaults.
"""

from datetime import datetime
from typing import Literal

import msgspec

from schemas.commands import Tier
from schemas.usage import Usage

Product = Literal["text", "image"]
AllocationSource = Literal["seat", "pack", "uncovered"]
TierChangeEffect = Literal["immediate", "next_cycle"]
SuspendReason = Literal["credits_exhausted"]
ResumeReason = Literal["pack_purchased", "cycle_started", "tier_upgraded"]


class _LogEvent(msgspec.Struct, frozen=True, gc=False, omit_defaults=True, tag_field="type"):
    """Base of every log event. Events hold no reference cycles, so the garbage collector
    need not track them (`gc=False`): millions of them are folded in a replay."""

    subscription_id: str


class SubscriptionOpened(_LogEvent, frozen=True, tag="subscription.opened"):
    anchor: datetime


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


class SeatTierChanged(_LogEvent, frozen=True, tag="seat.tier_changed"):
    """An upgrade applies now (`quota_ucr` is the new quota this cycle); a downgrade next cycle."""

    seat_id: str
    from_tier: Tier
    to_tier: Tier
    effect: TierChangeEffect
    quota_ucr: int


class SeatRemoved(_LogEvent, frozen=True, tag="seat.removed"):
    """The seat can no longer spend; what was left of its quota this cycle is forfeited."""

    seat_id: str
    forfeited_ucr: int


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

    def uncovered_ucr(self) -> int:
        return sum(part.credits_ucr for part in self.allocation if part.source == "uncovered")


class SeatSuspended(_LogEvent, frozen=True, tag="seat.suspended"):
    seat_id: str
    reason: SuspendReason
    event_id: str


class SeatResumed(_LogEvent, frozen=True, tag="seat.resumed"):
    seat_id: str
    reason: ResumeReason


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
)
