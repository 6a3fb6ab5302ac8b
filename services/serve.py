"""`ledger serve`: ingest and the lifecycle ticker in this process, the HTTP API and the
projector in child processes beside it.

- This process: every piece that writes the log runs on one worker thread (the ledger is a
  single writer), so the event loop stays free for Redis; admin writes from the API arrive over
  a pipe (`services.write_channel`) and run on that same thread.
- The API process (`services.api_process`; spawned by `services.launch` before this module is
  imported, supervised by `services.api_supervisor`): uvicorn and the Litestar app, with
  balances in memory folded from the log, on an interpreter lock of its own: ingest never
  delays a gateway's pre-check by holding it.
- The projector process (`services.projector`): the read model tables.
- The notifier process (`services.notifier.process`): notifications derived from the log, on
  the Redis stream and to webhooks.

With no Redis URL a private Redis server is started with its data and append-only file in the
data dir. SIGTERM and SIGINT stop it gracefully: the API stops taking requests, the batch in
hand is finished and acknowledged, then the broker, the children, the stores and the private
Redis are closed in that order. A child that dies is started again by the ticker.

Role `all` holds the data dir (`services.running`: a second serve there stops with one line)
and, once it serves, writes `serve.json` there (its HTTP URL, Redis URL and stream), which
`ledger publish` and `ledger simulate` use when LEDGER_REDIS_URL is unset.

Roles (`--role`, LEDGER_ROLE): `all` (the default) is all of the above, and consumes every
partition of the usage stream without leases: it must be the only ingest of its log. `ingest`
is one of several ingest workers: no API, no projector; it consumes the partitions it holds a
lease on (`services.partition_leases`), and the holder of partition 0 runs the lifecycle
ticker, appending under that partition's fence (a deposed holder cannot append, and a writer
that decided on a stale head decides again). `api` runs the API, the projector and the
notifier (one of each writes at a time, whatever the number of API hosts), with no ingest and
no ticker; its admin writes append optimistically beside the workers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import structlog

from ledger.application import Ledger
from ledger.leases import Fence
from services.api_supervisor import ApiSupervisor
from services.auth.tokens import ensure_admin_token
from services.bootstrap import Parts, bootstrap, open_lease_store, open_token_store
from services.config import ConfigError, Settings, default_consumer_name
from services.logs import configure_logging
from services.metrics import METRICS, use_shared_folder
from services.redis_server import EmbeddedRedis
from services.running import (
    RunningService,
    http_url,
    publish_service,
    withdraw_service,
)
from services.writer import FastLane

if TYPE_CHECKING:
    from services.ingest.consumer import IngestService
    from services.notifier.process import NotifierProcess
    from services.partition_leases import PartitionKeeper
    from services.projector import Projector

HEARTBEAT_FILE: Final = "serve.heartbeat"
"""Touched by every tick on the writer thread: a health check reads its age (compose.yaml)."""

TICK_INTERVAL_S: Final = 1.0
"""How often cycle starts and pack expiries that fell due are appended (the rule: within ~1 s)."""
WRITER_NICENESS: Final = 5
"""Added to the writer thread's nice value (see `Worker.open`)."""

log = structlog.get_logger("ledger.serve")


class Worker:
    """The ledger and its thread: everything that writes the log."""

    def __init__(self, settings: Settings, executor: ThreadPoolExecutor) -> None:
        self.settings = settings
        self.executor = executor
        self.parts: Parts | None = None
        self.ledger: Ledger | None = None
        self.lane: FastLane | None = None
        """The API's writes: on the same thread, ahead of the usage batches."""

    def open(self) -> None:
        """Runs on the worker thread: SQLite connections belong to the thread that made them."""
        # Linux gives each thread its own nice value: this one yields the CPU to the API
        # process (gateways wait on it in milliseconds) when they compete; charging has slack.
        thread = threading.get_native_id()
        os.setpriority(
            os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + WRITER_NICENESS
        )
        self.parts = bootstrap(self.settings)
        self.ledger = self.parts.ledger()
        self.lane = FastLane(self.ledger, self.executor)

    def tick(self, fence: Fence | None = None) -> int:
        """Append what fell due (under `fence` when given)."""
        assert self.ledger is not None
        outcome = self.ledger.tick(fence)
        self.beat()
        if outcome.records:
            log.info("lifecycle.appended", events=len(outcome.records))
        return len(outcome.records)

    def beat(self) -> None:
        """A tick with nothing to append (an ingest worker without partition 0, or the `api`
        role): the writer thread is alive."""
        (self.settings.data_dir / HEARTBEAT_FILE).touch()

    def close(self) -> None:
        if self.parts is not None:
            self.parts.close()


@dataclass
class Ingest:
    """What consumes the usage stream: every partition's consumer (role `all`), or the
    partition keeper and its task (role `ingest`), or nothing (role `api`)."""

    consumers: list[IngestService] = field(default_factory=list)
    keeper: PartitionKeeper | None = None
    keeper_task: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        for service in self.consumers:
            await service.stop()
        if self.keeper_task is not None and self.keeper is not None:
            await self.keeper_task
            await self.keeper.close()


async def run(settings: Settings, api: ApiSupervisor | None) -> None:
    """Serve until SIGTERM or SIGINT, beside `api`, the API process already spawned (none for
    role `ingest`)."""
    stop = _stop_on_signals()
    with ExitStack() as resources:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        worker = Worker(settings, executor)
        redis_url = _redis_url(settings, resources)
        resources.callback(executor.shutdown, wait=True)
        await asyncio.get_running_loop().run_in_executor(executor, worker.open)
        resources.callback(lambda: executor.submit(worker.close).result())
        log.info("writer.opened")
        if api is not None:
            _install_admin_token(settings)
            assert worker.lane is not None
            api.writer_opened(worker.lane)
            await api.start()
        ingest = await _start_ingest(settings, redis_url, worker, resources, stop)
        children: tuple[Projector | None, NotifierProcess | None] = (None, None)
        if api is not None:
            # Only now: their start-up would compete with the API's and ingest's for the
            # cores, and neither is needed to answer from the balances or to charge.
            children = _start_children(settings, redis_url, resources)
        _announce(settings, worker, api, ingest, redis_url, resources)
        ticker = asyncio.create_task(
            _tick_forever(worker, executor, children, api, ingest.consumers, ingest.keeper, stop)
        )
        await stop.wait()
        log.info("ledger.stopping")
        await ticker
        if api is not None:
            api.stop()  # no new admin writes; requests in flight are answered first
        await ingest.stop()
    log.info("ledger.stopped")


def _stop_on_signals() -> asyncio.Event:
    """An event SIGTERM and SIGINT set: the graceful stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _redis_url(settings: Settings, resources: ExitStack) -> str | None:
    """LEDGER_REDIS_URL, else a private Redis started in the data dir (not for role `api`,
    which reads no stream)."""
    if settings.redis_url is None and settings.redis_cluster:
        raise ConfigError("LEDGER_REDIS_CLUSTER needs LEDGER_REDIS_URL (one of its nodes)")
    if settings.redis_url is not None or settings.role == "api":
        return settings.redis_url
    embedded = resources.enter_context(EmbeddedRedis(settings.data_dir / "redis"))
    log.info("redis.embedded", url=embedded.url, data_dir=str(embedded.data_dir))
    return embedded.url


def _start_children(
    settings: Settings, redis_url: str | None, resources: ExitStack
) -> tuple[Projector, NotifierProcess]:
    # Imported once the API process is on its way (as ingest is): this process's imports
    # before it spawns are on the path to ready.
    from services.notifier.process import NotifierProcess
    from services.projector import Projector

    projector = Projector(settings)
    projector.start()
    resources.callback(projector.stop)
    notifier = NotifierProcess(settings, redis_url)
    notifier.start()
    resources.callback(notifier.stop)
    return projector, notifier


async def _start_ingest(
    settings: Settings,
    redis_url: str | None,
    worker: Worker,
    resources: ExitStack,
    stop: asyncio.Event,
) -> Ingest:
    if settings.role == "api":
        return Ingest()
    from services.ingest.consumer import open_partition_consumer
    from services.partition_leases import PartitionKeeper

    assert redis_url is not None and worker.ledger is not None and worker.lane is not None
    if settings.role == "ingest":
        keeper = PartitionKeeper(
            leases=open_lease_store(settings),
            settings=settings,
            owner=default_consumer_name(),
            redis_url=redis_url,
            ledger=worker.ledger,
            executor=worker.executor,
            metrics=METRICS,
        )
        await keeper.step()  # a first share before announcing the start
        task = asyncio.create_task(keeper.run(stop), name="partition-leases")
        return Ingest(keeper=keeper, keeper_task=task)
    consumers: list[IngestService] = []
    for partition in range(settings.partitions):
        service, sink = open_partition_consumer(
            settings,
            redis_url,
            worker.ledger,
            worker.executor,
            partition,
            consumer=default_consumer_name(),
            metrics=METRICS,
            between_slices=worker.lane.run_waiting,
        )
        resources.callback(sink.close)
        await service.start()
        consumers.append(service)
    return Ingest(consumers=consumers)


def _announce(
    settings: Settings,
    worker: Worker,
    api: ApiSupervisor | None,
    ingest: Ingest,
    redis_url: str | None,
    resources: ExitStack,
) -> None:
    """Log the start and, for role `all`, tell the other commands where this serve answers
    (`services.running`; withdrawn on the way out)."""
    assert worker.ledger is not None
    http = http_url(settings.host, settings.port) if api is not None else None
    log.info(
        "ledger.started",
        role=settings.role,
        stream=settings.usage_stream,
        partitions=settings.partitions,
        http=http,
        database=settings.log_location(),
        position=worker.ledger.position,
        clock=settings.clock,
        held=sorted(ingest.keeper.held) if ingest.keeper is not None else None,
    )
    if settings.role != "all":
        return
    service = RunningService(
        pid=os.getpid(),
        http_url=http,
        redis_url=redis_url,
        usage_stream=settings.usage_stream,
        partitions=settings.partitions,
        redis_cluster=settings.redis_cluster,
        started_at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    )
    publish_service(settings.data_dir, service)
    resources.callback(withdraw_service, settings.data_dir)


def _install_admin_token(settings: Settings) -> None:
    tokens = open_token_store(settings)
    try:
        generated = ensure_admin_token(tokens, settings.data_dir, settings.admin_token)
    finally:
        tokens.close()
    if generated is not None:
        # Printed once, on its own line, for the operator; it is saved 0600 in the data dir.
        print(f"admin token (saved in {settings.data_dir}/admin-token): {generated}")


async def _tick_forever(
    worker: Worker,
    executor: ThreadPoolExecutor,
    children: tuple[Projector | None, NotifierProcess | None],
    api: ApiSupervisor | None,
    consumers: list[IngestService],
    keeper: PartitionKeeper | None,
    stop: asyncio.Event,
) -> None:
    """Every second: the lifecycle tick (role `all`; role `ingest` on the holder of partition
    0, under its fence), the consumer lag gauge, and a look at the children."""
    loop = asyncio.get_running_loop()
    role = worker.settings.role
    while not stop.is_set():
        try:
            if role == "all":
                await loop.run_in_executor(executor, worker.tick)
            elif keeper is not None and (fence := keeper.fence(0)) is not None:
                await loop.run_in_executor(executor, worker.tick, fence)
            else:
                await loop.run_in_executor(executor, worker.beat)
        except Exception:
            log.exception("lifecycle.tick_failed")
        services = consumers if keeper is None else keeper.consumers()
        try:
            METRICS.consumer_lag.set(sum([await s.consumer_lag() for s in services]))
        except Exception as error:  # Redis away: ingest reports it; keep ticking
            log.warning("ingest.lag_unknown", error=str(error))
        for child in children:
            if child is not None and not child.alive:
                log.error("child.died", name=child.name, exitcode=child.exitcode)
                child.start()
        if api is not None and not api.alive and not stop.is_set():
            log.error("api.died", exitcode=api.exitcode)
            try:
                await api.start()
            except OSError:
                log.exception("api.restart_failed")
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), TICK_INTERVAL_S)


def serve(settings: Settings, api: ApiSupervisor | None) -> None:
    """The rest of `ledger serve` once `services.launch` has spawned the API process."""
    configure_logging(settings.log_format)
    use_shared_folder()
    asyncio.run(run(settings, api))
