"""The event store contract: one suite, run against every store kind (SQLite and PostgreSQL).

A new kind joins by adding its name to `STORE_KINDS` and a branch to `StoreOpener` and
`StoreFactory`'s raw helpers (tampering, and an append held open); the tests themselves do not
change. PostgreSQL runs on the session server of `postgres_url`, each test in its own schema.
"""

from __future__ import annotations

import itertools
import multiprocessing
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from psycopg import sql

from ledger.application import Ledger
from ledger.audit import verify
from ledger.chain import verify_chain
from ledger.clock import ManualClock
from ledger.errors import ClockWentBackwards, ConcurrentAppend, DuplicateUsageKey, LeaseLost
from ledger.idempotency import payload_digest
from ledger.leases import Fence, LeaseHolder
from ledger.log import (
    EVENT_DECODER,
    EVENT_ENCODER,
    GENESIS_HASH,
    MAX_APPEND_EVENTS,
    READ_CHUNK_RECORDS,
    EventStore,
    Head,
    PriorCharge,
    StoredRecord,
    record_hash,
    us_from_datetime,
)
from ledger.rate_card import load_rate_card
from ledger.stores.postgres import PostgresEventStore, append_lock_key
from ledger.stores.sqlite import SqliteEventStore
from schemas.commands import AddSeat, BuyPack, ChargeUsage, OpenSubscription
from schemas.events import (
    Allocation,
    Coefficients,
    Components,
    LogEvent,
    SeatQuotaGranted,
    UsageCharged,
)
from schemas.usage import Usage, UsageEvent

STORE_KINDS = ["sqlite", "postgres"]

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
T0_US = us_from_datetime(T0)
SECOND_US = 1_000_000

RACE_EVENTS_PER_APPENDER = 1_000
RACE_BATCH_EVENTS = 10
RACE_MERGE_KEYS_EVERY = 64
RACE_TIMEOUT_S = 120
RACE_PAUSE_S = 0.001
HELD_APPEND_WAIT_S = 1.0
"""How long a second appender is given to (wrongly) get past an append that is held open."""


# --- events -----------------------------------------------------------------------------------


def charge(event_id: str, subscription_id: str = "sub-1", seat_id: str = "seat-1") -> UsageCharged:
    """The seed's worked example (3.18 credits), charged to one seat."""
    return UsageCharged(
        subscription_id=subscription_id,
        seat_id=seat_id,
        event_id=event_id,
        payload_digest=f"digest-of-{event_id}",
        occurred_at=T0,
        model="qwen3.6-plus",
        product="text",
        usage=Usage(input_tokens=8_349, cached_tokens=40_794, output_tokens=573),
        rate_card_version="2026-01-01",
        coefficients=Coefficients(
            input_ucr_per_1k=200_000, cached_ucr_per_1k=20_000, output_ucr_per_1k=1_200_000
        ),
        components=Components(input_ucr=1_670_000, cached_ucr=820_000, output_ucr=690_000),
        credits_ucr=3_180_000,
        allocation=(Allocation(source="seat", id=seat_id, credits_ucr=3_180_000),),
    )


def grant(seat_id: str = "seat-1", subscription_id: str = "sub-1") -> SeatQuotaGranted:
    """An event that carries no usage key."""
    return SeatQuotaGranted(
        subscription_id=subscription_id,
        seat_id=seat_id,
        tier="standard",
        cycle=1,
        quota_ucr=25_000_000_000,
        lapsed_ucr=0,
    )


def charges(prefix: str, count: int) -> list[LogEvent]:
    return [charge(f"{prefix}-{index:05d}") for index in range(count)]


# --- store kinds ------------------------------------------------------------------------------


def _one_hash_for_every_key(subscription_id: str, event_id: str) -> int:
    return 42


@dataclass(frozen=True)
class StoreOpener:
    """Opens one more instance on a shared log; picklable, so another process can open one too.

    `colliding_keys` makes every usage key look alike to the store's index, where the kind has
    such a thing; `merge_keys_every` makes a kind that batches index maintenance do it often.
    (PostgreSQL keys its index by the full key and maintains it per append: both are moot.)
    `location` is a file path for SQLite, a URL for PostgreSQL, which also takes `schema`.
    """

    kind: str
    location: str
    schema: str | None = None
    colliding_keys: bool = False
    merge_keys_every: int | None = None

    def __call__(self) -> EventStore:
        if self.kind == "sqlite":
            options: dict[str, Any] = {}
            if self.colliding_keys:
                options["usage_key_hash"] = _one_hash_for_every_key
            if self.merge_keys_every is not None:
                options["recent_usage_keys_max"] = self.merge_keys_every
            return SqliteEventStore(self.location, **options)
        if self.kind == "postgres":
            assert self.schema is not None
            return PostgresEventStore(self.location, schema=self.schema)
        raise ValueError(f"unknown store kind {self.kind!r}")


class StoreFactory:
    """`store_factory()` opens another instance on this test's log; all are closed at the end.

    The tampering helpers change the stored log behind the store's back, as an attacker with
    write access to the database would.
    """

    def __init__(self, kind: str, location: str, schema: str | None = None) -> None:
        self.kind = kind
        self.location = location
        self.schema = schema
        self._opened: list[EventStore] = []

    def opener(self, **options: Any) -> StoreOpener:
        return StoreOpener(self.kind, self.location, self.schema, **options)

    def __call__(self, **options: Any) -> EventStore:
        store = self.opener(**options)()
        self._opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self._opened:
            store.close()

    def flip_data_byte(self, position: int) -> None:
        with self._raw() as db:
            (data,) = db.execute("SELECT data FROM log WHERE position = ?", (position,)).fetchone()
            flipped = bytes([data[0] ^ 0x01]) + data[1:]
            db.execute("UPDATE log SET data = ? WHERE position = ?", (flipped, position))

    def overwrite_hash(self, position: int, digest: bytes) -> None:
        with self._raw() as db:
            db.execute("UPDATE log SET hash = ? WHERE position = ?", (digest, position))

    def delete_record(self, position: int) -> None:
        with self._raw() as db:
            db.execute("DELETE FROM log WHERE position = ?", (position,))

    def rewrite_record(self, position: int, data: bytes, digest: bytes) -> None:
        with self._raw() as db:
            db.execute(
                "UPDATE log SET data = ?, hash = ? WHERE position = ?", (data, digest, position)
            )

    @contextmanager
    def append_held_open(self, event: LogEvent, at_us: int) -> Iterator[StoredRecord]:
        """Appends one event without a usage key the way the kind's store does (takes the
        append lock, reads the head, writes the next position) and yields the record while its
        transaction is still open; commits when the block ends."""
        tag = str(type(event).__struct_config__.tag)
        data = EVENT_ENCODER.encode(event)
        if self.kind == "sqlite":
            db = sqlite3.connect(self.location, isolation_level=None)
            try:
                db.execute("BEGIN IMMEDIATE")  # the store's append lock
                record = _next_record(db.execute(_HEAD_SQL).fetchone(), at_us, data)
                db.execute(_INSERT_SQL, _row(record, event.subscription_id, tag))
                yield record
                db.execute("COMMIT")
            finally:
                db.close()
        elif self.kind == "postgres":
            assert self.schema is not None
            with psycopg.connect(self.location) as pg:  # one transaction until commit()
                pg.execute("SELECT pg_advisory_xact_lock(%s)", (append_lock_key(self.schema),))
                record = _next_record(pg.execute(self._pg(_HEAD_SQL)).fetchone(), at_us, data)
                pg.execute(self._pg(_INSERT_SQL), _row(record, event.subscription_id, tag))
                yield record
                pg.commit()
        else:
            raise ValueError(f"no raw access to a {self.kind!r} store")

    @contextmanager
    def _raw(self) -> Iterator[_RawConnection]:
        if self.kind == "sqlite":
            db = sqlite3.connect(self.location)
            try:
                with db:
                    yield _RawConnection(db.execute)
            finally:
                db.close()
        elif self.kind == "postgres":
            with psycopg.connect(self.location) as pg:  # commits when the block ends
                yield _RawConnection(lambda text, params: pg.execute(self._pg(text), params))
        else:
            raise ValueError(f"no raw access to a {self.kind!r} store")

    def _pg(self, text: str) -> sql.Composed:
        """A statement written for SQLite, made PostgreSQL's: `%s` marks, this test's schema."""
        qualified = re.sub(r"\blog\b", "{schema}.log", text.replace("?", "%s"))
        return sql.SQL(qualified).format(schema=sql.Identifier(self.schema or ""))


@dataclass(frozen=True)
class _RawConnection:
    execute: Callable[[str, tuple[Any, ...]], Any]


_HEAD_SQL = "SELECT position, hash FROM log ORDER BY position DESC LIMIT 1"
_INSERT_SQL = (
    "INSERT INTO log (position, recorded_at_us, subscription_id, type, prev_hash, hash, data)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _next_record(head: tuple[int, bytes] | None, at_us: int, data: bytes) -> StoredRecord:
    position, prev_hash = (0, GENESIS_HASH) if head is None else (head[0], bytes(head[1]))
    digest = record_hash(prev_hash, position + 1, at_us, data)
    return StoredRecord(position + 1, at_us, data, prev_hash, digest)


def _row(record: StoredRecord, subscription_id: str, tag: str) -> tuple[Any, ...]:
    return (
        record.position,
        record.recorded_at_us,
        subscription_id,
        tag,
        record.prev_hash,
        record.hash,
        record.data,
    )


@pytest.fixture(params=STORE_KINDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    if request.param == "postgres":
        factory = StoreFactory(
            "postgres",
            request.getfixturevalue("postgres_url"),
            request.getfixturevalue("postgres_schema"),
        )
    else:
        factory = StoreFactory(request.param, str(tmp_path / "log" / "ledger.sqlite"))
    yield factory
    factory.close_all()


@pytest.fixture
def store(store_factory: StoreFactory) -> EventStore:
    return store_factory()


def appended(store: EventStore, events: list[LogEvent], at_us: int = T0_US) -> list[StoredRecord]:
    return store.append(events, at_us)


# --- positions and the hash chain -------------------------------------------------------------


def test_an_empty_log_has_position_zero_and_the_genesis_hash(store: EventStore) -> None:
    assert store.head() == Head(0, GENESIS_HASH, 0)
    assert list(store.read()) == []


def test_positions_run_gap_free_from_one_in_commit_order(store: EventStore) -> None:
    first = appended(store, charges("a", 3))
    second = appended(store, [grant()])
    third = appended(store, charges("b", 2))

    assert [r.position for r in first + second + third] == [1, 2, 3, 4, 5, 6]
    assert [r.position for r in store.read()] == [1, 2, 3, 4, 5, 6]
    assert store.head().position == 6


def test_an_append_returns_exactly_what_is_read_back(store: EventStore) -> None:
    written = appended(store, [*charges("a", 3), grant()]) + appended(store, [grant("seat-2")])

    assert list(store.read()) == written
    assert [r.event() for r in written] == [*charges("a", 3), grant(), grant("seat-2")]


def test_each_record_chains_to_the_previous_one(store: EventStore) -> None:
    appended(store, charges("a", 3))
    appended(store, [grant()], T0_US + SECOND_US)
    records = list(store.read())

    assert records[0].prev_hash == GENESIS_HASH
    for previous, record in itertools.pairwise(records):
        assert record.prev_hash == previous.hash
    for record in records:
        assert record.hash == record_hash(
            record.prev_hash, record.position, record.recorded_at_us, record.data
        )
    assert store.head() == Head(4, records[-1].hash, T0_US + SECOND_US)
    assert verify_chain(records) is None


def test_an_empty_append_writes_nothing(store: EventStore) -> None:
    assert store.append([], T0_US) == []
    assert store.head().position == 0


def test_an_append_over_the_batch_limit_is_refused(store: EventStore) -> None:
    with pytest.raises(ValueError):
        store.append([grant()] * (MAX_APPEND_EVENTS + 1), T0_US)
    assert store.head().position == 0


# --- recorded time ----------------------------------------------------------------------------


def test_a_recorded_time_earlier_than_the_head_is_refused_and_writes_nothing(
    store: EventStore,
) -> None:
    appended(store, [grant()], T0_US)
    head = store.head()

    with pytest.raises(ClockWentBackwards):
        store.append(charges("late", 2), T0_US - 1)

    assert store.head() == head
    assert store.prior_charges([("sub-1", "late-00000")]) == {}


def test_a_recorded_time_equal_to_the_head_is_accepted(store: EventStore) -> None:
    appended(store, [grant()], T0_US)
    appended(store, [grant()], T0_US)

    assert [r.recorded_at_us for r in store.read()] == [T0_US, T0_US]


# --- usage idempotency keys -------------------------------------------------------------------


def test_a_usage_key_already_in_the_log_refuses_the_whole_batch(store: EventStore) -> None:
    appended(store, [charge("e-1")])
    head = store.head()

    with pytest.raises(DuplicateUsageKey):
        store.append([grant(), charge("e-2"), charge("e-1"), charge("e-3")], T0_US)

    assert store.head() == head
    assert store.prior_charges([("sub-1", "e-2"), ("sub-1", "e-3")]) == {}
    assert [r.position for r in appended(store, [charge("e-2"), charge("e-3")])] == [2, 3]


def test_a_usage_key_twice_in_one_batch_refuses_the_batch(store: EventStore) -> None:
    with pytest.raises(DuplicateUsageKey):
        store.append([charge("e-1"), charge("e-2"), charge("e-1")], T0_US)

    assert store.head().position == 0
    assert store.prior_charges([("sub-1", "e-1"), ("sub-1", "e-2")]) == {}


def test_one_event_id_in_two_subscriptions_is_two_keys(store: EventStore) -> None:
    appended(store, [charge("e-1", "sub-1"), charge("e-1", "sub-2", seat_id="seat-9")])

    assert set(store.prior_charges([("sub-1", "e-1"), ("sub-2", "e-1")])) == {
        ("sub-1", "e-1"),
        ("sub-2", "e-1"),
    }


def test_prior_charges_finds_stored_keys_and_omits_absent_ones(store: EventStore) -> None:
    appended(store, [grant(), charge("e-1"), charge("e-2")])

    found = store.prior_charges([("sub-1", "e-2"), ("sub-1", "absent"), ("sub-2", "e-1")])

    assert found == {("sub-1", "e-2"): PriorCharge("sub-1", "e-2", "digest-of-e-2", 3)}
    assert store.prior_charges([]) == {}


def test_prior_charges_answers_for_more_keys_than_one_query_binds(store: EventStore) -> None:
    stored = charges("e", 1_200)
    appended(store, stored)
    keys = [("sub-1", f"e-{index:05d}") for index in range(0, 2_400, 2)]

    found = store.prior_charges(keys)

    assert sorted(found) == sorted(k for k in keys if int(k[1][2:]) < 1_200)
    assert all(found[k].position == int(k[1][2:]) + 1 for k in found)


def test_keys_stay_found_and_refused_across_index_maintenance(
    store_factory: StoreFactory,
) -> None:
    writer = store_factory(merge_keys_every=5)
    other = store_factory(merge_keys_every=5)
    for batch in range(8):
        one = writer if batch % 2 else other
        appended(one, [charge(f"e-{batch}-{index}") for index in range(3)])
    keys = [("sub-1", f"e-{batch}-{index}") for batch in range(8) for index in range(3)]

    for one in (writer, other):
        assert [p.position for p in one.prior_charges(keys).values()] == list(range(1, 25))
        for key in (keys[0], keys[11], keys[-1]):
            with pytest.raises(DuplicateUsageKey):
                one.append([charge(key[1])], T0_US)
    assert writer.head().position == 24


def test_colliding_key_hashes_keep_both_charges_apart(store_factory: StoreFactory) -> None:
    store = store_factory(colliding_keys=True)
    appended(store, [charge("a")])
    appended(store, [charge("b")])
    appended(store, [charge("c"), grant(), charge("d")])

    found = store.prior_charges([("sub-1", name) for name in "abcde"])

    assert found == {
        ("sub-1", "a"): PriorCharge("sub-1", "a", "digest-of-a", 1),
        ("sub-1", "b"): PriorCharge("sub-1", "b", "digest-of-b", 2),
        ("sub-1", "c"): PriorCharge("sub-1", "c", "digest-of-c", 3),
        ("sub-1", "d"): PriorCharge("sub-1", "d", "digest-of-d", 5),
    }
    assert verify_chain(store.read()) is None


def test_a_true_duplicate_of_a_colliding_key_is_still_refused(store_factory: StoreFactory) -> None:
    store = store_factory(colliding_keys=True)
    appended(store, [charge("a"), charge("b")])

    for name in ("a", "b"):
        with pytest.raises(DuplicateUsageKey):
            store.append([charge("c"), charge(name)], T0_US)

    assert store.head().position == 2
    assert store.prior_charges([("sub-1", "c")]) == {}


# --- reading ----------------------------------------------------------------------------------


def test_read_gives_the_records_after_a_position_up_to_until(store: EventStore) -> None:
    appended(store, charges("e", 10))

    assert [r.position for r in store.read(after=3, until=7)] == [4, 5, 6, 7]
    assert [r.position for r in store.read(after=8)] == [9, 10]
    assert [r.position for r in store.read(after=8, until=99)] == [9, 10]
    assert list(store.read(after=10)) == []
    assert list(store.read(after=5, until=5)) == []


def test_a_read_from_any_position_gives_each_record_the_previous_ones_hash(
    store: EventStore,
) -> None:
    records = appended(store, charges("e", 10))
    for after in (0, 1, 4, 9):
        (first, *rest) = store.read(after=after, until=10)
        assert first.prev_hash == (records[after - 1].hash if after else GENESIS_HASH)
        assert [r.prev_hash for r in rest] == [r.hash for r in records[after:9]]


def test_read_streams_a_log_longer_than_any_one_fetch(store: EventStore) -> None:
    for batch in range(5):
        appended(store, charges(f"b{batch}", 5_000))

    assert [r.position for r in store.read(after=1)] == list(range(2, 25_001))


def test_read_subscription_data_gives_one_subscriptions_records_up_to_until(
    store: EventStore,
) -> None:
    appended(store, [charge(f"x{i}", "sub-1" if i % 3 else "sub-2") for i in range(12)])
    appended(store, charges("many", 2 * READ_CHUNK_RECORDS + 7))

    def event_ids(sub: str, until: int) -> list[str]:
        chunks = store.read_subscription_data(sub, until)
        events = [EVENT_DECODER.decode(data) for chunk in chunks for data in chunk]
        return [event.event_id for event in events if isinstance(event, UsageCharged)]

    assert event_ids("sub-2", 12) == ["x0", "x3", "x6", "x9"]
    assert event_ids("sub-2", 6) == ["x0", "x3"]
    assert event_ids("sub-1", 3) == ["x1", "x2"]
    assert event_ids("sub-3", 12) == []
    assert event_ids("sub-2", 0) == []
    head = store.head().position
    assert len(event_ids("sub-1", head)) == 8 + 2 * READ_CHUNK_RECORDS + 7
    assert event_ids("sub-1", head)[-1] == f"many-{2 * READ_CHUNK_RECORDS + 6:05d}"


def test_position_at_gives_the_last_position_recorded_at_or_before_an_instant(
    store: EventStore,
) -> None:
    assert store.position_at(T0_US) == 0
    appended(store, charges("a", 3), T0_US)
    appended(store, charges("b", 2), T0_US + 2 * SECOND_US)
    appended(store, charges("c", 1), T0_US + 2 * SECOND_US)
    appended(store, charges("d", 1), T0_US + 5 * SECOND_US)

    assert store.position_at(T0_US - 1) == 0
    assert store.position_at(T0_US) == 3
    assert store.position_at(T0_US + SECOND_US) == 3
    assert store.position_at(T0_US + 2 * SECOND_US) == 6
    assert store.position_at(T0_US + 5 * SECOND_US - 1) == 6
    assert store.position_at(T0_US + 5 * SECOND_US) == 7
    assert store.position_at(T0_US + 10**12) == 7


def test_a_reopened_store_continues_the_chain(store_factory: StoreFactory) -> None:
    first = store_factory()
    appended(first, charges("a", 3))
    first.close()

    again = store_factory()
    appended(again, [charge("b")])

    assert [r.position for r in again.read()] == [1, 2, 3, 4]
    assert verify_chain(again.read()) is None
    with pytest.raises(DuplicateUsageKey):
        again.append([charge("a-00001")], T0_US)


# --- concurrent appenders ---------------------------------------------------------------------


def append_as_racer(opener: StoreOpener, name: str, start: Any) -> None:
    """One racer: opens its own instance (the log may not exist yet), then appends 1,000
    charges in batches of 10, all at one instant, pausing a moment after each batch (SQLite's
    busy wait is unfair: without the pause one racer tends to hold the lock for long runs).
    """
    store = opener()
    try:
        start.wait(RACE_TIMEOUT_S)
        for first in range(0, RACE_EVENTS_PER_APPENDER, RACE_BATCH_EVENTS):
            indexes = range(first, first + RACE_BATCH_EVENTS)
            store.append(
                [charge(f"{name}-{i:04d}", seat_id=f"seat-{name}") for i in indexes], T0_US
            )
            time.sleep(RACE_PAUSE_S)
    finally:
        store.close()


def assert_race_outcome(store: EventStore, names: list[str]) -> None:
    records = list(store.read())
    total = RACE_EVENTS_PER_APPENDER * len(names)
    assert [r.position for r in records] == list(range(1, total + 1))
    assert verify_chain(records) is None
    by_racer: dict[str, list[tuple[int, str]]] = {name: [] for name in names}
    for record in records:
        event = record.event()
        assert isinstance(event, UsageCharged)
        by_racer[event.event_id.split("-")[0]].append((record.position, event.event_id))
    for name, placed in by_racer.items():
        assert [event_id for _, event_id in placed] == [
            f"{name}-{index:04d}" for index in range(RACE_EVENTS_PER_APPENDER)
        ]
        for first in range(0, RACE_EVENTS_PER_APPENDER, RACE_BATCH_EVENTS):
            positions = [position for position, _ in placed[first : first + RACE_BATCH_EVENTS]]
            assert positions == list(range(positions[0], positions[0] + RACE_BATCH_EVENTS))
    keys = [
        ("sub-1", f"{name}-{index:04d}")
        for name in names
        for index in range(RACE_EVENTS_PER_APPENDER)
    ]
    assert len(store.prior_charges(keys)) == total


def test_two_threads_appending_at_once_keep_positions_gap_free(
    store_factory: StoreFactory,
) -> None:
    opener = store_factory.opener(merge_keys_every=RACE_MERGE_KEYS_EVERY)
    start = threading.Barrier(2)
    failures: list[BaseException] = []

    def run(name: str) -> None:
        try:
            append_as_racer(opener, name, start)
        except BaseException as failure:
            failures.append(failure)
            start.abort()

    racers = [threading.Thread(target=run, args=(name,)) for name in ("left", "right")]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(RACE_TIMEOUT_S)

    assert failures == []
    assert_race_outcome(store_factory(), ["left", "right"])


def test_two_processes_appending_at_once_keep_positions_gap_free(
    store_factory: StoreFactory,
) -> None:
    opener = store_factory.opener(merge_keys_every=RACE_MERGE_KEYS_EVERY)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    racers = [
        context.Process(target=append_as_racer, args=(opener, name, start))
        for name in ("left", "right")
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(RACE_TIMEOUT_S)

    assert [racer.exitcode for racer in racers] == [0, 0]
    assert_race_outcome(store_factory(), ["left", "right"])


def test_a_transaction_that_takes_its_position_first_and_commits_last_is_still_read(
    store_factory: StoreFactory,
) -> None:
    store, late_appender, reader = store_factory(), store_factory(), store_factory()
    appended(store, [grant()])
    seen: list[StoredRecord] = []

    def follow() -> None:
        """A projector's loop body: everything after its cursor, the cursor moved to the last."""
        seen.extend(reader.read(after=seen[-1].position if seen else 0))

    follow()
    later: list[StoredRecord] = []
    with store_factory.append_held_open(grant("seat-first"), T0_US) as first:
        assert first.position == 2
        second = threading.Thread(
            target=lambda: later.extend(late_appender.append([grant("seat-second")], T0_US))
        )
        second.start()
        second.join(HELD_APPEND_WAIT_S)
        assert second.is_alive(), "the second append did not wait for the one holding position 2"
        follow()
        assert [r.position for r in seen] == [1], "nothing may be read past an open position"
    second.join(RACE_TIMEOUT_S)
    follow()

    assert [r.position for r in later] == [3]
    assert [r.position for r in seen] == [1, 2, 3]
    assert seen[1] == first
    assert verify_chain(seen) is None


# --- tampering --------------------------------------------------------------------------------


@pytest.fixture
def ten_records(store: EventStore) -> EventStore:
    appended(store, [*charges("a", 4), grant()])
    appended(store, charges("b", 5), T0_US + SECOND_US)
    assert verify_chain(store.read()) is None
    return store


def test_a_flipped_byte_in_one_record_breaks_the_chain_at_that_record(
    store_factory: StoreFactory, ten_records: EventStore
) -> None:
    store_factory.flip_data_byte(6)

    assert verify_chain(ten_records.read()) == 6


def test_a_rewritten_hash_breaks_the_chain_at_that_record(
    store_factory: StoreFactory, ten_records: EventStore
) -> None:
    store_factory.overwrite_hash(4, bytes(32))

    assert verify_chain(ten_records.read()) == 4


def test_a_deleted_record_breaks_the_chain_at_its_position(
    store_factory: StoreFactory, ten_records: EventStore
) -> None:
    store_factory.delete_record(7)

    assert verify_chain(ten_records.read()) == 7


def test_a_record_rewritten_with_a_consistent_hash_breaks_the_chain_at_the_next_record(
    store_factory: StoreFactory, ten_records: EventStore
) -> None:
    (third,) = ten_records.read(after=2, until=3)
    event = third.event()
    assert isinstance(event, UsageCharged)
    forged = EVENT_ENCODER.encode(msgspec.structs.replace(event, credits_ucr=1_000_000))
    assert forged != third.data
    digest = record_hash(third.prev_hash, 3, third.recorded_at_us, forged)
    store_factory.rewrite_record(3, forged, digest)

    assert verify_chain(ten_records.read()) == 4


def test_read_event_data_gives_the_events_bytes_in_position_order(store: EventStore) -> None:
    records = store.append(charges("e", 25), 1_000)
    chunks = list(store.read_event_data(3, 20))
    assert [data for chunk in chunks for data in chunk] == [r.data for r in records[3:20]]


# --- optimistic appends: the head an append was decided on ------------------------------------


def test_an_append_decided_on_the_head_is_accepted(store: EventStore) -> None:
    appended(store, [grant()])
    records = store.append(charges("a", 2), T0_US, expected_position=1)
    assert [record.position for record in records] == [2, 3]


def test_an_append_decided_on_an_older_head_is_refused_and_writes_nothing(
    store_factory: StoreFactory,
) -> None:
    mine, theirs = store_factory(), store_factory()
    appended(mine, [grant()])
    decided_at = mine.head().position
    appended(theirs, [grant("seat-2")])  # another writer, between the decision and the append

    with pytest.raises(ConcurrentAppend) as refusal:
        mine.append([charge("late")], T0_US, expected_position=decided_at)

    assert (refusal.value.expected_position, refusal.value.head_position) == (1, 2)
    assert mine.head().position == 2
    assert mine.prior_charges([("sub-1", "late")]) == {}


def test_an_append_decided_on_a_head_past_the_log_is_refused(store: EventStore) -> None:
    with pytest.raises(ConcurrentAppend):
        store.append([grant()], T0_US, expected_position=5)
    assert store.head().position == 0


# --- leases and fencing -----------------------------------------------------------------------

TTL_MS = 60_000
SHORT_TTL_MS = 200
EXPIRY_MARGIN_S = 0.1


def test_a_free_partition_is_taken_with_token_one(store: EventStore) -> None:
    lease = store.acquire(0, "worker-a", TTL_MS)
    assert lease is not None
    assert (lease.partition, lease.owner, lease.token) == (0, "worker-a", 1)
    assert store.holders() == {0: LeaseHolder(0, "worker-a", 1, True)}


def test_a_live_lease_of_another_owner_is_not_taken(store_factory: StoreFactory) -> None:
    store, rival = store_factory(), store_factory()
    assert store.acquire(3, "worker-a", TTL_MS) is not None
    assert rival.acquire(3, "worker-b", TTL_MS) is None
    assert rival.holders()[3].owner == "worker-a"


def test_each_takeover_of_an_expired_lease_increases_the_token(store: EventStore) -> None:
    first = store.acquire(1, "worker-a", SHORT_TTL_MS)
    time.sleep(SHORT_TTL_MS / 1000 + EXPIRY_MARGIN_S)
    assert store.holders()[1].live is False
    second = store.acquire(1, "worker-b", TTL_MS)
    assert first is not None and second is not None
    assert (second.owner, second.token) == ("worker-b", first.token + 1)


def test_a_renewal_extends_a_held_lease_and_fails_once_it_was_taken_over(
    store: EventStore,
) -> None:
    lease = store.acquire(0, "worker-a", SHORT_TTL_MS)
    assert lease is not None
    renewed = store.renew(lease.fence, TTL_MS)
    assert renewed is not None and renewed.expires_at > lease.expires_at
    store.release(lease.fence)
    taken = store.acquire(0, "worker-b", TTL_MS)
    assert taken is not None and taken.token == lease.token + 1
    assert store.renew(lease.fence, TTL_MS) is None


def test_an_append_under_the_current_lease_is_accepted(store: EventStore) -> None:
    lease = store.acquire(2, "worker-a", TTL_MS)
    assert lease is not None
    records = store.append([charge("fenced")], T0_US, fence=lease.fence)
    assert [record.position for record in records] == [1]


def test_an_append_under_a_superseded_token_is_refused_and_writes_nothing(
    store_factory: StoreFactory,
) -> None:
    old_owner, new_owner = store_factory(), store_factory()
    lease = old_owner.acquire(2, "worker-a", SHORT_TTL_MS)
    assert lease is not None
    time.sleep(SHORT_TTL_MS / 1000 + EXPIRY_MARGIN_S)
    assert new_owner.acquire(2, "worker-b", TTL_MS) is not None

    with pytest.raises(LeaseLost):
        old_owner.append([charge("stale")], T0_US, fence=lease.fence)

    assert old_owner.head().position == 0


def test_an_append_under_an_expired_lease_nobody_took_is_refused(store: EventStore) -> None:
    lease = store.acquire(0, "worker-a", SHORT_TTL_MS)
    assert lease is not None
    time.sleep(SHORT_TTL_MS / 1000 + EXPIRY_MARGIN_S)

    with pytest.raises(LeaseLost):
        store.append([charge("expired")], T0_US, fence=lease.fence)

    assert store.head().position == 0


def test_an_append_for_a_partition_without_a_lease_is_refused(store: EventStore) -> None:
    with pytest.raises(LeaseLost):
        store.append([grant()], T0_US, fence=Fence(7, "worker-a", 1))


def test_a_heartbeat_lists_the_live_workers_and_a_leaving_one_is_forgotten(
    store_factory: StoreFactory,
) -> None:
    store, other = store_factory(), store_factory()
    assert store.heartbeat("worker-b", TTL_MS) == ["worker-b"]
    assert other.heartbeat("worker-a", TTL_MS) == ["worker-a", "worker-b"]
    other.heartbeat("worker-c", SHORT_TTL_MS)
    store.leave("worker-b")
    time.sleep(SHORT_TTL_MS / 1000 + EXPIRY_MARGIN_S)
    assert other.heartbeat("worker-a", TTL_MS) == ["worker-a"]


# --- several ledgers on one log ---------------------------------------------------------------

RACING_LEDGERS = 2
RACING_CHARGES_PER_LEDGER = 60
RACING_BATCH_CHARGES = 3


def _open_ledger(store: EventStore, clock: ManualClock) -> Ledger:
    return Ledger(store, load_rate_card(None), clock)


def _usage(event_id: str, seat_id: str = "seat-1") -> UsageEvent:
    return UsageEvent(
        event_id=event_id,
        subscription_id="sub-1",
        seat_id=seat_id,
        model="qwen3.6-plus",
        input_tokens=8_349,
        cached_tokens=40_794,
        output_tokens=573,
        occurred_at=T0,
    )


def _set_up_subscription(ledger: Ledger) -> None:
    outcomes = ledger.execute(
        [
            OpenSubscription("sub-1"),
            AddSeat("sub-1", "seat-1", "standard"),
            AddSeat("sub-1", "seat-2", "standard"),
        ]
    )
    assert [outcome.status for outcome in outcomes] == ["applied"] * 3


def test_a_ledger_that_decided_on_a_stale_head_decides_again_and_charges_once(
    store_factory: StoreFactory,
) -> None:
    clock = ManualClock(T0_US)
    first, second = (_open_ledger(store_factory(), clock) for _ in range(2))
    _set_up_subscription(first)
    second.charge([_usage("from-second")])  # `first` has not seen it: its state is stale

    [outcome] = first.charge([_usage("from-second")])  # the same usage, redelivered

    assert outcome.status == "duplicate"
    assert first.concurrent_appends == 0  # it caught up before deciding: no refusal needed
    assert first.state.subscriptions["sub-1"].seats["seat-1"].used_ucr == 3_180_000


def _before_next_append(store: Any, other_writer: Callable[[], object]) -> None:
    """The next `store.append` first lets `other_writer` append: another writer comes between
    a ledger's decision and its append."""
    real_append = store.append
    done: list[object] = []

    def append_after_the_other_writer(*args: Any, **kwargs: Any) -> list[StoredRecord]:
        if not done:
            done.append(other_writer())
        return real_append(*args, **kwargs)

    store.append = append_after_the_other_writer


def test_a_ledger_refused_by_a_concurrent_append_undoes_its_batch_and_decides_again(
    store_factory: StoreFactory,
) -> None:
    clock = ManualClock(T0_US)
    store = store_factory()
    first, second = _open_ledger(store, clock), _open_ledger(store_factory(), clock)
    _set_up_subscription(first)
    second.catch_up()
    _before_next_append(store, lambda: second.charge([_usage("other")]))
    [outcome] = first.charge([_usage("mine")])

    assert outcome.status == "applied" and first.concurrent_appends == 1
    seat = first.state.subscriptions["sub-1"].seats["seat-1"]
    assert seat.used_ucr == 2 * 3_180_000  # "other" folded once, "mine" once
    fresh = _open_ledger(store_factory(), clock)
    assert fresh.state == first.state and fresh.position == first.position


def _charge_as_racer(opener: StoreOpener, name: str, start: threading.Barrier) -> int:
    store = opener()
    try:
        ledger = _open_ledger(store, ManualClock(T0_US))
        start.wait(RACE_TIMEOUT_S)
        for first in range(0, RACING_CHARGES_PER_LEDGER, RACING_BATCH_CHARGES):
            usages = [
                _usage(f"{name}-{n:04d}", seat_id=f"seat-{1 + n % 2}")
                for n in range(first, first + RACING_BATCH_CHARGES)
            ]
            assert [o.status for o in ledger.charge(usages)] == ["applied"] * len(usages)
        return ledger.concurrent_appends
    finally:
        store.close()


def test_ledgers_racing_on_one_log_charge_every_usage_once_and_the_log_verifies(
    store_factory: StoreFactory,
) -> None:
    _set_up_subscription(_open_ledger(store_factory(), ManualClock(T0_US)))
    opener = store_factory.opener()
    start = threading.Barrier(RACING_LEDGERS)
    failures: list[BaseException] = []
    refusals: list[int] = []

    def run(name: str) -> None:
        try:
            refusals.append(_charge_as_racer(opener, name, start))
        except BaseException as failure:
            failures.append(failure)
            start.abort()

    names = [f"racer{n}" for n in range(RACING_LEDGERS)]
    racers = [threading.Thread(target=run, args=(name,)) for name in names]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(RACE_TIMEOUT_S)

    assert failures == []
    reader = store_factory()
    report = verify(reader.read(), load_rate_card(None))
    assert report.ok, report
    state = _open_ledger(reader, ManualClock(T0_US)).state
    seats = state.subscriptions["sub-1"].seats.values()
    charged = RACING_LEDGERS * RACING_CHARGES_PER_LEDGER
    assert sum(seat.used_ucr for seat in seats) == charged * 3_180_000
    keys = [
        ("sub-1", f"{name}-{n:04d}") for name in names for n in range(RACING_CHARGES_PER_LEDGER)
    ]
    assert len(reader.prior_charges(keys)) == charged
    print(f"concurrent appends refused and decided again: {sum(refusals)}")


def test_a_refused_batch_of_every_kind_of_event_is_undone_exactly(
    store_factory: StoreFactory,
) -> None:
    clock = ManualClock(T0_US)
    store = store_factory()
    first, second = _open_ledger(store, clock), _open_ledger(store_factory(), clock)
    _set_up_subscription(first)
    second.catch_up()
    _before_next_append(store, lambda: second.charge([_usage("other", seat_id="seat-2")]))
    huge = msgspec.structs.replace(_usage("huge"), output_tokens=30_000_000)  # beyond the quota
    outcomes = first.execute(
        [
            ChargeUsage(_usage("before"), payload_digest(_usage("before"))),
            ChargeUsage(huge, payload_digest(huge)),  # uncovered: suspends seat-1
            AddSeat("sub-1", "seat-3", "premium"),
            BuyPack("sub-1", "pack-1"),
            OpenSubscription("sub-2"),
            ChargeUsage(_usage("after"), payload_digest(_usage("after"))),
        ]
    )

    assert [o.status for o in outcomes] == ["applied"] * 6 and first.concurrent_appends == 1
    fresh = _open_ledger(store_factory(), clock)
    assert fresh.state == first.state and fresh.position == first.position


def test_an_exclusive_section_keeps_the_head_until_its_append(
    store_factory: StoreFactory,
) -> None:
    mine, theirs = store_factory(), store_factory()
    appended(mine, [grant()])
    other_done = threading.Event()

    def other_writer() -> None:
        appended(theirs, [grant("seat-2")])
        other_done.set()

    with mine.exclusive():
        decided_at = mine.head().position
        writer = threading.Thread(target=other_writer)
        writer.start()
        assert not other_done.wait(HELD_APPEND_WAIT_S)  # it waits for our lock
        records = mine.append([charge("mine")], T0_US, expected_position=decided_at)
    writer.join(RACE_TIMEOUT_S)

    assert other_done.is_set() and [r.position for r in records] == [2]
    assert [r.position for r in store_factory().read()] == [1, 2, 3]


def test_an_exclusive_section_that_fails_writes_nothing_and_forgets_its_keys(
    store: EventStore,
) -> None:
    with pytest.raises(RuntimeError), store.exclusive():
        store.append([charge("undone")], T0_US)
        raise RuntimeError("the decision failed after the append")

    assert store.head().position == 0
    assert store.prior_charges([("sub-1", "undone")]) == {}
    assert [r.position for r in store.append([charge("undone")], T0_US)] == [1]
