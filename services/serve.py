"""`ledger serve`: ingest, lifecycle ticker and live balances in one process, and the read
model tables in a projector process beside it (`services.projector`).

Roles (`--role`, LEDGER_ROLE): `all` (the default) is everything in one process, which consumes
every partition of the usage stream without leases: it must be the only ingest of its log.
`ingest` is one of several ingest workers: no HTTP, no projector; it consumes the partitions
it holds a lease on (`services.partition_leases`), and the holder of partition 0 runs the
lifecycle ticker, appending under that partition's fence (a deposed holder cannot append a
cycle start twice, and any writer that decided on a stale head decides again). `api` serves
HTTP and runs the projector, with no ingest and no ticker; its live balances follow the log
every tick, and its admin writes append optimistically beside the workers.

Every piece that writes the log runs on one worker thread (the ledger is a single writer), so
the event loop stays free for Redis. That thread also folds each append into the in-memory
balances before the batch is acknowledged; the projector folds the same records into the
read model tables on the other core. With no Redis URL a private Redis server is started with
its data and append-only file in the data dir. SIGTERM and SIGINT stop it gracefully: the
batch in hand is finished and acknowledged, then the broker, the projector, the stores and
the private Redis are closed in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from typing import Final

import structlog
import uvicorn

from ledger.application import Ledger
from ledger.leases import Fence
from projections.live import LiveBalances
from services.api import create_app
from services.auth import TOKENS_FILE, TokenStore, ensure_admin_token
from services.bootstrap import Parts, bootstrap, open_event_store, open_lease_store
from services.config import Settings
from services.ingest import (
    BROKER_LOGGER,
    IngestConfig,
    IngestProcessor,
    IngestService,
    RedisDeadLetterSink,
    build_broker,
    default_consumer_name,
)
from services.metrics import METRICS
from services.partition_leases import PartitionKeeper
from services.projector import Projector
from services.redis_server import EmbeddedRedis
from services.writer import LedgerWriter

HEARTBEAT_FILE: Final = "serve.heartbeat"
"""Touched by every tick on the writer thread: a health check reads its age (compose.yaml)."""

TICK_INTERVAL_S: Final = 1.0
"""How often cycle starts and pack expiries that fell due are appended (SPEC: within ~1 s)."""
API_START_POLL_S: Final = 0.01
GIL_SWITCH_INTERVAL_S: Final = 0.000_5
"""How long a thread holds the GIL while another waits for it. Python's 5 ms default would let
a batch on the writer thread hold an HTTP request on the event loop for up to 5 ms."""

log = structlog.get_logger("ledger.serve")


def configure_logging(json_lines: bool | None = None) -> None:
    """JSON lines when not on a terminal (production), readable console output otherwise."""
    json_lines = not sys.stderr.isatty() if json_lines is None else json_lines
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    )
    # FastStream and other libraries log through the standard library: render them the same way.
    stdlib = logging.StreamHandler(sys.stderr)
    stdlib.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    for name in ("faststream", BROKER_LOGGER, "uvicorn", "uvicorn.error"):
        library_log = logging.getLogger(name)
        library_log.handlers[:] = [stdlib]
        library_log.propagate = False
        library_log.setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    )


class Worker:
    """The ledger, its projections and their thread: everything that writes state."""

    def __init__(self, settings: Settings, executor: ThreadPoolExecutor) -> None:
        self.settings = settings
        self.executor = executor
        self.parts: Parts | None = None
        self.ledger: Ledger | None = None
        self.live: LiveBalances | None = None

    def open(self) -> None:
        """Runs on the worker thread: SQLite connections belong to the thread that made them.

        An ingest worker keeps no live balances: it answers no reads."""
        self.parts = bootstrap(self.settings)
        self.ledger = self.parts.ledger()
        if self.settings.role != "ingest":
            balances, position = self.parts.read_store.snapshot()
            self.live = LiveBalances(self.parts.store, balances, position)
            self.live.catch_up()

    def tick(self, fence: Fence | None = None) -> int:
        """Append what fell due (under `fence` when given), then follow the log."""
        assert self.ledger is not None
        outcome = self.ledger.tick(fence)
        (self.settings.data_dir / HEARTBEAT_FILE).touch()
        if outcome.records:
            log.info("lifecycle.appended", events=len(outcome.records))
        if self.live is not None:
            self.live.catch_up()
        return len(outcome.records)

    def beat(self) -> None:
        """An ingest worker not holding partition 0: the writer thread is alive, nothing due."""
        (self.settings.data_dir / HEARTBEAT_FILE).touch()

    def follow(self) -> int:
        """The `api` role's tick: fold what other processes appended into the live balances."""
        assert self.live is not None
        (self.settings.data_dir / HEARTBEAT_FILE).touch()
        return self.live.catch_up()

    def close(self) -> None:
        if self.parts is not None:
            self.parts.close()


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: `run` owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _api_server(settings: Settings, worker: Worker, tokens: TokenStore) -> _ApiServer:
    """The HTTP API on LEDGER_HOST:LEDGER_PORT, answering from the live balances, the read
    model tables and a log connection of its own (opened here, on the event loop's thread);
    its writes go to the ledger on the writer thread."""
    assert worker.parts is not None and worker.ledger is not None and worker.live is not None
    events = open_event_store(settings)
    app = create_app(
        events=events,
        read_model_path=settings.read_model_path(),
        runner=worker.live,
        tokens=tokens,
        clock=worker.parts.clock,
        writer=LedgerWriter(worker.ledger, worker.live, worker.executor),
    )
    app.on_shutdown.append(events.close)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    return _ApiServer(config)


async def run(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    role = settings.role
    with ExitStack() as resources:
        redis_url = settings.redis_url
        if redis_url is None and role != "api":
            embedded = resources.enter_context(EmbeddedRedis(settings.data_dir / "redis"))
            redis_url = embedded.url
            log.info("redis.embedded", url=redis_url, data_dir=str(embedded.data_dir))
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        resources.callback(executor.shutdown, wait=True)
        worker = Worker(settings, executor)
        await loop.run_in_executor(executor, worker.open)
        resources.callback(lambda: executor.submit(worker.close).result())
        assert worker.ledger is not None
        projector: Projector | None = None
        api: _ApiServer | None = None
        api_task: asyncio.Task[None] | None = None
        if role != "ingest":
            projector = Projector(settings)
            projector.start()
            resources.callback(projector.stop)
            tokens = TokenStore(settings.data_dir / TOKENS_FILE)
            resources.callback(tokens.close)
            generated = ensure_admin_token(tokens, settings.data_dir, settings.admin_token)
            if generated is not None:
                # Printed once, on its own line, for the operator; saved 0600 in the data dir.
                print(f"admin token (saved in {settings.data_dir}/admin-token): {generated}")
            api = _api_server(settings, worker, tokens)
            api_task = asyncio.create_task(api.serve(), name="http-api")
            while not api.started:  # uvicorn exits the process when it cannot listen
                await asyncio.sleep(API_START_POLL_S)
        claim_idle_ms = int(os.environ.get("LEDGER_CLAIM_IDLE_MS") or IngestConfig.claim_idle_ms)
        consumers: list[IngestService] = []
        keeper: PartitionKeeper | None = None
        keeper_task: asyncio.Task[None] | None = None
        if role == "all":
            assert redis_url is not None
            for partition in range(settings.partitions):
                stream = settings.partition_stream(partition)
                sink = RedisDeadLetterSink.from_url(redis_url, stream)
                resources.callback(sink.close)
                processor = IngestProcessor(
                    worker.ledger,
                    worker.live,
                    sink,
                    metrics=METRICS,
                    partition=partition,
                    partitions=settings.partitions,
                )
                config = IngestConfig(stream=stream, claim_idle_ms=claim_idle_ms)
                service = IngestService(
                    build_broker(redis_url), processor, config, executor=executor
                )
                await service.start()
                consumers.append(service)
        elif role == "ingest":
            assert redis_url is not None
            keeper = PartitionKeeper(
                leases=open_lease_store(settings),
                partitions=settings.partitions,
                ttl_ms=settings.lease_ttl_ms,
                owner=default_consumer_name(),
                redis_url=redis_url,
                stream_of=settings.partition_stream,
                ledger=worker.ledger,
                executor=executor,
                claim_idle_ms=claim_idle_ms,
                metrics=METRICS,
            )
            await keeper.step()  # a first share before announcing the start
            keeper_task = asyncio.create_task(keeper.run(stop), name="partition-leases")
        log.info(
            "ledger.started",
            role=role,
            stream=settings.usage_stream,
            partitions=settings.partitions,
            http=f"http://{settings.host}:{settings.port}" if api is not None else None,
            database=settings.log_location(),
            position=worker.ledger.position,
            clock=settings.clock,
            held=sorted(keeper.held) if keeper is not None else None,
        )
        ticker = asyncio.create_task(
            _tick_forever(worker, executor, projector, consumers, keeper, stop)
        )
        await stop.wait()
        log.info("ledger.stopping")
        if api is not None:
            api.should_exit = True
        await ticker
        for service in consumers:
            await service.stop()
        if keeper_task is not None and keeper is not None:
            await keeper_task
            await keeper.close()
        if api_task is not None:
            await api_task
    log.info("ledger.stopped")


async def _tick_forever(
    worker: Worker,
    executor: ThreadPoolExecutor,
    projector: Projector | None,
    consumers: list[IngestService],
    keeper: PartitionKeeper | None,
    stop: asyncio.Event,
) -> None:
    """Every second: the lifecycle tick (role `all`; role `ingest` on the holder of partition
    0, under its fence) or following the log (role `api`), the consumer lag gauge, and a look
    at the projector."""
    loop = asyncio.get_running_loop()
    role = worker.settings.role
    while not stop.is_set():
        try:
            if role == "all":
                await loop.run_in_executor(executor, worker.tick)
            elif role == "api":
                await loop.run_in_executor(executor, worker.follow)
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
        if projector is not None and not projector.alive:
            log.error("projector.died", exitcode=projector.exitcode)
            projector.start()
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), TICK_INTERVAL_S)


def serve(settings: Settings) -> None:
    configure_logging()
    asyncio.run(run(settings))
