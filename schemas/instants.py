"""The one check every accepted instant passes: an offset, and within the ledger's bounds; and
how an instant written as text over HTTP is read."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

from schemas.limits import INSTANT_PATTERN, MAX_INSTANT, MIN_INSTANT

_SAFE_YEARS = range(MIN_INSTANT.year - 1, MAX_INSTANT.year + 2)
"""Years whose instants convert to UTC without overflow whatever their offset (< 24 h)."""


class InstantOutOfRange(ValueError):
    """An instant without an offset, or outside [MIN_INSTANT, MAX_INSTANT]."""


class UnreadableInstant(ValueError):
    """Text that is not an instant as INSTANT_PATTERN writes it, or not a day of the calendar."""


_INSTANT_TEXT: Final = re.compile(INSTANT_PATTERN)


def instant_text(instant: datetime) -> str:
    """`instant` in UTC as the API writes it: RFC 3339 with `Z`, microseconds when not 0."""
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


INSTANT_RULE: Final = (
    "an instant is written YYYY-MM-DDTHH:MM:SS[.ffffff] then Z or ±HH:MM, between"
    f" {instant_text(MIN_INSTANT)} and {instant_text(MAX_INSTANT)}"
)
"""INSTANT_PATTERN in words, for messages."""


def bounded_utc(instant: datetime, what: str) -> datetime:
    """`instant` in UTC; raises `InstantOutOfRange` naming `what` when it cannot be accepted."""
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise InstantOutOfRange(f"{what} has no UTC offset")
    # Checked before converting: near years 1 and 9999 the conversion itself overflows.
    if instant.year not in _SAFE_YEARS:
        raise InstantOutOfRange(_out_of_range(what))
    utc = instant.astimezone(UTC)
    if not MIN_INSTANT <= utc <= MAX_INSTANT:
        raise InstantOutOfRange(_out_of_range(what))
    return utc


def instant_from_text(text: str) -> datetime:
    """The instant `text` writes, in UTC: it must match INSTANT_PATTERN (so it lies within the
    bounds) and name a day of the calendar. Raises `UnreadableInstant`, whose message starts
    with the text (the caller says where it was)."""
    if _INSTANT_TEXT.fullmatch(text) is None:
        raise UnreadableInstant(f"{text!r}: {INSTANT_RULE}")
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise UnreadableInstant(f"{text!r} is not a day of the calendar") from None
    return bounded_utc(instant, repr(text))


def _out_of_range(what: str) -> str:
    return f"{what} must lie between {instant_text(MIN_INSTANT)} and {instant_text(MAX_INSTANT)}"
