"""Snapshots: a start from one equals a start from nothing; a damaged, foreign or off-chain one
is skipped (logged) for an older one or a full fold; both stores keep them alike; reads of the
past from snapshots equal a full replay."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from structlog.testing import capture_logs

from ledger import snapshots as snapshots_module
from ledger.application import Ledger
from ledger.clock import ManualClock
from ledger.log import us_from_datetime
from ledger.snapshots import (
    SNAPSHOT_FORMAT,
    SnapshotStore,
    StoredSnapshot,
    checksum,
    layout_of,
    sealed,
)
from ledger.stores.postgres import PostgresEventStore, PostgresSnapshotStore
from ledger.stores.sqlite import SqliteEventStore, SqliteSnapshotStore
from projections.balances import dump
from projections.live import LiveBalances
from projections.replay import balances_as_of
from projections.runner import ProjectionRunner
from projections.snapshots import (
    Snapshotter,
    SubscriptionHistory,
    create_snapshot,
    decode_balances,
    encode_balances,
    further_along,
    prune,
)
from projections.stores.sqlite import SqliteReadModelStore
from schemas.commands import AddSeat, BuyPack, OpenSubscription
from services.projector import _snapshot_if_due
from tests.test_as_of import rows_of
from tests.test_properties import RATE_CARD, as_command
from tests.workload import START, Workload

SNAPSHOT_EVERY_RECORDS = 300


class History:
    """A log with usage, holds, corrections, packs and cycles, and snapshots beside it."""

    def __init__(self, folder: Path) -> None:
        self.clock = ManualClock(us_from_datetime(START))
        self.store = SqliteEventStore(folder / "ledger.sqlite3")
        self.snapshots = SqliteSnapshotStore(folder / "ledger.snapshots.sqlite3")
        self.ledger = Ledger(self.store, RATE_CARD, self.clock)
        self.taken: list[int] = []
        workload = Workload(seed=11, subscriptions=3, events=1_200, holds_and_corrections=True)
        for step in workload.steps():
            self.clock.set(max(self.clock.now_us(), us_from_datetime(step.at)))
            self.ledger.tick()
            self.ledger.execute([as_command(item) for item in step.commands])
            taken_last = self.taken[-1] if self.taken else 0
            if self.store.head().position - taken_last >= SNAPSHOT_EVERY_RECORDS:
                self.taken.append(create_snapshot(self.snapshots, self.store).position)

    def restarted(self) -> Ledger:
        return Ledger(self.store, RATE_CARD, self.clock, self.snapshots)


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    made = History(tmp_path)
    yield made
    made.snapshots.close()
    made.store.close()


def test_a_start_from_a_snapshot_equals_a_start_from_nothing(history: History) -> None:
    assert len(history.taken) >= 3
    assert history.taken[-1] < history.store.head().position  # records after the last one
    from_nothing = Ledger(history.store, RATE_CARD, history.clock)
    with capture_logs() as logs:
        from_snapshot = history.restarted()
    assert logs == []
    assert from_snapshot.state == from_nothing.state == history.ledger.state
    assert from_snapshot.position == from_nothing.position
    assert from_snapshot.recorded_at_us == from_nothing.recorded_at_us


def test_the_balances_of_a_snapshot_equal_a_full_replay_to_its_position(
    history: History,
) -> None:
    for position in history.taken:
        stored = history.snapshots.load(position)
        assert stored is not None
        replayed = balances_as_of(history.store, position)
        assert dump(decode_balances(stored.balances)) == dump(replayed)
        assert encode_balances(decode_balances(stored.balances)) == stored.balances


def _flip_a_byte(s: StoredSnapshot) -> StoredSnapshot:
    state = bytearray(s.state)
    state[len(state) // 2] ^= 0x01
    return StoredSnapshot(s.info, bytes(state), s.balances)


def _truncate(s: StoredSnapshot) -> StoredSnapshot:
    return StoredSnapshot(s.info, s.state[: len(s.state) // 2], s.balances)


def _off_the_chain(s: StoredSnapshot) -> StoredSnapshot:
    """Consistent with itself (its checksum recomputed), but bound to another head hash."""
    head = bytes(32)
    digest = checksum(s.info.format, s.info.position, head, s.state, s.balances)
    info = msgspec.structs.replace(s.info, head_hash=head, checksum=digest)
    return StoredSnapshot(info, s.state, s.balances)


def _newer_format(s: StoredSnapshot) -> StoredSnapshot:
    fmt = SNAPSHOT_FORMAT + 1
    digest = checksum(fmt, s.info.position, s.info.head_hash, s.state, s.balances)
    info = msgspec.structs.replace(s.info, format=fmt, checksum=digest)
    return StoredSnapshot(info, s.state, s.balances)


def _undecodable(s: StoredSnapshot) -> StoredSnapshot:
    """Consistent and on the chain, but not a state this code can read."""
    state = msgspec.msgpack.encode({"subscriptions": 3})
    digest = checksum(s.info.format, s.info.position, s.info.head_hash, state, s.balances)
    info = msgspec.structs.replace(s.info, checksum=digest)
    return StoredSnapshot(info, state, s.balances)


DAMAGES: dict[str, tuple[Callable[[StoredSnapshot], StoredSnapshot], str]] = {
    "flipped byte": (_flip_a_byte, "checksum"),
    "truncated": (_truncate, "checksum"),
    "wrong head hash": (_off_the_chain, "not on the chain"),
    "newer format": (_newer_format, "newer"),
    "undecodable": (_undecodable, "does not decode"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("how_many", ["newest", "all"])
def test_a_damaged_snapshot_is_skipped_and_the_start_equals_a_full_fold(
    history: History, damage: str, how_many: str
) -> None:
    spoil, reason = DAMAGES[damage]
    damaged = history.taken[-1:] if how_many == "newest" else history.taken
    for position in damaged:
        stored = history.snapshots.load(position)
        assert stored is not None
        history.snapshots.save(spoil(stored))
    with capture_logs() as logs:
        restarted = history.restarted()
    assert restarted.state == Ledger(history.store, RATE_CARD, history.clock).state
    skipped = [entry for entry in logs if entry["event"] == "snapshot.skipped"]
    assert [entry["position"] for entry in skipped] == sorted(damaged, reverse=True)
    assert all(reason in entry["reason"] for entry in skipped), skipped


def test_deleting_every_snapshot_changes_nothing_but_time(history: History) -> None:
    before = history.restarted().state
    assert prune(history.snapshots, keep=1) == sorted(history.taken[:-1], reverse=True)
    history.snapshots.delete(history.taken[-1])
    assert history.snapshots.infos() == []
    assert history.restarted().state == before


def test_one_subscription_as_of_from_snapshots_equals_a_full_replay(history: History) -> None:
    rng = random.Random(5)
    head = history.store.head().position
    subs = sorted(history.ledger.state.subscriptions)
    past = SubscriptionHistory(history.store, history.snapshots)
    positions = [*history.taken, *(p + 1 for p in history.taken if p < head)]
    positions += [rng.randrange(head + 1) for _ in range(200)]
    for position in positions:
        full = balances_as_of(history.store, position)
        sub = rng.choice(subs)
        assert rows_of(past.balances(sub, position), sub) == rows_of(full, sub), (position, sub)


def test_the_snapshotter_saves_when_enough_records_or_time_have_passed(
    history: History,
) -> None:
    now = [0.0]
    for position in history.taken:
        history.snapshots.delete(position)
    snapshotter = Snapshotter(
        history.snapshots,
        history.store,
        every_records=100,
        every_seconds=60,
        monotonic=lambda: now[0],
    )
    assert not snapshotter.due(99)
    assert snapshotter.due(100)
    info = snapshotter.take(balances_as_of(history.store, 40), 40)
    assert info.position == 40
    assert not snapshotter.due(40)
    assert not snapshotter.due(139)
    now[0] = 61.0
    assert snapshotter.due(41)
    assert not snapshotter.due(40)
    assert [i.position for i in history.snapshots.infos()] == [40]
    restarted = history.restarted()
    assert restarted.state == history.ledger.state


# -- the stores ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def snapshot_store(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str
) -> Iterator[SnapshotStore]:
    if request.param == "sqlite":
        store: SnapshotStore = SqliteSnapshotStore(tmp_path / "snapshots.sqlite3")
        yield store
        store.close()
        return
    schema = f"snapshots_{random.randrange(10**9)}"
    log = PostgresEventStore(postgres_url, schema=schema)
    store = PostgresSnapshotStore(postgres_url, schema=schema)
    try:
        yield store
    finally:
        store.close()
        log.close()
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _snapshot(
    position: int, state: bytes = b"state", balances: bytes = b"balances"
) -> StoredSnapshot:

    return sealed(position, bytes([position % 256]) * 32, state, b"balances", 1_000 + position)


def test_a_snapshot_store_keeps_saves_lists_newest_first_and_deletes(
    snapshot_store: SnapshotStore,
) -> None:
    assert snapshot_store.infos() == []
    assert snapshot_store.load(5) is None
    for position in (5, 50, 20):
        snapshot_store.save(_snapshot(position))
    assert [i.position for i in snapshot_store.infos()] == [50, 20, 5]
    assert snapshot_store.load(20) == _snapshot(20)
    assert snapshot_store.infos()[1] == _snapshot(20).info
    snapshot_store.save(_snapshot(20, state=b"other"))
    assert snapshot_store.load(20) == _snapshot(20, state=b"other")
    snapshot_store.delete(50)
    assert [i.position for i in snapshot_store.infos()] == [20, 5]


def test_the_projector_saves_a_snapshot_of_its_balances_once_one_is_due(
    history: History, tmp_path: Path
) -> None:
    for position in history.taken:
        history.snapshots.delete(position)
    read_store = SqliteReadModelStore(tmp_path / "rm.sqlite3", history.store)
    runner = ProjectionRunner(history.store, read_store)
    runner.catch_up()
    snapshotter = Snapshotter(history.snapshots, history.store, every_records=10**6)
    _snapshot_if_due(snapshotter, runner)
    assert history.snapshots.infos() == []
    snapshotter = Snapshotter(history.snapshots, history.store, every_records=500)
    _snapshot_if_due(snapshotter, runner)
    (info,) = history.snapshots.infos()
    assert info.position == history.store.head().position
    assert history.restarted().state == history.ledger.state
    read_store.close()


def test_a_start_from_a_snapshot_in_postgresql_equals_a_start_from_nothing(
    postgres_url: str,
) -> None:
    schema = f"snapshots_{random.randrange(10**9)}"
    store = PostgresEventStore(postgres_url, schema=schema)
    snapshots = PostgresSnapshotStore(postgres_url, schema=schema)
    try:
        clock = ManualClock(us_from_datetime(START))
        ledger = Ledger(store, RATE_CARD, clock)
        ledger.execute([OpenSubscription("team-1"), AddSeat("team-1", "alice", "standard")])
        info = create_snapshot(snapshots, store)
        ledger.execute([AddSeat("team-1", "bob", "premium"), BuyPack("team-1", "p1")])
        with capture_logs() as logs:
            restarted = Ledger(store, RATE_CARD, clock, snapshots)
        assert logs == []
        assert info.position < restarted.position == ledger.position
        assert restarted.state == ledger.state == Ledger(store, RATE_CARD, clock).state
    finally:
        snapshots.close()
        store.close()
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_live_balances_start_from_a_snapshot_further_along_than_the_read_models(
    history: History, tmp_path: Path
) -> None:
    read_store = SqliteReadModelStore(tmp_path / "rm.sqlite3", history.store)
    behind, at = read_store.snapshot()
    assert at == 0
    balances, position = further_along(history.snapshots, history.store, behind, at)
    assert position == history.taken[-1]
    live = LiveBalances(history.store, balances, position)
    live.catch_up()
    assert dump(live.balances) == dump(balances_as_of(history.store, history.store.head().position))

    ProjectionRunner(history.store, read_store).catch_up()
    ahead, at = read_store.snapshot()
    assert further_along(history.snapshots, history.store, ahead, at) == (ahead, at)
    read_store.close()


def test_a_snapshot_of_a_state_with_other_fields_is_skipped(
    history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshots_module, "STATE_LAYOUT", bytes(snapshots_module.LAYOUT_BYTES))
    with capture_logs() as logs:
        restarted = history.restarted()
    assert restarted.state == Ledger(history.store, RATE_CARD, history.clock).state
    skipped = [entry for entry in logs if entry["event"] == "snapshot.skipped"]
    assert len(skipped) == len(history.taken)
    assert all("other fields" in entry["reason"] for entry in skipped)


def test_the_layout_changes_when_a_nested_type_gains_a_field() -> None:
    def outer(*inner_fields: Any) -> type:
        inner = dataclasses.make_dataclass("Inner", inner_fields)
        return dataclasses.make_dataclass("Outer", [("inner", dict[str, inner])])  # type: ignore[valid-type]

    before = layout_of(outer(("a", int)))
    assert layout_of(outer(("a", int))) == before
    assert layout_of(outer(("a", int), ("b", int, dataclasses.field(default=0)))) != before
