"""One notifier per deployment on PostgreSQL: two API processes (`--role api`) on one log each
run a notifier, and the one that holds the notification store's lock derives, publishes and
delivers while the other waits; when the first dies, the second takes over where it stopped,
and every notification is still on the stream and at the receiver once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
import redis

from services.redis_server import free_loopback_port
from tests.crash_support import ServeRun, spawn_serve
from tests.service_support import START, HttpClient, eventually
from tests.support.webhook_receiver import Receiver

ADMIN: Final = "notifier-pg-admin-token"
SEATS: Final = ("a", "b", "c")
TO_52_PERCENT: Final = {"input_tokens": 5_000_000, "output_tokens": 10_000_000}
TO_80_PERCENT: Final = {"input_tokens": 5_000_000, "output_tokens": 5_000_000}


class Deployment:
    """`ledger serve` processes of several roles on one PostgreSQL schema and one Redis."""

    def __init__(self, tmp_path: Path, redis_url: str, postgres_url: str, schema: str) -> None:
        self.tmp_path = tmp_path
        self.stream = f"notifier-pg.{schema}.usage"
        self.notifications = f"notifier-pg.{schema}.notifications"
        self.redis_url, self.postgres_url, self.schema = redis_url, postgres_url, schema
        self.runs: dict[str, ServeRun] = {}
        self.redis = redis.Redis.from_url(redis_url)

    def spawn(self, name: str, role: str) -> HttpClient:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        port = free_loopback_port()
        env.update(
            LEDGER_DATA_DIR=str(self.tmp_path / name),
            LEDGER_DATABASE_URL=self.postgres_url,
            LEDGER_DATABASE_SCHEMA=self.schema,
            LEDGER_REDIS_URL=self.redis_url,
            LEDGER_USAGE_STREAM=self.stream,
            LEDGER_NOTIFICATION_STREAM=self.notifications,
            LEDGER_ROLE=role,
            LEDGER_PORT=str(port),
            LEDGER_ADMIN_TOKEN=ADMIN,
            LEDGER_CLOCK="manual",
            LEDGER_CLOCK_START=START,
            LEDGER_WEBHOOK_ALLOW_PRIVATE="1",
            PYTHONUNBUFFERED="1",
        )
        (self.tmp_path / name).mkdir(parents=True, exist_ok=True)
        run = spawn_serve(env, self.tmp_path / f"{name}.log")
        self.runs[name] = run
        run.wait_started()
        return HttpClient(f"http://127.0.0.1:{port}", ADMIN)

    def notifying(self) -> list[str]:
        """The processes whose notifier started (holds the lock)."""
        return [n for n, run in self.runs.items() if "notifier.started" in run.log_text()]

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

    def stream_ids(self) -> list[str]:
        entries = self.redis.xrange(self.notifications)
        return [json.loads(fields[b"data"])["notification_id"] for _, fields in entries]

    def stop(self) -> None:
        for run in self.runs.values():
            if run.process.poll() is None:
                run.process.terminate()
        for run in self.runs.values():
            try:
                run.process.wait(20)
            except subprocess.TimeoutExpired:
                run.process.kill()
        self.redis.delete(self.stream, f"{self.stream}.dead", self.notifications)
        self.redis.close()

    def report(self) -> str:
        return "\n".join(f"--- {name}:\n{run.tail()}" for name, run in self.runs.items())


@pytest.fixture
def deployment(
    tmp_path: Path, redis_url: str, postgres_url: str, postgres_schema: str
) -> Iterator[Deployment]:
    running = Deployment(tmp_path, redis_url, postgres_url, postgres_schema)
    try:
        yield running
    except BaseException:
        print(running.report())
        raise
    finally:
        running.stop()


def test_one_notifier_runs_per_deployment_and_the_other_takes_over_when_it_dies(
    deployment: Deployment,
) -> None:
    receiver = Receiver().start()
    try:
        apis = [deployment.spawn(name, "api") for name in ("api-1", "api-2")]
        for api in apis:
            api.wait_ready()
        deployment.spawn("worker", "ingest")
        first = apis[0]
        assert first.request("POST", "/v1/subscriptions", {"subscription_id": "team"}).status == 201
        for seat in SEATS:
            body = {"seat_id": seat, "tier": "standard"}
            assert first.request("POST", "/v1/subscriptions/team/seats", body).status == 201
        hook = {"url": receiver.url}
        assert first.request("POST", "/v1/subscriptions/team/webhooks", hook).status == 201
        for seat in SEATS:
            deployment.publish(seat, f"{seat}-1", TO_52_PERCENT)
        eventually(deployment.stream_ids, lambda ids: len(ids) == len(SEATS), "first three")
        [holder] = deployment.notifying()
        time.sleep(0.5)  # past the publication's checkpoint (a kill before it republishes)
        deployment.runs[holder].process.send_signal(signal.SIGKILL)
        deployment.runs[holder].process.wait(10)
        for seat in SEATS:
            deployment.publish(seat, f"{seat}-2", TO_80_PERCENT)
        ids = eventually(deployment.stream_ids, lambda ids: len(ids) >= 2 * len(SEATS), "six")
        receiver.wait_for(lambda got: len(got) >= 2 * len(SEATS))
        time.sleep(0.5)
        survivor = apis[1] if holder == "api-1" else apis[0]
        feed = survivor.get("/v1/subscriptions/team/notifications").body["items"]
    finally:
        receiver.stop()
    assert sorted(deployment.notifying()) == ["api-1", "api-2"]  # one after the other
    assert len(ids) == len(set(ids)) == 2 * len(SEATS)
    assert [n["notification_id"] for n in feed] == ids
    assert sorted(receiver.ids()) == sorted(ids)
