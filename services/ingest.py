"""Usage ingest: Redis stream → ledger charges → read models, with dead letters (SPEC §3).

Two layers:

- `IngestProcessor.process(entries)` is the synchronous core. It takes raw stream entries
  (`(entry_id, fields)`), decodes each into a `UsageEvent`, charges every valid one in ONE
  `Ledger.charge` call (one append transaction), lets the projections catch up, then writes the
  dead letters. It never acknowledges anything: its caller acks the batch after it returns.
- `IngestService` wires it to FastStream: a batch subscriber of the usage stream in consumer
  group `ledger`, a reclaimer for entries stuck on dead consumers, and `create_app` for a
  standalone FastStream application.

Crash safety: the order is append, then dead letters, then ack. A crash anywhere before the ack
leaves the batch pending, so it is delivered again; the ledger's idempotency (`event_id`) makes
the second delivery charge nothing, and dead letters are written through a Lua script keyed by
the source entry id (`{<stream>.dead}.index`, a hash of source id → dead-letter id), so a
redelivered batch does not dead-letter the same entry twice.

Entry formats accepted (the payload is looked up in this order):

- `data`: the public contract, `XADD <stream> * data <json>`; the field value is the JSON.
- `__data__`: written by FastStream's own publisher (`broker.publish(obj, stream=...)`). In
  FastStream 0.7.8 the value is `BinaryMessageFormatV1`: the magic `b"\\x89BIN\\r\\n\\x1a\\n"`,
  a 2-byte version (1), 4-byte offsets of the headers and of the body, a 2-byte header count,
  length-prefixed header keys and values (`correlation_id`, `content-type`, custom headers),
  then the body (the JSON). Older FastStream releases wrote a JSON envelope
  `{"data": "...", "headers": {...}}`. Both are unwrapped by the broker's `message_format`
  (FastStream's own parser), and the body is decoded as a usage event.

Dead letters go to `<stream>.dead` with the fields `reason`, `detail`, `data` (the original
bytes of the payload field, envelope included; for `missing_data`, a JSON object of the
entry's fields), `source_id` (the entry id) and `stream` (the source stream).

Partitions: with LEDGER_PARTITIONS > 1 each partition's stream (`{<stream>.<k>}`) has its own
`IngestService` and processor, which dead-letters an event whose subscription belongs to
another partition (`wrong_partition`: charging it here could race its partition's owner) and
appends under the partition lease's `Fence`. A service whose lease is gone (`PartitionLease`)
processes and acknowledges nothing more: its entries stay pending for the new owner.

Threading: `Ledger` and the SQLite stores are synchronous and single-threaded. The service runs
every `process` call on one executor thread (a private single-thread executor unless one is
given) and the processor holds a lock around ledger and projection work, which callers that
share the ledger (an HTTP API) can share too. SQLite connections made with the default
`check_same_thread=True` must be created on that executor's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgspec
import redis
import structlog
from faststream import AckPolicy, FastStream, NoCast
from faststream.message import StreamMessage
from faststream.redis import RedisBroker, RedisClusterBroker, StreamSub
from faststream.redis.message import DATA_KEY, BatchStreamMessage
from faststream.redis.parser import BinaryMessageFormatV1, MessageFormat
from redis.exceptions import ResponseError

from ledger.errors import LeaseLost, StoreError
from ledger.leases import Fence
from ledger.partitions import partition_of
from schemas.usage import UsageEvent
from services.client import as_text, redis_client
from services.config import CLAIM_IDLE_MS, Settings, default_consumer_name
from services.logs import BROKER_LOGGER
from services.metrics import LedgerMetrics

log = structlog.get_logger(__name__)

# -- names and limits -------------------------------------------------------------------------

CONSUMER_GROUP: Final = "ledger"
DATA_FIELD: Final = b"data"
"""The payload field of the public contract: `XADD <stream> * data <json>`."""
FASTSTREAM_DATA_FIELD: Final = DATA_KEY.encode()
"""The payload field FastStream's publisher writes (`__data__`)."""
DEAD_LETTER_SUFFIX: Final = ".dead"
DEAD_LETTER_INDEX_SUFFIX: Final = ".index"
"""Hash of source entry id → dead-letter entry id, beside the dead-letter stream (see
`dead_letter_index`); makes dead-lettering idempotent."""

MAX_RECORDS: Final = 1_000
"""Most entries read (and charged in one ledger transaction) per batch."""
POLL_BLOCK_MS: Final = 100
"""XREADGROUP BLOCK timeout in milliseconds; an arriving entry ends the wait at once."""
RECLAIM_INTERVAL_S: Final = 5.0
"""Seconds between two sweeps of the pending list with XAUTOCLAIM."""
MAX_DELIVERIES: Final = 20
"""Deliveries after which an entry that still fails on its own is dead-lettered
(`delivery_limit`, with the error) instead of being retried for ever: with the default claim
idle time, about ten minutes of retries. Failures of the store or of Redis never count: those
entries stay pending until the store answers again (a valid event is never given up because
the database was away)."""
INFRASTRUCTURE_ERRORS: Final[tuple[type[BaseException], ...]] = (
    StoreError,
    OSError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
"""Failures that say nothing about the entry: it is retried, whatever its delivery count."""
TRIM_INTERVAL_S: Final = 60.0
"""Seconds between two trims of the usage stream (`IngestConfig.retention_ms`)."""
GRACEFUL_TIMEOUT_S: Final = 15.0
"""Seconds the broker waits, when stopping, for a batch in flight to finish."""
LINGER_S: Final = 0.01
"""After a batch that was not full, seconds to wait before reading the next: under a steady
trickle the writer then appends (and commits, and acknowledges) tens of entries at once instead
of one or two, for at most this much added delay. A full batch (a backlog) reads on at once."""
READ_AHEAD_BATCHES: Final = 2
"""Batches read from Redis and queued while the one before them is charged: the next read
overlaps the current append. Each stays pending (unacknowledged) until it is charged."""

# Dead-letter reasons produced here (the ledger's rejections add their own reasons).
INVALID_JSON: Final = "invalid_json"
INVALID_EVENT: Final = "invalid_event"
MISSING_DATA: Final = "missing_data"
WRONG_PARTITION: Final = "wrong_partition"
"""The event's subscription hashes to another partition than the stream it arrived on."""
REJECTED: Final = "rejected"
DELIVERY_LIMIT: Final = "delivery_limit"
"""An entry that failed on its own `max_deliveries` times (a payload that trips a bug)."""
"""Fallback reason for a ledger rejection that carries none."""

StreamEntry = tuple[str, Mapping[bytes, bytes]]
"""One raw Redis stream entry: its id (`"1700000000000-0"`) and its fields."""

USAGE_DECODER: Final = msgspec.json.Decoder(UsageEvent)

_FIELDS_ENCODER: Final = msgspec.json.Encoder()


# -- what the processor needs of its collaborators --------------------------------------------


class ChargeOutcome(Protocol):
    """What `Ledger.charge` answers per usage event."""

    @property
    def status(self) -> str: ...  # "applied" | "duplicate" | "rejected"

    @property
    def reason(self) -> str | None: ...

    @property
    def detail(self) -> str | None: ...

    @property
    def charged_ucr(self) -> int: ...


class ChargingLedger(Protocol):
    def charge(self, usages: Sequence[UsageEvent]) -> Sequence[ChargeOutcome]: ...


class FencedLedger(Protocol):
    def charge(
        self, usages: Sequence[UsageEvent], fence: Fence | None = None
    ) -> Sequence[ChargeOutcome]: ...


class PartitionLease(Protocol):
    """A consumer's hold on its partition, as the lease keeper sees it."""

    def held(self) -> bool:
        """False once the lease may have expired (by this process's clock, conservatively)."""
        ...

    def lost(self) -> None:
        """Tell the keeper the store refused the lease (`LeaseLost`)."""
        ...


class Projections(Protocol):
    def catch_up(self) -> int: ...


class DeadLetter(msgspec.Struct, frozen=True):
    """An entry that could not be charged, with the original bytes and a stable reason."""

    source_id: str
    reason: str
    detail: str
    data: bytes


class DeadLetterSink(Protocol):
    def write(self, letters: Sequence[DeadLetter]) -> None:
        """Persist every letter (idempotently per `source_id`) or raise."""
        ...


# -- the dead-letter stream -------------------------------------------------------------------

_DEAD_LETTER_SCRIPT: Final = """
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then
  return {existing, 0}
end
local id = redis.call('XADD', KEYS[1], '*',
  'reason', ARGV[2], 'detail', ARGV[3], 'data', ARGV[4], 'source_id', ARGV[1],
  'stream', ARGV[5])
redis.call('HSET', KEYS[2], ARGV[1], id)
return {id, 1}
"""
"""XADD one dead letter unless this source entry already has one (atomic on the server)."""


def dead_letter_stream(stream: str) -> str:
    return f"{stream}{DEAD_LETTER_SUFFIX}"


def dead_letter_index(stream: str) -> str:
    """The index key of `stream`'s dead letters, in the same Redis Cluster slot as the
    dead-letter stream (the script writing a letter touches both): a name that carries a hash
    tag keeps it; otherwise the whole dead-letter stream name becomes the tag, which hashes to
    the slot of that name itself (`{ledger.usage.dead}.index` beside `ledger.usage.dead`).

    Redis's rule: the tag is what lies between the first `{` and the first `}` after it, if
    anything does. (An untagged stream name containing `}` cannot be given a same-slot index
    this way; such names are not supported on a cluster.)"""
    dead = dead_letter_stream(stream)
    opening = dead.find("{")
    closing = dead.find("}", opening + 1) if opening != -1 else -1
    tagged = closing > opening + 1
    return f"{dead if tagged else '{' + dead + '}'}{DEAD_LETTER_INDEX_SUFFIX}"


class RedisDeadLetterSink:
    """Writes dead letters to `<stream>.dead`, at most one per source entry id.

    The index hash (`dead_letter_index`) remembers which source ids were dead-lettered (one
    field per letter); `IngestService.trim_once` drops the fields of source entries it deleted.
    On a Redis Cluster, where a pipeline may not run scripts, each letter is one round trip.
    """

    def __init__(
        self, client: redis.Redis | redis.cluster.RedisCluster, source_stream: str
    ) -> None:
        self._client = client
        self.source_stream = source_stream
        self.stream = dead_letter_stream(source_stream)
        self.index = dead_letter_index(source_stream)
        self._script = client.register_script(_DEAD_LETTER_SCRIPT)
        self._pipelined = not isinstance(client, redis.cluster.RedisCluster)

    @classmethod
    def from_url(
        cls, redis_url: str, source_stream: str, *, cluster: bool = False
    ) -> RedisDeadLetterSink:
        return cls(redis_client(redis_url, cluster=cluster), source_stream)

    def write(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        keys = [self.stream, self.index]

        def args(letter: DeadLetter) -> list[str | bytes]:
            return [letter.source_id, letter.reason, letter.detail, letter.data, self.source_stream]

        if self._pipelined:
            pipe = self._client.pipeline(transaction=False)
            for letter in letters:
                self._script(keys=keys, args=args(letter), client=pipe)
            replies = pipe.execute()
        else:
            replies = [self._script(keys=keys, args=args(letter)) for letter in letters]
        for letter, (dead_id, written) in zip(letters, replies, strict=True):
            if not written:
                log.info(
                    "ingest.dead_letter_exists",
                    stream=self.source_stream,
                    source_id=letter.source_id,
                    dead_letter_id=dead_id.decode(),
                )

    def close(self) -> None:
        self._client.close()


# -- the processor ----------------------------------------------------------------------------


class BatchResult(msgspec.Struct, frozen=True):
    """What one `process` call did; the caller acknowledges `entry_ids` afterwards."""

    entry_ids: tuple[str, ...]
    applied: int
    duplicates: int
    dead_letters: tuple[DeadLetter, ...]
    projected: bool
    """False when the projections failed to catch up (they retry with the next batch)."""


class _Decoded(msgspec.Struct, frozen=True):
    entry_id: str
    original: bytes
    event: UsageEvent


def _fields_as_json(fields: Mapping[bytes, bytes]) -> bytes:
    """An entry without a payload field, kept as a JSON object of its fields."""
    return _FIELDS_ENCODER.encode(
        {
            key.decode(errors="backslashreplace"): value.decode(errors="backslashreplace")
            for key, value in fields.items()
        }
    )


class IngestProcessor:
    """Turns a batch of raw stream entries into one ledger append plus dead letters.

    `process` is synchronous and holds `lock` for the ledger and projection work; it raises
    (and nothing is to be acknowledged) when the append, or writing dead letters, fails.
    """

    def __init__(
        self,
        ledger: ChargingLedger,
        projections: Projections | None,
        dead_letter_sink: DeadLetterSink,
        *,
        message_format: type[MessageFormat] = BinaryMessageFormatV1,
        lock: threading.Lock | threading.RLock | None = None,
        metrics: LedgerMetrics | None = None,
        partition: int = 0,
        partitions: int = 1,
        fence: Fence | None = None,
    ) -> None:
        if not 0 <= partition < partitions:
            raise ValueError(f"partition {partition} is not in 0..{partitions - 1}")
        if fence is not None and fence.partition != partition:
            raise ValueError(f"a fence of partition {fence.partition} for partition {partition}")
        self.partition = partition
        self.partitions = partitions
        self.fence = fence
        self.metrics = metrics
        self.ledger = ledger
        self.projections = projections
        self.dead_letter_sink = dead_letter_sink
        self.message_format = message_format
        self.lock = lock if lock is not None else threading.Lock()

    def payload(self, fields: Mapping[bytes, bytes]) -> tuple[bytes, bytes] | None:
        """(original bytes, usage JSON bytes) of an entry; None when it has no payload field."""
        data = fields.get(DATA_FIELD)
        if data is not None:
            return data, data
        wrapped = fields.get(FASTSTREAM_DATA_FIELD)
        if wrapped is not None:
            body, _headers = self.message_format.parse(wrapped)
            return wrapped, body
        return None

    def decode(self, entry: StreamEntry) -> _Decoded | DeadLetter:
        entry_id, fields = entry
        found = self.payload(fields)
        if found is None:
            names = ", ".join(sorted(k.decode(errors="backslashreplace") for k in fields))
            return DeadLetter(
                entry_id,
                MISSING_DATA,
                f"no 'data' or '{DATA_KEY}' field (fields: {names or 'none'})",
                _fields_as_json(fields),
            )
        original, body = found
        try:
            event = USAGE_DECODER.decode(body)
        except msgspec.ValidationError as exc:  # valid JSON, not a valid event
            return DeadLetter(entry_id, INVALID_EVENT, str(exc), original)
        except msgspec.DecodeError as exc:
            return DeadLetter(entry_id, INVALID_JSON, str(exc), original)
        except UnicodeDecodeError as exc:  # a JSON string holding bytes that are not UTF-8
            return DeadLetter(entry_id, INVALID_JSON, f"not UTF-8: {exc}", original)
        return _Decoded(entry_id, original, event)

    def process(self, entries: Sequence[StreamEntry]) -> BatchResult:
        bound = log.bind(
            stream=getattr(self.dead_letter_sink, "source_stream", None),
            first_id=entries[0][0] if entries else None,
            entries=len(entries),
        )
        letters: list[DeadLetter] = []
        valid: list[_Decoded] = []
        for entry in entries:
            decoded = self.decode(entry)
            if isinstance(decoded, DeadLetter):
                letters.append(decoded)
            elif (
                self.partitions > 1
                and (home := partition_of(decoded.event.subscription_id, self.partitions))
                != self.partition
            ):
                letters.append(
                    DeadLetter(
                        decoded.entry_id,
                        WRONG_PARTITION,
                        f"subscription {decoded.event.subscription_id!r} belongs to partition "
                        f"{home} of {self.partitions}, not {self.partition}",
                        decoded.original,
                    )
                )
            else:
                valid.append(decoded)

        applied = duplicates = credits_ucr = 0
        projected = True
        with self.lock:
            if valid:
                usages = [item.event for item in valid]
                if self.fence is None:
                    outcomes = self.ledger.charge(usages)
                else:
                    fenced: FencedLedger = self.ledger  # type: ignore[assignment]
                    outcomes = fenced.charge(usages, fence=self.fence)
                if len(outcomes) != len(valid):
                    raise RuntimeError(
                        f"ledger answered {len(outcomes)} outcomes for {len(valid)} usages"
                    )
                for item, outcome in zip(valid, outcomes, strict=True):
                    if outcome.status == "applied":
                        applied += 1
                        credits_ucr += outcome.charged_ucr
                    elif outcome.status == "duplicate":
                        duplicates += 1
                    else:
                        letters.append(
                            DeadLetter(
                                item.entry_id,
                                outcome.reason or REJECTED,
                                outcome.detail or "",
                                item.original,
                            )
                        )
            if self.projections is not None:
                projected = self._catch_up(bound)

        if letters:
            letters.sort(key=lambda letter: _id_key(letter.source_id))
            self.dead_letter_sink.write(letters)
            bound.warning(
                "ingest.dead_letters",
                count=len(letters),
                reasons=dict(Counter(letter.reason for letter in letters)),
                first_source_id=letters[0].source_id,
            )
            for letter in letters:
                bound.debug(
                    "ingest.dead_letter",
                    source_id=letter.source_id,
                    reason=letter.reason,
                    detail=letter.detail,
                )
        if self.metrics is not None:
            self._count(len(entries), applied, credits_ucr, letters)
        bound.debug(
            "ingest.batch",
            applied=applied,
            duplicates=duplicates,
            dead_letters=len(letters),
            projected=projected,
        )
        return BatchResult(
            entry_ids=tuple(entry_id for entry_id, _ in entries),
            applied=applied,
            duplicates=duplicates,
            dead_letters=tuple(letters),
            projected=projected,
        )

    def _count(
        self, entries: int, applied: int, credits_ucr: int, letters: Sequence[DeadLetter]
    ) -> None:
        metrics = self.metrics
        assert metrics is not None
        metrics.events_ingested.inc(entries)
        metrics.charges.inc(applied)
        metrics.credits_deducted_ucr.inc(credits_ucr)
        for reason, count in Counter(letter.reason for letter in letters).items():
            metrics.dead_lettered.inc(count, reason=reason)

    def _catch_up(self, bound: Any) -> bool:
        """Fold the new records into the read models.

        The log is the source of truth and the append has already committed, so a failure here
        does not fail the batch (redelivering it would charge nothing): it is logged, and the
        next batch catches up again.
        """
        assert self.projections is not None
        try:
            self.projections.catch_up()
        except Exception:
            bound.exception("ingest.projections_failed")
            return False
        return True


def _id_key(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    try:
        return int(millis), int(seq or 0)
    except ValueError:
        return (0, 0)


# -- FastStream wiring ------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestConfig:
    stream: str = "ledger.usage"
    group: str = CONSUMER_GROUP
    consumer: str = field(default_factory=default_consumer_name)
    max_records: int = MAX_RECORDS
    linger_s: float = LINGER_S
    poll_block_ms: int = POLL_BLOCK_MS
    claim_idle_ms: int = CLAIM_IDLE_MS
    reclaim_interval_s: float = RECLAIM_INTERVAL_S
    max_deliveries: int = MAX_DELIVERIES
    retention_ms: int | None = None
    """Acknowledged entries older than this (by their ids' time) are deleted from the stream
    every `trim_interval_s`; None keeps them all."""
    trim_interval_s: float = TRIM_INTERVAL_S
    take_over_at_start: bool = True
    """The single writer of its log takes over, at start, every entry left pending by any
    consumer before it reads anything new: those consumers died, and their entries came first
    (so a conflicting duplicate published later never overtakes them)."""

    def __post_init__(self) -> None:
        if not self.stream:
            raise ValueError("the usage stream needs a name")
        if not 1 <= self.max_records <= 100_000:
            raise ValueError(f"max_records must be in 1..100000, not {self.max_records}")
        if self.claim_idle_ms < 1 or self.poll_block_ms < 1 or self.reclaim_interval_s <= 0:
            raise ValueError("claim_idle_ms, poll_block_ms and reclaim_interval_s must be > 0")
        if self.max_deliveries < 2:
            raise ValueError(f"max_deliveries must be at least 2, not {self.max_deliveries}")
        if self.retention_ms is not None and self.retention_ms < 0:
            raise ValueError(f"retention_ms must be >= 0, not {self.retention_ms}")
        if self.trim_interval_s <= 0:
            raise ValueError(f"trim_interval_s must be > 0, not {self.trim_interval_s}")


def build_broker(
    redis_url: str, *, cluster: bool = False, graceful_timeout_s: float = GRACEFUL_TIMEOUT_S
) -> RedisBroker:
    """A broker whose per-batch "Received" and "Processed" lines are DEBUG; errors stay ERROR.

    With `cluster`, a `RedisClusterBroker` that discovers the cluster from `redis_url` (one of
    its nodes) and routes each stream command to the node holding that stream's slot.
    """
    kind = RedisClusterBroker if cluster else RedisBroker
    return kind(
        redis_url,
        graceful_timeout=graceful_timeout_s,
        log_level=logging.DEBUG,
        logger=logging.getLogger(BROKER_LOGGER),
    )


def open_partition_consumer(
    settings: Settings,
    redis_url: str,
    ledger: ChargingLedger,
    executor: Executor,
    partition: int,
    *,
    consumer: str,
    metrics: LedgerMetrics | None = None,
    lease: PartitionLease | None = None,
    fence: Fence | None = None,
) -> tuple[IngestService, RedisDeadLetterSink]:
    """The consumer of one partition's stream as `settings` configure it (not started yet),
    and its dead-letter sink, which the caller closes after stopping the consumer."""
    stream = settings.partition_stream(partition)
    sink = RedisDeadLetterSink.from_url(redis_url, stream, cluster=settings.redis_cluster)
    try:
        processor = IngestProcessor(
            ledger,
            None,
            sink,
            metrics=metrics,
            partition=partition,
            partitions=settings.partitions,
            fence=fence,
        )
        config = IngestConfig(
            stream=stream,
            consumer=consumer,
            claim_idle_ms=settings.claim_idle_ms,
            retention_ms=settings.usage_retention_ms(),
        )
        broker = build_broker(redis_url, cluster=settings.redis_cluster)
        service = IngestService(broker, processor, config, executor=executor, lease=lease)
    except BaseException:
        sink.close()
        raise
    return service, sink


async def ensure_group(client: Any, stream: str, group: str = CONSUMER_GROUP) -> bool:
    """`XGROUP CREATE <stream> <group> 0 MKSTREAM`; False when the group already exists.

    Created at `0`, the group delivers the whole backlog. FastStream would create it at `$`
    (missing what was published before), and reading with last_id `0` instead would re-read
    the consumer's pending list forever; so the group is made here, before the subscriber
    starts, and the subscriber reads with `>`.
    """
    try:
        await client.xgroup_create(name=stream, groupname=group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        return False
    return True


async def _parse_batch(
    msg: BatchStreamMessage,
    original: Callable[[BatchStreamMessage], Awaitable[StreamMessage[Any]]],
) -> StreamMessage[Any]:
    """FastStream's batch parser without its per-entry JSON work.

    The default parser JSON-decodes every entry and re-encodes the list; here it only builds
    the message (with its consumer and group, which `ack` needs) from a copy without entries,
    and the message then carries the real raw batch for `_decode_entries`.
    """
    message = await original({**msg, "data": []})
    message.raw_message = msg
    return message


def _decode_entries(message: StreamMessage[Any]) -> list[StreamEntry]:
    raw: BatchStreamMessage = message.raw_message
    return [
        (entry_id.decode(), fields)
        for entry_id, fields in zip(raw["message_ids"], raw["data"], strict=True)
    ]


class IngestService:
    """The usage consumer of one process: a FastStream batch subscriber plus a reclaimer.

    The subscriber reads up to `max_records` new entries per batch with XREADGROUP (`>`) and
    queues the batch (at most `READ_AHEAD_BATCHES` wait; a full queue holds the subscriber
    back), so reading the next batch overlaps charging this one. One task takes the batches
    in order, processes each on the executor and acknowledges it with one XACK only after
    `process` returned (`AckPolicy.MANUAL`: FastStream acknowledges nothing by itself). A batch
    that fails is not acknowledged and stays pending. Pending entries idle for
    `claim_idle_ms` (this consumer's failed batches, or a dead consumer's) are taken over with
    XAUTOCLAIM every `reclaim_interval_s`, processed the same way, and acked with one XACK; a
    reclaimed batch that fails again is retried entry by entry, so one entry that cannot be
    processed holds back no other.
    """

    def __init__(
        self,
        broker: RedisBroker,
        processor: IngestProcessor,
        config: IngestConfig,
        *,
        executor: Executor | None = None,
        lease: PartitionLease | None = None,
    ) -> None:
        self.broker = broker
        self.processor = processor
        self.config = config
        self.lease = lease
        self._own_executor = executor is None
        self.executor: Executor = executor or ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ledger-ingest"
        )
        self._reclaimer: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._batches: asyncio.Queue[list[StreamEntry] | None] = asyncio.Queue(
            maxsize=READ_AHEAD_BATCHES
        )
        self._charger: asyncio.Task[None] | None = None
        self.log = log.bind(stream=config.stream, group=config.group, consumer=config.consumer)
        self.subscriber = broker.subscriber(
            stream=StreamSub(
                config.stream,
                group=config.group,
                consumer=config.consumer,
                batch=True,
                max_records=config.max_records,
                polling_interval=config.poll_block_ms,
            ),
            ack_policy=AckPolicy.MANUAL,
            parser=_parse_batch,
            decoder=_decode_entries,
            title=f"{config.stream}:ingest",
        )
        self.subscriber(self._make_handler())

    def _make_handler(self) -> Callable[[list[StreamEntry]], Awaitable[None]]:
        async def ingest_usage(entries: NoCast[list[StreamEntry]]) -> None:
            """Queue a batch of usage events to be charged, then acknowledged."""
            await self._batches.put(entries)
            if len(entries) < self.config.max_records:
                await asyncio.sleep(self.config.linger_s)

        return ingest_usage

    async def _charge_batches(self) -> None:
        """Charge the queued batches in order, acknowledging each once it is charged.

        `None` in the queue ends the loop. A batch that fails is logged and left pending: the
        reclaimer takes it over after `claim_idle_ms`.
        """
        config = self.config
        while (entries := await self._batches.get()) is not None:
            try:
                await self._process(entries)
                client = await self.broker.connect()
                await client.xack(config.stream, config.group, *(i for i, _ in entries))
            except LeaseLost as error:  # left pending: the partition's new owner takes it over
                self.log.warning(
                    "ingest.lease_lost",
                    entries=len(entries),
                    first_id=entries[0][0],
                    error=str(error),
                )
            except Exception:
                self.log.exception(
                    "ingest.batch_failed", entries=len(entries), first_id=entries[0][0]
                )

    def start_charging(self) -> None:
        if self._charger is None:
            self._charger = asyncio.create_task(self._charge_batches(), name="ingest-charger")

    async def stop_charging(self) -> None:
        """Charge and acknowledge every batch already read, then end the charging task."""
        task, self._charger = self._charger, None
        if task is None:
            return
        await self._batches.put(None)
        await task

    async def _process(self, entries: Sequence[StreamEntry]) -> BatchResult:
        """Process a batch on the executor; under a lease, only while it is held."""
        lease = self.lease
        if lease is not None and not lease.held():
            raise LeaseLost(f"{self.config.stream}: the lease ran out before the batch was charged")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, self._process_held, entries)
        except LeaseLost:
            if lease is not None:
                lease.lost()
            raise

    def _process_held(self, entries: Sequence[StreamEntry]) -> BatchResult:
        """On the executor: the lease is looked at again, as a queued batch may have waited."""
        if self.lease is not None and not self.lease.held():
            raise LeaseLost(f"{self.config.stream}: the lease ran out before the batch was charged")
        return self.processor.process(entries)

    # -- lifecycle -----------------------------------------------------------------------

    async def prepare(self) -> None:
        """Connect and create the consumer group at 0 (before the subscriber starts)."""
        client = await self.broker.connect()
        created = await ensure_group(client, self.config.stream, self.config.group)
        self.log.info("ingest.group", created=created)

    async def start(self) -> None:
        """Create the group, take over what dead consumers left pending, start the broker (the
        subscriber), then the reclaimer."""
        await self.prepare()
        if self.config.take_over_at_start:
            taken = await self.reclaim_once(min_idle_ms=0)
            self.log.info("ingest.took_over_pending", entries=taken)
        self.start_charging()
        await self.broker.start()
        self.start_reclaimer()

    async def stop(self) -> None:
        await self.stop_reclaimer()
        await self.broker.stop()
        await self.stop_charging()
        if self._own_executor:
            self.executor.shutdown(wait=True)

    async def resubscribe(self) -> bool:
        """Start the subscriber again when FastStream has stopped it for good because the
        consumer group is gone (NOGROUP: the stream was deleted, or a Redis that keeps nothing
        on disk restarted). The group is created again at 0, so every entry the stream holds
        now is read: what was charged before is a duplicate and charges nothing, the rest is
        charged. True when it was restarted."""
        if self.subscriber.running or self._stopping.is_set():
            return False
        self.log.warning("ingest.group_lost")
        await self.prepare()
        await self.subscriber.start()
        self.log.warning("ingest.resubscribed")
        return True

    def start_reclaimer(self) -> None:
        if self._reclaimer is None:
            self._stopping.clear()
            self._reclaimer = asyncio.create_task(self._reclaim_loop(), name="ingest-reclaimer")

    async def stop_reclaimer(self) -> None:
        task, self._reclaimer = self._reclaimer, None
        if task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(task, timeout=GRACEFUL_TIMEOUT_S)
        except TimeoutError:
            self.log.warning("ingest.reclaimer_stop_timeout")

    async def trim_once(self) -> int:
        """Delete the entries the group is done with (read and acknowledged: charged or
        dead-lettered) whose ids are older than `retention_ms`, then forget the dead-letter
        index fields of source entries no longer in the stream. Returns the entries deleted.

        Nothing the group has not read, nor anything pending, is ever deleted: the bound is
        the lower of the last delivered id and the oldest pending id, read in that order (an
        entry read in between is pending by the second read, so the bound can only be lower).
        """
        retention_ms = self.config.retention_ms
        if retention_ms is None:
            return 0
        client = await self.broker.connect()
        info = await self._group_info(client)
        if info is None:
            return 0
        bound = _id_key(as_text(info["last-delivered-id"]))
        summary = await client.xpending(self.config.stream, self.config.group)
        if summary["pending"]:
            bound = min(bound, _id_key(as_text(summary["min"])))
        cutoff = (time.time_ns() // 1_000_000 - retention_ms, 0)
        keep_from = min(bound, cutoff)
        if keep_from <= (0, 0):
            return 0
        minid = f"{keep_from[0]}-{keep_from[1]}"
        trimmed = int(await client.xtrim(self.config.stream, minid=minid, approximate=False))
        if trimmed:
            forgotten = await self._forget_dead_letters_before(client, keep_from)
            self.log.info("ingest.trimmed", entries=trimmed, dead_letter_index_fields=forgotten)
        return trimmed

    async def _forget_dead_letters_before(self, client: Any, keep_from: tuple[int, int]) -> int:
        """Drop the index fields of source ids below `keep_from`: those entries are gone from
        the stream, so they can never be read, nor dead-lettered, again. The letters stay."""
        index = dead_letter_index(self.config.stream)
        stale = [
            field
            async for field, _ in client.hscan_iter(index, count=1_000)
            if _id_key(as_text(field)) < keep_from
        ]
        for first in range(0, len(stale), 1_000):
            await client.hdel(index, *stale[first : first + 1_000])
        return len(stale)

    async def consumer_lag(self) -> int:
        """Entries of the stream the group has not finished: pending (read, not acknowledged)
        plus, on Redis 7, those not yet read (XINFO GROUPS `lag`; absent on Redis 6.2). With no
        group, the stream's length: a group created again at 0 reads every entry."""
        client = await self.broker.connect()
        info = await self._group_info(client)
        if info is None:  # a group created again at 0 will read them all
            return int(await client.xlen(self.config.stream))
        return int(info.get("lag") or 0) + int(info["pending"])

    async def _group_info(self, client: Any) -> dict[str, Any] | None:
        """XINFO GROUPS' entry of this service's group; None when the stream has no such group."""
        group = self.config.group
        for info in await client.xinfo_groups(self.config.stream):
            if info["name"] in (group, group.encode()):  # str keys; values may be bytes
                return dict(info)
        return None

    # -- reclaiming ----------------------------------------------------------------------

    async def _reclaim_loop(self) -> None:
        next_trim = time.monotonic() + self.config.trim_interval_s
        while not self._stopping.is_set():
            try:
                await self.resubscribe()
                await self.reclaim_once()
            except LeaseLost as error:
                self.log.warning("ingest.reclaim_lease_lost", error=str(error))
            except Exception:
                self.log.exception("ingest.reclaim_failed")
            if time.monotonic() >= next_trim:
                next_trim = time.monotonic() + self.config.trim_interval_s
                try:
                    await self.trim_once()
                except Exception:
                    self.log.exception("ingest.trim_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), timeout=self.config.reclaim_interval_s
                )

    async def reclaim_once(self, min_idle_ms: int | None = None) -> int:
        """Take over, process and ack every entry pending longer than `claim_idle_ms` (or
        `min_idle_ms` when given).

        Returns how many entries were acknowledged.
        """
        client = await self.broker.connect()
        config = self.config
        start_id: bytes | str = "0-0"
        acked = 0
        while not self._stopping.is_set():
            reply = await client.xautoclaim(
                name=config.stream,
                groupname=config.group,
                consumername=config.consumer,
                min_idle_time=config.claim_idle_ms if min_idle_ms is None else min_idle_ms,
                start_id=start_id,
                count=config.max_records,
            )
            next_id, claimed = reply[0], reply[1]
            # Redis < 7 reports entries deleted from the stream as (None, None).
            entries = [
                (entry_id.decode(), fields or {})
                for entry_id, fields in claimed
                if entry_id is not None
            ]
            if entries:
                self.log.info("ingest.reclaimed", entries=len(entries), first_id=entries[0][0])
                done = await self._process_reclaimed(entries)
                if done:
                    await client.xack(config.stream, config.group, *done)
                    acked += len(done)
            if next_id in (b"0-0", "0-0"):
                break
            start_id = next_id
        return acked

    async def _process_reclaimed(self, entries: list[StreamEntry]) -> list[str]:
        if len(entries) > 1:
            try:
                await self._process(entries)
            except LeaseLost:
                raise  # no entry of this partition can be charged here any more
            except INFRASTRUCTURE_ERRORS:  # the store or Redis is away: no entry would do better
                self.log.exception("ingest.reclaimed_batch_failed", entries=len(entries))
                return []
            except Exception:
                self.log.exception("ingest.reclaimed_batch_failed", entries=len(entries))
            else:
                return [entry_id for entry_id, _ in entries]
        done: list[str] = []  # one by one: the failing entry (or entries) holds back no other
        for entry in entries:
            try:
                await self._process([entry])
            except LeaseLost:
                raise
            except INFRASTRUCTURE_ERRORS:
                self.log.exception("ingest.entry_failed", entry_id=entry[0])
            except Exception as error:
                self.log.exception("ingest.entry_failed", entry_id=entry[0])
                if await self._gave_up(entry, error):
                    done.append(entry[0])
            else:
                done.append(entry[0])
        return done

    async def _gave_up(self, entry: StreamEntry, error: Exception) -> bool:
        """Dead-letter an entry that failed on its own `max_deliveries` times; True when it was
        (so it is acknowledged), False when it has deliveries left (it stays pending)."""
        entry_id, fields = entry
        client = await self.broker.connect()
        config = self.config
        pending = await client.xpending_range(
            name=config.stream, groupname=config.group, min=entry_id, max=entry_id, count=1
        )
        deliveries = int(pending[0]["times_delivered"]) if pending else 0
        if deliveries < config.max_deliveries:
            return False
        found = self.processor.payload(fields)
        original = found[0] if found is not None else _fields_as_json(fields)
        detail = f"{type(error).__name__}: {error} (after {deliveries} deliveries)"
        letter = DeadLetter(entry_id, DELIVERY_LIMIT, detail, original)
        sink = self.processor.dead_letter_sink
        await asyncio.get_running_loop().run_in_executor(self.executor, sink.write, [letter])
        self.log.error(
            "ingest.delivery_limit", entry_id=entry_id, deliveries=deliveries, error=str(error)
        )
        return True


def create_app(
    redis_url: str,
    processor: IngestProcessor,
    config: IngestConfig,
    *,
    executor: Executor | None = None,
) -> FastStream:
    """A FastStream application running the ingest alone (`faststream run` or `app.run()`).

    The consumer group is created at startup before the broker starts its subscriber; the
    reclaimer runs between after-startup and shutdown, and the charging task until the broker
    has stopped (it charges and acknowledges every batch already read).
    """
    broker = build_broker(redis_url)
    service = IngestService(broker, processor, config, executor=executor)

    async def start_tasks() -> None:  # a sync hook would run off the event loop
        service.start_charging()
        service.start_reclaimer()

    app = FastStream(
        broker,
        on_startup=[service.prepare],
        after_startup=[start_tasks],
        on_shutdown=[service.stop_reclaimer],
        after_shutdown=[service.stop_charging],
    )
    app.context.set_global("ingest_service", service)
    return app
