"""The admin history index and reversal rows, over both read stores: every admin write of a
subscription in log order with who asked and why, found again by its id; reversals in usage
pages beside the charges they reverse; a read store of an earlier release folded again."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from ledger.application import Ledger
from ledger.audit import verify
from ledger.clock import ManualClock
from ledger.log import find_charge, us_from_datetime
from ledger.rate_card import load_rate_card
from ledger.stores.sqlite import SqliteEventStore
from projections.history import HistoryQuery
from projections.runner import ProjectionRunner
from projections.stores.sqlite import SqliteReadModelStore
from projections.usage import UsageQuery
from schemas.commands import (
    AddSeat,
    AdjustSeat,
    BuyPack,
    GrantCredits,
    OpenSubscription,
    ReverseCharge,
    VoidPack,
)
from schemas.events import Actor, PackVoided
from schemas.usage import UsageEvent
from tests.test_projections import OpenReadStore, open_read_store  # noqa: F401 (a fixture)

ANCHOR = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)
ADMIN = Actor("tok_admin", "admin")


def _usage(event_id: str, sub: str = "team-1") -> UsageEvent:
    return UsageEvent(
        event_id=event_id,
        subscription_id=sub,
        seat_id="alice",
        model="qwen3.6-plus",
        occurred_at=ANCHOR,
        input_tokens=8_349,
        cached_tokens=40_794,
        output_tokens=573,
    )


def _log(path: Path) -> SqliteEventStore:
    """Two subscriptions; team-1 with a charge reversed twice, in part, and every correction."""
    store = SqliteEventStore(path)
    ledger = Ledger(store, load_rate_card(), ManualClock(us_from_datetime(ANCHOR)))
    for sub in ("team-1", "team-2"):
        ledger.execute(
            [
                OpenSubscription(sub, ANCHOR, ADMIN, "new team"),
                AddSeat(sub, "alice", "standard", ADMIN),
                BuyPack(sub, "p1", ADMIN),
            ]
        )
        ledger.charge([_usage("e1", sub)])
    ledger.execute(
        [
            ReverseCharge("team-1", "e1", "r1", "typo", 1_000_000, ADMIN),
            ReverseCharge("team-1", "e1", "r2", "typo again", 180_000, ADMIN),
            AdjustSeat("team-1", "alice", "a1", 5_000_000, "goodwill", ADMIN),
            GrantCredits("team-1", "g1", 7_000_000, datetime(2026, 3, 1, tzinfo=UTC), "promo"),
            VoidPack("team-1", "p1", "refunded", ADMIN),
        ]
    )
    return store


def test_the_history_lists_admin_writes_in_log_order_with_who_and_why(
    open_read_store: OpenReadStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    events = _log(tmp_path / "ledger.sqlite3")
    store = open_read_store("history", events)
    ProjectionRunner(events, store).catch_up(batch_size=3)
    page = store.history(HistoryQuery("team-1"))
    kinds = [record.event() for record in page.items]
    assert [type(e).__name__ for e in kinds] == [
        "SubscriptionOpened",
        "SeatAdded",
        "PackPurchased",
        "ChargeReversed",
        "ChargeReversed",
        "SeatAdjusted",
        "CreditsGranted",
        "PackVoided",
    ]
    assert all(e.subscription_id == "team-1" for e in kinds)
    assert [getattr(e, "reason", None) for e in kinds][3:6] == ["typo", "typo again", "goodwill"]
    first = store.history(HistoryQuery("team-1", limit=2))
    assert first.next_after == first.items[-1].position
    rest = store.history(HistoryQuery("team-1", after=first.next_after or 0))
    assert [r.position for r in first.items + rest.items] == [r.position for r in page.items]
    bounded = store.history(HistoryQuery("team-1", as_of_position=page.items[3].position))
    assert len(bounded.items) == 4
    reader = store.reader()  # type: ignore[attr-defined]
    try:
        found = reader.admin_record("team-1", "usage.reversed", "r2")
        assert found is not None and found.event().reversal_id == "r2"
        assert reader.admin_record("team-2", "usage.reversed", "r2") is None
        assert reader.history(HistoryQuery("team-2")).items[0].event().reason == "new team"
    finally:
        reader.close()


def test_a_charge_row_says_what_its_reversals_gave_back_as_of_the_page(
    open_read_store: OpenReadStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    events = _log(tmp_path / "ledger.sqlite3")
    store = open_read_store("usage", events)
    ProjectionRunner(events, store).catch_up()
    rows = store.usage(UsageQuery("team-1")).items
    assert [(r.kind, r.event_id, r.credits_ucr, r.reversed_ucr) for r in rows] == [
        ("charge", "e1", 3_180_000, 1_180_000),
        ("reversal", "r1", -1_000_000, 0),
        ("reversal", "r2", -180_000, 0),
    ]
    assert rows[1].reverses == "e1" and rows[1].reason == "typo"
    as_of_first = store.usage(UsageQuery("team-1", as_of_position=rows[1].position)).items
    assert [(r.event_id, r.reversed_ucr) for r in as_of_first] == [("e1", 1_000_000), ("r1", 0)]
    other = store.usage(UsageQuery("team-2")).items
    assert [(r.kind, r.reversed_ucr) for r in other] == [("charge", 0)]


def test_a_read_store_of_an_earlier_release_is_folded_again_from_the_start(
    tmp_path: Path,
) -> None:
    events = _log(tmp_path / "ledger.sqlite3")
    path = tmp_path / "read.sqlite3"
    store = SqliteReadModelStore(path, events)
    ProjectionRunner(events, store).catch_up()
    store.close()
    with sqlite3.connect(path) as db:  # as an earlier release left it
        db.execute("DROP TABLE rm_admin")
    store = SqliteReadModelStore(path, events)
    try:
        assert store.checkpoint() == 0
        ProjectionRunner(events, store).catch_up()
        assert len(store.history(HistoryQuery("team-1")).items) == 8
    finally:
        store.close()


def test_an_audit_failure_at_a_correction_names_who_asked_and_why(tmp_path: Path) -> None:
    store = _log(tmp_path / "ledger.sqlite3")
    report = verify(store.read(), load_rate_card(), charges=lambda s, e: find_charge(store, s, e))
    assert report.ok and (report.admin_writes, report.corrections) == (11, 5)
    head = store.head()
    forged = PackVoided("team-2", "p1", 1, ADMIN, "refunded, they say")  # p1 had more left
    store.append([forged], head.recorded_at_us)
    failed = verify(store.read(), load_rate_card(), charges=lambda s, e: find_charge(store, s, e))
    assert failed.failure is not None and failed.failure.position == head.position + 1
    assert failed.failure.reason.endswith(
        "(asked by token tok_admin (admin), reason: 'refunded, they say')"
    )
