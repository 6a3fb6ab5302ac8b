"""`ledger serve`: ingest, lifecycle ticker and live balances in one process, and the read
model tables in a projector process beside it (`services.projector`).

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
from projections.live import LiveBalances
from services.api import create_app
from services.auth import TOKENS_FILE, TokenStore, ensure_admin_token
from services.bootstrap import Parts, bootstrap, open_event_store
from services.config import Settings
from services.ingest import (
    BROKER_LOGGER,
    IngestConfig,
    IngestProcessor,
    IngestService,
    RedisDeadLetterSink,
    build_broker,
)
from services.metrics import METRICS
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
        """Runs on the worker thread: SQLite connections belong to the thread that made them."""
        self.parts = bootstrap(self.settings)
        self.ledger = self.parts.ledger()
        balances, position = self.parts.read_store.snapshot()
        self.live = LiveBalances(self.parts.store, balances, position)
        self.live.catch_up()

    def tick(self) -> int:
        assert self.ledger is not None and self.live is not None
        outcome = self.ledger.tick()
        (self.settings.data_dir / HEARTBEAT_FILE).touch()
        if outcome.records:
            log.info("lifecycle.appended", events=len(outcome.records))
            self.live.catch_up()
        return len(outcome.records)

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
    with ExitStack() as resources:
        redis_url = settings.redis_url
        if redis_url is None:
            embedded = resources.enter_context(EmbeddedRedis(settings.data_dir / "redis"))
            redis_url = embedded.url
            log.info("redis.embedded", url=redis_url, data_dir=str(embedded.data_dir))
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        resources.callback(executor.shutdown, wait=True)
        worker = Worker(settings, executor)
        await loop.run_in_executor(executor, worker.open)
        resources.callback(lambda: executor.submit(worker.close).result())
        assert worker.ledger is not None and worker.live is not None
        projector = Projector(settings)
        projector.start()
        resources.callback(projector.stop)
        sink = RedisDeadLetterSink.from_url(redis_url, settings.usage_stream)
        resources.callback(sink.close)
        processor = IngestProcessor(worker.ledger, worker.live, sink, metrics=METRICS)
        claim_idle_ms = int(os.environ.get("LEDGER_CLAIM_IDLE_MS") or IngestConfig.claim_idle_ms)
        config = IngestConfig(stream=settings.usage_stream, claim_idle_ms=claim_idle_ms)
        tokens = TokenStore(settings.data_dir / TOKENS_FILE)
        resources.callback(tokens.close)
        generated = ensure_admin_token(tokens, settings.data_dir, settings.admin_token)
        if generated is not None:
            # Printed once, on its own line, for the operator; it is saved 0600 in the data dir.
            print(f"admin token (saved in {settings.data_dir}/admin-token): {generated}")
        api = _api_server(settings, worker, tokens)
        api_task = asyncio.create_task(api.serve(), name="http-api")
        while not api.started:  # uvicorn exits the process when it cannot listen
            await asyncio.sleep(API_START_POLL_S)
        service = IngestService(build_broker(redis_url), processor, config, executor=executor)
        await service.start()
        log.info(
            "ledger.started",
            stream=settings.usage_stream,
            http=f"http://{settings.host}:{settings.port}",
            database=settings.log_location(),
            position=worker.ledger.position,
            clock=settings.clock,
        )
        ticker = asyncio.create_task(_tick_forever(worker, executor, projector, service, stop))
        await stop.wait()
        log.info("ledger.stopping")
        api.should_exit = True
        await ticker
        await service.stop()
        await api_task
    log.info("ledger.stopped")


async def _tick_forever(
    worker: Worker,
    executor: ThreadPoolExecutor,
    projector: Projector,
    ingest: IngestService,
    stop: asyncio.Event,
) -> None:
    """Every second: the lifecycle tick, the consumer lag gauge, and a look at the projector."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            await loop.run_in_executor(executor, worker.tick)
        except Exception:
            log.exception("lifecycle.tick_failed")
        try:
            METRICS.consumer_lag.set(await ingest.consumer_lag())
        except Exception as error:  # Redis away: ingest reports it; keep ticking
            log.warning("ingest.lag_unknown", error=str(error))
        if not projector.alive:
            log.error("projector.died", exitcode=projector.exitcode)
            projector.start()
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), TICK_INTERVAL_S)


def serve(settings: Settings) -> None:
    configure_logging()
    asyncio.run(run(settings))
