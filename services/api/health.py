"""What needs no API token: liveness, readiness (the log answers) and the Prometheus metrics,
which LEDGER_METRICS_TOKEN may put behind a bearer token of their own."""

from __future__ import annotations

import hmac
from typing import Any

import structlog
from litestar import Controller, Router, get
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.status_codes import HTTP_401_UNAUTHORIZED, HTTP_503_SERVICE_UNAVAILABLE

from ledger.log import EventStore
from services.api.dependencies import Injected
from services.api.guards import Guard
from services.api.problems import RETRY_SOON, Problem, problem_responses
from services.api.reads import Reads, UsageReader
from services.api.views import HealthView, ReadyView
from services.metrics import MEDIA_TYPE, LedgerMetrics

log = structlog.get_logger()


class HealthController(Controller):
    path = "/"

    @get("/healthz", summary="Liveness")
    async def healthz(self) -> HealthView:
        return HealthView("ok")

    @get(
        "/readyz",
        summary="Readiness: the log and the read models answer",
        responses=problem_responses((HTTP_503_SERVICE_UNAVAILABLE,)),
    )
    async def readyz(self, events: Injected[EventStore], reads: Injected[Reads]) -> ReadyView:
        try:
            head = events.head().position
        except Exception as error:
            log.warning("api.not_ready", error=str(error), kind=type(error).__name__)
            raise Problem("not-ready", f"the log does not answer: {RETRY_SOON}") from None
        return ReadyView("ready", reads.live.position, head)


class MetricsController(Controller):
    path = "/"

    @get(
        "/metrics",
        summary="Prometheus text exposition",
        media_type=MEDIA_TYPE,
        responses=problem_responses((HTTP_401_UNAUTHORIZED,)),
    )
    async def get_metrics(
        self,
        events: Injected[EventStore],
        usage: Injected[UsageReader],
        metrics: Injected[LedgerMetrics],
    ) -> bytes:
        """This process's metrics and, in `ledger serve`, those of the writer and the
        projector processes (prometheus_client's multiprocess mode). With LEDGER_METRICS_TOKEN
        set, only `Authorization: Bearer <that token>` may read them (401 otherwise)."""
        metrics.projection_lag.set(max(0, events.head().position - usage.checkpoint()))
        return metrics.render()


def _metrics_token(token: str) -> Guard:
    expected = f"Bearer {token}".encode()

    async def scraper(
        connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
    ) -> None:
        sent = connection.headers.get("authorization", "").encode()
        if not hmac.compare_digest(sent, expected):
            raise Problem("unauthorized", "send Authorization: Bearer <LEDGER_METRICS_TOKEN>")

    return scraper


def metrics_router(token: str | None) -> Router:
    """/metrics: open, or, with `token`, behind it (and the document says so)."""
    if token is None:
        return Router(path="/", route_handlers=[MetricsController])
    return Router(
        path="/",
        route_handlers=[MetricsController],
        guards=[_metrics_token(token)],
        security=[{"bearer": []}],
    )
