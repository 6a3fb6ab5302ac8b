"""The HTTP API: one Litestar app over the ledger's parts.

Reads answer from the live balances, or, with `as_of`, from one subscription's balances
folded from its records up to that point of the log, on a bounded pool of threads
(services/api/reads.py). Usage pages come from the read model tables over a
read-only connection of the API's own. Writes go through a `Writer` (services/writer.py) to the
single writer of the log, which returns once the live balances have folded them, so a write
answers with the state that includes it. Every error is an RFC 9457 problem
(services/api/problems.py); a subscription outside a token's scope answers exactly as an
unknown one.

This module only wires: one controller per resource under /v1 behind bearer token authentication,
the parts handed to the handlers as Litestar dependencies, the problem handlers, the strict
reading of request bodies (services/api/decoding.py), the latency middleware and the OpenAPI
document.
"""

from __future__ import annotations

from typing import Any, Final

from litestar import Litestar, Router
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from ledger.clock import Clock
from ledger.log import EventStore
from ledger.snapshots import SnapshotStore
from projections.live import BalanceSource
from projections.notification_store import SqlNotificationStore
from projections.read_store import ReadModelReader
from projections.stores.notifications_sqlite import SqliteNotificationStore
from services.api.audit import AuditController
from services.api.clock import ClockController
from services.api.corrections import CorrectionController, HistoryController
from services.api.decoding import StrictJsonRequest
from services.api.dependencies import provided
from services.api.document import ClosedStructSchemaPlugin
from services.api.guards import bearer_token
from services.api.health import HealthController, metrics_router
from services.api.holds import HoldController
from services.api.latency import latency_middleware
from services.api.notifications import NotificationController
from services.api.packs import PackController
from services.api.problems import EXCEPTION_HANDLERS
from services.api.reads import Reads, UsageReader
from services.api.seats import SeatController
from services.api.subscriptions import SubscriptionController
from services.api.tokens import TokenController
from services.api.usage import UsageController
from services.api.webhooks import WebhookController
from services.api.writes import Writes
from services.auth.tokens import TokenStore
from services.bootstrap import Parts
from services.console import console_router
from services.metrics import METRICS, LedgerMetrics
from services.writer import Writer

API_VERSION: Final = "1"
MAX_BODY_BYTES: Final = 64 * 1024
V1_CONTROLLERS: Final = (
    SubscriptionController,
    SeatController,
    HoldController,
    PackController,
    UsageController,
    AuditController,
    TokenController,
    ClockController,
    NotificationController,
    WebhookController,
    CorrectionController,
    HistoryController,
)
"""The resources under /v1, each behind bearer token authentication."""


def create_app(
    *,
    events: EventStore,
    read_models: ReadModelReader,
    runner: BalanceSource,
    tokens: TokenStore,
    clock: Clock,
    writer: Writer,
    metrics: LedgerMetrics = METRICS,
    max_body_bytes: int = MAX_BODY_BYTES,
    metrics_token: str | None = None,
    notices: SqlNotificationStore | None = None,
    allow_private_webhooks: bool = False,
    snapshots: SnapshotStore | None = None,
    debug: bool = False,
) -> Litestar:
    """The API over these parts. Handlers run on the event loop's thread, one at a time.

    `runner` must be the balances that `writer` catches up after each write (in `ledger
    serve`, the API process's live balances); `clock` the ledger's clock (a manual one may be
    moved by `POST /v1/clock`); `metrics` what `GET /metrics` renders and request latency goes
    to. `read_models` answers usage pages; the app closes it on shutdown. With
    `metrics_token`, `GET /metrics` needs `Authorization: Bearer <metrics_token>`. `notices`
    holds the notifications and webhook endpoints (an empty one in memory when not given);
    `allow_private_webhooks` lets webhook URLs name private and loopback addresses.
    `snapshots` are where reads of the past (`as_of`) start from (the log's start without).
    """
    usage = UsageReader(read_models)
    reads = Reads(events, runner, clock, snapshots)
    parts: dict[str, Any] = {
        "events": events,
        "reads": reads,
        "writes": Writes(writer, runner, clock),
        "usage": usage,
        "tokens": tokens,
        "clock": clock,
        "metrics": metrics,
        "notices": notices if notices is not None else SqliteNotificationStore(":memory:"),
        "allow_private_webhooks": allow_private_webhooks,
    }
    v1 = Router(
        path="/v1",
        middleware=[bearer_token(tokens)],
        route_handlers=list(V1_CONTROLLERS),
        security=[{"bearer": []}],  # health, readiness and metrics need no token
    )
    return Litestar(
        route_handlers=[v1, HealthController, metrics_router(metrics_token), console_router()],
        dependencies=provided(parts),
        request_class=StrictJsonRequest,
        plugins=[ClosedStructSchemaPlugin()],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        middleware=[latency_middleware(metrics)],
        request_max_body_size=max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Credits ledger",
            version=API_VERSION,
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
            ),
        ),
        on_shutdown=[usage.close, reads.past.close],
        debug=debug,
    )


def app_from_parts(
    parts: Parts,
    runner: BalanceSource,
    tokens: TokenStore,
    writer: Writer,
    metrics: LedgerMetrics = METRICS,
) -> Litestar:
    """The API over a process's parts (its runner keeps `parts.read_store` caught up, and is
    the one `writer` catches up after each write)."""
    return create_app(
        events=parts.store,
        read_models=parts.read_store.reader(),
        runner=runner,
        tokens=tokens,
        clock=parts.clock,
        writer=writer,
        metrics=metrics,
        metrics_token=parts.settings.metrics_token,
        snapshots=parts.snapshots,
    )
