"""The one check every accepted instant passes: an offset, and within the ledger's bounds."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.limits import MAX_INSTANT, MIN_INSTANT

_SAFE_YEARS = range(MIN_INSTANT.year - 1, MAX_INSTANT.year + 2)
"""Years whose instants convert to UTC without overflow whatever their offset (< 24 h)."""


class InstantOutOfRange(ValueError):
    """An instant without an offset, or outside [MIN_INSTANT, MAX_INSTANT]."""


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


def _out_of_range(what: str) -> str:
    return f"{what} must lie between {MIN_INSTANT.isoformat()} and {MAX_INSTANT.isoformat()}"
