"""Credits as text: micro-credit integers shown as exact decimal strings ("3.18", "0.000001")."""

from __future__ import annotations

from schemas.limits import UCR_PER_CREDIT

MIN_DECIMALS = 2


def format_credits(amount_ucr: int) -> str:
    """Exact, with at least two decimals and no trailing zeros beyond them: 3180000 -> "3.18"."""
    sign = "-" if amount_ucr < 0 else ""
    whole, fraction = divmod(abs(amount_ucr), UCR_PER_CREDIT)
    digits = f"{fraction:06d}".rstrip("0").ljust(MIN_DECIMALS, "0")
    return f"{sign}{whole}.{digits}"
