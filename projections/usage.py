"""The usage details projection: an index of every `usage.charged` (subscription, seat, model,
recorded time, position) queried by subscription, seat, model and time, paged by a cursor over
(recorded_at, position): `<recorded_at_us>-<position>`, each 1 to 18 digits, so both fit the
stores' 64-bit integers.

The index keeps no copy of the charge: a page's rows are decoded from the log's own records,
fetched by position. Copying each charge's ~800 bytes into the read model more than doubled the
cost of writing it (its bytes go through SQLite's WAL, then into the file) for no gain.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, Final, Protocol

import msgspec

from ledger.errors import LogInconsistent
from ledger.log import StoredRecord, datetime_from_us, us_from_datetime
from schemas.events import Allocation, ChargeReversed, Coefficients, Components, UsageCharged
from schemas.read_models import UsagePage, UsageRow
from schemas.usage import Usage

MAX_PAGE_ROWS: Final = 1_000
DEFAULT_PAGE_ROWS: Final = 100
MAX_CURSOR_CHARS: Final = 64
MAX_CURSOR_DIGITS: Final = 18
"""Digits of each part of a cursor: below 2**63, so the stores' integers hold it."""
CURSOR_PATTERN: Final = rf"^[0-9]{{1,{MAX_CURSOR_DIGITS}}}-[0-9]{{1,{MAX_CURSOR_DIGITS}}}$"
_CURSOR: Final = re.compile(CURSOR_PATTERN)
MAX_FETCH_GAP_RECORDS: Final = 64
"""Positions of one page closer than this are fetched from the log in one read."""

USAGE_TABLE_SQL: Final = """
CREATE TABLE IF NOT EXISTS rm_usage (
    position INTEGER PRIMARY KEY,
    recorded_at_us INTEGER NOT NULL,
    subscription_id TEXT NOT NULL,
    seat_id TEXT NOT NULL,
    model TEXT NOT NULL
)
"""
# One covering index in paging order: a seat or model filter is checked on the index entries
# as the subscription's rows are walked in time order, never on the table. A second index per
# filter would cost as much again on every write and rebuild.
USAGE_INDEXES_SQL: Final = (
    "CREATE INDEX IF NOT EXISTS rm_usage_by_time"
    " ON rm_usage (subscription_id, recorded_at_us, position, seat_id, model)",
)
USAGE_INDEX_NAMES: Final = ("rm_usage_by_time",)
INSERT_USAGE_SQL: Final = (
    "INSERT INTO rm_usage (position, recorded_at_us, subscription_id, seat_id, model)"
    " VALUES (?, ?, ?, ?, ?)"
)

UsageIndexRow = tuple[int, int, str, str, str]
"""(position, recorded_at_us, subscription_id, seat_id, model)."""


class RecordReader(Protocol):
    def read(self, after: int = 0, until: int | None = None) -> Iterator[StoredRecord]: ...


class InvalidUsageQuery(ValueError):
    """A usage query the store cannot answer as asked (page size out of bounds, bad cursor)."""


class InvalidCursor(InvalidUsageQuery):
    pass


class UsageQuery(msgspec.Struct, frozen=True):
    """Usage rows of one subscription, oldest first.

    `recorded_from` is inclusive and `recorded_to` exclusive; `as_of_position` keeps rows at or
    before that log position (the read model must have caught up that far to hold them all);
    `cursor` is a page's `next_cursor`.
    """

    subscription_id: str
    seat_id: str | None = None
    model: str | None = None
    recorded_from: datetime | None = None
    recorded_to: datetime | None = None
    as_of_position: int | None = None
    limit: int = DEFAULT_PAGE_ROWS
    cursor: str | None = None


def encode_cursor(recorded_at_us: int, position: int) -> str:
    return f"{recorded_at_us}-{position}"


def decode_cursor(cursor: str) -> tuple[int, int]:
    if _CURSOR.fullmatch(cursor) is None:
        raise InvalidCursor(
            f"not a usage cursor (a page's next_cursor): {cursor[:MAX_CURSOR_CHARS]!r}"
        )
    recorded_at, position = cursor.split("-")
    return int(recorded_at), int(position)


REVERSED_STATEMENT: Final = (
    "SELECT charge_event_id, SUM(credits_ucr) FROM rm_admin"
    " WHERE subscription_id = {m} AND charge_event_id IN ({marks}) AND position <= {m}"
    " GROUP BY charge_event_id"
)
"""What the reversals of some charges gave back, as of a position (see projections/history)."""
_NO_USAGE: Final = Usage()
_NO_COMPONENTS: Final = Components()
_NO_COEFFICIENTS: Final = Coefficients()


def usage_row(record: StoredRecord) -> UsageRow:
    event = record.event()
    if isinstance(event, ChargeReversed):
        return reversal_row(record, event)
    if not isinstance(event, UsageCharged):
        raise LogInconsistent(f"the usage index names position {record.position}, not a charge")
    charged = event
    return UsageRow(
        position=record.position,
        recorded_at=datetime_from_us(record.recorded_at_us),
        occurred_at=charged.occurred_at,
        event_id=charged.event_id,
        subscription_id=charged.subscription_id,
        seat_id=charged.seat_id,
        model=charged.model,
        product=charged.product,
        usage=charged.usage,
        components=charged.components,
        coefficients=charged.coefficients,
        rate_card_version=charged.rate_card_version,
        credits_ucr=charged.credits_ucr,
        allocation=charged.allocation,
        request_id=charged.request_id,
        api_key_id=charged.api_key_id,
        gateway=charged.gateway,
    )


def reversal_row(record: StoredRecord, reversal: ChargeReversed) -> UsageRow:
    recorded_at = datetime_from_us(record.recorded_at_us)
    return UsageRow(
        position=record.position,
        recorded_at=recorded_at,
        occurred_at=recorded_at,
        event_id=reversal.reversal_id,
        subscription_id=reversal.subscription_id,
        seat_id=reversal.seat_id,
        model=reversal.model,
        product=None,
        usage=_NO_USAGE,
        components=_NO_COMPONENTS,
        coefficients=_NO_COEFFICIENTS,
        rate_card_version="",
        credits_ucr=-reversal.credits_ucr,
        allocation=tuple(
            Allocation(part.source, part.id, -part.credits_ucr) for part in reversal.parts
        ),
        kind="reversal",
        reverses=reversal.event_id,
        reason=reversal.reason,
    )


def with_reversed(
    fetch: Callable[[str, list[object]], Sequence[tuple[Any, ...]]],
    rows: Sequence[UsageRow],
    as_of_position: int,
    marker: str = "?",
) -> tuple[UsageRow, ...]:
    """The rows, each charge with what its reversals gave back as of `as_of_position`."""
    charges = [row.event_id for row in rows if row.kind == "charge"]
    if not charges:
        return tuple(rows)
    statement = REVERSED_STATEMENT.format(m=marker, marks=", ".join([marker] * len(charges)))
    params: list[object] = [rows[0].subscription_id, *charges, as_of_position]
    reversed_ucr = {str(event_id): int(str(total)) for event_id, total in fetch(statement, params)}
    return tuple(
        msgspec.structs.replace(row, reversed_ucr=reversed_ucr[row.event_id])
        if row.kind == "charge" and row.event_id in reversed_ucr
        else row
        for row in rows
    )


def usage_index_statement(query: UsageQuery, marker: str = "?") -> tuple[str, list[object]]:
    """The statement selecting (position, recorded_at_us) of one page of the query's rows, plus
    one row more (which tells whether another page follows), and its parameters. `marker` is
    the driver's placeholder: `?` for sqlite3, `%s` for psycopg. The same statement runs on
    both, so both page the same way."""
    if not 1 <= query.limit <= MAX_PAGE_ROWS:
        raise InvalidUsageQuery(f"limit must be between 1 and {MAX_PAGE_ROWS}")
    clauses = [f"subscription_id = {marker}"]
    params: list[object] = [query.subscription_id]
    if query.seat_id is not None:
        clauses.append(f"seat_id = {marker}")
        params.append(query.seat_id)
    if query.model is not None:
        clauses.append(f"model = {marker}")
        params.append(query.model)
    if query.recorded_from is not None:
        clauses.append(f"recorded_at_us >= {marker}")
        params.append(us_from_datetime(query.recorded_from))
    if query.recorded_to is not None:
        clauses.append(f"recorded_at_us < {marker}")
        params.append(us_from_datetime(query.recorded_to))
    if query.as_of_position is not None:
        clauses.append(f"position <= {marker}")
        params.append(query.as_of_position)
    if query.cursor is not None:
        clauses.append(f"(recorded_at_us, position) > ({marker}, {marker})")
        params.extend(decode_cursor(query.cursor))
    statement = (
        "SELECT position, recorded_at_us FROM rm_usage WHERE "
        + " AND ".join(clauses)
        + f" ORDER BY recorded_at_us, position LIMIT {marker}"
    )
    params.append(query.limit + 1)  # one more than the page tells whether another follows
    return statement, params


def fetch_records(events: RecordReader, positions: Sequence[int]) -> list[StoredRecord]:
    """The log's records at these ascending positions, reading nearby ones together."""
    records: list[StoredRecord] = []
    start = 0
    while start < len(positions):
        end = start
        while (
            end + 1 < len(positions)
            and positions[end + 1] - positions[end] <= MAX_FETCH_GAP_RECORDS
        ):
            end += 1
        wanted = set(positions[start : end + 1])
        span = events.read(after=positions[start] - 1, until=positions[end])
        records.extend(record for record in span if record.position in wanted)
        start = end + 1
    if [r.position for r in records] != list(positions):
        raise LogInconsistent("the usage index names positions the log does not hold")
    return records


def usage_page(
    fetch: Callable[[str, list[object]], Sequence[tuple[Any, ...]]],
    events: RecordReader,
    query: UsageQuery,
    marker: str = "?",
) -> UsagePage:
    """One page of the query's usage rows. `fetch` runs the index statement (placeholders
    `marker`) on the read store and returns its (position, recorded_at_us) rows; the rows of
    the page are decoded from the log's records at those positions."""
    statement, params = usage_index_statement(query, marker)
    found = fetch(statement, params)
    page = found[: query.limit]
    next_cursor = encode_cursor(page[-1][1], page[-1][0]) if len(found) > query.limit else None
    records = fetch_records(events, [position for position, _ in page])
    rows = tuple(usage_row(record) for record in records)
    assert all(row.subscription_id == query.subscription_id for row in rows)
    if rows:
        as_of = query.as_of_position if query.as_of_position is not None else 2**63 - 1
        rows = with_reversed(fetch, rows, as_of, marker)
    return UsagePage(items=rows, next_cursor=next_cursor)
