"""The writer's fast path: a usage batch is charged a slice at a time, and a write someone waits
on (a gateway's hold, through the `FastLane`) runs between two slices instead of after the
whole batch; the API process sends the writes that queued up meanwhile in one trip."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from multiprocessing import Pipe
from pathlib import Path
from typing import Any

from ledger.application import Ledger, Outcome
from ledger.clock import ManualClock
from ledger.log import us_from_datetime
from ledger.rate_card import load_rate_card
from ledger.stores.sqlite import SqliteEventStore
from schemas.commands import AddSeat, Command, OpenSubscription, PlaceHold
from schemas.usage import UsageEvent
from services.ingest.dead_letters import DeadLetter
from services.ingest.processor import IngestProcessor, StreamEntry
from services.write_channel import RemoteWriter, WriteChannelServer
from services.writer import FastLane

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
BATCH = 1_000
SLICE = 100


class NoLetters:
    def write(self, letters: Sequence[DeadLetter]) -> None:
        assert not letters, letters


def _entries(count: int) -> list[StreamEntry]:
    return [
        (
            f"1-{n}",
            {
                b"data": json.dumps(
                    {
                        "event_id": f"e{n}",
                        "subscription_id": "s",
                        "seat_id": "a",
                        "model": "qwen3.6-plus",
                        "input_tokens": 1_000,
                        "occurred_at": "2026-03-01T09:00:00Z",
                    }
                ).encode()
            },
        )
        for n in range(count)
    ]


class SlowLedger:
    """A ledger whose charges say when the first slice is in: the test then submits a hold."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.first_slice = threading.Event()
        self.hold_submitted = threading.Event()
        self.slices: list[int] = []

    def charge(self, usages: Sequence[UsageEvent]) -> list[Outcome]:
        outcomes = self.ledger.charge(usages)
        self.slices.append(len(usages))
        if not self.first_slice.is_set():
            self.first_slice.set()
            assert self.hold_submitted.wait(10)
        return outcomes


def test_holds_submitted_during_a_usage_batch_are_appended_together_between_two_slices(
    tmp_path: Path,
) -> None:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer") as writer:
        store, ledger = writer.submit(_ledger, tmp_path).result()
        lane = FastLane(ledger, writer)
        slow = SlowLedger(ledger)
        processor = IngestProcessor(
            slow, None, NoLetters(), between_slices=lane.run_waiting, slice_events=SLICE
        )
        batch = writer.submit(processor.process, _entries(BATCH))
        assert slow.first_slice.wait(10)
        holds = [lane.submit([PlaceHold("s", "a", f"h{n}", 1_000_000)]) for n in range(5)]
        slow.hold_submitted.set()
        placed = [hold.result(10)[0] for hold in holds]
        assert not batch.done(), "the holds did not wait for the whole batch"
        assert batch.result(10).applied == BATCH
        kinds = writer.submit(
            lambda: [type(r.event()).__name__ for r in store.read(after=0)]
        ).result()
        writer.submit(store.close).result()
    assert slow.slices == [SLICE] * (BATCH // SLICE)
    hold_at = kinds.index("HoldPlaced")
    assert kinds[:hold_at].count("UsageCharged") == SLICE  # after the first slice, before the rest
    assert kinds[hold_at : hold_at + 5] == ["HoldPlaced"] * 5
    assert kinds[hold_at:].count("UsageCharged") == BATCH - SLICE
    records = [outcome.records[0] for outcome in placed]
    assert [r.position for r in records] == list(range(hold_at + 1, hold_at + 6))
    assert len({r.recorded_at_us for r in records}) == 1  # one append for the five


def test_a_batch_smaller_than_a_slice_is_one_append(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=1) as writer:
        store, ledger = writer.submit(_ledger, tmp_path).result()
        slow = SlowLedger(ledger)
        slow.hold_submitted.set()
        calls: list[int] = []
        processor = IngestProcessor(
            slow, None, NoLetters(), between_slices=lambda: calls.append(1), slice_events=SLICE
        )
        assert writer.submit(processor.process, _entries(SLICE)).result().applied == SLICE
        writer.submit(store.close).result()
    assert (slow.slices, calls) == ([SLICE], [1])


def test_holds_waiting_when_a_batch_starts_are_appended_before_its_first_slice(
    tmp_path: Path,
) -> None:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer") as writer:
        store, ledger = writer.submit(_ledger, tmp_path).result()
        lane = FastLane(ledger, writer)
        processor = IngestProcessor(
            ledger, None, NoLetters(), between_slices=lane.run_waiting, slice_events=SLICE
        )
        busy, release = threading.Event(), threading.Event()

        def batch_before() -> None:
            busy.set()
            release.wait(10)

        writer.submit(batch_before)  # still going
        assert busy.wait(10)
        batch = writer.submit(processor.process, _entries(BATCH))  # queued first
        hold = lane.submit([PlaceHold("s", "a", "h", 1_000_000)])  # its run queued after
        release.set()
        assert batch.result(10).applied == BATCH
        [placed] = hold.result(10)
        kinds = writer.submit(
            lambda: [type(r.event()).__name__ for r in store.read(after=0)]
        ).result()
        writer.submit(store.close).result()
    assert placed.status == "applied"
    assert kinds.index("HoldPlaced") < kinds.index("UsageCharged")


def test_without_writes_to_run_between_slices_a_batch_is_one_append(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=1) as writer:
        store, ledger = writer.submit(_ledger, tmp_path).result()
        slow = SlowLedger(ledger)
        slow.hold_submitted.set()
        processor = IngestProcessor(slow, None, NoLetters(), slice_events=SLICE)
        assert writer.submit(processor.process, _entries(BATCH)).result().applied == BATCH
        writer.submit(store.close).result()
    assert slow.slices == [BATCH]


def test_writes_waiting_in_the_api_process_go_to_the_writer_in_one_trip(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=1) as writer:
        store, ledger = writer.submit(_ledger, tmp_path).result()
        trips: list[int] = []

        class Counting:
            def execute(self, commands: list[Command]) -> list[Outcome]:
                trips.append(len(commands))
                return ledger.execute(commands)

        ours, theirs = Pipe()
        WriteChannelServer(ours, FastLane(Counting(), writer)).start()  # type: ignore[arg-type]

        async def caught_up() -> int:
            return 0

        async def place_all() -> list[list[Outcome]]:
            remote = RemoteWriter(theirs, caught_up)
            holds = [
                remote.execute([PlaceHold("s", "a", f"h{n}", 1_000_000_000)]) for n in range(30)
            ]
            answers = await asyncio.gather(*holds)
            remote.close()
            return answers

        answers = asyncio.run(place_all())
        writer.submit(store.close).result()
    assert [[o.status for o in outcomes] for outcomes in answers] == [["applied"]] * 25 + [
        ["rejected"]
    ] * 5
    assert sum(trips) == 30 and len(trips) < 30


def _ledger(tmp_path: Path) -> tuple[Any, Ledger]:
    store = SqliteEventStore(tmp_path / "ledger.sqlite3")
    ledger = Ledger(store, load_rate_card(), ManualClock(us_from_datetime(NOW)))
    for outcome in ledger.execute([OpenSubscription("s", NOW), AddSeat("s", "a", "standard")]):
        assert outcome.status == "applied", outcome
    return store, ledger


def test_a_write_is_sent_to_the_writer_while_the_one_before_is_being_appended(
    tmp_path: Path,
) -> None:
    with ThreadPoolExecutor(max_workers=1) as writer:
        store, ledger = writer.submit(_ledger, tmp_path).result()
        first_started, second_arrived = threading.Event(), threading.Event()
        waited: list[bool] = []

        class FirstWaits:
            def execute(self, commands: list[Command]) -> list[Outcome]:
                if not first_started.is_set():
                    first_started.set()
                    waited.append(second_arrived.wait(5))
                return ledger.execute(commands)

        lane = FastLane(FirstWaits(), writer)  # type: ignore[arg-type]

        class Arrivals:
            def submit(self, commands: list[Command]) -> Any:
                if PlaceHold("s", "a", "second", 1) in commands:
                    second_arrived.set()
                return lane.submit(commands)

        ours, theirs = Pipe()
        WriteChannelServer(ours, Arrivals()).start()  # type: ignore[arg-type]

        async def caught_up() -> int:
            return 0

        async def place_both() -> list[list[Outcome]]:
            remote = RemoteWriter(theirs, caught_up)
            first = asyncio.ensure_future(remote.execute([PlaceHold("s", "a", "first", 1)]))
            while not first_started.is_set():  # the first is being appended
                await asyncio.sleep(0.001)
            second = remote.execute([PlaceHold("s", "a", "second", 1)])
            answers = list(await asyncio.gather(first, second))
            remote.close()
            return answers

        answers = asyncio.run(place_both())
        writer.submit(store.close).result()
    assert waited == [True], "the second write reached the writer only after the first's answer"
    assert [[o.status for o in outcomes] for outcomes in answers] == [["applied"], ["applied"]]


def test_an_api_process_that_stops_reading_answers_never_blocks_the_writer() -> None:
    """The writer thread only queues answers: with the API end of the pipe unread and far more
    answered than a pipe holds, setting every result still returns at once."""
    pending: list[Future[list[Any]]] = []
    arrived = threading.Semaphore(0)

    class Lane:
        def submit(self, commands: list[Command]) -> Future[list[Any]]:
            pending.append(Future())
            arrived.release()
            return pending[-1]

    ours, theirs = Pipe()
    WriteChannelServer(ours, Lane()).start()  # type: ignore[arg-type]
    requests = 64
    for number in range(requests):
        theirs.send((number, "execute", [PlaceHold("s", "a", f"h{number}", 1)]))
    for _ in range(requests):
        assert arrived.acquire(timeout=10)
    big = ["x" * 4_096] * 64  # 256 KiB an answer: 16 MiB in all, never read
    finished = threading.Event()

    def writer_thread() -> None:
        for future in pending:
            future.set_result(big)
        finished.set()

    threading.Thread(target=writer_thread, daemon=True).start()
    assert finished.wait(10), "the writer thread blocked sending answers nobody reads"
    theirs.close()
