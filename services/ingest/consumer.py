"""The usage consumer of one process: FastStream reads the usage stream in batches in the
consumer group `ledger`, one task charges them in order through the batch processor and
acknowledges each, and a reclaimer takes over entries left pending (a failed batch, a dead
consumer), starts the subscriber again when the group is gone, and trims the stream.

Partitions: with LEDGER_PARTITIONS > 1 each partition's stream (`{<stream>.<k>}`) has its own
`IngestService` and processor. A service whose lease is gone (`PartitionLease`) processes and
acknowledges nothing more: its entries stay pending for the new owner.

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
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import redis
import structlog
from faststream import AckPolicy, FastStream, NoCast
from faststream.message import StreamMessage
from faststream.redis import RedisBroker, RedisClusterBroker, StreamSub
from faststream.redis.message import BatchStreamMessage

from ledger.errors import LeaseLost, StoreError
from ledger.leases import Fence
from services.config import CLAIM_IDLE_MS, Settings, default_consumer_name
from services.ingest.dead_letters import (
    DELIVERY_LIMIT,
    DeadLetter,
    RedisDeadLetterSink,
    fields_as_json,
)
from services.ingest.processor import (
    BatchResult,
    ChargingLedger,
    IngestProcessor,
    StreamEntry,
)
from services.ingest.stream import (
    CONSUMER_GROUP,
    deliveries,
    ensure_group,
    group_lag,
    pending_pages,
    trim,
)
from services.logs import BROKER_LOGGER
from services.metrics import LedgerMetrics

log = structlog.get_logger(__name__)

# -- names and limits -------------------------------------------------------------------------

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


class PartitionLease(Protocol):
    """A consumer's hold on its partition, as the lease keeper sees it."""

    def held(self) -> bool:
        """False once the lease may have expired (by this process's clock, conservatively)."""
        ...

    def lost(self) -> None:
        """Tell the keeper the store refused the lease (`LeaseLost`)."""
        ...


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
    between_slices: Callable[[], object] | None = None,
) -> tuple[IngestService, RedisDeadLetterSink]:
    """The consumer of one partition's stream as `settings` configure it (not started yet),
    and its dead-letter sink, which the caller closes after stopping the consumer.
    `between_slices` runs on the writer thread before each slice of a batch (the API's
    writes waiting in the `FastLane`)."""
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
            between_slices=between_slices,
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
        """Delete the entries the group is done with that are older than `retention_ms` (see
        `stream.trim`); returns how many were deleted."""
        retention_ms = self.config.retention_ms
        if retention_ms is None:
            return 0
        client = await self.broker.connect()
        trimmed, forgotten = await trim(client, self.config.stream, self.config.group, retention_ms)
        if trimmed:
            self.log.info("ingest.trimmed", entries=trimmed, dead_letter_index_fields=forgotten)
        return trimmed

    async def consumer_lag(self) -> int:
        """Entries of the stream the group has not finished (see `stream.group_lag`)."""
        client = await self.broker.connect()
        return await group_lag(client, self.config.stream, self.config.group)

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
        if self._stopping.is_set():
            return 0
        client = await self.broker.connect()
        config = self.config
        acked = 0
        pages = pending_pages(
            client,
            config.stream,
            config.group,
            config.consumer,
            min_idle_ms=config.claim_idle_ms if min_idle_ms is None else min_idle_ms,
            count=config.max_records,
        )
        async for entries in pages:
            if entries:
                self.log.info("ingest.reclaimed", entries=len(entries), first_id=entries[0][0])
                done = await self._process_reclaimed(entries)
                if done:
                    await client.xack(config.stream, config.group, *done)
                    acked += len(done)
            if self._stopping.is_set():
                break
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
        delivered = await deliveries(client, self.config.stream, self.config.group, entry_id)
        if delivered < self.config.max_deliveries:
            return False
        found = self.processor.payload(fields)
        original = found[0] if found is not None else fields_as_json(fields)
        detail = f"{type(error).__name__}: {error} (after {delivered} deliveries)"
        letter = DeadLetter(entry_id, DELIVERY_LIMIT, detail, original)
        sink = self.processor.dead_letter_sink
        await asyncio.get_running_loop().run_in_executor(self.executor, sink.write, [letter])
        self.log.error(
            "ingest.delivery_limit", entry_id=entry_id, deliveries=delivered, error=str(error)
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
