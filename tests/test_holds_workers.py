"""Holds on one PostgreSQL log written by four processes: two API processes (`--role api`)
append holds optimistically while two ingest workers (`--role ingest`, partition leases)
charge the usage that settles them. Fifty concurrent holds split over both APIs for ten holds'
worth still grant exactly ten, and each settles once."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import pytest

from schemas.usage import UsageEvent
from services.client import UsagePublisher
from tests.crash_support import ServeRun, ledger_env, spawn_serve, write_rate_card
from tests.service_support import HttpClient, eventually
from tests.test_holds_service import RACERS, check_race_answers, log_events, most_ever_held, race

PARTITIONS: Final = 2
ADMIN: Final = "crash-test-admin-token"
QUOTA_UCR: Final = 25_000_000_000


class Processes:
    def __init__(self, tmp_path: Path, redis_url: str, postgres_url: str, schema: str) -> None:
        self.tmp_path = tmp_path
        self.stream = f"holds-workers.{schema}.usage"
        self.rate_card = write_rate_card(tmp_path / "rate-card.toml")
        self.redis_url, self.postgres_url, self.schema = redis_url, postgres_url, schema
        self.runs: list[ServeRun] = []

    def spawn(self, name: str, role: str) -> dict[str, str]:
        env = ledger_env(
            data_dir=self.tmp_path / name,
            redis_url=self.redis_url,
            stream=self.stream,
            rate_card=self.rate_card,
            claim_idle_ms=500,
        )
        env.update(
            LEDGER_DATABASE_URL=self.postgres_url,
            LEDGER_DATABASE_SCHEMA=self.schema,
            LEDGER_PARTITIONS=str(PARTITIONS),
            LEDGER_ROLE=role,
        )
        (self.tmp_path / name).mkdir(parents=True, exist_ok=True)
        self.runs.append(spawn_serve(env, self.tmp_path / f"{name}.log"))
        return env

    def wait_started(self) -> None:
        """Until every process has started (they start side by side: the schema's migration
        takes a PostgreSQL advisory lock)."""
        for run in self.runs:
            run.wait_started()

    def stop(self) -> None:
        for run in self.runs:
            run.process.terminate()
        for run in self.runs:
            try:
                run.process.wait(20)
            except subprocess.TimeoutExpired:
                run.process.kill()

    def report(self) -> str:
        return "\n".join(f"--- {run.log_path.name}:\n{run.tail()}" for run in self.runs)


@pytest.fixture
def processes(
    tmp_path: Path, redis_url: str, postgres_url: str, postgres_schema: str
) -> Iterator[Processes]:
    running = Processes(tmp_path, redis_url, postgres_url, postgres_schema)
    try:
        yield running
    except BaseException:
        print(running.report())
        raise
    finally:
        running.stop()


def test_holds_from_two_api_processes_and_settlements_from_two_workers_stay_within_the_seat(
    processes: Processes,
) -> None:
    api_envs = [processes.spawn(name, "api") for name in ("api-1", "api-2")]
    for name in ("worker-1", "worker-2"):
        processes.spawn(name, "ingest")
    processes.wait_started()
    apis = [HttpClient(f"http://127.0.0.1:{env['LEDGER_PORT']}", ADMIN) for env in api_envs]
    for api in apis:
        api.wait_ready()
    first = apis[0]
    assert first.request("POST", "/v1/subscriptions", {"subscription_id": "both"}).status == 201
    seat = {"seat_id": "alice", "tier": "standard"}
    assert first.request("POST", "/v1/subscriptions/both/seats", seat).status == 201
    eventually(
        lambda: apis[1].get("/v1/subscriptions/both/seats/alice").status,
        lambda status: status == 200,
        "the second API folding the seat",
    )
    answers = race([(apis[n % 2], "both", "alice", f"h{n}", "2500") for n in range(RACERS)])
    check_race_answers(answers)
    events = log_events(first)
    assert most_ever_held(events, "both") == QUOTA_UCR
    granted = [a.body["hold_id"] for a in answers if a.status == 201]
    with UsagePublisher(processes.redis_url, processes.stream, partitions=PARTITIONS) as out:
        out.publish_many(
            UsageEvent(
                event_id=f"e-{hold}",
                subscription_id="both",
                seat_id="alice",
                model="t-alpha",
                occurred_at=datetime.now(UTC),
                input_tokens=8_349,
                cached_tokens=40_794,
                output_tokens=573,
                hold_id=hold,
            )
            for hold in granted + granted[:3]  # three retried by the gateway
        )
    eventually(
        lambda: first.get("/v1/subscriptions/both/seats/alice").body,
        lambda seat: seat["used"] == "31.80" and seat["held"] == "0.00",
        "ten settlements charged",
    )
    events = log_events(first)
    charges = [e for e in events if e["type"] == "usage.charged"]
    assert sorted(c["hold_id"] for c in charges) == sorted(granted)
    assert {c["hold_status"] for c in charges} == {"settled"}
    assert len([e for e in events if e["type"] == "hold.settled"]) == len(granted)
