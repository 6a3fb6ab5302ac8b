"""Conservation: every credit a subscription was ever given is somewhere.

    granted = remaining + used + expired + voided

- granted: seat quotas (each cycle's, and what an upgrade adds), seat adjustments (signed),
  packs bought and grants issued;
- remaining: what seats that are not removed, and packs and grants not expired nor voided,
  have left;
- used: credits charged to seats, packs and grants, less what reversals gave back;
- expired: seat quota lapsed at a cycle's end or forfeited when a seat was removed, what packs
  and grants had left when they expired, and credits a reversal gave back to a source that had
  gone (they expire at once);
- voided: what packs and grants had left when they were voided.

Uncovered credits (served when nothing covered them) stand outside the equation; a reversal
clears them. Holds move no credits: they only keep them for one request.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.state import LedgerState
from schemas.events import (
    ChargeReversed,
    CreditsGranted,
    GrantExpired,
    GrantVoided,
    LogEvent,
    PackExpired,
    PackPurchased,
    PackVoided,
    SeatAdded,
    SeatAdjusted,
    SeatQuotaGranted,
    SeatRemoved,
    SeatTierChanged,
    UsageCharged,
)


@dataclass(slots=True)
class Totals:
    granted_ucr: int = 0
    used_ucr: int = 0
    expired_ucr: int = 0
    voided_ucr: int = 0


class Books:
    """Each subscription's totals, folded from the log beside the writer's state."""

    def __init__(self) -> None:
        self.totals: dict[str, Totals] = {}

    def fold(self, state: LedgerState, event: LogEvent) -> None:
        """Count `event`; `state` is the state before it (an upgrade adds its new quota less the
        old one)."""
        totals = self.totals.setdefault(event.subscription_id, Totals())
        match event:
            case SeatAdded() | SeatQuotaGranted():
                totals.granted_ucr += event.quota_ucr
                if isinstance(event, SeatQuotaGranted):
                    totals.expired_ucr += event.lapsed_ucr
            case SeatTierChanged(effect="immediate"):
                old = state.subscriptions[event.subscription_id].seats[event.seat_id].quota_ucr
                totals.granted_ucr += event.quota_ucr - old
            case SeatAdjusted():
                totals.granted_ucr += event.credits_ucr
            case PackPurchased() | CreditsGranted():
                totals.granted_ucr += event.credits_ucr
            case UsageCharged():
                self.fold_charge(event)
            case ChargeReversed():
                for part in event.parts:
                    if part.outcome != "cleared":
                        totals.used_ucr -= part.credits_ucr
                    if part.outcome == "expired":
                        totals.expired_ucr += part.credits_ucr
            case SeatRemoved():
                totals.expired_ucr += event.forfeited_ucr
            case PackExpired() | GrantExpired():
                totals.expired_ucr += event.expired_ucr
            case PackVoided() | GrantVoided():
                totals.voided_ucr += event.voided_ucr

    def fold_charge(self, charge: UsageCharged) -> None:
        """Count a charge (or its stored mirror: only its fields are read)."""
        totals = self.totals.get(charge.subscription_id)
        if totals is None:
            totals = self.totals[charge.subscription_id] = Totals()
        uncovered_ucr = 0
        for part in charge.allocation:
            if part.source == "uncovered":
                uncovered_ucr += part.credits_ucr
        totals.used_ucr += charge.credits_ucr - uncovered_ucr

    def problem(self, state: LedgerState, subscription_id: str | None = None) -> str | None:
        """Why a subscription's books do not balance (every one when None), or None."""
        ids = sorted(state.subscriptions) if subscription_id is None else [subscription_id]
        for sub_id in ids:
            sub = state.subscriptions.get(sub_id)
            if sub is None:
                continue
            totals = self.totals.get(sub_id, Totals())
            remaining = sum(s.remaining_ucr for s in sub.seats.values() if s.status != "removed")
            remaining += sum(source.remaining_ucr for source in sub.shared_sources())
            accounted = remaining + totals.used_ucr + totals.expired_ucr + totals.voided_ucr
            if accounted != totals.granted_ucr:
                return (
                    f"subscription {sub_id!r} does not balance: granted {totals.granted_ucr}"
                    f" != remaining {remaining} + used {totals.used_ucr} + expired"
                    f" {totals.expired_ucr} + voided {totals.voided_ucr}"
                )
        return None
