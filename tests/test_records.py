"""The stored record formats: every event round-trips through the compact format, the compact
format is stable (pinned bytes), JSON records still read, and JSON stays what people see."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import get_args

import msgspec
import pytest

from ledger.log import EVENT_ENCODER
from ledger.records import (
    COMPACT_TAGS,
    FIELD_ORDER,
    decode_event,
    encode_event,
    event_json,
    is_compact,
)
from schemas.events import (
    Actor,
    Allocation,
    Coefficients,
    Components,
    LogEvent,
    SeatAdded,
    UsageCharged,
)
from schemas.usage import Usage

AT = datetime(2026, 2, 1, 10, 0, 0, 123456, tzinfo=UTC)
CHARGE = UsageCharged(
    "team-1",
    "alice",
    "evt-1",
    "ab" * 32,
    AT,
    "qwen3.6-plus",
    "text",
    Usage(8349, 40794, 573),
    "2026-01",
    Coefficients(1000, 200, 6000),
    Components(8349, 8158, 3438),
    19945,
    (Allocation("seat", "alice", 19000), Allocation("pack", "p1", 945)),
)


def test_every_event_type_has_a_tag_of_its_own_and_an_order_naming_every_field() -> None:
    assert set(COMPACT_TAGS) == set(get_args(LogEvent))
    assert len(set(COMPACT_TAGS.values())) == len(COMPACT_TAGS)
    for struct_type, order in FIELD_ORDER.items():
        declared = {f.name for f in msgspec.structs.fields(struct_type)}
        assert set(order) == declared, struct_type.__name__


def test_a_charge_is_stored_in_a_third_of_its_json() -> None:
    data = encode_event(CHARGE)
    assert is_compact(data)
    assert decode_event(data) == CHARGE
    assert len(data) * 3 < len(msgspec.json.encode(CHARGE))


def test_the_compact_bytes_of_a_charge_do_not_change() -> None:
    """A record is hashed as stored: the same event must always give the same bytes."""
    assert encode_event(CHARGE).hex() == (
        "029e09a67465616d2d31a5616c696365ac7177656e332e362d706c7573cd4de99293a473656174a5616c6963"
        "65cd4a3893a47061636ba27031cd03b1a56576742d31d9406162616261626162616261626162616261626162"
        "6162616261626162616261626162616261626162616261626162616261626162616261626162616261626162"
        "d7ff1d6f2800697f2420a47465787493cd209dcd9f5acd023da7323032362d303193cd03e8ccc8cd177093cd"
        "209dcd1fdecd0d6e"
    )


@pytest.mark.parametrize("event", [CHARGE, SeatAdded("team-1", "bob", "premium", 5, 0)])
def test_json_records_written_before_still_read(event: LogEvent) -> None:
    data = msgspec.json.encode(event)
    assert not is_compact(data)
    assert decode_event(data) == event
    assert event_json(data) == data


def test_a_compact_record_reads_as_the_json_of_its_event() -> None:
    added = SeatAdded("team-1", "bob", "premium", 5, 0, Actor("tok-1", "admin"), "hired")
    for event in (CHARGE, added):
        assert event_json(EVENT_ENCODER.encode(event)) == msgspec.json.encode(event)


def test_fields_at_their_defaults_at_the_end_are_left_out() -> None:
    bare = SeatAdded("team-1", "bob", "premium", 5, 0)
    with_actor = SeatAdded("team-1", "bob", "premium", 5, 0, Actor("tok-1", "admin"))
    assert len(encode_event(bare)) < len(encode_event(with_actor))
    assert decode_event(encode_event(bare)) == bare
    assert decode_event(encode_event(with_actor)) == with_actor


def test_bytes_that_hold_no_event_are_refused() -> None:
    for data in (b"\x02\x93\x63\x01\x02", b"\x02\xc1", b"{}", b"\x02"):
        with pytest.raises(msgspec.DecodeError):
            decode_event(data)
