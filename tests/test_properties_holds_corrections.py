"""Properties over random interleavings of usage (with and without a hold), holds placed,
extended, released and expiring, clock moves across cycles and expiries, and corrections
(adjustments, grants, reversals, voids), through the real write path on a SQLite log."""

from __future__ import annotations

from pathlib import Path

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from ledger.application import Ledger
from ledger.audit import verify
from ledger.clock import ManualClock
from ledger.log import find_charge, us_from_datetime
from ledger.stores.sqlite import SqliteEventStore
from projections.balances import assert_conserved, dump
from projections.history import MAX_HISTORY_ROWS, HistoryQuery
from projections.live import LiveBalances
from projections.replay import balances_as_of
from projections.runner import ProjectionRunner
from projections.stores.sqlite import SqliteReadModelStore
from projections.usage import MAX_PAGE_ROWS, UsageQuery
from schemas.events import ChargeReversed, UsageCharged
from tests.test_properties import PROPERTY_SETTINGS, RATE_CARD, as_command
from tests.workload import START, Workload

workloads = st.builds(
    Workload,
    seed=st.integers(0, 2**32),
    subscriptions=st.integers(1, 3),
    seats_per_subscription=st.integers(1, 4),
    events=st.integers(500, 1_500),
    batch_size=st.integers(1, 60),
    heavy=st.booleans(),
    holds_and_corrections=st.just(True),
)


def check_holds_never_exceed_what_is_there(ledger: Ledger) -> None:
    for sub in ledger.state.subscriptions.values():
        for seat in sub.seats.values():
            assert 0 <= seat.held_ucr <= max(0, seat.remaining_ucr), (sub.subscription_id, seat)
        for source in sub.shared_sources():
            assert 0 <= source.held_ucr <= source.remaining_ucr, (sub.subscription_id, source)
        for hold in sub.holds.values():
            assert hold.credits_ucr == sum(part.credits_ucr for part in hold.parts)


@PROPERTY_SETTINGS
@given(workload=workloads)
def test_holds_and_corrections_keep_the_books_and_replay_equals_live(workload, tmp_path_factory):
    folder: Path = tmp_path_factory.mktemp("holds")
    clock = ManualClock(us_from_datetime(START))
    store = SqliteEventStore(folder / "ledger.sqlite3")
    ledger = Ledger(store, RATE_CARD, clock)
    read_store = SqliteReadModelStore(folder / "rm.sqlite3", store)
    runner = ProjectionRunner(store, read_store)
    live = LiveBalances(store, *read_store.snapshot())
    for step in workload.steps():
        clock.set(max(clock.now_us(), us_from_datetime(step.at)))
        ledger.tick()
        ledger.execute([as_command(item) for item in step.commands])
        check_holds_never_exceed_what_is_there(ledger)
        runner.catch_up()
        live.catch_up()
        for sub_id in runner.balances.subscriptions:
            assert_conserved(runner.balances, sub_id)

    report = verify(store.read(), RATE_CARD, charges=lambda s, e: find_charge(store, s, e))
    assert report.ok, report.failure
    head = store.head().position
    replayed = dump(balances_as_of(store, head))
    assert dump(runner.balances) == dump(live.balances) == replayed
    assert dump(read_store.load_balances()) == replayed
    restarted = Ledger(store, RATE_CARD, clock)
    assert repr(restarted.state) == repr(ledger.state)

    charged: dict[tuple[str, str], int] = {}
    reversed_ucr: dict[tuple[str, str], int] = {}
    for record in store.read():
        event = record.event()
        if isinstance(event, UsageCharged):
            charged[(event.subscription_id, event.event_id)] = event.credits_ucr
        elif isinstance(event, ChargeReversed):
            key = (event.subscription_id, event.event_id)
            reversed_ucr[key] = reversed_ucr.get(key, 0) + event.credits_ucr
    assert all(amount <= charged[key] for key, amount in reversed_ucr.items())
    check_usage_and_history_rows(store, read_store, folder, reversed_ucr)


def check_usage_and_history_rows(
    store: SqliteEventStore,
    read_store: SqliteReadModelStore,
    folder: Path,
    reversed_ucr: dict[tuple[str, str], int],
) -> None:
    """The usage and history indexes folded batch by batch are what a rebuild folds, and each
    charge row's `reversed` is the sum of its reversals."""
    rebuilt = SqliteReadModelStore(folder / "rebuilt.sqlite3", store)
    ProjectionRunner(store, rebuilt).catch_up()
    assert rebuilt.usage_index_rows() == read_store.usage_index_rows()
    for sub in read_store.load_balances().subscriptions:
        assert _history(rebuilt, sub) == _history(read_store, sub)
        query = UsageQuery(sub, limit=MAX_PAGE_ROWS)
        while True:
            page = read_store.usage(query)
            for row in page.items:
                if row.kind == "charge":
                    assert row.reversed_ucr == reversed_ucr.get((sub, row.event_id), 0)
            if page.next_cursor is None:
                break
            query = msgspec.structs.replace(query, cursor=page.next_cursor)
    rebuilt.close()


def _history(read_store: SqliteReadModelStore, sub: str) -> list[int]:
    positions: list[int] = []
    after: int | None = 0
    while after is not None:
        page = read_store.history(HistoryQuery(sub, after, limit=MAX_HISTORY_ROWS))
        positions += [record.position for record in page.items]
        after = page.next_after
    return positions
