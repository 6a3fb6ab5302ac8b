"""The API's request latency: an ASGI middleware that times every HTTP request into the
`ledger_http_request_duration_seconds` histogram, by method, route template and status."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from services.metrics import NS_PER_S, LedgerMetrics

UNMATCHED_ROUTE: Final = "unmatched"
"""The route label of a request no route matched."""


def latency_middleware(metrics: LedgerMetrics) -> Callable[[ASGIApp], ASGIApp]:
    """Times every routed request into `metrics.request_latency`, by route template (never the
    raw path: ids would make a series each)."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            started_ns = time.perf_counter_ns()
            status = 500

            async def send_and_note(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_and_note)
            finally:
                metrics.request_latency.labels(
                    method=scope["method"],
                    route=scope.get("path_template") or UNMATCHED_ROUTE,
                    status=str(status),
                ).observe(max(0, time.perf_counter_ns() - started_ns) / NS_PER_S)

        return timed

    return wrap
