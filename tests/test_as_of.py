"""Reads of the past: one subscription folded from its own records equals a full replay at any
position; the work runs on a bounded pool, refused with a 503 past its bound, while current
reads keep answering from memory."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ledger.application import Ledger
from ledger.clock import ManualClock
from ledger.log import us_from_datetime
from ledger.stores.sqlite import SqliteEventStore
from projections.balances import Balances
from projections.replay import balances_as_of, subscription_as_of
from projections.snapshots import SubscriptionHistory
from services.api import reads as api_reads
from services.as_of import AS_OF_QUEUE_DEPTH, AS_OF_WORKERS, AsOfBusy, AsOfPool
from tests.support.api_app import Api, expect_problem, open_api
from tests.test_properties import RATE_CARD, as_command
from tests.workload import START, Workload

POSITIONS_CHECKED = 200


def rows_of(balances: Balances, sub: str) -> Any:
    """Everything the balances hold about one subscription, as plain values."""

    def mine(rows: dict[tuple[str, str], Any]) -> list[Any]:
        return [msgspec.to_builtins(rows[key]) for key in sorted(rows) if key[0] == sub]

    subscription = balances.subscriptions.get(sub)
    return {
        "subscription": None if subscription is None else msgspec.to_builtins(subscription),
        "seats": mine(balances.seats),
        "packs": mine(balances.packs),
        "grants": mine(balances.grants),
        "holds": mine(balances.holds),
        "ids": [
            index.get(sub) for index in (balances.seat_ids, balances.pack_ids, balances.grant_ids)
        ],
        "ended_holds": sorted(balances.ended_holds.get(sub, ())),
        "active_holds": sorted(balances.active_holds.get(sub, ())),
    }


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteEventStore]:
    """A log of three subscriptions with usage, holds, corrections, packs and cycles."""
    folder: Path = tmp_path_factory.mktemp("as-of")
    clock = ManualClock(us_from_datetime(START))
    store = SqliteEventStore(folder / "ledger.sqlite3")
    ledger = Ledger(store, RATE_CARD, clock)
    workload = Workload(seed=7, subscriptions=3, events=1_500, holds_and_corrections=True)
    for step in workload.steps():
        clock.set(max(clock.now_us(), us_from_datetime(step.at)))
        ledger.tick()
        ledger.execute([as_command(item) for item in step.commands])
    yield store
    store.close()


def test_one_subscription_as_of_any_position_equals_a_full_replay(
    history: SqliteEventStore,
) -> None:
    rng = random.Random(13)
    head = history.head().position
    subs = sorted(balances_as_of(history, head).subscriptions)
    assert len(subs) == 3
    for position in sorted(rng.randrange(head + 1) for _ in range(POSITIONS_CHECKED)):
        full = balances_as_of(history, position)
        sub = rng.choice(subs)
        assert rows_of(subscription_as_of(history, sub, position), sub) == rows_of(full, sub), (
            position,
            sub,
        )


def test_one_subscription_as_of_reads_no_other_subscriptions_rows(
    history: SqliteEventStore,
) -> None:
    head = history.head().position
    sub = sorted(balances_as_of(history, head).subscriptions)[0]
    past = subscription_as_of(history, sub, head)
    assert set(past.subscriptions) == {sub}
    assert {key[0] for key in past.seats} == {sub}


# -- the pool ----------------------------------------------------------------------------------


def test_the_pool_refuses_work_past_its_workers_and_queue() -> None:
    pool = AsOfPool(workers=2, queue_depth=3)
    release = threading.Event()

    async def scenario() -> None:
        waiting = [asyncio.ensure_future(pool.run(release.wait)) for _ in range(5)]
        await asyncio.sleep(0)
        assert pool.admitted == 5
        with pytest.raises(AsOfBusy):
            await pool.run(lambda: None)
        release.set()
        assert await asyncio.gather(*waiting) == [True] * 5
        assert pool.admitted == 0
        assert await pool.run(lambda: 42) == 42

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        pool.close()


def test_a_caller_that_stops_waiting_keeps_its_slot_until_the_work_ends() -> None:
    pool = AsOfPool(workers=1, queue_depth=0)
    release = threading.Event()

    async def scenario() -> None:
        waiting = asyncio.ensure_future(pool.run(release.wait))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(AsOfBusy):
            await pool.run(lambda: None)
        release.set()
        while pool.admitted:
            await asyncio.sleep(0.001)
        assert await pool.run(lambda: 1) == 1

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        pool.close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with open_api(tmp_path) as opened:
        yield opened


def test_past_the_bound_as_of_answers_503_while_current_reads_answer(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    started = threading.Semaphore(0)
    fold = SubscriptionHistory.balances

    def slow_fold(*args: Any) -> Balances:
        started.release()
        release.wait(timeout=30)
        return fold(*args)

    monkeypatch.setattr(SubscriptionHistory, "balances", slow_fold)
    bound = AS_OF_WORKERS + AS_OF_QUEUE_DEPTH
    overview = "/v1/subscriptions/team-1/overview"
    with ThreadPoolExecutor(max_workers=bound) as clients:
        try:
            held = [clients.submit(api.get, overview, as_of="position:5") for _ in range(bound)]
            for _ in range(AS_OF_WORKERS):
                assert started.acquire(timeout=10)
            _wait_until(lambda: _admitted(api) == bound)

            refused = api.get(overview, as_of="position:5")
            body = expect_problem(refused, 503, "as-of-busy")
            assert refused.headers["Retry-After"] == "1"
            assert "retry" in body["detail"]
            precheck = api.get("/v1/subscriptions/team-1/seats/alice/authorization")
            assert precheck.status_code == 200
            assert api.get(overview).status_code == 200
        finally:
            release.set()
        assert [future.result().status_code for future in held] == [200] * bound
    assert api.get(overview, as_of="position:5").status_code == 200


def _admitted(api: Api) -> int:
    reads = api.client.app.dependencies["reads"].dependency()
    assert isinstance(reads, api_reads.Reads)
    return reads.past.admitted


def _wait_until(condition: Any, timeout_s: float = 10.0) -> None:
    stop = threading.Event()
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        stop.wait(0.01)
    raise AssertionError("condition not met in time")
