"""Typed exceptions of the core.

The edges map each to a dead-letter reason, an HTTP problem or a CLI exit code.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error the core raises on purpose."""


class Rejected(LedgerError):
    """A command the rules refuse. `reason` is stable and machine-readable."""

    reason: str = "rejected"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UnknownSubscription(Rejected):
    reason = "unknown_subscription"


class SubscriptionExists(Rejected):
    reason = "subscription_exists"


class UnknownSeat(Rejected):
    reason = "unknown_seat"


class SeatExists(Rejected):
    reason = "seat_exists"


class SeatIsRemoved(Rejected):
    reason = "seat_removed"


class UnknownModel(Rejected):
    reason = "unknown_model"


class DuplicateConflict(Rejected):
    """The same event_id arrived with a different payload; the first one stands."""

    reason = "duplicate_conflict"


class InvalidCommand(Rejected):
    reason = "invalid_command"


class SeatIsSuspended(Rejected):
    reason = "seat_suspended"


class InsufficientCredits(Rejected):
    """A hold, or an adjustment that takes credits, asks for more than is there."""

    reason = "insufficient_credits"

    def __init__(self, detail: str, available_ucr: int) -> None:
        super().__init__(detail)
        self.available_ucr = available_ucr


class UnknownHold(Rejected):
    reason = "unknown_hold"


class HoldNotActive(Rejected):
    reason = "hold_not_active"


class UnknownCharge(Rejected):
    reason = "unknown_charge"


class UnknownPack(Rejected):
    reason = "unknown_pack"


class UnknownGrant(Rejected):
    reason = "unknown_grant"


class Undecidable(Rejected):
    """A command whose decision failed for a reason the rules do not name (a value the bounds
    should have refused, or a bug): refused alone, so the commands beside it go on."""

    reason = "invalid_event"


class LogInconsistent(LedgerError):
    """An event that cannot follow from the log before it: it would overdraw a seat or a pack,
    add a seat twice, move a cycle backwards, name what does not exist... A log this ledger
    wrote never holds one; an altered or foreign log may. Never folded, never appended."""


class ClockOutOfRange(LedgerError):
    """The ledger clock reads an instant outside the bounds every recorded time must keep: the
    ledger appends nothing until it reads a valid time again."""


class ManualClockError(LedgerError):
    """The manual clock's file does not hold a time."""


class StoreError(LedgerError):
    """The log store could not do what was asked."""


class DuplicateUsageKey(StoreError):
    """An append carried a usage idempotency key the log already holds; nothing was written."""


class ClockWentBackwards(StoreError):
    """An append's recorded time is earlier than the log head's."""


class ConcurrentAppend(StoreError):
    """The log head moved past the position an append was decided on; nothing was written.

    Another writer appended in between: the caller catches up and decides again.
    """

    def __init__(self, expected_position: int, head_position: int) -> None:
        super().__init__(
            f"the append was decided at position {expected_position}, the head is at "
            f"{head_position}"
        )
        self.expected_position = expected_position
        self.head_position = head_position


class LeaseLost(StoreError):
    """An append's fencing token is no longer the partition's current lease; nothing was
    written. The worker stops consuming that partition (another owns it now)."""


class RateCardError(LedgerError):
    """The rate card file is malformed or has no version in force."""
