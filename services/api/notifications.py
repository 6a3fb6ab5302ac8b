"""The notification feed of a subscription (viewers and up), oldest first with an `after`
cursor, and the settings that decide when its seats and balance notify: set by admins as a
write to the log (`notification.settings_changed`, with who asked), read back from the log
through the admin history index."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

import msgspec
from litestar import get, put
from litestar.params import JSONBody, QueryParameter

from ledger.log import StoredRecord
from ledger.money import format_credits, parse_credits
from projections.notification_store import MAX_FEED_ITEMS, SqlNotificationStore
from schemas.commands import Reason, SetNotificationSettings
from schemas.events import NotificationSettingsChanged
from schemas.notifications import DEFAULT_SETTINGS, MAX_THRESHOLD_PERCENT, MAX_THRESHOLDS
from services.api.bodies import AsOf, PathId
from services.api.controller import V1Controller
from services.api.dependencies import Injected
from services.api.guards import ADMINS, SUBSCRIPTION_READERS, requires
from services.api.problems import Problem, no_subscription
from services.api.reads import Reads, UsageReader
from services.api.writes import Writes, actor_of, refused
from services.auth.tokens import Principal

DEFAULT_FEED_ITEMS: Final = 100
FEED_CURSOR_PATTERN: Final = r"^[0-9]{1,18}$"
SETTINGS_CHANGED: Final = str(NotificationSettingsChanged.__struct_config__.tag)
AMOUNT_PATTERN: Final = r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$"
"""A non-negative amount of credits as a request writes it."""


class NotificationView(msgspec.Struct, frozen=True):
    notification_id: str
    type: str
    subscription_id: str
    occurred_at: datetime
    position: int
    data: dict[str, Any]
    cursor: str
    """Pass as `after` to read the notifications that follow this one."""


class NotificationPage(msgspec.Struct, frozen=True):
    items: list[NotificationView]
    next_cursor: str | None
    """The cursor after the last item (null when there was none): pass it as `after` to poll."""


class SettingsBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    thresholds_percent: Annotated[
        # Numbers, not integers: JSON Schema counts 80.0 as an integer, which a strict integer
        # field would refuse; `multiple_of` refuses 80.5 alike on both sides.
        list[Annotated[float, msgspec.Meta(ge=1, le=MAX_THRESHOLD_PERCENT, multiple_of=1)]],
        msgspec.Meta(
            max_length=MAX_THRESHOLDS,
            # Litestar does not document an item's own bounds itself.
            extra_json_schema={
                "extra": {
                    "items": {"type": "integer", "minimum": 1, "maximum": MAX_THRESHOLD_PERCENT}
                }
            },
        ),
    ]
    """A seat notifies when its spent share of its cycle quota reaches each of these."""
    credits_low: Annotated[str, msgspec.Meta(pattern=AMOUNT_PATTERN, max_length=20)] | None = None
    """The subscription notifies when what it can still spend falls below this (null: never)."""
    reason: Reason | None = None
    """Why, for the subscription's history of admin writes."""


class SettingsView(msgspec.Struct, frozen=True):
    thresholds_percent: list[int]
    credits_low: str | None
    position: int | None = None
    """The log position of the write that put them in force (null: the defaults, never set)."""


def must_exist(reads: Reads, sub: str) -> None:
    """A 404 problem unless the live balances hold subscription `sub`."""
    with reads.live.reading() as balances:
        if sub not in balances.subscriptions:
            raise no_subscription(sub)


def settings_view(record: StoredRecord | None) -> SettingsView:
    """The settings a `notification.settings_changed` record put in force (None: the defaults)."""
    if record is None:
        return SettingsView(list(DEFAULT_SETTINGS.thresholds_percent), None)
    event = record.event()
    if not isinstance(event, NotificationSettingsChanged):
        raise TypeError(f"not a settings change: {type(event).__name__}")
    low = event.credits_low_ucr
    return SettingsView(
        list(event.thresholds_percent),
        None if low is None else format_credits(low),
        record.position,
    )


async def _settings_in_force(writes: Writes, usage: UsageReader, sub: str) -> SettingsView:
    """The settings the subscription's latest settings change recorded (the defaults if none),
    once the history index holds every record the writer appended."""
    if not await usage.caught_up(writes.live.position):
        raise Problem("store-unavailable", "the history is not caught up yet: retry in a second")
    return settings_view(usage.latest_admin_record(sub, SETTINGS_CHANGED))


class NotificationController(V1Controller):
    path = "/subscriptions/{sub:str}"

    @get(
        "/notifications",
        summary="The subscription's notifications, oldest first",
        guards=[requires(SUBSCRIPTION_READERS)],
    )
    async def get_notifications(
        self,
        reads: Injected[Reads],
        notices: Injected[SqlNotificationStore],
        sub: PathId,
        after: Annotated[
            str | None, QueryParameter(pattern=FEED_CURSOR_PATTERN, max_length=18)
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_FEED_ITEMS)] = DEFAULT_FEED_ITEMS,
        as_of: AsOf = None,
    ) -> NotificationPage:
        must_exist(reads, sub)
        until = None if as_of is None else await reads.position_of(as_of)
        rows = notices.feed(sub, int(after or 0), limit, until)
        items = [
            NotificationView(
                n.notification_id,
                n.type,
                n.subscription_id,
                n.occurred_at,
                n.position,
                n.data,
                cursor=str(seq),
            )
            for seq, n in rows
        ]
        return NotificationPage(items, items[-1].cursor if items else None)

    @get(
        "/notification-settings",
        summary="When the subscription's seats and balance notify",
        guards=[requires(SUBSCRIPTION_READERS)],
    )
    async def get_settings(
        self,
        reads: Injected[Reads],
        writes: Injected[Writes],
        usage: Injected[UsageReader],
        sub: PathId,
    ) -> SettingsView:
        must_exist(reads, sub)
        return await _settings_in_force(writes, usage, sub)

    @put(
        "/notification-settings",
        summary="Set the seat thresholds and the low-credits amount",
        guards=[requires(ADMINS)],
    )
    async def put_settings(
        self,
        writes: Injected[Writes],
        usage: Injected[UsageReader],
        principal: Injected[Principal],
        sub: PathId,
        data: JSONBody[SettingsBody],
    ) -> SettingsView:
        try:
            low = None if data.credits_low is None else parse_credits(data.credits_low)
        except ValueError as error:
            raise Problem("invalid-body", f"credits_low: {error}") from None
        thresholds = tuple(int(percent) for percent in data.thresholds_percent)
        command = SetNotificationSettings(sub, thresholds, low, actor_of(principal), data.reason)
        outcome = await writes.execute(command)
        if outcome.status == "rejected":
            raise refused(outcome, sub)
        for record in outcome.records:
            if record.event().__struct_config__.tag == SETTINGS_CHANGED:
                return settings_view(record)
        return await _settings_in_force(writes, usage, sub)  # the same again: nothing recorded
