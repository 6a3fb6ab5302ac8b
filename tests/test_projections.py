"""Projections as specifications: what each event does to the balances, conservation, the
runner's checkpoints and rebuilds, usage details queries, and replay to a point of the log.

The read model store tests run against every store kind (`READ_STORE_KINDS`: SQLite, and
PostgreSQL on the session server of `postgres_url`, each store in a schema of its own).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg
import pytest
from psycopg import sql

from ledger.catalog import PACK_CREDITS_UCR, SEAT_QUOTA_UCR
from ledger.decider import decide
from ledger.errors import LogInconsistent, Rejected
from ledger.idempotency import payload_digest
from ledger.log import (
    EVENT_ENCODER,
    GENESIS_HASH,
    Head,
    StoredRecord,
    datetime_from_us,
    record_hash,
    us_from_datetime,
)
from ledger.rate_card import load_rate_card
from ledger.state import evolve, initial_state
from projections.balances import (
    Balances,
    ChargeView,
    CompactChargeView,
    NotConserved,
    apply,
    apply_data,
    assert_conserved,
    decode,
    dump,
    overview,
    pack_balances,
    seat_balance,
    subscription_balance,
)
from projections.live import LiveBalances
from projections.read_store import CheckpointMoved, ReadModelStore
from projections.replay import (
    PROGRESS_EVERY_RECORDS,
    InvalidAsOf,
    balances_as_of,
    resolve_as_of,
)
from projections.runner import ProjectionRunner
from projections.stores.postgres import PostgresReadModelStore
from projections.stores.sqlite import SqliteReadModelStore
from projections.usage import (
    MAX_FETCH_GAP_RECORDS as MAX_FETCH_GAP,
)
from projections.usage import (
    MAX_PAGE_ROWS,
    InvalidCursor,
    InvalidUsageQuery,
    RecordReader,
    UsageQuery,
)
from schemas.commands import AdvanceClock, ChargeOnRecord, ChargeUsage, Command, ReverseCharge
from schemas.events import (
    Allocation,
    Coefficients,
    Components,
    CycleStarted,
    LogEvent,
    PackExpired,
    PackPurchased,
    SeatAdded,
    SeatQuotaGranted,
    SeatRemoved,
    SeatResumed,
    SeatSuspended,
    SeatTierChanged,
    SubscriptionOpened,
    UsageCharged,
)
from schemas.read_models import UsageRow
from schemas.usage import Usage, UsageEvent
from tests.workload import Workload

CREDIT = 1_000_000
SUB = "team-1"
ANCHOR = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)
CYCLE_1 = (ANCHOR + timedelta(days=28), ANCHOR + timedelta(days=59))
STANDARD = SEAT_QUOTA_UCR["standard"]
ADVANCED = SEAT_QUOTA_UCR["advanced"]
PACK = PACK_CREDITS_UCR
T0_US = us_from_datetime(ANCHOR)
SECOND_US = 1_000_000
SNAPSHOT_RACE_BATCH_EVENTS = 7
SNAPSHOTS_CHECKED = 40
"""Snapshots compared with a replay (evenly spread over those taken): each replay costs a fold."""


class ListEventStore:
    """A log in a list: real hash-chained records, `read`/`head`/`position_at` as stores do.

    `visible` hides the records beyond it, standing for a log that has not grown that far yet.
    """

    def __init__(self) -> None:
        self.records: list[StoredRecord] = []
        self.visible: int | None = None

    def append(self, events: Sequence[LogEvent], recorded_at_us: int) -> list[StoredRecord]:
        appended = []
        for event in events:
            prev = self.records[-1].hash if self.records else GENESIS_HASH
            position = len(self.records) + 1
            data = EVENT_ENCODER.encode(event)
            record = StoredRecord(
                position,
                recorded_at_us,
                data,
                prev,
                record_hash(prev, position, recorded_at_us, data),
            )
            self.records.append(record)
            appended.append(record)
        return appended

    def _records(self) -> list[StoredRecord]:
        return self.records if self.visible is None else self.records[: self.visible]

    def read(self, after: int = 0, until: int | None = None) -> Iterator[StoredRecord]:
        records = self._records()
        return iter(records[after : len(records) if until is None else until])

    def read_event_data(self, after: int, until: int) -> Iterator[list[bytes]]:
        data = [record.data for record in self._records()[after:until]]
        for first in range(0, len(data), 500):
            yield data[first : first + 500]

    def read_subscription_data(
        self, subscription_id: str, until: int, after: int = 0
    ) -> Iterator[list[bytes]]:
        records = self._records()[after:until]
        yield [r.data for r in records if r.event().subscription_id == subscription_id]

    def head(self) -> Head:
        records = self._records()
        if not records:
            return Head(0, GENESIS_HASH, 0)
        last = records[-1]
        return Head(last.position, last.hash, last.recorded_at_us)

    def position_at(self, recorded_at_us: int) -> int:
        found = 0
        for record in self._records():
            if record.recorded_at_us > recorded_at_us:
                break
            found = record.position
        return found


# --- event builders ---------------------------------------------------------------------------


def opened(sub: str = SUB) -> list[LogEvent]:
    return [
        SubscriptionOpened(sub, ANCHOR),
        CycleStarted(sub, 0, ANCHOR, CYCLE_1[0]),
    ]


def seat(seat_id: str, tier: str = "standard", sub: str = SUB) -> SeatAdded:
    return SeatAdded(sub, seat_id, tier, SEAT_QUOTA_UCR[tier], 0)  # type: ignore[arg-type]


def pack(pack_id: str, sub: str = SUB, at: datetime = ANCHOR) -> PackPurchased:
    return PackPurchased(sub, pack_id, PACK, at, at + timedelta(days=28))


def charged(
    seat_id: str,
    *parts: tuple[str, str, int],
    sub: str = SUB,
    event_id: str = "e",
    model: str = "qwen3.6-plus",
) -> UsageCharged:
    """A charge of whole credits split as given: ("seat"|"pack"|"uncovered", id, credits)."""
    allocation = tuple(Allocation(src, id_, credits * CREDIT) for src, id_, credits in parts)  # type: ignore[arg-type]
    total = sum(part.credits_ucr for part in allocation)
    return UsageCharged(
        subscription_id=sub,
        seat_id=seat_id,
        event_id=event_id,
        payload_digest="d" * 32,
        occurred_at=ANCHOR,
        model=model,
        product="text",
        usage=Usage(input_tokens=total // 200),
        rate_card_version="test",
        coefficients=Coefficients(input_ucr_per_1k=200_000),
        components=Components(input_ucr=total),
        credits_ucr=total,
        allocation=allocation,
    )


def fold(*events: LogEvent) -> Balances:
    balances = Balances()
    for event in events:
        apply(balances, event)
    return balances


def seat_of(balances: Balances, seat_id: str, sub: str = SUB) -> dict[str, object]:
    return msgspec.structs.asdict(seat_balance(balances.seats[(sub, seat_id)]))


def totals(balances: Balances, sub: str = SUB) -> tuple[int, int, int]:
    row = subscription_balance(balances.subscriptions[sub])
    return row.granted_ucr, row.used_ucr, row.expired_ucr


# --- what each event does ---------------------------------------------------------------------


def test_an_opened_subscription_has_no_cycle_until_its_cycle_starts():
    balances = fold(SubscriptionOpened(SUB, ANCHOR))
    sub = balances.subscriptions[SUB]
    assert (sub.anchor, sub.cycle, sub.cycle_start, sub.cycle_end) == (ANCHOR, -1, None, None)


def test_a_cycle_start_sets_the_cycle_and_resets_only_this_cycles_uncovered():
    balances = fold(*opened(), seat("s1"), charged("s1", ("uncovered", "", 7)))
    apply(balances, CycleStarted(SUB, 1, *CYCLE_1))
    sub = balances.subscriptions[SUB]
    assert (sub.cycle, sub.cycle_start, sub.cycle_end) == (1, *CYCLE_1)
    assert (sub.uncovered_cycle_ucr, sub.uncovered_total_ucr) == (0, 7 * CREDIT)


def test_an_added_seat_has_its_full_quota_unused_and_is_active():
    balances = fold(*opened(), seat("s1", "advanced"))
    assert seat_of(balances, "s1") == {
        "subscription_id": SUB,
        "seat_id": "s1",
        "tier": "advanced",
        "pending_tier": None,
        "status": "active",
        "cycle": 0,
        "quota_ucr": ADVANCED,
        "used_ucr": 0,
        "remaining_ucr": ADVANCED,
        "pack_used_ucr": 0,
        "uncovered_ucr": 0,
    }
    assert totals(balances) == (ADVANCED, 0, 0)


def test_an_immediate_upgrade_raises_the_quota_keeps_used_and_grants_the_difference():
    balances = fold(*opened(), seat("s1"), charged("s1", ("seat", "s1", 600)))
    apply(balances, SeatTierChanged(SUB, "s1", "standard", "advanced", "immediate", ADVANCED))
    s1 = seat_of(balances, "s1")
    assert (s1["tier"], s1["quota_ucr"], s1["used_ucr"]) == ("advanced", ADVANCED, 600 * CREDIT)
    assert s1["remaining_ucr"] == ADVANCED - 600 * CREDIT
    assert totals(balances)[0] == ADVANCED


def test_a_next_cycle_downgrade_only_records_the_pending_tier():
    balances = fold(*opened(), seat("s1", "advanced"))
    before = seat_of(balances, "s1")
    apply(balances, SeatTierChanged(SUB, "s1", "advanced", "standard", "next_cycle", ADVANCED))
    assert seat_of(balances, "s1") == {**before, "pending_tier": "standard"}
    assert totals(balances) == (ADVANCED, 0, 0)


def test_a_next_cycle_change_back_to_the_tier_in_force_cancels_the_pending_downgrade():
    balances = fold(
        *opened(),
        seat("s1", "premium"),
        SeatTierChanged(SUB, "s1", "premium", "standard", "next_cycle", SEAT_QUOTA_UCR["premium"]),
        SeatTierChanged(SUB, "s1", "premium", "premium", "next_cycle", SEAT_QUOTA_UCR["premium"]),
    )
    assert seat_of(balances, "s1")["pending_tier"] is None


def test_a_removed_seat_shows_nothing_remaining_and_its_quota_left_counts_as_expired():
    balances = fold(*opened(), seat("s1"), charged("s1", ("seat", "s1", 1_000)))
    apply(balances, SeatRemoved(SUB, "s1", STANDARD - 1_000 * CREDIT))
    s1 = seat_of(balances, "s1")
    assert (s1["status"], s1["remaining_ucr"], s1["used_ucr"]) == ("removed", 0, 1_000 * CREDIT)
    assert totals(balances) == (STANDARD, 1_000 * CREDIT, STANDARD - 1_000 * CREDIT)


def test_a_quota_grant_starts_the_seat_over_and_last_cycles_unused_quota_lapses():
    balances = fold(
        *opened(),
        seat("s1", "advanced"),
        pack("p1"),
        SeatTierChanged(SUB, "s1", "advanced", "standard", "next_cycle", ADVANCED),
        charged("s1", ("seat", "s1", 100_000 - 1), ("pack", "p1", 3)),
        CycleStarted(SUB, 1, *CYCLE_1),
    )
    apply(balances, SeatQuotaGranted(SUB, "s1", "standard", 1, STANDARD, 1 * CREDIT))
    assert seat_of(balances, "s1") == {
        "subscription_id": SUB,
        "seat_id": "s1",
        "status": "active",
        "tier": "standard",
        "pending_tier": None,
        "cycle": 1,
        "quota_ucr": STANDARD,
        "used_ucr": 0,
        "remaining_ucr": STANDARD,
        "pack_used_ucr": 0,
        "uncovered_ucr": 0,
    }
    granted, used, expired = totals(balances)
    assert (granted, used, expired) == (ADVANCED + PACK + STANDARD, 100_002 * CREDIT, 1 * CREDIT)


def test_a_purchased_pack_has_all_its_credits_remaining():
    balances = fold(*opened(), pack("p1"))
    [p1] = pack_balances(balances, SUB)
    assert (p1.credits_ucr, p1.remaining_ucr, p1.expired_ucr, p1.status) == (
        PACK,
        PACK,
        0,
        "active",
    )
    assert (p1.purchased_at, p1.expires_at) == (ANCHOR, ANCHOR + timedelta(days=28))
    assert totals(balances) == (PACK, 0, 0)


def test_a_charge_adds_its_seat_part_to_used_and_takes_each_pack_part_from_that_pack():
    balances = fold(*opened(), seat("s1"), pack("p1"), pack("p2"))
    apply(balances, charged("s1", ("seat", "s1", 25_000), ("pack", "p1", 10), ("pack", "p2", 5)))
    s1 = seat_of(balances, "s1")
    assert (s1["used_ucr"], s1["remaining_ucr"], s1["pack_used_ucr"]) == (
        STANDARD,
        0,
        15 * CREDIT,
    )
    remaining = {p.pack_id: p.remaining_ucr for p in pack_balances(balances, SUB)}
    assert remaining == {"p1": PACK - 10 * CREDIT, "p2": PACK - 5 * CREDIT}
    assert totals(balances)[1] == STANDARD + 15 * CREDIT


def test_an_uncovered_part_adds_to_the_seat_and_to_the_subscriptions_cycle_and_total():
    balances = fold(*opened(), seat("s1"))
    apply(balances, charged("s1", ("seat", "s1", 25_000), ("uncovered", "", 3)))
    assert seat_of(balances, "s1")["uncovered_ucr"] == 3 * CREDIT
    sub = balances.subscriptions[SUB]
    assert (sub.uncovered_cycle_ucr, sub.uncovered_total_ucr) == (3 * CREDIT, 3 * CREDIT)
    assert totals(balances) == (STANDARD, STANDARD, 0)


def test_a_pack_drawn_to_zero_is_exhausted():
    balances = fold(*opened(), seat("s1"), pack("p1"))
    apply(balances, charged("s1", ("pack", "p1", PACK // CREDIT)))
    [p1] = pack_balances(balances, SUB)
    assert (p1.remaining_ucr, p1.status) == (0, "exhausted")


def test_an_expired_pack_has_nothing_left_and_what_was_left_counts_as_expired():
    balances = fold(*opened(), seat("s1"), pack("p1"), charged("s1", ("pack", "p1", 25)))
    apply(balances, PackExpired(SUB, "p1", ANCHOR + timedelta(days=28), PACK - 25 * CREDIT))
    [p1] = pack_balances(balances, SUB)
    assert (p1.remaining_ucr, p1.expired_ucr, p1.status) == (0, PACK - 25 * CREDIT, "expired")
    assert totals(balances) == (STANDARD + PACK, 25 * CREDIT, PACK - 25 * CREDIT)


def test_a_seat_is_suspended_and_resumed_as_the_log_says():
    balances = fold(*opened(), seat("s1"))
    apply(balances, SeatSuspended(SUB, "s1", "credits_exhausted", "e1"))
    assert seat_of(balances, "s1")["status"] == "suspended"
    apply(balances, SeatResumed(SUB, "s1", "pack_purchased"))
    assert seat_of(balances, "s1")["status"] == "active"


def test_a_charge_whose_parts_do_not_add_up_to_it_is_refused():
    balances = fold(*opened(), seat("s1"))
    bad = msgspec.structs.replace(charged("s1", ("seat", "s1", 5)), credits_ucr=6 * CREDIT)
    with pytest.raises(LogInconsistent, match="add up"):
        apply(balances, bad)


def test_a_pack_is_never_drawn_below_zero():
    balances = fold(*opened(), seat("s1"), pack("p1"))
    with pytest.raises(LogInconsistent, match="pack overdrawn"):
        apply(balances, charged("s1", ("pack", "p1", PACK // CREDIT + 1)))


def test_a_seat_quota_is_never_overdrawn():
    balances = fold(*opened(), seat("s1"))
    with pytest.raises(LogInconsistent, match="seat quota overdrawn"):
        apply(balances, charged("s1", ("seat", "s1", STANDARD // CREDIT + 1)))


def test_an_expiry_must_expire_exactly_what_was_left():
    balances = fold(*opened(), pack("p1"))
    with pytest.raises(LogInconsistent, match="what was left"):
        apply(balances, PackExpired(SUB, "p1", ANCHOR + timedelta(days=28), PACK - 1))


@pytest.mark.parametrize(
    ("encode", "view"),
    [(EVENT_ENCODER.encode, CompactChargeView), (msgspec.json.encode, ChargeView)],
    ids=["compact", "json"],
)
def test_a_charge_folds_the_same_from_its_light_view_as_from_the_full_event(encode, view):
    event = charged("s1", ("seat", "s1", 25_000), ("pack", "p1", 2), ("uncovered", "", 1))
    light = decode(encode(event))
    assert isinstance(light, view)
    full, viewed = fold(*opened(), seat("s1"), pack("p1")), fold(*opened(), seat("s1"), pack("p1"))
    apply(full, event)
    apply(viewed, light)
    assert dump(full) == dump(viewed)
    data_folded = fold(*opened(), seat("s1"), pack("p1"))
    assert apply_data(data_folded, encode(event)) is not None
    assert dump(data_folded) == dump(full)


def test_a_stored_record_is_folded_as_its_event():
    store = ListEventStore()
    records = store.append([*opened(), seat("s1")], T0_US)
    by_record, by_event = Balances(), fold(*opened(), seat("s1"))
    for record in records:
        apply(by_record, record)
    assert dump(by_record) == dump(by_event)


# --- conservation -----------------------------------------------------------------------------

HANDCRAFTED: list[LogEvent] = [
    *opened(),
    seat("s1"),
    seat("s2", "advanced"),
    charged("s1", ("seat", "s1", 20_000)),
    pack("p1"),
    SeatTierChanged(SUB, "s1", "standard", "advanced", "immediate", ADVANCED),
    charged("s1", ("seat", "s1", 80_000), ("pack", "p1", 1_000), event_id="e2"),
    SeatTierChanged(SUB, "s2", "advanced", "standard", "next_cycle", ADVANCED),
    charged("s1", ("pack", "p1", 624_000), ("uncovered", "", 50), event_id="e3"),
    SeatSuspended(SUB, "s1", "credits_exhausted", "e3"),
    pack("p2", at=ANCHOR + timedelta(days=2)),
    SeatResumed(SUB, "s1", "pack_purchased"),
    charged("s2", ("seat", "s2", 30_000), event_id="e4"),
    SeatRemoved(SUB, "s2", ADVANCED - 30_000 * CREDIT),
    seat("s3", "premium"),
    charged("s3", ("seat", "s3", 10), event_id="e5"),
    PackExpired(SUB, "p1", ANCHOR + timedelta(days=28), 0),
    CycleStarted(SUB, 1, *CYCLE_1),
    SeatQuotaGranted(SUB, "s1", "advanced", 1, ADVANCED, 0),
    SeatQuotaGranted(SUB, "s3", "premium", 1, SEAT_QUOTA_UCR["premium"], 249_990 * CREDIT),
    charged("s1", ("seat", "s1", 5), event_id="e6"),
    PackExpired(SUB, "p2", ANCHOR + timedelta(days=30), PACK),
]


def test_credits_are_conserved_after_every_event_of_a_handcrafted_sequence():
    balances = Balances()
    for event in HANDCRAFTED:
        apply(balances, event)
        assert_conserved(balances, SUB)
    granted, used, _ = totals(balances)
    assert granted == 3 * ADVANCED + 2 * SEAT_QUOTA_UCR["premium"] + 2 * PACK
    assert used == (20_000 + 80_000 + 1_000 + 624_000 + 30_000 + 10 + 5) * CREDIT
    assert balances.subscriptions[SUB].uncovered_total_ucr == 50 * CREDIT


def test_a_balance_changed_behind_the_folds_back_is_caught_as_not_conserved():
    balances = fold(*HANDCRAFTED)
    balances.packs[(SUB, "p2")].remaining_ucr += 1
    with pytest.raises(NotConserved):
        assert_conserved(balances, SUB)


RATE_CARD = load_rate_card()
KINDS_OF_EVENTS = [t.__name__ for t in LogEvent.__args__]  # type: ignore[attr-defined]


def decided_log(workload: Workload) -> ListEventStore:
    """The log the real decider writes for a workload, each step at its own recorded time."""
    store = ListEventStore()
    state = initial_state()
    charged_digests: dict[tuple[str, str], str] = {}
    charges: dict[tuple[str, str], ChargeOnRecord] = {}
    for step in workload.steps():
        at_us = max(us_from_datetime(step.at), store.head().recorded_at_us)
        at = datetime_from_us(at_us)
        batch: list[LogEvent] = []
        commands: list[Command] = [AdvanceClock()]
        for item in step.commands:
            if isinstance(item, UsageEvent):
                key = (item.subscription_id, item.event_id)
                commands.append(ChargeUsage(item, payload_digest(item), charged_digests.get(key)))
            elif isinstance(item, ReverseCharge):
                on_record = charges.get((item.subscription_id, item.event_id))
                commands.append(msgspec.structs.replace(item, on_record=on_record))
            else:
                commands.append(item)
        for command in commands:
            try:
                events = decide(state, command, at, RATE_CARD)
            except Rejected:
                continue
            for event in events:
                evolve(state, event)
                if isinstance(event, UsageCharged):
                    charged_digests[(event.subscription_id, event.event_id)] = event.payload_digest
                    charges[(event.subscription_id, event.event_id)] = ChargeOnRecord(event, at)
            batch.extend(events)
        store.append(batch, at_us)
    return store


@pytest.fixture(scope="module")
def workload_log() -> ListEventStore:
    return decided_log(
        Workload(
            seed=7,
            subscriptions=3,
            seats_per_subscription=3,
            events=2_000,
            holds_and_corrections=True,
        )
    )


def test_credits_are_conserved_after_every_event_the_decider_writes(workload_log):
    balances = Balances()
    kinds = set()
    for record in workload_log.records:
        event = record.event()
        kinds.add(type(event).__name__)
        apply(balances, record)
        assert_conserved(balances, event.subscription_id)
    # The workload is heavy enough to exercise every kind of event.
    assert set(KINDS_OF_EVENTS) <= kinds


# --- overview ---------------------------------------------------------------------------------


def test_the_overview_sums_the_quota_of_seats_not_removed_and_gives_utilization_in_basis_points():
    view = overview(fold(*HANDCRAFTED[:17]), SUB)
    assert view is not None
    assert [s.seat_id for s in view.seats] == ["s1", "s2", "s3"]
    assert view.quota_total_ucr == ADVANCED + SEAT_QUOTA_UCR["premium"]
    assert view.quota_used_ucr == ADVANCED + 10 * CREDIT
    assert view.utilization_basis_points == view.quota_used_ucr * 10_000 // view.quota_total_ucr
    assert view.packs_remaining_ucr == PACK
    assert (view.uncovered_ucr, view.uncovered_total_ucr) == (50 * CREDIT, 50 * CREDIT)


def test_the_overview_of_a_subscription_without_quota_shows_zero_utilization():
    view = overview(fold(*opened()), SUB)
    assert view is not None
    assert (view.quota_total_ucr, view.utilization_basis_points, view.seats) == (0, 0, ())


def test_there_is_no_overview_of_an_unknown_subscription():
    assert overview(fold(*opened()), "nobody") is None


# --- runner: checkpoints, rebuilds, loading ---------------------------------------------------


def handcrafted_log() -> ListEventStore:
    store = ListEventStore()
    other = [*opened("team-2"), seat("t2-s1", sub="team-2")]
    for i, event in enumerate([*HANDCRAFTED[:4], *other, *HANDCRAFTED[4:]]):
        store.append([event], T0_US + i * 3_600 * SECOND_US)
    store.append(
        [
            charged("t2-s1", ("seat", "t2-s1", 1), sub="team-2", event_id=f"t2-{i}", model=m)
            for i, m in enumerate(["glm-5", "qwen3.6-plus", "glm-5"])
        ],
        T0_US + 100 * 3_600 * SECOND_US,
    )
    return store


READ_STORE_KINDS = ["sqlite", "postgres"]

OpenReadStore = Callable[[str, RecordReader], ReadModelStore]
"""Opens the read store called `name` over a log: the same name, the same tables."""


@pytest.fixture(params=READ_STORE_KINDS)
def open_read_store(request: pytest.FixtureRequest, tmp_path) -> Iterator[OpenReadStore]:
    """Read stores of one kind for this test: SQLite files in `tmp_path`, or PostgreSQL schemas
    named after the test's own `postgres_schema` (all dropped when it ends). A store opened on
    another thread is closed by that thread (a sqlite3 connection stays on its own)."""
    kind = request.param
    opened: list[tuple[int, ReadModelStore]] = []
    schemas: set[str] = set()
    url = request.getfixturevalue("postgres_url") if kind == "postgres" else ""
    base = request.getfixturevalue("postgres_schema") if kind == "postgres" else ""

    def open_store(name: str, events: RecordReader) -> ReadModelStore:
        store: ReadModelStore
        if kind == "sqlite":
            store = SqliteReadModelStore(tmp_path / f"{name}.sqlite", events)
        else:
            schemas.add(f"{base}_{name}")
            store = PostgresReadModelStore(url, events, schema=f"{base}_{name}")
        opened.append((threading.get_ident(), store))
        return store

    yield open_store
    for thread, store in opened:
        if thread == threading.get_ident():
            store.close()
    if schemas:
        with psycopg.connect(url, autocommit=True) as connection:
            for schema in schemas:
                connection.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )


def read_model_state(read_store: ReadModelStore, runner: ProjectionRunner) -> tuple:
    """Everything the read model holds: tables' balances, memory's balances, the usage index and
    every usage row it answers with."""
    usage = []
    for sub in sorted(read_store.load_balances().subscriptions):
        usage.extend(all_usage(read_store, UsageQuery(sub, limit=MAX_PAGE_ROWS)))
    balances = dump(read_store.load_balances()), dump(runner.balances)
    return balances, read_store.usage_index_rows(), usage


def all_usage(read_store: ReadModelStore, query: UsageQuery) -> list[UsageRow]:
    rows: list[UsageRow] = []
    cursor = None
    while True:
        page = read_store.usage(msgspec.structs.replace(query, cursor=cursor))
        rows.extend(page.items)
        if page.next_cursor is None:
            return rows
        cursor = page.next_cursor


def rebuilt(events: ListEventStore, read_store: ReadModelStore) -> tuple:
    runner = ProjectionRunner(events, read_store)
    runner.rebuild()
    return read_model_state(read_store, runner)


@pytest.mark.parametrize("batch_size", [1, 4, 10_000])
def test_catching_up_from_every_checkpoint_equals_a_rebuild_from_zero(open_read_store, batch_size):
    events = handcrafted_log()
    head = events.head().position
    expected = rebuilt(events, open_read_store("rebuilt", events))
    for checkpoint in range(head + 1):
        read_store = open_read_store(f"at_{checkpoint}", events)
        events.visible = checkpoint
        assert ProjectionRunner(events, read_store).catch_up(batch_size) == checkpoint
        events.visible = None
        runner = ProjectionRunner(events, read_store)  # a restart: balances from the tables
        assert runner.catch_up(batch_size) == head
        assert read_model_state(read_store, runner) == expected
        read_store.close()


def test_the_same_log_gives_the_same_read_models_in_every_kind_of_store(tmp_path, postgres_url):
    events = handcrafted_log()
    schema = f"test_same_{uuid.uuid4().hex[:16]}"
    on_postgres = PostgresReadModelStore(postgres_url, events, schema=schema)
    try:
        on_sqlite = SqliteReadModelStore(tmp_path / "rm.sqlite", events)
        assert rebuilt(events, on_postgres) == rebuilt(events, on_sqlite)
        on_sqlite.close()
    finally:
        on_postgres.close()
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def test_a_rebuild_of_a_decided_workload_equals_an_in_memory_replay(open_read_store, workload_log):
    read_store = open_read_store("rm", workload_log)
    runner = ProjectionRunner(workload_log, read_store)
    head = runner.rebuild(batch_size=997)
    replayed = dump(balances_as_of(workload_log, head))
    assert dump(runner.balances) == replayed
    assert dump(read_store.load_balances()) == replayed


def test_live_balances_caught_up_step_by_step_equal_a_replay(workload_log):
    live = LiveBalances(workload_log, Balances(), 0)
    head = workload_log.head().position
    try:
        for visible in (1, 2, 150, 151, head // 2, head):
            workload_log.visible = visible
            assert live.catch_up() == visible
            with live.reading() as balances:
                assert dump(balances) == dump(balances_as_of(workload_log, visible))
    finally:
        workload_log.visible = None


def test_live_balances_start_from_a_snapshot_of_the_tables_and_continue(
    open_read_store, workload_log
):
    read_store = open_read_store("rm", workload_log)
    head = workload_log.head().position
    workload_log.visible = head // 3
    try:
        ProjectionRunner(workload_log, read_store).catch_up(batch_size=101)
    finally:
        workload_log.visible = None
    balances, checkpoint = read_store.snapshot()
    assert checkpoint == head // 3
    live = LiveBalances(workload_log, balances, checkpoint)
    assert live.catch_up() == head
    assert dump(live.balances) == dump(balances_as_of(workload_log, head))


def test_a_snapshot_taken_while_batches_commit_equals_a_replay_at_its_checkpoint(
    open_read_store, workload_log
):
    head = workload_log.head().position
    reader = open_read_store("rm", workload_log)
    failures: list[BaseException] = []

    def write() -> None:
        writer = open_read_store("rm", workload_log)
        try:
            ProjectionRunner(workload_log, writer).catch_up(batch_size=SNAPSHOT_RACE_BATCH_EVENTS)
        except BaseException as error:
            failures.append(error)
        finally:
            writer.close()

    thread = threading.Thread(target=write)
    snapshots: list[tuple[bytes, int]] = []
    thread.start()
    while thread.is_alive() or not snapshots:
        balances, checkpoint = reader.snapshot()
        snapshots.append((dump(balances), checkpoint))
    thread.join()
    assert failures == []
    checkpoints = [checkpoint for _, checkpoint in snapshots]
    assert checkpoints == sorted(checkpoints)
    assert len(set(checkpoints)) > 2, "snapshots were taken while batches committed"
    for dumped, checkpoint in snapshots[:: max(1, len(snapshots) // SNAPSHOTS_CHECKED)]:
        assert dumped == dump(balances_as_of(workload_log, checkpoint))
    assert reader.snapshot()[1] == head


def test_balances_loaded_from_the_tables_equal_a_replay_at_their_checkpoint(
    open_read_store, workload_log
):
    read_store = open_read_store("rm", workload_log)
    workload_log.visible = 1_000
    try:
        ProjectionRunner(workload_log, read_store).catch_up(batch_size=333)
    finally:
        workload_log.visible = None
    restarted = ProjectionRunner(workload_log, open_read_store("rm", workload_log))
    assert restarted.position == 1_000
    assert dump(restarted.balances) == dump(balances_as_of(workload_log, 1_000))


def test_a_rebuild_replaces_whatever_the_read_model_held(open_read_store):
    events = handcrafted_log()
    read_store = open_read_store("rm", events)
    runner = ProjectionRunner(events, read_store)
    runner.catch_up()
    runner.balances.subscriptions[SUB].granted_ucr += 1  # damage memory, then rebuild
    assert runner.rebuild() == events.head().position
    assert read_model_state(read_store, runner) == rebuilt(events, open_read_store("fresh", events))
    assert read_store.usage_index_names() == {"rm_usage_by_time"}


def test_a_reset_for_a_bulk_load_drops_the_usage_index_until_it_is_built_again(open_read_store):
    events = handcrafted_log()
    read_store = open_read_store("rm", events)
    ProjectionRunner(events, read_store).catch_up()
    read_store.reset(drop_usage_indexes=True)
    assert (read_store.checkpoint(), read_store.usage_index_rows()) == (0, [])
    assert read_store.usage_index_names() == set()
    read_store.create_usage_indexes()
    assert read_store.usage_index_names() == {"rm_usage_by_time"}


def test_a_batch_that_fails_leaves_tables_and_memory_at_the_last_checkpoint(open_read_store):
    events = handcrafted_log()
    good = events.head().position
    events.append(
        [charged("s1", ("pack", "p1", 1), event_id="overdraw")], events.head().recorded_at_us
    )
    read_store = open_read_store("rm", events)
    runner = ProjectionRunner(events, read_store)
    with pytest.raises(LogInconsistent):
        runner.catch_up(batch_size=good)
    assert runner.position == read_store.checkpoint() == good
    assert dump(runner.balances) == dump(read_store.load_balances())
    assert dump(runner.balances) == dump(balances_as_of(events, good))


def test_a_batch_written_against_a_checkpoint_that_moved_writes_nothing(open_read_store):
    events = handcrafted_log()
    read_store = open_read_store("rm", events)
    ProjectionRunner(events, read_store).catch_up(batch_size=4)
    before = (dump(read_store.load_balances()), read_store.usage_index_rows())
    stale = fold(*opened("team-9"))
    rows = stale.take_changes()
    for after in (0, 3, 5):
        with pytest.raises(CheckpointMoved):
            read_store.write_batch(after, 99, rows, [(99, T0_US, "team-9", "x", "glm-5")])
    assert read_store.checkpoint() == events.head().position
    assert (dump(read_store.load_balances()), read_store.usage_index_rows()) == before


def test_two_runners_racing_on_one_store_leave_it_equal_to_a_rebuild(open_read_store):
    events = handcrafted_log()
    head = events.head().position
    first = ProjectionRunner(events, open_read_store("rm", events))
    second = ProjectionRunner(events, open_read_store("rm", events))  # both start at 0
    events.visible = head // 2
    assert first.catch_up(batch_size=3) == head // 2
    events.visible = None
    # The second's first batch finds the checkpoint moved: it reloads and goes on from there.
    assert second.catch_up(batch_size=3) == head
    assert first.catch_up(batch_size=3) == head
    expected = rebuilt(events, open_read_store("rebuilt", events))
    assert read_model_state(open_read_store("rm", events), second) == expected
    assert dump(first.balances) == dump(second.balances)


def test_one_store_at_a_time_holds_the_writer_lock(open_read_store):
    events = handcrafted_log()
    first, second = open_read_store("rm", events), open_read_store("rm", events)
    assert first.try_lock_writer()
    assert first.try_lock_writer(), "taking it again while holding it is a no-op"
    assert not second.try_lock_writer()
    first.unlock_writer()
    assert second.try_lock_writer()
    assert not first.try_lock_writer()
    second.close()
    assert first.try_lock_writer(), "closing a store lets go of its lock"


def test_a_reader_sees_what_the_store_wrote(open_read_store):
    events = handcrafted_log()
    read_store = open_read_store("rm", events)
    reader = read_store.reader()
    try:
        ProjectionRunner(events, read_store).catch_up()
        assert reader.checkpoint() == events.head().position
        query = UsageQuery("team-2", limit=2)
        assert reader.page(query) == read_store.usage(query)
        with pytest.raises(InvalidUsageQuery):
            reader.page(UsageQuery("team-2", limit=0))
    finally:
        reader.close()


def test_progress_is_reported_after_every_committed_batch(open_read_store):
    events = handcrafted_log()
    head = events.head().position
    seen: list[tuple[int, int]] = []
    runner = ProjectionRunner(events, open_read_store("rm", events))
    runner.catch_up(batch_size=10, on_progress=lambda position, h: seen.append((position, h)))
    assert seen == [(min(p, head), head) for p in range(10, head + 10, 10)]


def test_catching_up_with_nothing_new_writes_nothing(open_read_store):
    events = handcrafted_log()
    runner = ProjectionRunner(events, open_read_store("rm", events))
    head = runner.catch_up()
    seen: list[tuple[int, int]] = []
    assert runner.catch_up(on_progress=lambda p, h: seen.append((p, h))) == head
    assert seen == []


# --- usage details ----------------------------------------------------------------------------


@pytest.fixture
def usage_store(open_read_store) -> ReadModelStore:
    """team-1: 30 charges on s1/s2, one hour apart, alternating models; team-2: 1 charge."""
    events = ListEventStore()
    events.append(
        [*opened(), seat("s1"), seat("s2"), *opened("team-2"), seat("x", sub="team-2")], T0_US
    )
    for i in range(30):
        seat_id, model = ("s1", "glm-5") if i % 2 == 0 else ("s2", "qwen3.6-plus")
        events.append(
            [charged(seat_id, ("seat", seat_id, 1), event_id=f"e{i}", model=model)],
            T0_US + (i + 1) * 3_600 * SECOND_US,
        )
    events.append(
        [charged("x", ("seat", "x", 1), sub="team-2", event_id="x1")],
        T0_US + 31 * 3_600 * SECOND_US,
    )
    read_store = open_read_store("rm", events)
    ProjectionRunner(events, read_store).catch_up()
    return read_store


def event_ids(rows: Sequence[UsageRow]) -> list[str]:
    return [row.event_id for row in rows]


def test_usage_rows_are_the_subscriptions_charges_oldest_first(usage_store):
    rows = all_usage(usage_store, UsageQuery(SUB, limit=MAX_PAGE_ROWS))
    assert event_ids(rows) == [f"e{i}" for i in range(30)]
    assert event_ids(all_usage(usage_store, UsageQuery("team-2"))) == ["x1"]


def test_a_usage_row_carries_the_charge_as_recorded(usage_store):
    row = usage_store.usage(UsageQuery(SUB, limit=1)).items[0]
    assert row.recorded_at == ANCHOR + timedelta(hours=1)
    assert (row.seat_id, row.model, row.product, row.credits_ucr) == ("s1", "glm-5", "text", CREDIT)
    assert row.allocation == (Allocation("seat", "s1", CREDIT),)
    assert (row.occurred_at, row.rate_card_version) == (ANCHOR, "test")
    assert row.components == Components(input_ucr=CREDIT)
    assert row.position == 8


def test_usage_rows_filter_by_seat_and_by_model(usage_store):
    by_seat = all_usage(usage_store, UsageQuery(SUB, seat_id="s2"))
    assert event_ids(by_seat) == [f"e{i}" for i in range(1, 30, 2)]
    by_model = all_usage(usage_store, UsageQuery(SUB, model="glm-5"))
    assert event_ids(by_model) == [f"e{i}" for i in range(0, 30, 2)]
    assert all_usage(usage_store, UsageQuery(SUB, seat_id="s1", model="qwen3.6-plus")) == []


def test_a_usage_time_range_includes_its_start_and_excludes_its_end(usage_store):
    query = UsageQuery(
        SUB,
        recorded_from=ANCHOR + timedelta(hours=3),
        recorded_to=ANCHOR + timedelta(hours=6),
    )
    assert event_ids(all_usage(usage_store, query)) == ["e2", "e3", "e4"]


def test_usage_as_of_a_position_keeps_rows_at_or_before_it(usage_store):
    rows = all_usage(usage_store, UsageQuery(SUB, as_of_position=10))
    assert [row.position for row in rows] == [8, 9, 10]


@pytest.mark.parametrize("limit", [1, 3, 7, 10, 29, 30, 31])
def test_paging_with_the_cursor_returns_every_row_exactly_once(usage_store, limit):
    pages = []
    cursor = None
    while True:
        page = usage_store.usage(UsageQuery(SUB, limit=limit, cursor=cursor))
        pages.append(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert all(0 < len(items) <= limit for items in pages)
    assert event_ids([row for items in pages for row in items]) == [f"e{i}" for i in range(30)]


@pytest.mark.parametrize("limit", [1, 6, 25])
def test_paging_through_rows_recorded_at_one_instant_returns_every_row_exactly_once(
    open_read_store, limit
):
    events = ListEventStore()
    events.append([*opened(), seat("s1")], T0_US)
    batch = [charged("s1", ("seat", "s1", 1), event_id=f"b{i}") for i in range(25)]
    events.append(batch, T0_US + SECOND_US)
    read_store = open_read_store("rm", events)
    ProjectionRunner(events, read_store).catch_up()
    rows = all_usage(read_store, UsageQuery(SUB, limit=limit))
    assert event_ids(rows) == [f"b{i}" for i in range(25)]


def test_rows_far_apart_in_the_log_are_each_fetched_for_their_page(open_read_store):
    events = ListEventStore()
    events.append([*opened(), seat("s1"), *opened("team-2"), seat("x", sub="team-2")], T0_US)
    for i in range(5):
        events.append([charged("s1", ("seat", "s1", 1), event_id=f"far{i}")], T0_US + i)
        noise = [SeatSuspended("team-2", "x", "credits_exhausted", "n")] * (MAX_FETCH_GAP + i)
        events.append(noise, T0_US + i)
    read_store = open_read_store("rm", events)
    ProjectionRunner(events, read_store).catch_up()
    assert event_ids(read_store.usage(UsageQuery(SUB)).items) == [f"far{i}" for i in range(5)]


def test_paging_applies_the_filters_on_every_page(usage_store):
    rows = all_usage(usage_store, UsageQuery(SUB, seat_id="s1", limit=4, as_of_position=30))
    assert event_ids(rows) == [f"e{i}" for i in range(0, 24, 2)]


def test_the_last_page_has_no_next_cursor(usage_store):
    assert usage_store.usage(UsageQuery(SUB, limit=30)).next_cursor is None
    assert usage_store.usage(UsageQuery("nobody")).items == ()


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE_ROWS + 1])
def test_a_page_size_outside_its_bounds_is_refused(usage_store, limit):
    with pytest.raises(InvalidUsageQuery):
        usage_store.usage(UsageQuery(SUB, limit=limit))


@pytest.mark.parametrize("cursor", ["", "not a cursor", "bm9wZQ", "MTp4", "MTox" * 100])
def test_a_cursor_that_no_page_handed_out_is_refused(usage_store, cursor):
    with pytest.raises(InvalidCursor):
        usage_store.usage(UsageQuery(SUB, cursor=cursor))


# --- replay -----------------------------------------------------------------------------------


def test_replay_to_a_bound_folds_the_records_up_to_it_and_no_further():
    events = handcrafted_log()
    for bound in range(events.head().position + 1):
        expected = fold(*(record.event() for record in events.records[:bound]))
        assert dump(balances_as_of(events, bound)) == dump(expected)


def test_replay_reports_progress_as_records_folded_since_the_last_report(workload_log):
    told: list[int] = []
    balances_as_of(workload_log, 1_234, on_progress=told.append)
    assert sum(told) == 1_234
    assert all(0 < n <= PROGRESS_EVERY_RECORDS for n in told)


def test_replay_to_a_position_equals_the_runner_caught_up_to_it(open_read_store, workload_log):
    workload_log.visible = 700
    try:
        runner = ProjectionRunner(workload_log, open_read_store("rm", workload_log))
        runner.catch_up()
    finally:
        workload_log.visible = None
    assert dump(balances_as_of(workload_log, 700)) == dump(runner.balances)


def test_as_of_a_position_is_that_position():
    events = handcrafted_log()
    assert resolve_as_of(events, "position:0") == 0
    assert resolve_as_of(events, "position:12") == 12


def test_as_of_an_instant_is_the_last_position_recorded_at_or_before_it():
    events = handcrafted_log()
    at_third = ANCHOR + timedelta(hours=2)
    assert resolve_as_of(events, at_third.isoformat().replace("+00:00", "Z")) == 3
    assert resolve_as_of(events, "2026-01-31T10:59:59.999999+00:00") == 2
    assert resolve_as_of(events, "2026-01-31T13:00:00+02:00") == 3
    assert resolve_as_of(events, "2020-01-01T00:00:00Z") == 0


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "position:",
        "position:-1",
        "position:1.5",
        "position:x",
        "position:１",
        "position:999",
        "2026-01-31T09:00:00",
        "2026-01-31",
        "yesterday",
        "position:" + "9" * 100,
    ],
)
def test_an_as_of_that_is_neither_a_known_position_nor_an_rfc3339_instant_is_refused(spec):
    with pytest.raises(InvalidAsOf):
        resolve_as_of(handcrafted_log(), spec)
