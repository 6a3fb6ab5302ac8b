"""Pricing: a request's credits from its usage and the coefficients in force.

Each component is computed exactly in integers, then rounded half-up to 0.01 credit
(10,000 µcr); the charge is the sum of the rounded components.
"""

from __future__ import annotations

from typing import Final

from schemas.events import Coefficients, Components
from schemas.usage import Usage

ROUNDING_UNIT_UCR: Final = 10_000
"""Each component is rounded to this many micro-credits: 0.01 credit."""

TOKENS_PER_RATE_UNIT: Final = 1_000


def round_half_up(numerator: int, denominator: int) -> int:
    """`numerator / denominator` rounded half-up, for non-negative integers."""
    assert numerator >= 0 and denominator > 0
    return (2 * numerator + denominator) // (2 * denominator)


def per_1k_component_ucr(tokens: int, ucr_per_1k: int) -> int:
    units = round_half_up(tokens * ucr_per_1k, TOKENS_PER_RATE_UNIT * ROUNDING_UNIT_UCR)
    return units * ROUNDING_UNIT_UCR


def per_unit_component_ucr(count: int, ucr_per_unit: int) -> int:
    return round_half_up(count * ucr_per_unit, ROUNDING_UNIT_UCR) * ROUNDING_UNIT_UCR


def price(usage: Usage, coefficients: Coefficients) -> Components:
    """The itemised charge for one request. Thinking is a surcharge on output tokens.

    The same arithmetic as `per_1k_component_ucr` / `per_unit_component_ucr`, written out
    inline: this runs once per charged request and is the decider's hottest line.
    """
    per_1k = 2 * TOKENS_PER_RATE_UNIT * ROUNDING_UNIT_UCR
    half_1k = TOKENS_PER_RATE_UNIT * ROUNDING_UNIT_UCR
    per_unit, half_unit, unit = 2 * ROUNDING_UNIT_UCR, ROUNDING_UNIT_UCR, ROUNDING_UNIT_UCR
    output = usage.output_tokens
    return Components(
        input_ucr=(2 * usage.input_tokens * coefficients.input_ucr_per_1k + half_1k)
        // per_1k
        * unit,
        cached_ucr=(2 * usage.cached_tokens * coefficients.cached_ucr_per_1k + half_1k)
        // per_1k
        * unit,
        output_ucr=(2 * output * coefficients.output_ucr_per_1k + half_1k) // per_1k * unit,
        thinking_ucr=(2 * output * coefficients.thinking_ucr_per_1k + half_1k) // per_1k * unit
        if usage.thinking
        else 0,
        tools_ucr=(2 * usage.tool_calls * coefficients.tool_call_ucr + half_unit)
        // per_unit
        * unit,
        images_ucr=(2 * usage.images * coefficients.image_ucr + half_unit) // per_unit * unit,
    )
