"""The plan catalog (docs/rules.md): seat tiers with their quota per cycle, and the shared
quota pack."""

from __future__ import annotations

from typing import Final

from schemas.commands import Tier
from schemas.limits import UCR_PER_CREDIT

SEAT_QUOTA_UCR: Final[dict[Tier, int]] = {
    "standard": 25_000 * UCR_PER_CREDIT,
    "advanced": 100_000 * UCR_PER_CREDIT,
    "premium": 250_000 * UCR_PER_CREDIT,
}
"""Credits granted to a seat of each tier at the start of every billing cycle."""

TIER_RANK: Final[dict[Tier, int]] = {"standard": 0, "advanced": 1, "premium": 2}
"""Higher is bigger: moving up is an upgrade (immediate), down a downgrade (next cycle)."""

PACK_CREDITS_UCR: Final = 625_000 * UCR_PER_CREDIT
PACK_VALIDITY_MONTHS: Final = 1
"""A pack is valid for one calendar month from purchase; what is left then expires."""
