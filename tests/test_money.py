"""Credits as text, both ways, exactly: no float between a request's "3.18" and 3,180,000 µcr."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.money import InvalidCredits, format_credits, parse_credits


@pytest.mark.parametrize(
    ("text", "ucr"),
    [
        ("3.18", 3_180_000),
        ("0.000001", 1),
        ("-50000", -50_000_000_000),
        ("0", 0),
        ("12.5", 12_500_000),
    ],
)
def test_a_decimal_string_is_read_to_the_micro_credit(text: str, ucr: int) -> None:
    assert parse_credits(text) == ucr


@pytest.mark.parametrize(
    "text", ["1.0000001", "01", "1e3", "", ".5", "+1", "1,5", "NaN", "1" * 13, " 1", "1."]
)
def test_text_that_is_not_an_exact_amount_is_refused_never_rounded(text: str) -> None:
    with pytest.raises(InvalidCredits):
        parse_credits(text)


@given(st.integers(-(10**18) + 1, 10**18 - 1))
def test_what_is_written_reads_back_the_same(ucr: int) -> None:
    assert parse_credits(format_credits(ucr)) == ucr
