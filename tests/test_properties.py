"""Properties over random workloads of thousands of events (the invariants of docs/rules.md).

Hypothesis draws the workload's shape and seed; each example runs a few thousand commands
through the real write path (decider, SQLite log) with a manual clock.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.application import Ledger
from ledger.clock import ManualClock
from ledger.idempotency import payload_digest
from ledger.log import us_from_datetime
from ledger.rate_card import load_rate_card
from ledger.stores.sqlite import SqliteEventStore
from projections.balances import assert_conserved, dump
from projections.runner import ProjectionRunner
from projections.stores.sqlite import SqliteReadModelStore
from projections.usage import MAX_PAGE_ROWS, UsageQuery
from schemas.commands import ChargeUsage, Command
from schemas.events import (
    LogEvent,
    PackExpired,
    PackPurchased,
    SeatAdded,
    SeatQuotaGranted,
    SeatRemoved,
    SeatTierChanged,
    UsageCharged,
)
from schemas.usage import UsageEvent
from tests.workload import START, Workload

RATE_CARD = load_rate_card()

workloads = st.builds(
    Workload,
    seed=st.integers(0, 2**32),
    subscriptions=st.integers(1, 4),
    seats_per_subscription=st.integers(1, 5),
    events=st.integers(1_000, 3_000),
    batch_size=st.integers(1, 200),
    heavy=st.booleans(),
)
PROPERTY_SETTINGS = settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def as_command(item: Command | UsageEvent) -> Command:
    return ChargeUsage(item, payload_digest(item)) if isinstance(item, UsageEvent) else item


def run(workload: Workload, path: Path) -> tuple[Ledger, list[LogEvent]]:
    clock = ManualClock(us_from_datetime(START))
    ledger = Ledger(SqliteEventStore(path), RATE_CARD, clock)
    for step in workload.steps():
        clock.set(max(clock.now_us(), us_from_datetime(step.at)))
        ledger.tick()
        ledger.execute([as_command(item) for item in step.commands])
    events = [record.event() for record in ledger.store.read()]
    return ledger, events


def totals(events: list[LogEvent]) -> dict[str, dict[str, int]]:
    """Granted, used, expired and uncovered per subscription, summed from the log alone."""
    sums: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    quota: dict[tuple[str, str], int] = {}
    for event in events:
        s = sums[event.subscription_id]
        match event:
            case SeatAdded():
                s["granted"] += event.quota_ucr
                quota[(event.subscription_id, event.seat_id)] = event.quota_ucr
            case SeatTierChanged(effect="immediate"):
                key = (event.subscription_id, event.seat_id)
                s["granted"] += event.quota_ucr - quota[key]
                quota[key] = event.quota_ucr
            case SeatQuotaGranted():
                s["granted"] += event.quota_ucr
                s["expired"] += event.lapsed_ucr
                quota[(event.subscription_id, event.seat_id)] = event.quota_ucr
            case SeatRemoved():
                s["expired"] += event.forfeited_ucr
            case PackPurchased():
                s["granted"] += event.credits_ucr
            case PackExpired():
                s["expired"] += event.expired_ucr
            case UsageCharged():
                for part in event.allocation:
                    key = "uncovered" if part.source == "uncovered" else "used"
                    s[key] += part.credits_ucr
    return sums


@PROPERTY_SETTINGS
@given(workload=workloads)
def test_credits_are_conserved_per_subscription(workload, tmp_path_factory):
    ledger, events = run(workload, tmp_path_factory.mktemp("log") / "ledger.sqlite3")
    for sub_id, s in totals(events).items():
        sub = ledger.state.subscriptions[sub_id]
        remaining = sum(seat.remaining_ucr for seat in sub.seats.values())
        remaining += sum(pack.remaining_ucr for pack in sub.live_packs.values())
        assert s["granted"] == remaining + s["used"] + s["expired"], sub_id


@PROPERTY_SETTINGS
@given(workload=workloads)
def test_no_balance_is_ever_below_zero_and_every_charge_adds_up(workload, tmp_path_factory):
    _, events = run(workload, tmp_path_factory.mktemp("log") / "ledger.sqlite3")
    charges = [e for e in events if isinstance(e, UsageCharged)]
    assert charges
    for charge in charges:
        assert charge.credits_ucr == charge.components.total_ucr()
        assert charge.credits_ucr == sum(part.credits_ucr for part in charge.allocation)
        assert all(part.credits_ucr > 0 for part in charge.allocation)
    for s in totals(events).values():
        assert min(s.values(), default=0) >= 0


@PROPERTY_SETTINGS
@given(workload=workloads)
def test_each_event_id_is_charged_at_most_once(workload, tmp_path_factory):
    _, events = run(workload, tmp_path_factory.mktemp("log") / "ledger.sqlite3")
    keys = [(e.subscription_id, e.event_id) for e in events if isinstance(e, UsageCharged)]
    assert len(keys) == len(set(keys))


@PROPERTY_SETTINGS
@given(workload=workloads, again_later=st.booleans())
def test_delivering_any_event_twice_changes_nothing(workload, again_later, tmp_path_factory):
    once, _ = run(workload, tmp_path_factory.mktemp("once") / "ledger.sqlite3")
    doubled = DoubledWorkload(workload, again_later)
    twice, _ = run(doubled, tmp_path_factory.mktemp("twice") / "ledger.sqlite3")  # type: ignore[arg-type]
    assert twice.store.head() == once.store.head()  # same positions, same hash chain


class DoubledWorkload:
    """The same workload with every usage event delivered twice: in the same batch, or again
    in the next one."""

    def __init__(self, workload: Workload, again_later: bool) -> None:
        self.workload, self.again_later = workload, again_later

    def steps(self):
        held: list = []
        for step in self.workload.steps():
            usages = [c for c in step.commands if isinstance(c, UsageEvent)]
            if self.again_later:
                step.commands = held + step.commands
                held = usages
            else:
                step.commands = step.commands + usages
            yield step


@PROPERTY_SETTINGS
@given(workload=workloads)
def test_replaying_the_log_gives_byte_identical_read_models(workload, tmp_path_factory):
    """Read models caught up step by step, as the service does, equal a rebuild from zero."""
    folder = tmp_path_factory.mktemp("replay")
    clock = ManualClock(us_from_datetime(START))
    store = SqliteEventStore(folder / "ledger.sqlite3")
    ledger = Ledger(store, RATE_CARD, clock)
    live_store = SqliteReadModelStore(folder / "live.sqlite3", store)
    live = ProjectionRunner(store, live_store)
    for step in workload.steps():
        clock.set(max(clock.now_us(), us_from_datetime(step.at)))
        ledger.tick()
        ledger.execute([as_command(item) for item in step.commands])
        live.catch_up()
        for sub_id in live.balances.subscriptions:
            assert_conserved(live.balances, sub_id)
    rebuilt_store = SqliteReadModelStore(folder / "rebuilt.sqlite3", store)
    rebuilt = ProjectionRunner(store, rebuilt_store)
    rebuilt.rebuild()
    assert dump(rebuilt.balances) == dump(live.balances)
    reloaded = ProjectionRunner(store, SqliteReadModelStore(folder / "live.sqlite3", store))
    assert dump(reloaded.balances) == dump(live.balances)
    for sub_id in live.balances.subscriptions:
        query = UsageQuery(sub_id, limit=MAX_PAGE_ROWS)
        assert rebuilt_store.usage(query) == live_store.usage(query)
