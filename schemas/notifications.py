"""Notifications: what the ledger pushes to gateways and admins (a Redis stream, webhooks, the
feed), and the per-subscription settings that decide when some of them fire. Types only."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal, get_args

import msgspec

NotificationType = Literal[
    "seat.threshold_reached",
    "seat.suspended",
    "seat.resumed",
    "pack.expiring",
    "pack.expired",
    "pack.exhausted",
    "subscription.credits_low",
    "hold.expired",
    "webhook.disabled",
]
NOTIFICATION_TYPES: Final[tuple[str, ...]] = get_args(NotificationType)
TEST_NOTIFICATION_TYPE: Final = "webhook.test"
"""What `POST .../webhooks/{id}/test` sends: to that endpoint only, never to the feed."""

DEFAULT_THRESHOLDS_PERCENT: Final = (50, 80, 100)
MAX_THRESHOLDS: Final = 10
MAX_THRESHOLD_PERCENT: Final = 1_000
MAX_CREDITS_LOW_UCR: Final = 10**12 * 1_000_000 - 1
"""The highest low-credits amount: below a trillion credits, as a request can write it."""


class Notification(msgspec.Struct, frozen=True, gc=False):
    """One notification. `notification_id` is derived from the log (type and the position of
    the record that caused it, and what else tells two of one record apart), so deriving again
    from position 0 gives the same ids."""

    notification_id: str
    type: str
    subscription_id: str
    occurred_at: datetime
    """Ledger time: the `recorded_at` of the record that caused it (or the instant a pack's
    expiry warning fell due)."""
    position: int
    """The log position the notification was derived at."""
    data: dict[str, Any]


class NotificationSettings(msgspec.Struct, frozen=True):
    """When a subscription's seats and balance notify: the seat thresholds (percent of the
    cycle quota spent, ascending) and the spendable amount below which the subscription is
    low on credits (None: never)."""

    thresholds_percent: tuple[int, ...] = DEFAULT_THRESHOLDS_PERCENT
    credits_low_ucr: int | None = None


DEFAULT_SETTINGS: Final = NotificationSettings()


def settings_problem(
    thresholds_percent: tuple[int, ...], credits_low_ucr: int | None
) -> str | None:
    """Why these settings cannot be in force (None when they can): thresholds are distinct,
    ascending, 1..MAX_THRESHOLD_PERCENT and at most MAX_THRESHOLDS; the low-credits amount is
    0..MAX_CREDITS_LOW_UCR or None."""
    if len(thresholds_percent) > MAX_THRESHOLDS:
        return f"at most {MAX_THRESHOLDS} thresholds"
    if any(not 1 <= percent <= MAX_THRESHOLD_PERCENT for percent in thresholds_percent):
        return f"each threshold is a percent between 1 and {MAX_THRESHOLD_PERCENT}"
    if list(thresholds_percent) != sorted(set(thresholds_percent)):
        return "thresholds are distinct and in ascending order"
    if credits_low_ucr is not None and not 0 <= credits_low_ucr <= MAX_CREDITS_LOW_UCR:
        return f"the low-credits amount is between 0 and {MAX_CREDITS_LOW_UCR} µcr"
    return None
