"""What needs no token: liveness, readiness (the log answers) and the Prometheus metrics."""

from __future__ import annotations

from litestar import Controller, get
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE

from ledger.log import EventStore
from services.api.dependencies import Injected
from services.api.problems import Problem, problem_responses
from services.api.reads import Reads, UsageReader
from services.api.views import HealthView, ReadyView
from services.metrics import MEDIA_TYPE, LedgerMetrics


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
            raise Problem("not-ready", f"the log does not answer: {error}") from None
        return ReadyView("ready", reads.live.position, head)

    @get("/metrics", summary="Prometheus text exposition", media_type=MEDIA_TYPE)
    async def get_metrics(
        self,
        events: Injected[EventStore],
        usage: Injected[UsageReader],
        metrics: Injected[LedgerMetrics],
    ) -> bytes:
        """This process's metrics and, in `ledger serve`, those of the writer and the
        projector processes (prometheus_client's multiprocess mode)."""
        metrics.projection_lag.set(max(0, events.head().position - usage.checkpoint()))
        return metrics.render()
