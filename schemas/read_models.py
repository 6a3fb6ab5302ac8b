"""Read models: what the projections answer queries with (balances, usage rows, the overview).

Amounts are integer micro-credits (`_ucr`) and times are UTC datetimes; the HTTP layer turns
them into decimal strings and RFC 3339. Every Struct is frozen: a read model handed out is a
snapshot, never a live view of the projection.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from schemas.commands import Tier
from schemas.events import Allocation, Coefficients, Components, Product
from schemas.usage import Usage

SeatStatus = Literal["active", "suspended", "removed"]
PackStatus = Literal["active", "exhausted", "expired", "voided"]
SourceKind = Literal["pack", "grant"]
HoldLifecycle = Literal["active", "settled", "released", "expired"]


class SeatBalance(msgspec.Struct, frozen=True):
    """One seat in its current cycle (`cycle`, the last it was granted quota for).

    A removed seat keeps the figures of the cycle it was removed in, with `remaining_ucr` 0.
    """

    subscription_id: str
    seat_id: str
    tier: Tier
    pending_tier: Tier | None
    """A downgrade that takes effect at the next cycle start."""
    status: SeatStatus
    cycle: int
    quota_ucr: int
    used_ucr: int
    """Credits drawn from the seat's own quota this cycle."""
    remaining_ucr: int
    pack_used_ucr: int
    """Credits this seat drew from the subscription's packs this cycle."""
    uncovered_ucr: int
    """Credits this seat was served this cycle that nothing covered."""


class PackBalance(msgspec.Struct, frozen=True):
    subscription_id: str
    pack_id: str
    credits_ucr: int
    remaining_ucr: int
    expired_ucr: int
    """What was left in the pack when it expired (0 until then)."""
    purchased_at: datetime
    expires_at: datetime
    status: PackStatus


class SubscriptionBalance(msgspec.Struct, frozen=True):
    """A subscription's cycle, its uncovered credits, and its conservation totals.

    For every subscription, at every position of the log:
    `granted_ucr = seat remaining (seats not removed) + pack remaining + used_ucr + expired_ucr`.
    Uncovered credits were served without cover and sit outside that equation.
    """

    subscription_id: str
    anchor: datetime
    cycle: int
    """-1 until the first `subscription.cycle_started`."""
    cycle_start: datetime | None
    cycle_end: datetime | None
    uncovered_cycle_ucr: int
    uncovered_total_ucr: int
    granted_ucr: int
    """Seat quotas granted (upgrades count their increase) plus pack credits bought, all-time."""
    used_ucr: int
    """Credits charged to seat quotas and packs, all-time."""
    expired_ucr: int
    """Seat quota lapsed at cycle end or forfeited on removal, plus pack credits expired."""


UsageRowKind = Literal["charge", "reversal"]


class UsageRow(msgspec.Struct, frozen=True):
    """One charged request, or one reversal of a charge, as usage details show them.

    A reversal row has the reversal's id as `event_id`, the charge's in `reverses`, negative
    `credits_ucr` and allocation parts (what went back to each source), no usage, components
    or coefficients, and `product` None; a charge row says in `reversed_ucr` what its
    reversals gave back so far.
    """

    position: int
    recorded_at: datetime
    """The ledger's deduction time."""
    occurred_at: datetime
    """The gateway's time, kept for reporting only."""
    event_id: str
    subscription_id: str
    seat_id: str
    model: str
    product: Product | None
    usage: Usage
    components: Components
    coefficients: Coefficients
    rate_card_version: str
    credits_ucr: int
    allocation: tuple[Allocation, ...]
    request_id: str | None = None
    api_key_id: str | None = None
    gateway: str | None = None
    kind: UsageRowKind = "charge"
    reverses: str | None = None
    """A reversal row: the event id of the charge it reverses."""
    reversed_ucr: int = 0
    """A charge row: what its reversals (as of the page's position) gave back."""
    reason: str | None = None
    """A reversal row: why."""


class UsagePage(msgspec.Struct, frozen=True):
    items: tuple[UsageRow, ...]
    next_cursor: str | None
    """Opaque; None on the last page."""


class Overview(msgspec.Struct, frozen=True):
    """A subscription at a glance. Quota totals count the seats that are not removed."""

    subscription_id: str
    cycle: int
    cycle_start: datetime | None
    cycle_end: datetime | None
    quota_total_ucr: int
    quota_used_ucr: int
    utilization_basis_points: int
    """quota_used * 10000 // quota_total, 0 when there is no quota."""
    seats: tuple[SeatBalance, ...]
    """Every seat, removed ones included, by seat id."""
    packs: tuple[PackBalance, ...]
    """Every pack ever bought, by expiry then purchase then pack id."""
    packs_remaining_ucr: int
    uncovered_ucr: int
    """This cycle."""
    uncovered_total_ucr: int
