"""The notifier under faults: `ledger serve` killed with SIGKILL while webhook deliveries are
pending delivers every notification at least once after a restart, with no new id; deriving
again from position 0 (`ledger notifications rebuild`) delivers nothing an endpoint has
acknowledged. A slow receiver holds up neither ingest nor the pre-check."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from services.redis_server import free_loopback_port
from tests.crash_support import ServeProcesses, run_ledger
from tests.service_support import START, HttpClient, eventually
from tests.support.webhook_receiver import Receiver

ADMIN = "notifier-crash-admin-token"
SEATS = [f"s{n}" for n in range(5)]
STEPS = (
    {"input_tokens": 5_000_000, "output_tokens": 10_000_000},  # to 52 %
    {"input_tokens": 5_000_000, "output_tokens": 5_000_000},  # to 80 %
    {"input_tokens": 25_000_000},  # to 100 %
)
BEYOND = {"input_tokens": 5_000_000}


class Ledger:
    """One data dir and its `ledger serve` runs, over HTTP and the usage stream."""

    def __init__(self, tmp_path: Path, redis_url: str, **env: str) -> None:
        tag = uuid.uuid4().hex[:12]
        self.stream = f"test.{tag}.usage"
        self.notifications = f"test.{tag}.notifications"
        port = free_loopback_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        self.env.update(
            LEDGER_DATA_DIR=str(tmp_path / "data"),
            LEDGER_REDIS_URL=redis_url,
            LEDGER_USAGE_STREAM=self.stream,
            LEDGER_NOTIFICATION_STREAM=self.notifications,
            LEDGER_PORT=str(port),
            LEDGER_ADMIN_TOKEN=ADMIN,
            LEDGER_CLOCK="manual",
            LEDGER_CLOCK_START=START,
            LEDGER_WEBHOOK_ALLOW_PRIVATE="1",
            PYTHONUNBUFFERED="1",
            **env,
        )
        self.serves = ServeProcesses(self.env, tmp_path)
        self.api = HttpClient(f"http://127.0.0.1:{port}", ADMIN)
        self.redis = redis.Redis.from_url(redis_url)

    def start(self) -> None:
        self.serves.spawn()
        self.api.wait_ready()

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        reply = self.api.request(method, path, body)
        assert reply.status < 300, (method, path, reply.status, reply.body)
        return reply.body

    def publish(self, seat: str, event_id: str, counts: dict[str, int]) -> None:
        event = {
            "event_id": event_id,
            "subscription_id": "team",
            "seat_id": seat,
            "model": "qwen3.6-plus",
            "occurred_at": START,
            **counts,
        }
        self.redis.xadd(self.stream, {"data": json.dumps(event)})

    def feed_ids(self) -> list[str]:
        items = self.ok("GET", "/v1/subscriptions/team/notifications?limit=500")["items"]
        return [n["notification_id"] for n in items]

    def delivered(self, webhook_id: str) -> list[str]:
        """The notifications the endpoint acknowledged, in order."""
        path = f"/v1/subscriptions/team/webhooks/{webhook_id}/deliveries?limit=200"
        items = reversed(self.ok("GET", path)["items"])
        return [d["notification_id"] for d in items if d["outcome"] == "delivered"]

    def stream_ids(self) -> list[str]:
        entries = self.redis.xrange(self.notifications)
        return [json.loads(fields[b"data"])["notification_id"] for _, fields in entries]

    def close(self) -> None:
        self.redis.delete(self.stream, f"{self.stream}.dead", self.notifications)
        self.redis.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver(delay_s=0.3).start()
    yield receiver
    receiver.stop()


def test_sigkill_with_deliveries_pending_then_a_rebuild_delivers_each_once_at_least_and_no_more(
    tmp_path: Path, redis_url: str, receiver: Receiver
) -> None:
    ledger = Ledger(tmp_path, redis_url)
    try:
        with ledger.serves.logs_on_failure():
            _kill_and_rebuild(ledger, receiver)
    finally:
        ledger.close()


def _kill_and_rebuild(ledger: Ledger, receiver: Receiver) -> None:
    ledger.start()
    ledger.ok("POST", "/v1/subscriptions", {"subscription_id": "team"})
    for seat in SEATS:
        ledger.ok("POST", "/v1/subscriptions/team/seats", {"seat_id": seat, "tier": "standard"})
    hook = ledger.ok("POST", "/v1/subscriptions/team/webhooks", {"url": receiver.url})
    for step, counts in enumerate(STEPS):
        for seat in SEATS:
            ledger.publish(seat, f"{seat}-{step}", counts)
    derived = eventually(ledger.feed_ids, lambda ids: len(ids) == 15, "15 notifications")
    receiver.wait_for(lambda got: len(got) >= 2)
    ledger.serves.kill()  # a delivery in flight, most still in the outbox
    assert len(receiver.received) < len(derived)

    ledger.start()
    receiver.wait_for(lambda got: {r.headers["webhook-id"] for r in got} >= set(derived))
    acknowledged = eventually(
        lambda: ledger.delivered(hook["webhook_id"]),
        lambda ids: set(ids) >= set(derived),
        "every notification acknowledged",
    )
    assert len(acknowledged) == len(set(acknowledged))
    assert ledger.feed_ids() == derived  # no new id, none lost
    assert set(ledger.stream_ids()) == set(derived)
    delivered = receiver.ids()
    assert delivered[: len(derived)][-1] in derived
    ledger.serves.terminate()

    rebuilt = run_ledger(ledger.env, "notifications", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    ledger.start()
    ledger.publish(SEATS[0], "beyond", BEYOND)  # a new notification: seat.suspended
    receiver.wait_for(lambda got: len(got) > len(delivered))
    time.sleep(1.0)  # anything delivered again would come before it, in order
    [suspended] = [n for n in ledger.feed_ids() if n not in derived]
    assert suspended.startswith("seat.suspended:")
    assert receiver.ids() == [*delivered, suspended]
    assert ledger.feed_ids() == [*derived, suspended]
    assert sorted(ledger.stream_ids()) == sorted(set(ledger.stream_ids()))  # each once
    ledger.serves.terminate()


SLOW_RECEIVER_S = 5.0
SMALL = {"input_tokens": 1_000}
INGEST_EVENTS = 1_000
INGEST_BOUND_S = 30.0
PRE_CHECKS = 200
PRE_CHECK_P99_BOUND_S = 0.5
"""Generous bounds (bench/bench_notifications.py carries the real figures): a receiver that
held up ingest or the pre-check would cost at least its 5 s per request."""


def test_a_slow_receiver_holds_up_neither_ingest_nor_the_pre_check(
    tmp_path: Path, redis_url: str
) -> None:
    receiver = Receiver(delay_s=SLOW_RECEIVER_S).start()
    ledger = Ledger(tmp_path, redis_url)
    try:
        with ledger.serves.logs_on_failure():
            ingest_s, p99_s = _under_a_slow_receiver(ledger, receiver)
            ledger.serves.terminate()
    finally:
        ledger.close()
        receiver.stop()
    assert ingest_s < INGEST_BOUND_S
    assert p99_s < PRE_CHECK_P99_BOUND_S


def _under_a_slow_receiver(ledger: Ledger, receiver: Receiver) -> tuple[float, float]:
    ledger.start()
    ledger.ok("POST", "/v1/subscriptions", {"subscription_id": "team"})
    for seat in SEATS:
        ledger.ok("POST", "/v1/subscriptions/team/seats", {"seat_id": seat, "tier": "premium"})
    for n in range(3):
        ledger.ok("POST", "/v1/subscriptions/team/webhooks", {"url": f"{receiver.url}/{n}"})
    for seat in SEATS:  # 130,000 of a premium seat's 250,000: past 50 %, 15 deliveries in all
        ledger.publish(
            seat, f"{seat}-half", {"output_tokens": 50_000_000, "input_tokens": 50_000_000}
        )
        ledger.publish(seat, f"{seat}-more", {"output_tokens": 50_000_000})
    receiver.wait_for(lambda got: len(got) >= 3)  # one request in flight per endpoint
    head = ledger.ok("GET", "/v1/audit/digest")["position"]
    started = time.monotonic()
    for n in range(INGEST_EVENTS):
        ledger.publish(SEATS[n % len(SEATS)], f"small-{n}", SMALL)
    eventually(
        lambda: ledger.ok("GET", "/v1/audit/digest")["position"],
        lambda position: position >= head + INGEST_EVENTS,
        "the small events charged",
    )
    ingest_s = time.monotonic() - started
    latencies = []
    for n in range(PRE_CHECKS):
        began = time.perf_counter()
        ledger.ok("GET", f"/v1/subscriptions/team/seats/{SEATS[n % len(SEATS)]}/authorization")
        latencies.append(time.perf_counter() - began)
    assert len(receiver.received) < 15  # the receiver is still busy: deliveries wait
    return ingest_s, sorted(latencies)[int(PRE_CHECKS * 0.99) - 1]
