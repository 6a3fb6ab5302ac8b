"""A log written by an earlier release still verifies and replays to the balances that release
computed (tests/data/log-v1): the log is the source of truth, and new code must read old logs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ledger.application import Ledger
from ledger.audit import verify
from ledger.clock import ManualClock
from ledger.rate_card import load_rate_card
from ledger.records import is_compact
from ledger.stores.sqlite import SqliteEventStore
from projections.balances import Balances, apply, dump
from projections.replay import balances_as_of
from schemas.commands import AddSeat, OpenSubscription

OLD_LOG = Path(__file__).parent / "data" / "log-v1"


@pytest.fixture
def old_store(tmp_path: Path) -> SqliteEventStore:
    shutil.copy(OLD_LOG / "ledger.sqlite3", tmp_path / "ledger.sqlite3")
    return SqliteEventStore(tmp_path / "ledger.sqlite3")


def contains(actual: Any, expected: Any) -> bool:
    """`expected` is in `actual`: equal scalars, every expected key present with a contained
    value (new fields may have been added since), lists item by item."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and contains(actual[key], value) for key, value in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(contains(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return bool(actual == expected)


def test_an_old_log_verifies_with_the_head_it_had(old_store: SqliteEventStore) -> None:
    head = json.loads((OLD_LOG / "head.json").read_text())
    report = verify(old_store.read(), load_rate_card())
    assert report.ok, report.failure
    assert (report.records, report.head_hash) == (head["position"], head["hash"])


def test_an_old_log_replays_to_the_balances_it_had(old_store: SqliteEventStore) -> None:
    expected_by_position = json.loads((OLD_LOG / "balances.json").read_text())
    for position, expected in expected_by_position.items():
        actual = json.loads(dump(balances_as_of(old_store, int(position))))
        assert contains(actual, expected), f"balances differ at position {position}"


def test_an_old_log_continued_in_the_compact_format_verifies_and_replays(
    old_store: SqliteEventStore,
) -> None:
    head = old_store.head()
    ledger = Ledger(old_store, load_rate_card(), ManualClock(head.recorded_at_us + 1))
    outcome = ledger.execute([OpenSubscription("late-1"), AddSeat("late-1", "zoe", "standard")])
    assert all(o.status == "applied" for o in outcome), outcome
    records = list(old_store.read())
    assert all(not is_compact(r.data) for r in records[: head.position])
    assert all(is_compact(r.data) for r in records[head.position :])
    assert len(records) > head.position

    report = verify(old_store.read(), load_rate_card())
    assert report.ok, report.failure
    replayed = balances_as_of(old_store, old_store.head().position)
    assert dump(replayed) == dump(ledger_balances(old_store))
    assert ("late-1", "zoe") in replayed.seats


def ledger_balances(store: SqliteEventStore) -> Balances:
    balances = Balances()
    for record in store.read():
        apply(balances, record.event())
    return balances
