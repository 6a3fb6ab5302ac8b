"""The write path keeps one bad command or one failed append from costing the others: a command
that cannot be decided is refused alone, a failed append is undone without folding the log
again, and nothing is appended at a time outside the ledger's bounds."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import ledger.application as application
from ledger.application import Ledger
from ledger.clock import ManualClock
from ledger.errors import ClockOutOfRange, StoreError
from ledger.idempotency import payload_digest
from ledger.log import us_from_datetime
from ledger.rate_card import load_rate_card
from ledger.state import LedgerState
from ledger.stores.sqlite import SqliteEventStore
from schemas.commands import AddSeat, ChargeUsage, OpenSubscription
from schemas.limits import MAX_INSTANT
from schemas.usage import UsageEvent

START = datetime(2026, 3, 1, tzinfo=UTC)


def usage(event_id: str) -> ChargeUsage:
    event = UsageEvent(event_id, "team", "alice", "qwen3.6-plus", START, input_tokens=1_000)
    return ChargeUsage(event, payload_digest(event))


class CountingStore(SqliteEventStore):
    """A SQLite store that counts reads of the whole log (a full fold starts at position 0)."""

    full_reads = 0

    def read(self, after: int = 0, until: int | None = None) -> Any:
        if after == 0:
            self.full_reads += 1
        return super().read(after, until)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    store = CountingStore(tmp_path / "log.sqlite3")
    ledger = Ledger(store, load_rate_card(), ManualClock(us_from_datetime(START)))
    ledger.execute([OpenSubscription("team"), AddSeat("team", "alice", "standard")])
    return ledger


def used(state: LedgerState) -> int:
    return state.subscriptions["team"].seats["alice"].used_ucr


def test_a_command_whose_decision_fails_is_refused_alone_and_the_batch_goes_on(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = application.decide

    def decide(state: Any, command: Any, at: Any, rate_card: Any) -> Any:
        if isinstance(command, ChargeUsage) and command.usage.event_id == "boom":
            raise OverflowError("date value out of range")
        return real(state, command, at, rate_card)

    monkeypatch.setattr(application, "decide", decide)
    reads_before = ledger.store.full_reads  # type: ignore[attr-defined]

    outcomes = ledger.execute([usage("e-1"), usage("boom"), usage("e-2")])

    assert [o.status for o in outcomes] == ["applied", "rejected", "applied"]
    assert outcomes[1].reason == "invalid_event"
    assert "OverflowError" in (outcomes[1].detail or "")
    assert ledger.store.full_reads == reads_before  # type: ignore[attr-defined]


def test_a_failed_append_is_undone_without_folding_the_log_again(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = used(ledger.state)
    reads_before = ledger.store.full_reads  # type: ignore[attr-defined]

    def fail(*_: Any, **__: Any) -> Any:
        raise StoreError("the disk is full")

    with monkeypatch.context() as patch:
        patch.setattr(ledger.store, "append", fail)
        with pytest.raises(StoreError):
            ledger.execute([usage("e-1")])

    assert used(ledger.state) == before
    assert ledger.store.full_reads == reads_before  # type: ignore[attr-defined]
    [outcome] = ledger.execute([usage("e-1")])
    assert outcome.status == "applied"
    assert used(ledger.state) == before + outcome.charged_ucr


def test_nothing_is_appended_while_the_clock_reads_past_the_ledgers_bounds(
    ledger: Ledger,
) -> None:
    head = ledger.store.head()
    ledger.clock = ManualClock(us_from_datetime(MAX_INSTANT) + 1)

    with pytest.raises(ClockOutOfRange):
        ledger.execute([usage("e-1")])

    assert ledger.store.head() == head
