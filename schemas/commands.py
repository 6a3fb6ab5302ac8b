"""Admin commands (the HTTP API's writes) and the usage charge, as the decider receives them."""

from typing import Literal

import msgspec

from schemas.instants import bounded_utc
from schemas.usage import PathId, UsageEvent, UtcInstant

Tier = Literal["standard", "advanced", "premium"]


class OpenSubscription(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="subscription.open"
):
    subscription_id: PathId
    anchor: UtcInstant | None = None
    """The billing anchor; the ledger clock's now when absent."""

    def __post_init__(self) -> None:
        if self.anchor is not None:
            bounded_utc(self.anchor, "anchor")


class AddSeat(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="seat.add"):
    subscription_id: PathId
    seat_id: PathId
    tier: Tier


class ChangeTier(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="seat.change_tier"):
    subscription_id: PathId
    seat_id: PathId
    tier: Tier


class RemoveSeat(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="seat.remove"):
    subscription_id: PathId
    seat_id: PathId


class BuyPack(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="pack.buy"):
    subscription_id: PathId
    pack_id: PathId


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


AdminCommand = OpenSubscription | AddSeat | ChangeTier | RemoveSeat | BuyPack
Command = AdminCommand | ChargeUsage | AdvanceClock
