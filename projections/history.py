"""The admin history projection: an index of every admin write of the log (subscriptions opened,
seats added, re-tiered and removed, packs bought, and the corrections: adjustments, grants,
reversals, voids), each with who asked and why, queried by subscription in log order.

As the usage index, it keeps no copy of the event: a page's entries are decoded from the log's
own records, fetched by position. Two more columns serve the corrections: `key` finds the one
event a correction id names (a retry answers with it), and a reversal's charge and credits sum
what a charge's reversals gave back, as of any position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import msgspec

from ledger.log import StoredRecord
from projections.usage import RecordReader, fetch_records
from schemas.events import (
    ADMIN_EVENTS,
    ChargeReversed,
    CreditsGranted,
    GrantVoided,
    LogEvent,
    NotificationSettingsChanged,
    PackPurchased,
    PackVoided,
    SeatAdded,
    SeatAdjusted,
    SeatRemoved,
    SeatTierChanged,
    SubscriptionOpened,
)

MAX_HISTORY_ROWS: Final = 1_000
DEFAULT_HISTORY_ROWS: Final = 100

ADMIN_TABLE_SQL: Final = """
CREATE TABLE IF NOT EXISTS rm_admin (
    position INTEGER PRIMARY KEY,
    recorded_at_us INTEGER NOT NULL,
    subscription_id TEXT NOT NULL,
    type TEXT NOT NULL,
    key TEXT NOT NULL,
    charge_event_id TEXT,
    credits_ucr INTEGER
)
"""
ADMIN_INDEXES_SQL: Final = (
    "CREATE INDEX IF NOT EXISTS rm_admin_by_subscription ON rm_admin (subscription_id, position)",
    "CREATE INDEX IF NOT EXISTS rm_admin_by_key ON rm_admin (subscription_id, type, key)",
    "CREATE INDEX IF NOT EXISTS rm_admin_by_charge ON rm_admin (subscription_id, charge_event_id)"
    " WHERE charge_event_id IS NOT NULL",
)
INSERT_ADMIN_SQL: Final = (
    "INSERT INTO rm_admin"
    " (position, recorded_at_us, subscription_id, type, key, charge_event_id, credits_ucr)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)

AdminIndexRow = tuple[int, int, str, str, str, str | None, int | None]
"""(position, recorded_at_us, subscription_id, type, key, charge_event_id, credits_ucr)."""

AdminEvent = (
    SubscriptionOpened
    | SeatAdded
    | SeatTierChanged
    | SeatRemoved
    | PackPurchased
    | SeatAdjusted
    | CreditsGranted
    | ChargeReversed
    | PackVoided
    | GrantVoided
    | NotificationSettingsChanged
)
ADMIN_EVENT_TYPES: Final = ADMIN_EVENTS


def event_type(event: LogEvent) -> str:
    return str(event.__struct_config__.tag)


def event_key(event: AdminEvent) -> str:
    """What the event is about, by the id a caller names it with (a correction's own id)."""
    if isinstance(event, SubscriptionOpened | NotificationSettingsChanged):
        return event.subscription_id
    if isinstance(event, SeatAdded | SeatTierChanged | SeatRemoved):
        return event.seat_id
    if isinstance(event, PackPurchased | PackVoided):
        return event.pack_id
    if isinstance(event, SeatAdjusted):
        return event.adjustment_id
    if isinstance(event, CreditsGranted | GrantVoided):
        return event.grant_id
    return event.reversal_id


def admin_row(position: int, recorded_at_us: int, event: LogEvent) -> AdminIndexRow | None:
    """The index row of an admin write; None for any other event."""
    if not isinstance(event, ADMIN_EVENT_TYPES):
        return None
    reversal = event if isinstance(event, ChargeReversed) else None
    return (
        position,
        recorded_at_us,
        event.subscription_id,
        event_type(event),
        event_key(event),
        None if reversal is None else reversal.event_id,
        None if reversal is None else reversal.credits_ucr,
    )


class HistoryQuery(msgspec.Struct, frozen=True):
    """Admin writes of one subscription after log position `after`, oldest first, up to
    `as_of_position`."""

    subscription_id: str
    after: int = 0
    as_of_position: int | None = None
    limit: int = DEFAULT_HISTORY_ROWS


class InvalidHistoryQuery(ValueError):
    pass


def history_statement(query: HistoryQuery, marker: str = "?") -> tuple[str, list[object]]:
    """Positions of one page (plus one more, which tells whether another page follows)."""
    if not 1 <= query.limit <= MAX_HISTORY_ROWS:
        raise InvalidHistoryQuery(f"limit must be between 1 and {MAX_HISTORY_ROWS}")
    clauses = [f"subscription_id = {marker}", f"position > {marker}"]
    params: list[object] = [query.subscription_id, query.after]
    if query.as_of_position is not None:
        clauses.append(f"position <= {marker}")
        params.append(query.as_of_position)
    statement = (
        "SELECT position FROM rm_admin WHERE "
        + " AND ".join(clauses)
        + f" ORDER BY position LIMIT {marker}"
    )
    return statement, [*params, query.limit + 1]


def key_statement(
    subscription_id: str, type_: str, key: str, marker: str = "?"
) -> tuple[str, list[object]]:
    """The position of the event of this type about `key` (the first, should there be more)."""
    statement = (
        f"SELECT position FROM rm_admin WHERE subscription_id = {marker} AND type = {marker}"
        f" AND key = {marker} ORDER BY position LIMIT 1"
    )
    return statement, [subscription_id, type_, key]


Fetch = Callable[[str, list[object]], Sequence[tuple[object, ...]]]


class HistoryPage(msgspec.Struct, frozen=True):
    items: tuple[StoredRecord, ...]
    next_after: int | None
    """Pass as `after` for the next page; None on the last page."""


def history_page(
    fetch: Fetch, events: RecordReader, query: HistoryQuery, marker: str = "?"
) -> HistoryPage:
    statement, params = history_statement(query, marker)
    found = [int(str(row[0])) for row in fetch(statement, params)]
    page = found[: query.limit]
    next_after = page[-1] if len(found) > query.limit else None
    return HistoryPage(tuple(fetch_records(events, page)), next_after)


def latest_statement(
    subscription_id: str, type_: str, until: int | None, marker: str = "?"
) -> tuple[str, list[object]]:
    """The position of the subscription's latest event of this type (at or before `until`)."""
    clauses = f"subscription_id = {marker} AND type = {marker}"
    params: list[object] = [subscription_id, type_]
    if until is not None:
        clauses += f" AND position <= {marker}"
        params.append(until)
    return f"SELECT MAX(position) FROM rm_admin WHERE {clauses}", params


def find_latest_admin_record(
    fetch: Fetch,
    events: RecordReader,
    subscription_id: str,
    type_: str,
    until: int | None = None,
    marker: str = "?",
) -> StoredRecord | None:
    """The subscription's latest admin write of this type, as the log holds it; None if none."""
    statement, params = latest_statement(subscription_id, type_, until, marker)
    found = fetch(statement, params)
    if not found or found[0][0] is None:
        return None
    [record] = fetch_records(events, [int(str(found[0][0]))])
    return record


def find_admin_record(
    fetch: Fetch,
    events: RecordReader,
    subscription_id: str,
    type_: str,
    key: str,
    marker: str = "?",
) -> StoredRecord | None:
    statement, params = key_statement(subscription_id, type_, key, marker)
    found = fetch(statement, params)
    if not found:
        return None
    [record] = fetch_records(events, [int(str(found[0][0]))])
    return record
