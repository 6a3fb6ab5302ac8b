"""The ingest worker's partition keeper (`ledger serve --role ingest`): holds leases on a fair
share of the usage stream's partitions and runs one consumer per partition it holds.

Every `TTL / RENEWALS_PER_TTL` it heartbeats (so every worker can count the live ones), renews
the leases it holds, and rebalances: it aims at `fair_share(partitions, live workers)`,
releasing its highest partitions when it holds more (the consumer finishes and acknowledges
its batch in hand first) and taking free or expired ones when it holds fewer. A partition is
taken with a new fencing token, then its consumer takes over every entry left pending on it
(by a dead or frozen previous owner) before reading new ones; the store refuses any append
under an older token, so that previous owner, if it wakes up, can neither charge nor ack.

A lease is trusted locally until `renewal sent + TTL - TTL / LOCAL_MARGIN_DIVISOR` on this
process's monotonic clock: a process frozen past that instant finds out on its first look at
the clock, before the store refuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import structlog

from ledger.errors import StoreError
from ledger.leases import RENEWALS_PER_TTL, Fence, Lease, LeaseStore, fair_share
from services.config import Settings
from services.ingest.consumer import IngestService, open_partition_consumer
from services.ingest.dead_letters import RedisDeadLetterSink
from services.metrics import LedgerMetrics

LOCAL_MARGIN_DIVISOR: Final = 10
"""The local view of a lease ends TTL/10 before the database's, for clock rate drift and the
time the renewal took to arrive."""

log = structlog.get_logger("ledger.leases")

T = TypeVar("T")


@dataclass
class HeldPartition:
    """One partition this worker holds: its lease, the local deadline and its consumer."""

    lease: Lease
    deadline: float
    """`time.monotonic()` after which the lease is no longer trusted here."""
    on_lost: Callable[[], None]
    service: IngestService | None = None
    sink: RedisDeadLetterSink | None = None
    starting: asyncio.Task[None] | None = None
    """The consumer's start (taking over a backlog may outlast a TTL: renewals go on meanwhile)."""
    refused: bool = False
    """The store refused the fence (`LeaseLost`)."""
    failed: bool = False
    """The consumer could not start (Redis away?): the lease is let go, and taken again."""

    @property
    def partition(self) -> int:
        return self.lease.partition

    def held(self) -> bool:
        return not self.refused and time.monotonic() < self.deadline

    def lost(self) -> None:
        self.refused = True
        self.on_lost()


@dataclass
class PartitionKeeper:
    """Leases and consumers of one ingest worker; `run` until `stop` is set, then `close`."""

    leases: LeaseStore
    """A store instance of its own (its own connection), used on `lease_executor` only."""
    settings: Settings
    """The partitions, the lease TTL and how each partition's consumer is configured."""
    owner: str
    redis_url: str
    """The settings' Redis, or the private one `ledger serve` started."""
    ledger: Any
    """The process's `Ledger` (charged on `executor`)."""
    executor: Executor
    metrics: LedgerMetrics | None = None
    held: dict[int, HeldPartition] = field(default_factory=dict)
    lease_executor: Executor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="ledger-leases")
    )
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def partitions(self) -> int:
        return self.settings.partitions

    @property
    def ttl_ms(self) -> int:
        return self.settings.lease_ttl_ms

    @property
    def interval_s(self) -> float:
        return self.ttl_ms / 1000 / RENEWALS_PER_TTL

    def fence(self, partition: int) -> Fence | None:
        """The fence to append under for `partition`, None when not held here (now)."""
        held = self.held.get(partition)
        if held is None or not held.held():
            return None
        return held.lease.fence

    def consumers(self) -> list[IngestService]:
        return [h.service for h in self.held.values() if h.service is not None]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.step()
            except Exception:
                log.exception("lease.step_failed", owner=self.owner)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first_of(stop, self._wake), self.interval_s)

    async def step(self) -> None:
        """Heartbeat, renew, then move towards this worker's fair share."""
        workers = await self._call(self.leases.heartbeat, self.owner, self.ttl_ms)
        for held in list(self.held.values()):
            if held.refused:
                await self._drop(held, "the store refused its fence")
                continue
            if held.failed:
                await self._release(held)
                continue
            sent = time.monotonic()
            try:
                renewed = await self._call(self.leases.renew, held.lease.fence, self.ttl_ms)
            except StoreError as error:  # unknown: trust it until the local deadline
                log.warning("lease.renew_failed", partition=held.partition, error=str(error))
                renewed = held.lease if held.held() else None
            if renewed is None or not held.held():
                await self._drop(held, "its lease expired or was taken over")
            else:
                held.deadline = self._deadline(sent)
        target = fair_share(self.partitions, workers, self.owner)
        if len(self.held) > target:
            for partition in sorted(self.held, reverse=True)[: len(self.held) - target]:
                await self._release(self.held[partition])
        elif len(self.held) < target:
            await self._take(target - len(self.held))

    async def close(self) -> None:
        """Stop every consumer (finishing its batch in hand), release the leases, leave."""
        for held in list(self.held.values()):
            await self._release(held)
        with contextlib.suppress(StoreError):
            await self._call(self.leases.leave, self.owner)
        self.lease_executor.shutdown(wait=True)

    async def _take(self, wanted: int) -> None:
        holders = await self._call(self.leases.holders)
        free = [
            p
            for p in range(self.partitions)
            if p not in self.held and (p not in holders or not holders[p].live)
        ]
        for partition in free[:wanted]:
            sent = time.monotonic()
            try:
                lease = await self._call(self.leases.acquire, partition, self.owner, self.ttl_ms)
            except StoreError as error:  # e.g. the append lock is held: try again next step
                log.warning("lease.acquire_failed", partition=partition, error=str(error))
                return  # another wait now would delay the next renewals
            if lease is None:
                continue
            held = HeldPartition(lease, self._deadline(sent), self._wake.set)
            self.held[partition] = held
            log.info("lease.acquired", partition=partition, token=lease.token, owner=self.owner)
            held.starting = asyncio.create_task(
                self._start_consumer(held), name=f"partition-{partition}-start"
            )

    async def _start_consumer(self, held: HeldPartition) -> None:
        try:
            await self._start_service(held)
        except Exception:  # its lease is let go at the next step
            log.exception("lease.consumer_failed_to_start", partition=held.partition)
            held.failed = True
            self._wake.set()

    async def _start_service(self, held: HeldPartition) -> None:
        held.service, held.sink = open_partition_consumer(
            self.settings,
            self.redis_url,
            self.ledger,
            self.executor,
            held.partition,
            consumer=self.owner,
            metrics=self.metrics,
            lease=held,
            fence=held.lease.fence,
        )
        await held.service.start()

    async def _drop(self, held: HeldPartition, why: str) -> None:
        """The lease is gone: stop consuming; nothing more is acknowledged."""
        log.warning(
            "lease.lost",
            partition=held.partition,
            token=held.lease.token,
            why=why,
            owner=self.owner,
        )
        self.held.pop(held.partition, None)
        await self._stop_consumer(held)

    async def _release(self, held: HeldPartition) -> None:
        self.held.pop(held.partition, None)
        await self._stop_consumer(held)
        with contextlib.suppress(StoreError):
            await self._call(self.leases.release, held.lease.fence)
        log.info("lease.released", partition=held.partition, token=held.lease.token)

    async def _stop_consumer(self, held: HeldPartition) -> None:
        starting, held.starting = held.starting, None
        if starting is not None:
            await starting  # never raises; ends soon once the lease is no longer held
        service, held.service = held.service, None
        if service is not None:
            try:
                await service.stop()
            except Exception:
                log.exception("lease.consumer_stop_failed", partition=held.partition)
        if held.sink is not None:
            held.sink.close()
            held.sink = None

    def _deadline(self, sent: float) -> float:
        ttl_s = self.ttl_ms / 1000
        return sent + ttl_s - ttl_s / LOCAL_MARGIN_DIVISOR

    async def _call(self, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.lease_executor, func, *args)


async def _first_of(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
