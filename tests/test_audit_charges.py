"""The audit re-derives every field of a charge that the rules fix, whichever format stores it:
a compact record is checked on its stored form, a JSON record (logs written before the compact
format) on its event, and a change to any one of those fields fails the audit at its position
even with the hash chain recomputed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
import pytest

from ledger.application import Ledger
from ledger.audit import verify
from ledger.clock import ManualClock
from ledger.idempotency import payload_digest
from ledger.log import GENESIS_HASH, StoredRecord, record_hash, us_from_datetime
from ledger.rate_card import load_rate_card
from ledger.records import decode_event, encode_event
from ledger.stores.sqlite import SqliteEventStore
from schemas.commands import AddSeat, BuyPack, ChargeUsage, OpenSubscription
from schemas.events import Allocation, Components, UsageCharged
from schemas.usage import Usage, UsageEvent

START = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)
RATE_CARD = load_rate_card()


def usage(event_id: str, output_tokens: int) -> ChargeUsage:
    event = UsageEvent(event_id, "team", "bob", "qwen3.6-plus", START, output_tokens=output_tokens)
    return ChargeUsage(event, payload_digest(event))


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[StoredRecord]:
    """A seat and a pack, then a charge taken from both (the last record)."""
    store = SqliteEventStore(tmp_path_factory.mktemp("log") / "ledger.sqlite3")
    ledger = Ledger(store, RATE_CARD, ManualClock(us_from_datetime(START)))
    ledger.execute([OpenSubscription("team"), AddSeat("team", "bob", "standard")])
    ledger.execute([BuyPack("team", "p1")])
    ledger.execute([usage("big", 25_000_000)])
    found = list(store.read())
    store.close()
    return found


def rewritten(records: list[StoredRecord], data: bytes) -> list[StoredRecord]:
    """The log with its last record holding `data`, every hash recomputed."""
    out, prev = [], GENESIS_HASH
    for record in [*records[:-1], msgspec.structs.replace(records[-1], data=data)]:
        digest = record_hash(prev, record.position, record.recorded_at_us, record.data)
        out.append(StoredRecord(record.position, record.recorded_at_us, record.data, prev, digest))
        prev = digest
    return out


def stored_as(format_name: str) -> Callable[[UsageCharged], bytes]:
    return encode_event if format_name == "compact" else msgspec.json.encode


def with_components(c: UsageCharged) -> UsageCharged:
    parts = msgspec.structs.asdict(c.components)
    return msgspec.structs.replace(
        c, components=Components(**{**parts, "input_ucr": parts["input_ucr"] + 10_000})
    )


def with_more_usage(c: UsageCharged) -> UsageCharged:
    return msgspec.structs.replace(c, usage=Usage(1_000_000, 0, c.usage.output_tokens))


TAMPERS: dict[str, tuple[Callable[[UsageCharged], UsageCharged], str]] = {
    "components": (with_components, "components do not re-price"),
    "usage": (with_more_usage, "components do not re-price"),
    "product": (lambda c: msgspec.structs.replace(c, product="image"), "coefficients differ"),
    "rate card version": (
        lambda c: msgspec.structs.replace(c, rate_card_version="1999-01"),
        "which is unknown",
    ),
    "model": (lambda c: msgspec.structs.replace(c, model="glm-5"), "coefficients differ"),
    "allocation order": (
        lambda c: msgspec.structs.replace(c, allocation=tuple(reversed(c.allocation))),
        "allocation differs",
    ),
    "allocation source": (
        lambda c: msgspec.structs.replace(
            c,
            allocation=(
                *c.allocation[:-1],
                Allocation("grant", "p1", c.allocation[-1].credits_ucr),
            ),
        ),
        "allocation differs",
    ),
    "hold status": (
        lambda c: msgspec.structs.replace(c, hold_status="settled"),
        "settled its hold",
    ),
}


@pytest.mark.parametrize("format_name", ["compact", "json"])
def test_the_untouched_charge_passes_in_either_format(
    records: list[StoredRecord], format_name: str
) -> None:
    charge = decode_event(records[-1].data)
    assert isinstance(charge, UsageCharged) and len(charge.allocation) == 2
    report = verify(rewritten(records, stored_as(format_name)(charge)), RATE_CARD)
    assert report.ok, report.failure


@pytest.mark.parametrize("format_name", ["compact", "json"])
@pytest.mark.parametrize("field", sorted(TAMPERS))
def test_a_charge_changed_in_one_field_fails_the_audit_at_its_position(
    records: list[StoredRecord], format_name: str, field: str
) -> None:
    tamper, reason = TAMPERS[field]
    charge = decode_event(records[-1].data)
    assert isinstance(charge, UsageCharged)
    report = verify(rewritten(records, stored_as(format_name)(tamper(charge))), RATE_CARD)
    assert report.failure is not None
    assert report.failure.position == records[-1].position
    assert reason in report.failure.reason
