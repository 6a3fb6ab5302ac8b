"""The public usage event: its bounds, and its checked-in JSON Schema kept current."""

from __future__ import annotations

import msgspec
import pytest

from schemas.export import SCHEMA_PATH, usage_event_schema
from schemas.limits import MAX_ID_CHARS, MAX_TOKENS_PER_COMPONENT
from schemas.usage import UsageEvent

DECODER = msgspec.json.Decoder(UsageEvent)
VALID = {
    "event_id": "e1",
    "subscription_id": "team-1",
    "seat_id": "s1",
    "model": "qwen3.6-plus",
    "occurred_at": "2026-05-01T10:00:00Z",
}


def test_the_checked_in_json_schema_is_generated_from_the_structs():
    assert SCHEMA_PATH.read_bytes() == usage_event_schema(), "run: python -m schemas.export"


def test_counts_default_to_zero_and_thinking_to_false():
    event = DECODER.decode(msgspec.json.encode(VALID))
    assert (event.input_tokens, event.images, event.thinking) == (0, 0, False)


@pytest.mark.parametrize(
    "change",
    [
        {"input_tokens": -1},
        {"output_tokens": MAX_TOKENS_PER_COMPONENT + 1},
        {"cached_tokens": "12"},
        {"thinking": "yes"},
        {"event_id": ""},
        {"event_id": "x" * (MAX_ID_CHARS + 1)},
        {"occurred_at": "yesterday"},
        {"occurred_at": "2026-05-01T10:00:00"},
        {"inputtokens": 5},
    ],
)
def test_an_event_outside_the_contract_does_not_decode(change):
    with pytest.raises(msgspec.ValidationError):
        DECODER.decode(msgspec.json.encode({**VALID, **change}))


@pytest.mark.parametrize(
    "field", ["event_id", "subscription_id", "seat_id", "model", "occurred_at"]
)
def test_required_fields_are_required(field):
    with pytest.raises(msgspec.ValidationError):
        DECODER.decode(msgspec.json.encode({k: v for k, v in VALID.items() if k != field}))
