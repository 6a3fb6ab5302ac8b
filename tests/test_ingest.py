"""Usage ingest on a real Redis: entries become charges, bad ones become dead letters.

Two layers are tested: `IngestProcessor.process` called directly (every dead-letter reason,
idempotent dead letters, crash between append and dead letters), and the FastStream service
running against the real server (backlog and live entries, FastStream-published entries,
duplicates across batches and consumer restarts, a failing handler leaving its batch pending,
reclaiming a dead consumer's entries). Every test has its own stream (`stream_name`) and its
own SQLite ledger; the ledger and the read models are the real ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import msgspec
import pytest
import redis
import redis.cluster
from faststream.redis.parser import BinaryMessageFormatV1
from faststream.specification import AsyncAPI
from redis.crc import key_slot

from ledger.application import Ledger, Outcome
from ledger.clock import ManualClock
from ledger.errors import StoreError
from ledger.log import us_from_datetime
from ledger.rate_card import load_rate_card
from ledger.stores.sqlite import SqliteEventStore
from projections.runner import ProjectionRunner
from projections.stores.sqlite import SqliteReadModelStore
from schemas.commands import AddSeat, OpenSubscription, RemoveSeat
from schemas.limits import MAX_TOKENS_PER_COMPONENT
from schemas.usage import UsageEvent
from services.client import UsagePublisher, encode_usage
from services.config import ConfigError, Settings
from services.ingest.consumer import (
    MAX_DELIVERIES,
    IngestConfig,
    IngestService,
    build_broker,
    create_app,
)
from services.ingest.dead_letters import DeadLetter, RedisDeadLetterSink, dead_letter_index
from services.ingest.processor import BatchResult, IngestProcessor, StreamEntry
from services.ingest.stream import CONSUMER_GROUP
from services.metrics import LedgerMetrics
from services.redis_server import (
    RedisBinaryNotFoundError,
    find_redis_binary,
)
from tests.conftest import no_service
from tests.support.redis_cluster import EmbeddedRedisCluster

T = TypeVar("T")

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SUB, OTHER_SUB = "sub-1", "sub-2"
SEAT, REMOVED_SEAT, OTHER_SEAT = "seat-1", "seat-gone", "seat-x"
MODEL = "qwen3.6-plus"
WAIT_TIMEOUT_S = 10.0
POLL_S = 0.02
FAST_CLAIM_IDLE_MS = 300
FAST_RECLAIM_INTERVAL_S = 0.05
GROUP_LOST_S = 30.0
"""FastStream waits 5 s after a failed read before the one that finds the group gone."""
NEVER_CLAIM_IDLE_MS = 3_600_000
NEVER_TRIM_INTERVAL_S = 3_600.0


# -- the ledger under test --------------------------------------------------------------------


class InjectedFailure(RuntimeError):
    """Raised by `RecordingLedger` when a test asks it to fail."""


@dataclass
class RecordingLedger:
    """The real ledger, with every outcome recorded and failures injectable before a charge."""

    inner: Ledger
    fail_when: Callable[[Sequence[UsageEvent]], bool] = lambda usages: False
    outcomes: list[tuple[str, str, str | None]] = field(default_factory=list)
    failures: int = 0

    def charge(self, usages: Sequence[UsageEvent]) -> list[Outcome]:
        if self.fail_when(usages):
            self.failures += 1
            raise InjectedFailure(f"injected failure #{self.failures}")
        outcomes = self.inner.charge(usages)
        for usage, outcome in zip(usages, outcomes, strict=True):
            self.outcomes.append((usage.event_id, outcome.status, outcome.reason))
        return outcomes

    def count(self, event_id: str, status: str = "applied") -> int:
        return sum(1 for e, s, _ in self.outcomes if e == event_id and s == status)

    def seen(self) -> int:
        return len(self.outcomes)


@dataclass
class LedgerEnv:
    """A real SQLite ledger and read models, owned by one thread (`executor`)."""

    executor: ThreadPoolExecutor
    store: SqliteEventStore
    read_store: SqliteReadModelStore
    ledger: RecordingLedger
    projections: ProjectionRunner

    def run(self, func: Callable[..., T], *args: Any) -> T:
        """Run on the ledger's thread (the read store's SQLite connection is bound to it)."""
        return self.executor.submit(func, *args).result()


def _open_ledger(path: Path) -> tuple[SqliteEventStore, SqliteReadModelStore, Ledger]:
    store = SqliteEventStore(path)
    read_store = SqliteReadModelStore(path, store)
    ledger = Ledger(store, load_rate_card(), ManualClock(us_from_datetime(START)))
    setup = ledger.execute(
        [
            OpenSubscription(SUB, START),
            AddSeat(SUB, SEAT, "premium"),
            AddSeat(SUB, REMOVED_SEAT, "standard"),
            RemoveSeat(SUB, REMOVED_SEAT),
            OpenSubscription(OTHER_SUB, START),
            AddSeat(OTHER_SUB, OTHER_SEAT, "standard"),
        ]
    )
    assert all(outcome.status == "applied" for outcome in setup), setup
    return store, read_store, ledger


@pytest.fixture
def env(tmp_path: Path) -> Iterator[LedgerEnv]:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-ledger")
    store, read_store, ledger = executor.submit(_open_ledger, tmp_path / "ledger.sqlite3").result()
    projections = executor.submit(ProjectionRunner, store, read_store).result()
    try:
        yield LedgerEnv(executor, store, read_store, RecordingLedger(ledger), projections)
    finally:
        executor.submit(read_store.close).result()
        executor.submit(store.close).result()
        executor.shutdown(wait=True)


@pytest.fixture
def processor(env: LedgerEnv, redis_sync: redis.Redis, stream_name: str) -> IngestProcessor:
    return IngestProcessor(
        env.ledger, env.projections, RedisDeadLetterSink(redis_sync, stream_name)
    )


# -- events and entries -----------------------------------------------------------------------


def usage(event_id: str, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": event_id,
        "subscription_id": SUB,
        "seat_id": SEAT,
        "model": MODEL,
        "occurred_at": "2026-03-01T08:59:59Z",
        "input_tokens": 8_349,
        "cached_tokens": 40_794,
        "output_tokens": 573,
    }
    event.update(changes)
    return {k: v for k, v in event.items() if v is not ...}


def usage_event(event_id: str, **changes: Any) -> UsageEvent:
    return msgspec.convert(usage(event_id, **changes), UsageEvent, strict=False)


def data(event: dict[str, Any]) -> dict[bytes, bytes]:
    return {b"data": msgspec.json.encode(event)}


async def faststream_envelope(body: bytes) -> bytes:
    """What FastStream's publisher writes in `__data__` (its binary format, version 1)."""
    return await BinaryMessageFormatV1.encode(
        message=body, reply_to=None, headers={"x-gateway": "gw-1"}, correlation_id="c-1"
    )


def xadd_all(client: redis.Redis, stream: str, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for fields in entries:
        pipe.xadd(stream, fields)  # type: ignore[arg-type]
    return [entry_id.decode() for entry_id in pipe.execute()]


RawEntry = tuple[bytes, dict[bytes, bytes]]


def xrange(client: redis.Redis, stream: str) -> list[RawEntry]:
    """XRANGE - +, typed as a client without `decode_responses` answers it."""
    return cast(list[RawEntry], client.xrange(stream))


def read_back(client: redis.Redis, stream: str, ids: Sequence[str]) -> list[StreamEntry]:
    """The entries as XREADGROUP would deliver them (ids as text, fields as bytes)."""
    by_id = {i.decode(): fields for i, fields in xrange(client, stream)}
    return [(entry_id, by_id[entry_id]) for entry_id in ids]


def dead_letters(client: redis.Redis, stream: str) -> dict[str, dict[str, bytes]]:
    """The dead letters of `stream` by source entry id (fields decoded to str keys)."""
    letters: dict[str, dict[str, bytes]] = {}
    for _, fields in xrange(client, f"{stream}.dead"):
        decoded = {key.decode(): value for key, value in fields.items()}
        source = decoded["source_id"].decode()
        assert source not in letters, f"two dead letters for {source}"
        letters[source] = decoded
    return letters


def pending(client: redis.Redis, stream: str) -> int:
    summary: dict[str, Any] = cast(Any, client).xpending(stream, CONSUMER_GROUP)
    return int(summary["pending"])


def last_delivered(client: redis.Redis, stream: str) -> str:
    groups: list[dict[str, Any]] = cast(Any, client).xinfo_groups(stream)
    for group in groups:
        if group["name"] == CONSUMER_GROUP.encode():
            return str(group["last-delivered-id"].decode())
    raise AssertionError("no consumer group")


async def eventually(
    check: Callable[[], bool], what: str, timeout_s: float = WAIT_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for: {what}")
        await asyncio.sleep(POLL_S)


# -- the processor: every dead-letter reason --------------------------------------------------

BAD_ENTRIES: list[tuple[str, dict[bytes, bytes], str, str | None]] = [
    # (case, fields, reason, a fragment of the detail)
    ("not json", {b"data": b"{not json"}, "invalid_json", "malformed"),
    ("not utf-8", {b"data": b"\xff\xfe{}"}, "invalid_json", None),
    ("empty", {b"data": b""}, "invalid_json", None),
    ("wrong type", data(usage("e-bad", input_tokens="12")), "invalid_event", "$.input_tokens"),
    ("missing field", data(usage("e-bad", seat_id=...)), "invalid_event", "seat_id"),
    ("negative count", data(usage("e-bad", output_tokens=-1)), "invalid_event", "output_tokens"),
    (
        "absurd count",
        data(usage("e-bad", input_tokens=MAX_TOKENS_PER_COMPONENT + 1)),
        "invalid_event",
        "input_tokens",
    ),
    ("unknown field", data(usage("e-bad", colour="red")), "invalid_event", "colour"),
    ("empty id", data(usage("")), "invalid_event", "event_id"),
    ("no offset", data(usage("e-bad", occurred_at="2026-03-01T08:00:00")), "invalid_event", None),
    ("not an object", {b"data": b"[1, 2]"}, "invalid_event", "object"),
    ("no payload field", {b"payload": b"{}"}, "missing_data", "payload"),
    ("unknown model", data(usage("e-bad", model="gpt-99")), "unknown_model", "gpt-99"),
    (
        "unknown subscription",
        data(usage("e-bad", subscription_id="nope")),
        "unknown_subscription",
        "nope",
    ),
    ("unknown seat", data(usage("e-bad", seat_id="ghost")), "unknown_seat", "ghost"),
    (
        "seat of another subscription",
        data(usage("e-bad", seat_id=OTHER_SEAT)),
        "unknown_seat",
        None,
    ),
    (
        "not utf-8 inside a string",
        {b"data": msgspec.json.encode(usage("e-bad", gateway="GW")).replace(b"GW", b"\xc3\x28")},
        "invalid_json",
        "UTF-8",
    ),
    (
        "occurred_at overflowing in UTC",
        data(usage("e-bad", occurred_at="0001-01-01T00:00:00+14:00")),
        "invalid_event",
        "occurred_at",
    ),
    (
        "occurred_at out of bounds",
        data(usage("e-bad", occurred_at="2250-01-01T00:00:00Z")),
        "invalid_event",
        "occurred_at",
    ),
    ("id with a slash", data(usage("e-bad", seat_id="a/b")), "invalid_event", "seat_id"),
    ("removed seat", data(usage("e-bad", seat_id=REMOVED_SEAT)), "seat_removed", REMOVED_SEAT),
]


@pytest.mark.parametrize(
    ("fields", "reason", "detail"),
    [pytest.param(f, r, d, id=case) for case, f, r, d in BAD_ENTRIES],
)
def test_a_bad_entry_is_dead_lettered_and_the_good_ones_around_it_are_charged(
    env: LedgerEnv,
    processor: IngestProcessor,
    redis_sync: redis.Redis,
    stream_name: str,
    fields: dict[bytes, bytes],
    reason: str,
    detail: str | None,
) -> None:
    ids = xadd_all(redis_sync, stream_name, [data(usage("good-1")), fields, data(usage("good-2"))])
    result = env.run(processor.process, read_back(redis_sync, stream_name, ids))

    assert result.entry_ids == tuple(ids)
    assert (result.applied, result.duplicates) == (2, 0)
    assert [letter.reason for letter in result.dead_letters] == [reason]
    letter = dead_letters(redis_sync, stream_name)[ids[1]]
    assert letter["reason"] == reason.encode()
    assert letter["source_id"] == ids[1].encode()
    assert letter["stream"] == stream_name.encode()
    if reason == "missing_data":
        assert msgspec.json.decode(letter["data"]) == {"payload": "{}"}
    else:
        assert letter["data"] == fields[b"data"]  # the original bytes
    if detail is not None:
        assert detail in letter["detail"].decode()
    assert env.ledger.count("good-1") == env.ledger.count("good-2") == 1
    assert result.projected
    assert env.projections.position == env.store.head().position


def test_a_conflicting_duplicate_is_dead_lettered_and_the_first_one_stands(
    env: LedgerEnv, processor: IngestProcessor, redis_sync: redis.Redis, stream_name: str
) -> None:
    first = xadd_all(redis_sync, stream_name, [data(usage("e-1"))])
    assert env.run(processor.process, read_back(redis_sync, stream_name, first)).applied == 1

    again = xadd_all(
        redis_sync,
        stream_name,
        [data(usage("e-1")), data(usage("e-1", input_tokens=1)), data(usage("e-2"))],
    )
    result = env.run(processor.process, read_back(redis_sync, stream_name, again))

    assert (result.applied, result.duplicates) == (1, 1)  # e-2 applied, e-1 a plain duplicate
    letters = dead_letters(redis_sync, stream_name)
    assert list(letters) == [again[1]]
    assert letters[again[1]]["reason"] == b"duplicate_conflict"
    assert letters[again[1]]["data"] == data(usage("e-1", input_tokens=1))[b"data"]
    assert env.ledger.count("e-1") == 1


async def test_a_faststream_envelope_is_unwrapped_and_a_bad_one_keeps_its_original_bytes(
    env: LedgerEnv, processor: IngestProcessor, redis_sync: redis.Redis, stream_name: str
) -> None:
    good = await faststream_envelope(msgspec.json.encode(usage("fs-1")))
    bad = await faststream_envelope(b"{oops")
    ids = xadd_all(redis_sync, stream_name, [{b"__data__": good}, {b"__data__": bad}])

    result = env.run(processor.process, read_back(redis_sync, stream_name, ids))

    assert result.applied == 1
    assert env.ledger.count("fs-1") == 1
    letter = dead_letters(redis_sync, stream_name)[ids[1]]
    assert (letter["reason"], letter["data"]) == (b"invalid_json", bad)


def test_a_redelivered_batch_charges_nothing_and_writes_no_second_dead_letter(
    env: LedgerEnv, processor: IngestProcessor, redis_sync: redis.Redis, stream_name: str
) -> None:
    ids = xadd_all(
        redis_sync,
        stream_name,
        [data(usage("e-1")), {b"data": b"nope"}, data(usage("e-2", model="gpt-99"))],
    )
    entries = read_back(redis_sync, stream_name, ids)

    first = env.run(processor.process, entries)
    second = env.run(processor.process, entries)

    assert (first.applied, first.duplicates, len(first.dead_letters)) == (1, 0, 2)
    assert (second.applied, second.duplicates, len(second.dead_letters)) == (0, 1, 2)
    assert redis_sync.xlen(f"{stream_name}.dead") == 2
    assert sorted(dead_letters(redis_sync, stream_name)) == sorted(ids[1:])
    assert env.ledger.count("e-1") == 1


class FailingOnceSink:
    """A dead-letter sink that fails its first write, as a crash or a lost Redis would."""

    def __init__(self, inner: RedisDeadLetterSink) -> None:
        self.inner = inner
        self.calls = 0

    def write(self, letters: Sequence[DeadLetter]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("Redis went away")
        self.inner.write(letters)


def test_a_failure_after_the_append_fails_the_batch_and_its_retry_charges_nothing_twice(
    env: LedgerEnv, redis_sync: redis.Redis, stream_name: str
) -> None:
    sink = FailingOnceSink(RedisDeadLetterSink(redis_sync, stream_name))
    processor = IngestProcessor(env.ledger, env.projections, sink)
    ids = xadd_all(redis_sync, stream_name, [data(usage("e-1")), {b"data": b"nope"}])
    entries = read_back(redis_sync, stream_name, ids)

    with pytest.raises(ConnectionError):
        env.run(processor.process, entries)
    assert env.ledger.count("e-1") == 1  # appended before the dead letters
    assert redis_sync.xlen(f"{stream_name}.dead") == 0

    retry = env.run(processor.process, entries)
    assert (retry.applied, retry.duplicates) == (0, 1)
    assert list(dead_letters(redis_sync, stream_name)) == [ids[1]]


class BrokenProjections:
    def catch_up(self) -> int:
        raise OSError("disk full")


def test_projections_failing_do_not_fail_the_batch(
    env: LedgerEnv, redis_sync: redis.Redis, stream_name: str
) -> None:
    processor = IngestProcessor(
        env.ledger, BrokenProjections(), RedisDeadLetterSink(redis_sync, stream_name)
    )
    ids = xadd_all(redis_sync, stream_name, [data(usage("e-1"))])
    result = env.run(processor.process, read_back(redis_sync, stream_name, ids))
    assert (result.applied, result.projected) == (1, False)


def test_an_empty_batch_does_nothing(env: LedgerEnv, processor: IngestProcessor) -> None:
    assert env.run(processor.process, []) == BatchResult((), 0, 0, (), True)
    assert env.ledger.seen() == 0


# -- the service on a real broker -------------------------------------------------------------


@dataclass
class Services:
    env: LedgerEnv
    redis_url: str
    stream: str
    client: redis.Redis
    running: list[IngestService] = field(default_factory=list)

    def processor(self) -> IngestProcessor:
        sink = RedisDeadLetterSink(self.client, self.stream)
        return IngestProcessor(self.env.ledger, self.env.projections, sink)

    async def start(
        self,
        consumer: str = "consumer-1",
        *,
        claim_idle_ms: int = NEVER_CLAIM_IDLE_MS,
        max_records: int = 1_000,
        max_deliveries: int = MAX_DELIVERIES,
        retention_ms: int | None = None,
        trim_interval_s: float = NEVER_TRIM_INTERVAL_S,
    ) -> IngestService:
        config = IngestConfig(
            stream=self.stream,
            consumer=consumer,
            claim_idle_ms=claim_idle_ms,
            reclaim_interval_s=FAST_RECLAIM_INTERVAL_S,
            max_records=max_records,
            max_deliveries=max_deliveries,
            retention_ms=retention_ms,
            trim_interval_s=trim_interval_s,
        )
        service = IngestService(
            build_broker(self.redis_url), self.processor(), config, executor=self.env.executor
        )
        await service.start()
        self.running.append(service)
        return service

    async def stop(self, service: IngestService) -> None:
        self.running.remove(service)
        await service.stop()

    def charged(self, *event_ids: str) -> Callable[[], bool]:
        return lambda: all(self.env.ledger.count(e) >= 1 for e in event_ids)

    def acked_through(self, entry_id: str) -> Callable[[], bool]:
        """Delivered up to `entry_id` and nothing left pending."""
        return lambda: (
            _id(last_delivered(self.client, self.stream)) >= _id(entry_id)
            and pending(self.client, self.stream) == 0
        )


def _id(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq)


@pytest.fixture
async def services(
    env: LedgerEnv, redis_url: str, stream_name: str, redis_sync: redis.Redis
) -> AsyncIterator[Services]:
    running = Services(env, redis_url, stream_name, redis_sync)
    try:
        yield running
    finally:
        for service in list(running.running):
            await running.stop(service)


async def test_backlog_and_live_entries_are_charged_and_acked(
    services: Services, redis_sync: redis.Redis, stream_name: str, redis_url: str
) -> None:
    # Published before any consumer group exists: the group is created at 0, so it is read.
    backlog = xadd_all(redis_sync, stream_name, [data(usage("early-1")), data(usage("early-2"))])
    await services.start()
    with UsagePublisher(redis_url, stream_name) as publisher:
        live = publisher.publish(usage_event("live-1"))
    await eventually(services.charged("early-1", "early-2", "live-1"), "all three charged")
    await eventually(services.acked_through(live), "all acked")

    env = services.env
    assert env.ledger.seen() == 3
    assert backlog[0] < live
    assert env.run(lambda: env.projections.position) == env.store.head().position


async def test_entries_published_through_faststream_are_charged(
    services: Services, redis_sync: redis.Redis, stream_name: str
) -> None:
    service = await services.start()
    await service.broker.publish(usage("fs-dict"), stream=stream_name)
    await service.broker.publish(
        msgspec.json.encode(usage("fs-bytes")), stream=stream_name, headers={"x-gateway": "gw-7"}
    )
    await eventually(services.charged("fs-dict", "fs-bytes"), "both charged")

    raw = xrange(redis_sync, stream_name)
    assert all(set(fields) == {b"__data__"} for _, fields in raw)
    assert all(fields[b"__data__"].startswith(b"\x89BIN\r\n\x1a\n") for _, fields in raw)
    await eventually(services.acked_through(raw[-1][0].decode()), "both acked")


async def test_every_dead_letter_reason_through_the_service_with_good_entries_between(
    services: Services, redis_sync: redis.Redis, stream_name: str
) -> None:
    entries: list[dict[bytes, bytes]] = [data(usage("dup-1"))]
    expected: dict[int, str] = {}
    for n, (_, fields, reason, _) in enumerate(BAD_ENTRIES):
        expected[len(entries)] = reason
        entries.append(fields)
        entries.append(data(usage(f"good-{n}")))
    expected[len(entries)] = "duplicate_conflict"
    entries.append(data(usage("dup-1", output_tokens=1)))
    entries.append(data(usage("dup-1")))  # a plain duplicate: no dead letter
    ids = xadd_all(redis_sync, stream_name, entries)

    await services.start()
    await eventually(services.acked_through(ids[-1]), "the whole stream acked")

    letters = dead_letters(redis_sync, stream_name)
    assert {entry_id: letter["reason"].decode() for entry_id, letter in letters.items()} == {
        ids[i]: reason for i, reason in expected.items()
    }
    for i in expected:
        original = entries[i].get(b"data")
        if original is not None:
            assert letters[ids[i]]["data"] == original
    ledger = services.env.ledger
    assert all(ledger.count(f"good-{n}") == 1 for n in range(len(BAD_ENTRIES)))
    assert (ledger.count("dup-1"), ledger.count("dup-1", "duplicate")) == (1, 1)


async def test_duplicates_across_batches_and_consumer_restarts_are_charged_once(
    services: Services, redis_sync: redis.Redis, stream_name: str
) -> None:
    first = await services.start("consumer-a")
    ids = xadd_all(redis_sync, stream_name, [data(usage("e-1")), data(usage("e-2"))])
    await eventually(services.acked_through(ids[-1]), "first batch acked")
    again = xadd_all(redis_sync, stream_name, [data(usage("e-1"))])
    await eventually(services.acked_through(again[-1]), "second batch acked")
    await services.stop(first)

    await services.start("consumer-b")  # a new process, same group: reads on from there
    later = xadd_all(redis_sync, stream_name, [data(usage("e-2")), data(usage("e-3"))])
    await eventually(services.acked_through(later[-1]), "third batch acked")

    ledger = services.env.ledger
    assert [ledger.count(e) for e in ("e-1", "e-2", "e-3")] == [1, 1, 1]
    assert [ledger.count(e, "duplicate") for e in ("e-1", "e-2", "e-3")] == [1, 1, 0]
    assert ledger.seen() == 5  # every entry processed once: nothing re-read after the restart
    assert redis_sync.xlen(f"{stream_name}.dead") == 0


async def test_a_lost_consumer_group_is_created_again_at_0_and_ingest_goes_on(
    services: Services, redis_sync: redis.Redis, stream_name: str
) -> None:
    # The stream is deleted (as when a Redis that keeps nothing on disk restarts): FastStream
    # stops its subscriber for good on NOGROUP. Gateways publish on, which makes the stream
    # again without the group; the service creates the group at 0 and charges what is there.
    service = await services.start()
    before = xadd_all(redis_sync, stream_name, [data(usage("e-1"))])
    await eventually(services.acked_through(before[-1]), "charged before the stream was lost")
    await service.stop_reclaimer()  # held still while the lag is read: it makes the group again
    redis_sync.delete(stream_name)
    await asyncio.sleep(0.2)  # the subscriber's blocked read ends on the deleted key
    after = xadd_all(redis_sync, stream_name, [data(usage("e-1")), data(usage("e-2"))])
    assert await service.consumer_lag() == 2  # no group yet: every entry is still to read
    service.start_reclaimer()

    await eventually(services.charged("e-2"), "charged after the group came back", GROUP_LOST_S)
    await eventually(services.acked_through(after[-1]), "acked", GROUP_LOST_S)
    ledger = services.env.ledger
    assert [ledger.count("e-1"), ledger.count("e-1", "duplicate"), ledger.count("e-2")] == [1, 1, 1]
    assert redis_sync.xlen(f"{stream_name}.dead") == 0


async def test_trimming_deletes_acknowledged_entries_only_and_their_dead_letter_index_fields(
    services: Services, redis_sync: redis.Redis, stream_name: str
) -> None:
    ledger = services.env.ledger
    service = await services.start(retention_ms=0)
    done = xadd_all(redis_sync, stream_name, [data(usage("e-1")), {b"data": b"bad"}])
    await eventually(services.acked_through(done[-1]), "charged and dead-lettered")
    ledger.fail_when = lambda usages: True
    failing = xadd_all(redis_sync, stream_name, [data(usage("e-2"))])
    await eventually(lambda: ledger.failures == 1, "the next batch failed")
    index = dead_letter_index(stream_name)
    assert redis_sync.hkeys(index) == [done[1].encode()]

    assert await service.trim_once() == 2  # acknowledged; the pending one stays
    assert [entry_id.decode() for entry_id, _ in xrange(redis_sync, stream_name)] == failing
    assert redis_sync.hlen(index) == 0  # that source entry is gone: it cannot come back
    assert list(dead_letters(redis_sync, stream_name)) == [done[1]]  # the letter itself stays
    assert await service.trim_once() == 0

    await services.stop(service)
    unread = xadd_all(redis_sync, stream_name, [data(usage("e-3"))])
    assert await service.trim_once() == 0  # never past what the group has not read
    assert [
        entry_id.decode() for entry_id, _ in xrange(redis_sync, stream_name)
    ] == failing + unread


async def test_entries_younger_than_the_retention_stay_and_the_service_trims_by_itself(
    services: Services, redis_sync: redis.Redis, stream_name: str
) -> None:
    kept = await services.start("consumer-a", retention_ms=3_600_000)
    ids = xadd_all(redis_sync, stream_name, [data(usage(f"e-{n}")) for n in range(3)])
    await eventually(services.acked_through(ids[-1]), "acked")
    assert await kept.trim_once() == 0
    assert redis_sync.xlen(stream_name) == 3
    await services.stop(kept)

    await services.start("consumer-b", retention_ms=0, trim_interval_s=FAST_RECLAIM_INTERVAL_S)
    # Everything before the last delivered entry goes; that one is kept as the bound.
    await eventually(lambda: redis_sync.xlen(stream_name) == 1, "trimmed by the service")
    assert [entry_id.decode() for entry_id, _ in xrange(redis_sync, stream_name)] == ids[-1:]
    assert services.env.ledger.seen() == 3


async def test_a_failing_handler_leaves_its_batch_pending_and_a_restart_charges_it_once(
    services: Services, redis_sync: redis.Redis, stream_name: str
) -> None:
    ledger = services.env.ledger
    ledger.fail_when = lambda usages: ledger.failures == 0
    first = await services.start("consumer-a")
    xadd_all(redis_sync, stream_name, [data(usage("e-1")), data(usage("e-2"))])
    await eventually(lambda: ledger.failures == 1, "the handler failed")
    await asyncio.sleep(0.2)  # time enough for an ack, which must not come

    assert pending(redis_sync, stream_name) == 2
    assert cast(Any, redis_sync).xpending(stream_name, CONSUMER_GROUP)["consumers"] == [
        {"name": b"consumer-a", "pending": 2}
    ]
    assert ledger.seen() == 0
    await services.stop(first)

    await services.start("consumer-b", claim_idle_ms=FAST_CLAIM_IDLE_MS)
    await eventually(services.charged("e-1", "e-2"), "reclaimed and charged")
    await eventually(lambda: pending(redis_sync, stream_name) == 0, "acked")
    assert [ledger.count("e-1"), ledger.count("e-2"), ledger.seen()] == [1, 1, 2]


async def test_a_failed_batch_is_retried_by_the_same_consumer_after_the_claim_idle_time(
    services: Services, redis_sync: redis.Redis, stream_name: str
) -> None:
    ledger = services.env.ledger
    ledger.fail_when = lambda usages: ledger.failures == 0
    await services.start(claim_idle_ms=FAST_CLAIM_IDLE_MS)
    ids = xadd_all(redis_sync, stream_name, [data(usage("e-1")), {b"data": b"bad"}])
    await eventually(lambda: ledger.failures == 1, "the handler failed")
    await eventually(services.charged("e-1"), "retried")
    await eventually(services.acked_through(ids[-1]), "acked")
    assert ledger.count("e-1") == 1
    assert list(dead_letters(redis_sync, stream_name)) == [ids[1]]


async def test_a_poison_entry_in_a_reclaimed_batch_holds_back_no_other(
    services: Services, redis_sync: redis.Redis, stream_name: str
) -> None:
    ledger = services.env.ledger
    ledger.fail_when = lambda usages: any(u.event_id == "poison" for u in usages)
    await services.start(claim_idle_ms=FAST_CLAIM_IDLE_MS)
    ids = xadd_all(
        redis_sync,
        stream_name,
        [data(usage("e-1")), data(usage("poison")), data(usage("e-2"))],
    )
    await eventually(services.charged("e-1", "e-2"), "the good entries charged")
    await eventually(lambda: pending(redis_sync, stream_name) == 1, "only the poison pending")

    still: list[dict[str, Any]] = cast(Any, redis_sync).xpending_range(
        stream_name, CONSUMER_GROUP, "-", "+", 10
    )
    assert [entry["message_id"].decode() for entry in still] == [ids[1]]
    assert [ledger.count("e-1"), ledger.count("e-2")] == [1, 1]


async def test_entries_pending_on_a_dead_consumer_are_reclaimed_and_charged_once(
    services: Services, redis_sync: redis.Redis, stream_name: str
) -> None:
    claim_idle_ms = 1_000
    ids = xadd_all(redis_sync, stream_name, [data(usage(f"e-{n}")) for n in range(3)])
    redis_sync.xgroup_create(stream_name, CONSUMER_GROUP, id="0")
    delivered: Any = redis_sync.xreadgroup(CONSUMER_GROUP, "dead-consumer", {stream_name: ">"})
    read_at = time.monotonic()
    assert len(delivered[0][1]) == 3  # pending on a consumer that will never ack

    await services.start("live-consumer", claim_idle_ms=claim_idle_ms)
    assert (time.monotonic() - read_at) * 1000 < claim_idle_ms  # taken over at start, not idle

    await eventually(services.charged("e-0", "e-1", "e-2"), "reclaimed and charged")
    await eventually(lambda: pending(redis_sync, stream_name) == 0, "acked")
    assert services.env.ledger.seen() == 3
    listed: list[dict[str, Any]] = cast(Any, redis_sync).xinfo_consumers(stream_name, "ledger")
    consumers = {c["name"]: c["pending"] for c in listed}
    assert consumers == {b"dead-consumer": 0, b"live-consumer": 0}
    assert ids


async def test_many_entries_are_read_in_batches_of_max_records(
    services: Services, redis_sync: redis.Redis, stream_name: str
) -> None:
    ids = xadd_all(redis_sync, stream_name, [data(usage(f"e-{n}")) for n in range(250)])
    await services.start(max_records=100)
    await eventually(services.acked_through(ids[-1]), "all acked")
    assert services.env.ledger.seen() == 250
    assert all(services.env.ledger.count(f"e-{n}") == 1 for n in range(250))


# -- the FastStream application ---------------------------------------------------------------


async def test_the_faststream_app_creates_the_group_at_0_and_consumes_the_backlog(
    env: LedgerEnv, redis_url: str, redis_sync: redis.Redis, stream_name: str
) -> None:
    ids = xadd_all(redis_sync, stream_name, [data(usage("e-1"))])
    processor = IngestProcessor(
        env.ledger, env.projections, RedisDeadLetterSink(redis_sync, stream_name)
    )
    config = IngestConfig(stream=stream_name, consumer="app-consumer")
    app = create_app(redis_url, processor, config, executor=env.executor)
    running = asyncio.create_task(app.run())
    try:
        await eventually(lambda: env.ledger.count("e-1") == 1, "charged by the app")
        await eventually(lambda: pending(redis_sync, stream_name) == 0, "acked")
    finally:
        app.exit()
        await asyncio.wait_for(running, timeout=WAIT_TIMEOUT_S)
    assert ids


def test_the_asyncapi_document_can_be_generated(
    env: LedgerEnv, redis_url: str, redis_sync: redis.Redis, stream_name: str
) -> None:
    processor = IngestProcessor(
        env.ledger, env.projections, RedisDeadLetterSink(redis_sync, stream_name)
    )
    app = create_app(redis_url, processor, IngestConfig(stream=stream_name))
    assert app.broker is not None
    document = AsyncAPI(app.broker).to_specification().to_json()
    assert stream_name in document


# -- the publisher ----------------------------------------------------------------------------


def test_the_publisher_writes_the_public_contract_format(
    redis_url: str, redis_sync: redis.Redis, stream_name: str
) -> None:
    events = [usage_event(f"e-{n}") for n in range(3)]
    with UsagePublisher(redis_url, stream_name) as publisher:
        one = publisher.publish(events[0])
        many = publisher.publish_many(events[1:])
    raw = xrange(redis_sync, stream_name)
    assert [entry_id.decode() for entry_id, _ in raw] == [one, *many]
    assert [set(fields) for _, fields in raw] == [{b"data"}] * 3
    assert [fields[b"data"] for _, fields in raw] == [encode_usage(e) for e in events]
    assert [msgspec.json.decode(f[b"data"], type=UsageEvent) for _, f in raw] == events


async def test_a_crashed_batch_is_charged_before_a_conflicting_duplicate_published_after_it(
    services: Services, redis_sync: redis.Redis, stream_name: str
) -> None:
    """ "The first one stands": what a dead consumer left pending is taken over at start,
    before anything new is read, so a later conflicting payload cannot overtake it."""
    first = xadd_all(redis_sync, stream_name, [data(usage("e-1", input_tokens=100))])
    redis_sync.xgroup_create(stream_name, CONSUMER_GROUP, id="0")
    redis_sync.xreadgroup(CONSUMER_GROUP, "dead-consumer", {stream_name: ">"})
    later = xadd_all(redis_sync, stream_name, [data(usage("e-1", input_tokens=999))])

    await services.start("live-consumer")  # NEVER_CLAIM_IDLE_MS: only the start takes over
    await eventually(lambda: pending(redis_sync, stream_name) == 0, "acked")
    await eventually(lambda: later[0] in dead_letters(redis_sync, stream_name), "dead-lettered")

    assert dead_letters(redis_sync, stream_name)[later[0]]["reason"] == b"duplicate_conflict"
    assert first[0] not in dead_letters(redis_sync, stream_name)
    assert services.env.ledger.count("e-1") == 1


# -- a Redis Cluster --------------------------------------------------------------------------

CLUSTER_STREAMS = ("clus.a.usage", "clus.b.usage")
"""Two usage streams (and their dead-letter streams) held by different nodes of the cluster."""


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedisCluster]:
    """Three masters on loopback from the local `redis-server` (the fixture starts them)."""
    try:
        find_redis_binary()
    except RedisBinaryNotFoundError as error:
        no_service(f"no redis-server for a local cluster: {error}")
    with EmbeddedRedisCluster(tmp_path_factory.mktemp("redis-cluster"), masters=3) as cluster:
        yield cluster


async def test_ingest_and_dead_letters_work_on_a_redis_cluster_across_slots(
    env: LedgerEnv, redis_cluster: EmbeddedRedisCluster
) -> None:
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    nodes = {
        client.get_node_from_key(key).name
        for stream in CLUSTER_STREAMS
        for key in (stream, f"{stream}.dead")
    }
    assert len(nodes) >= 2, "the streams must live on different nodes for this test to mean it"
    published: dict[str, list[str]] = {}
    for n, stream in enumerate(CLUSTER_STREAMS):
        published[stream] = [
            client.xadd(stream, data(usage(f"clus-{n}-ok-1"))).decode(),
            client.xadd(stream, {b"data": b"{not json"}).decode(),
            client.xadd(stream, data(usage(f"clus-{n}-model", model="gpt-0"))).decode(),
            client.xadd(stream, data(usage(f"clus-{n}-ok-2"))).decode(),
        ]
    services = []
    try:
        for stream in CLUSTER_STREAMS:
            sink = RedisDeadLetterSink.from_url(redis_cluster.url, stream, cluster=True)
            processor = IngestProcessor(env.ledger, env.projections, sink)
            config = IngestConfig(stream=stream, consumer="cluster-consumer", retention_ms=0)
            service = IngestService(
                build_broker(redis_cluster.url, cluster=True),
                processor,
                config,
                executor=env.executor,
            )
            await service.start()
            services.append(service)
            await service.broker.publish(usage(f"{stream}-faststream"), stream=stream)
        charged = [f"clus-{n}-ok-{k}" for n in range(2) for k in (1, 2)]
        charged += [f"{stream}-faststream" for stream in CLUSTER_STREAMS]
        await eventually(lambda: all(env.ledger.count(e) == 1 for e in charged), "charged")
        for stream in CLUSTER_STREAMS:
            await eventually(
                lambda s=stream: len(dead_letters(cast(Any, client), s)) == 2, f"{stream} dead"
            )
            await eventually(lambda s=stream: pending(cast(Any, client), s) == 0, "acked")
            letters = dead_letters(cast(Any, client), stream)
            _, bad_json, bad_model, _ = published[stream]
            assert letters[bad_json]["reason"] == b"invalid_json"
            assert letters[bad_model]["reason"] == b"unknown_model"
            # Writing the same letters again (a redelivered batch) adds none.
            sink = RedisDeadLetterSink(client, stream)
            sink.write([DeadLetter(bad_json, "invalid_json", "again", b"{not json")])
            assert len(dead_letters(cast(Any, client), stream)) == 2
        for service, stream in zip(services, CLUSTER_STREAMS, strict=True):
            # Trimming on a cluster: the stream and the index are on their own slots.
            assert await service.trim_once() == 4  # all but the last delivered entry
            assert client.xlen(stream) == 1
            assert client.hlen(dead_letter_index(stream)) == 0
            assert len(dead_letters(cast(Any, client), stream)) == 2
    finally:
        for service in services:
            await service.stop()
        for stream in CLUSTER_STREAMS:
            client.delete(stream)
            client.delete(f"{stream}.dead")
            client.delete(dead_letter_index(stream))
        client.close()


@pytest.mark.parametrize("stream", ["ledger.usage", "team.{7}.usage", "{p}.usage", "a{b"])
def test_the_dead_letter_index_shares_the_slot_of_the_dead_letter_stream(stream: str) -> None:
    assert key_slot(dead_letter_index(stream).encode()) == key_slot(f"{stream}.dead".encode())


async def test_an_entry_failing_on_its_own_max_deliveries_times_is_dead_lettered_and_acked(
    services: Services, redis_sync: redis.Redis, stream_name: str
) -> None:
    ledger = services.env.ledger
    ledger.fail_when = lambda usages: any(u.event_id == "poison" for u in usages)
    await services.start(claim_idle_ms=FAST_CLAIM_IDLE_MS, max_deliveries=3)
    ids = xadd_all(
        redis_sync, stream_name, [data(usage("e-1")), data(usage("poison")), data(usage("e-2"))]
    )
    await eventually(lambda: ids[1] in dead_letters(redis_sync, stream_name), "given up")
    await eventually(lambda: pending(redis_sync, stream_name) == 0, "all acknowledged")
    letter = dead_letters(redis_sync, stream_name)[ids[1]]
    assert letter["reason"] == b"delivery_limit"
    assert b"InjectedFailure" in letter["detail"] and b"after 3 deliveries" in letter["detail"]
    assert letter["data"] == data(usage("poison"))[b"data"]
    assert [ledger.count("e-1"), ledger.count("e-2"), ledger.count("poison")] == [1, 1, 0]


async def test_an_entry_the_store_cannot_take_is_never_given_up_whatever_its_deliveries(
    services: Services, redis_sync: redis.Redis, stream_name: str
) -> None:
    ledger = services.env.ledger

    def store_away(usages: Sequence[UsageEvent]) -> bool:
        if any(u.event_id == "unlucky" for u in usages):
            raise StoreError("the log's database is away")
        return False

    ledger.fail_when = store_away
    await services.start(claim_idle_ms=FAST_CLAIM_IDLE_MS, max_deliveries=2)
    ids = xadd_all(redis_sync, stream_name, [data(usage("unlucky"))])

    def delivered() -> int:
        rows: list[dict[str, Any]] = cast(Any, redis_sync).xpending_range(
            stream_name, CONSUMER_GROUP, "-", "+", 1
        )
        return int(rows[0]["times_delivered"]) if rows else 0

    await eventually(lambda: delivered() >= 5, "retried past the delivery limit")
    assert dead_letters(redis_sync, stream_name) == {}
    ledger.fail_when = lambda usages: False  # the store is back
    await eventually(services.charged("unlucky"), "charged once the store answers")
    await eventually(lambda: pending(redis_sync, stream_name) == 0, "acknowledged")
    assert ids and ledger.count("unlucky") == 1


def test_metrics_count_entries_charges_credits_and_dead_letters_by_reason(
    env: LedgerEnv, redis_sync: redis.Redis, stream_name: str
) -> None:
    metrics = LedgerMetrics()
    processor = IngestProcessor(
        env.ledger, None, RedisDeadLetterSink(redis_sync, stream_name), metrics=metrics
    )
    entries = [data(usage("m-1")), {b"data": b"{not json"}, data(usage("m-1"))]
    ids = xadd_all(redis_sync, stream_name, entries)
    env.run(processor.process, read_back(redis_sync, stream_name, ids))
    sample = metrics.registry.get_sample_value
    assert sample("ledger_events_ingested_total") == 3
    assert sample("ledger_charges_total") == 1  # the second m-1 is a duplicate: charged once
    assert sample("ledger_credits_deducted_ucr_total") == 3_180_000  # the seed example: 3.18
    assert sample("ledger_events_dead_lettered_total", {"reason": "invalid_json"}) == 1


def test_the_usage_retention_comes_from_the_environment() -> None:
    assert Settings.from_env({}).usage_retention_ms() == 3_600_000
    assert Settings.from_env({"LEDGER_USAGE_RETENTION_S": "0"}).usage_retention_ms() == 0
    assert Settings.from_env({"LEDGER_USAGE_RETENTION_S": "forever"}).usage_retention_ms() is None
    for bad in ("-1", "1h", str(367 * 86_400)):
        with pytest.raises(ConfigError, match="LEDGER_USAGE_RETENTION_S"):
            Settings.from_env({"LEDGER_USAGE_RETENTION_S": bad})
