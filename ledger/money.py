"""Credits as text: micro-credit integers shown as exact decimal strings ("3.18", "0.000001")."""

from __future__ import annotations

import re

from schemas.limits import UCR_PER_CREDIT

MIN_DECIMALS = 2


def format_credits(amount_ucr: int) -> str:
    """Exact, with at least two decimals and no trailing zeros beyond them: 3180000 -> "3.18"."""
    sign = "-" if amount_ucr < 0 else ""
    whole, fraction = divmod(abs(amount_ucr), UCR_PER_CREDIT)
    digits = f"{fraction:06d}".rstrip("0").ljust(MIN_DECIMALS, "0")
    return f"{sign}{whole}.{digits}"


CREDITS_PATTERN = r"^-?(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$"
"""Credits as a request writes them: a decimal string of at most 12 integer digits and at most 6
decimals ("3.18", "-50000", "0.000001"); the sign only where an amount may be negative."""


class InvalidCredits(ValueError):
    """Text that is not an amount of credits."""


def parse_credits(text: str) -> int:
    """The micro-credits of a decimal string, exactly: "3.18" -> 3180000. No float is involved;
    more than 6 decimals (finer than a micro-credit) is refused, never rounded."""
    if not re.fullmatch(CREDITS_PATTERN, text):
        raise InvalidCredits(
            f"{text!r} is not an amount of credits (digits, at most 6 decimals, like '3.18')"
        )
    negative = text.startswith("-")
    whole, _, fraction = text.lstrip("-").partition(".")
    amount_ucr = int(whole) * UCR_PER_CREDIT + int(fraction.ljust(6, "0") or "0")
    return -amount_ucr if negative else amount_ucr
