"""Billing cycles: cycle k covers [anchor + k months, anchor + (k+1) months).

A month is added calendar-wise from the anchor itself (never step by step), clamped to the
target month's last day, at the same time of day: an anchor of Jan 31 gives Feb 28 (or 29),
then Mar 31.
"""

from __future__ import annotations

import calendar
from datetime import datetime


def add_months(instant: datetime, months: int) -> datetime:
    month_index = instant.month - 1 + months
    year = instant.year + month_index // 12
    month = month_index % 12 + 1
    day = min(instant.day, calendar.monthrange(year, month)[1])
    return instant.replace(year=year, month=month, day=day)


def cycle_start(anchor: datetime, cycle: int) -> datetime:
    return add_months(anchor, cycle)


def cycle_index(anchor: datetime, at: datetime) -> int:
    """The cycle that contains `at`; -1 and below for instants before the anchor."""
    guess = (at.year - anchor.year) * 12 + (at.month - anchor.month)
    while add_months(anchor, guess) > at:
        guess -= 1
    while add_months(anchor, guess + 1) <= at:
        guess += 1
    return guess


def cycle_bounds(anchor: datetime, cycle: int) -> tuple[datetime, datetime]:
    return add_months(anchor, cycle), add_months(anchor, cycle + 1)
