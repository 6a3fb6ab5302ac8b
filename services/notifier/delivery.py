"""Delivers notifications to webhook endpoints: each endpoint's outbox in order, one request in
flight per endpoint (endpoints in parallel), signed as Standard Webhooks says (`webhook-id`,
`webhook-timestamp`, `webhook-signature`), with httpx (connect within 5 s, all within 10 s).

A 2xx answer delivers; anything else (another status, a timeout, a refused connection, an
address the URL rules refuse) is retried after a delay that doubles from
LEDGER_WEBHOOK_RETRY_BASE_MS (with jitter, at most an hour). Every attempt is recorded (status,
duration, error, at most 1 KB of the answer). An endpoint that has failed without a success
for LEDGER_WEBHOOK_RETRY_WINDOW_S (a day) is disabled, and says so: a `webhook.disabled`
notification in its subscription's feed. Runs on a thread of the notifier process with an event
loop of its own, so a slow receiver never holds up derivation or the stream.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urlsplit

import httpx
import structlog
from standardwebhooks import Webhook as Signer

from ledger.clock import Clock
from ledger.log import datetime_from_us
from projections.notification_store import (
    MAX_RESPONSE_BODY_BYTES,
    Delivery,
    Pending,
    SqlNotificationStore,
    Webhook,
)
from schemas.notifications import Notification
from services.bootstrap import open_notification_store
from services.config import Settings
from services.metrics import METRICS, LedgerMetrics
from services.notifier.urls import RefusedUrl, check_resolved

CONNECT_TIMEOUT_S: Final = 5.0
MAX_RETRY_DELAY_S: Final = 3_600.0
JITTER: Final = 0.2
"""Each delay is stretched or shrunk by up to this share, at random."""
POLL_INTERVAL_S: Final = 0.05
"""Seconds between two looks at an empty outbox."""
ENDPOINTS_POLL_S: Final = 0.5
"""Seconds between two looks at the list of endpoints (a new one starts within this)."""
MAX_ERROR_CHARS: Final = 500
US_PER_S: Final = 1_000_000

log = structlog.get_logger("ledger.webhooks")


def retry_delay_s(attempts: int, base_s: float, rng: random.Random) -> float:
    """The wait before the next attempt after `attempts` failed ones: base, doubled per attempt,
    at most an hour, times 1 +/- JITTER."""
    delay: float = min(base_s * 2.0 ** min(attempts - 1, 40), MAX_RETRY_DELAY_S)
    return delay * (1 + rng.uniform(-JITTER, JITTER))


def signed_headers(webhook: Webhook, notification_id: str, body: bytes) -> dict[str, str]:
    sent_at = datetime.now(UTC)
    signature = Signer(webhook.secret).sign(notification_id, sent_at, body.decode())
    return {
        "content-type": "application/json",
        "webhook-id": notification_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": signature,
    }


class DeliveryWorker:
    """The delivery thread: one task per active endpoint."""

    def __init__(self, settings: Settings, clock: Clock, metrics: LedgerMetrics = METRICS) -> None:
        self.settings = settings
        self._clock = clock
        self._metrics = metrics
        self._rng = random.Random()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._main, name="ledger-webhooks", daemon=True)
        self._store: SqlNotificationStore | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _main(self) -> None:
        self._store = open_notification_store(self.settings)
        try:
            asyncio.run(self._run())
        except Exception:
            log.exception("webhooks.failed")
        finally:
            self._store.close()

    async def _run(self) -> None:
        assert self._store is not None
        timeout = httpx.Timeout(self.settings.webhook_timeout_s, connect=CONNECT_TIMEOUT_S)
        tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            while not self._stopping.is_set():
                active = {
                    (w.subscription_id, w.webhook_id): w
                    for w in self._store.webhooks()
                    if w.status == "active"
                }
                for key, task in list(tasks.items()):
                    if key not in active or task.done():
                        task.cancel()
                        del tasks[key]
                for key, webhook in active.items():
                    if key not in tasks:
                        tasks[key] = asyncio.create_task(self._serve(client, webhook))
                await asyncio.sleep(ENDPOINTS_POLL_S)
            # A request in flight is answered (within its timeout) and recorded, not cut off.
            if tasks:
                await asyncio.wait(tasks.values(), timeout=self.settings.webhook_timeout_s + 1)
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def _serve(self, client: httpx.AsyncClient, webhook: Webhook) -> None:
        """Deliver this endpoint's outbox in order, one request at a time, until it is
        deleted or disabled (the task is then cancelled) or the worker stops (after the
        request in hand)."""
        assert self._store is not None
        while not self._stopping.is_set():
            pending = self._store.pending(webhook)
            wait_s = (
                POLL_INTERVAL_S
                if pending is None
                else (pending.next_attempt_us - _now_us()) / US_PER_S
            )
            if pending is None or wait_s > 0:
                await asyncio.sleep(min(max(wait_s, 0.0), 1.0))
                continue
            delivery = await self._attempt(client, webhook, pending)
            if not await self._settle(webhook, pending, delivery):
                return

    async def _attempt(
        self, client: httpx.AsyncClient, webhook: Webhook, pending: Pending
    ) -> Delivery:
        started_us = _now_us()
        started = time.perf_counter()
        status: int | None = None
        body: str | None = None
        error: str | None = None
        outcome = "failed"
        try:
            await self._check_address(webhook.url)
            headers = signed_headers(webhook, pending.notification_id, pending.body)
            async with client.stream(
                "POST", webhook.url, content=pending.body, headers=headers
            ) as reply:
                status = reply.status_code
                body = await _head_of(reply)
            outcome = "delivered" if 200 <= status < 300 else "failed"
        except RefusedUrl as refusal:
            outcome, error = "refused", str(refusal)
        except httpx.HTTPError as failure:
            error = f"{type(failure).__name__}: {failure}"[:MAX_ERROR_CHARS]
        duration_ms = int((time.perf_counter() - started) * 1000)
        self._metrics.webhook_deliveries.labels(outcome=outcome).inc()
        return Delivery(
            pending.notification_id,
            pending.attempts + 1,
            started_us,
            outcome,
            status,
            duration_ms,
            error,
            body,
        )

    async def _check_address(self, url: str) -> None:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port)
        except OSError as error:
            raise httpx.ConnectError(f"cannot resolve {host}: {error}") from None
        check_resolved(host, list(infos), allow_private=self.settings.webhook_allow_private)

    async def _settle(self, webhook: Webhook, pending: Pending, delivery: Delivery) -> bool:
        """Record the attempt; False when the endpoint is now disabled."""
        assert self._store is not None
        now_us = delivery.attempted_at_us
        if delivery.outcome == "delivered":
            self._store.record_attempt(webhook, pending, delivery, None)
            lag_s = max(now_us - _enqueued_us(pending), 0) / US_PER_S
            self._metrics.webhook_delivery_lag.observe(lag_s)
            return True
        current = self._store.webhook(webhook.subscription_id, webhook.webhook_id)
        failing_since = (current.failing_since_us if current else None) or now_us
        delay_s = retry_delay_s(
            pending.attempts + 1, self.settings.webhook_retry_base_ms / 1000, self._rng
        )
        self._store.record_attempt(webhook, pending, delivery, now_us + int(delay_s * US_PER_S))
        if now_us - failing_since < self.settings.webhook_retry_window_s * US_PER_S:
            return True
        self._disable(webhook, failing_since)
        return False

    def _disable(self, webhook: Webhook, failing_since_us: int) -> None:
        assert self._store is not None
        at_us = self._clock.now_us()
        if not self._store.disable(webhook, _now_us()):
            return
        notification = Notification(
            f"webhook.disabled:{webhook.webhook_id}:{at_us}",
            "webhook.disabled",
            webhook.subscription_id,
            datetime_from_us(at_us),
            self._store.checkpoint(),
            {
                "webhook_id": webhook.webhook_id,
                "url": webhook.url,
                "failing_since": datetime_from_us(failing_since_us),
            },
        )
        self._store.add(notification)
        self._metrics.notifications.labels(type=notification.type).inc()
        log.warning("webhook.disabled", webhook_id=webhook.webhook_id, url=webhook.url)


async def _head_of(reply: httpx.Response) -> str | None:
    """At most MAX_RESPONSE_BODY_BYTES of the answer's body, as text; the rest is not read."""
    head = b""
    async for chunk in reply.aiter_raw():
        head += chunk
        if len(head) >= MAX_RESPONSE_BODY_BYTES:
            break
    return head[:MAX_RESPONSE_BODY_BYTES].decode(errors="replace") or None


def _now_us() -> int:
    return time.time_ns() // 1_000


def _enqueued_us(pending: Pending) -> int:
    return pending.enqueued_us
