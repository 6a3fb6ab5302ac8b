"""Webhook endpoints of a subscription (admins): register one (its secret shown once), list,
read and delete them, read each one's delivery attempts, and send it a test notification.

A URL the ledger will not call is refused with a 400 problem that states the rule
(services/notifier/urls.py). Registering never calls or resolves the URL: the notifier's
delivery worker does, and checks the addresses it resolves to before each request.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime
from typing import Annotated, Final

import msgspec
from litestar import Response, delete, get, post
from litestar.params import JSONBody, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from ledger.log import datetime_from_us
from projections.notification_store import MAX_DELIVERY_RECORDS, SqlNotificationStore, Webhook
from schemas.notifications import (
    NOTIFICATION_TYPES,
    TEST_NOTIFICATION_TYPE,
    Notification,
    NotificationType,
)
from schemas.usage import PathId as BodyId
from services.api.bodies import PathId
from services.api.controller import V1Controller
from services.api.dependencies import Injected
from services.api.guards import ADMINS, requires
from services.api.notifications import must_exist
from services.api.problems import Problem
from services.api.reads import Reads
from services.notifier.urls import MAX_URL_CHARS, URL_PATTERN, RefusedUrl, check_url

SECRET_PREFIX: Final = "whsec_"
SECRET_BYTES: Final = 32
SECRET_PATTERN: Final = r"^whsec_[A-Za-z0-9+/]{32,88}={0,2}$"
"""Standard Webhooks' secret: `whsec_` and 24 to 64 bytes in base64."""
WEBHOOK_ID_PREFIX: Final = "wh_"
DEFAULT_DELIVERIES: Final = 50


class WebhookBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: Annotated[
        str,
        # The pattern is checked by `check_url`, so that a refusal states the rule.
        msgspec.Meta(
            max_length=MAX_URL_CHARS, extra_json_schema={"extra": {"pattern": URL_PATTERN}}
        ),
    ]
    event_types: Annotated[
        list[NotificationType], msgspec.Meta(max_length=len(NOTIFICATION_TYPES))
    ] = []
    """The types this endpoint receives; empty or absent: every type."""
    secret: Annotated[str, msgspec.Meta(pattern=SECRET_PATTERN)] | None = None
    """The signing secret; generated when absent. Shown in this answer only."""
    webhook_id: BodyId | None = None
    """Generated when absent."""


class WebhookView(msgspec.Struct, frozen=True):
    webhook_id: str
    url: str
    event_types: list[str]
    status: str
    created_at: datetime
    disabled_at: datetime | None
    failing_since: datetime | None


class CreatedWebhookView(msgspec.Struct, frozen=True):
    webhook_id: str
    url: str
    event_types: list[str]
    status: str
    created_at: datetime
    secret: str
    """The signing secret: shown here once, never again."""


class WebhookList(msgspec.Struct, frozen=True):
    items: list[WebhookView]


class DeliveryView(msgspec.Struct, frozen=True):
    notification_id: str
    attempt: int
    attempted_at: datetime
    outcome: str
    status_code: int | None
    duration_ms: int
    error: str | None
    response_body: str | None


class DeliveryList(msgspec.Struct, frozen=True):
    items: list[DeliveryView]


class TestView(msgspec.Struct, frozen=True):
    notification_id: str


def webhook_view(w: Webhook) -> WebhookView:
    return WebhookView(
        w.webhook_id,
        w.url,
        list(w.event_types),
        w.status,
        datetime_from_us(w.created_at_us),
        None if w.disabled_at_us is None else datetime_from_us(w.disabled_at_us),
        None if w.failing_since_us is None else datetime_from_us(w.failing_since_us),
    )


class WebhookController(V1Controller):
    path = "/subscriptions/{sub:str}/webhooks"

    @post(
        "/",
        summary="Register a webhook endpoint (its secret is shown once)",
        guards=[requires(ADMINS)],
    )
    async def post_webhook(
        self,
        reads: Injected[Reads],
        notices: Injected[SqlNotificationStore],
        allow_private_webhooks: Injected[bool],
        sub: PathId,
        data: JSONBody[WebhookBody],
    ) -> Response[CreatedWebhookView]:
        must_exist(reads, sub)
        try:
            check_url(data.url, allow_private=allow_private_webhooks)
        except RefusedUrl as refusal:
            raise Problem("invalid-body", f"url: {refusal}", reason=str(refusal)) from None
        secret = (
            data.secret
            or SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()
        )
        webhook = Webhook(
            sub,
            data.webhook_id or WEBHOOK_ID_PREFIX + secrets.token_hex(12),
            data.url,
            secret,
            tuple(dict.fromkeys(data.event_types)),
            "active",
            reads.clock.now_us(),
        )
        if not notices.create_webhook(webhook):
            raise Problem("webhook-exists", f"webhook {webhook.webhook_id!r} exists")
        view = webhook_view(webhook)
        created = CreatedWebhookView(
            view.webhook_id, view.url, view.event_types, view.status, view.created_at, secret
        )
        return Response(created, status_code=HTTP_201_CREATED)

    @get("/", summary="The subscription's webhook endpoints", guards=[requires(ADMINS)])
    async def get_webhooks(
        self, reads: Injected[Reads], notices: Injected[SqlNotificationStore], sub: PathId
    ) -> WebhookList:
        must_exist(reads, sub)
        return WebhookList([webhook_view(w) for w in notices.webhooks(sub)])

    @get("/{webhook:str}", summary="One webhook endpoint", guards=[requires(ADMINS)])
    async def get_webhook(
        self,
        reads: Injected[Reads],
        notices: Injected[SqlNotificationStore],
        sub: PathId,
        webhook: PathId,
    ) -> WebhookView:
        return webhook_view(_webhook(reads, notices, sub, webhook))

    @delete(
        "/{webhook:str}",
        summary="Delete a webhook endpoint (what it had not received is dropped)",
        guards=[requires(ADMINS)],
        status_code=HTTP_204_NO_CONTENT,
    )
    async def delete_webhook(
        self,
        reads: Injected[Reads],
        notices: Injected[SqlNotificationStore],
        sub: PathId,
        webhook: PathId,
    ) -> None:
        _webhook(reads, notices, sub, webhook)
        notices.delete_webhook(sub, webhook)

    @get(
        "/{webhook:str}/deliveries",
        summary="The endpoint's latest delivery attempts, newest first",
        guards=[requires(ADMINS)],
    )
    async def get_deliveries(
        self,
        reads: Injected[Reads],
        notices: Injected[SqlNotificationStore],
        sub: PathId,
        webhook: PathId,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_DELIVERY_RECORDS)] = DEFAULT_DELIVERIES,
    ) -> DeliveryList:
        _webhook(reads, notices, sub, webhook)
        return DeliveryList(
            [
                DeliveryView(
                    d.notification_id,
                    d.attempt,
                    datetime_from_us(d.attempted_at_us),
                    d.outcome,
                    d.status_code,
                    d.duration_ms,
                    d.error,
                    d.response_body,
                )
                for d in notices.deliveries(sub, webhook, limit)
            ]
        )

    @post(
        "/{webhook:str}/test",
        summary="Send the endpoint a test notification (queued: see its deliveries)",
        guards=[requires(ADMINS)],
        status_code=HTTP_202_ACCEPTED,
    )
    async def post_test(
        self,
        reads: Injected[Reads],
        notices: Injected[SqlNotificationStore],
        sub: PathId,
        webhook: PathId,
    ) -> TestView:
        found = _webhook(reads, notices, sub, webhook)
        now_us = reads.clock.now_us()
        notification = Notification(
            f"{TEST_NOTIFICATION_TYPE}:{webhook}:{secrets.token_hex(8)}",
            TEST_NOTIFICATION_TYPE,
            sub,
            datetime_from_us(now_us),
            0,
            {"webhook_id": webhook},
        )
        notices.enqueue_test(found, notification)
        return TestView(notification.notification_id)


def _webhook(reads: Reads, notices: SqlNotificationStore, sub: str, webhook_id: str) -> Webhook:
    must_exist(reads, sub)
    found = notices.webhook(sub, webhook_id)
    if found is None:
        raise Problem("not-found", f"no webhook {webhook_id!r} in this subscription")
    return found
