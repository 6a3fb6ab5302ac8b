"""`ledger serve --role`: an API process follows what other processes append, and the single
process (`all`) consumes every partition of a partitioned stream."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from ledger.partitions import partition_of, partition_stream
from schemas.usage import UsageEvent
from services.client import UsagePublisher
from services.config import ConfigError, Settings
from tests.crash_support import (
    ServeProcesses,
    ledger_env,
    run_ledger,
    wait_drained,
    write_rate_card,
)
from tests.service_support import HttpClient

ADMIN_TOKEN = "crash-test-admin-token"
"""What `ledger_env` sets as LEDGER_ADMIN_TOKEN."""
FOLLOW_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 20.0
PARTITIONS = 4


def _serve_env(tmp_path: Path, redis_url: str, stream: str) -> dict[str, str]:
    return ledger_env(
        data_dir=tmp_path / "data",
        redis_url=redis_url,
        stream=stream,
        rate_card=write_rate_card(tmp_path / "rates.toml"),
        claim_idle_ms=1_000,
    )


def _backfill(env: dict[str, str], lines: list[dict[str, object]]) -> None:
    result = run_ledger(env, "backfill", "-", stdin="".join(json.dumps(x) + "\n" for x in lines))
    assert result.returncode == 0, result.stderr


def test_an_api_process_serves_what_other_processes_append(
    tmp_path: Path, redis_url: str, stream_name: str
) -> None:
    env = _serve_env(tmp_path, redis_url, stream_name)
    _backfill(env, [{"type": "subscription.open", "subscription_id": "team-1"}])
    serve = ServeProcesses(env, tmp_path)
    with serve.logs_on_failure():
        serve.spawn("--role", "api")
        serve.wait_started()
        http = HttpClient(f"http://127.0.0.1:{env['LEDGER_PORT']}", ADMIN_TOKEN)
        http.wait_ready()
        seat = "/v1/subscriptions/team-1/seats/alice"
        assert http.get(seat).status == 404

        _backfill(  # another process appends
            env,
            [
                {
                    "type": "seat.add",
                    "subscription_id": "team-1",
                    "seat_id": "alice",
                    "tier": "standard",
                }
            ],
        )

        deadline = time.monotonic() + FOLLOW_TIMEOUT_S
        while http.get(seat).status != 200:
            assert time.monotonic() < deadline, "the API never saw the seat"
            time.sleep(0.1)
        assert http.get(seat).body["tier"] == "standard"
        assert "redis.embedded" not in serve.current.log_text()  # no ingest, no Redis
        assert serve.terminate() == 0


def test_the_single_process_consumes_every_partition(
    tmp_path: Path, redis_url: str, stream_name: str
) -> None:
    env = _serve_env(tmp_path, redis_url, stream_name)
    env["LEDGER_PARTITIONS"] = str(PARTITIONS)
    teams = ["team-1", "team-2", "team-4", "acme"]
    assert {partition_of(team, PARTITIONS) for team in teams} == {0, 2, 3}
    _backfill(
        env,
        [{"type": "subscription.open", "subscription_id": team} for team in teams]
        + [
            {"type": "seat.add", "subscription_id": t, "seat_id": f"{t}-s", "tier": "premium"}
            for t in teams
        ],
    )
    events = [
        UsageEvent(
            event_id=f"e-{n}",
            subscription_id=teams[n % len(teams)],
            seat_id=f"{teams[n % len(teams)]}-s",
            model="t-alpha",
            input_tokens=1_000,
            occurred_at=datetime(2026, 5, 1, tzinfo=UTC),
        )
        for n in range(40)
    ]
    client = redis.Redis.from_url(redis_url)
    serve = ServeProcesses(env, tmp_path)
    with serve.logs_on_failure():
        serve.spawn()
        serve.wait_started()
        with UsagePublisher(redis_url, stream_name, partitions=PARTITIONS) as publisher:
            publisher.publish_many(events)
        for k in (0, 2, 3):
            wait_drained(
                client, partition_stream(stream_name, k, PARTITIONS), DRAIN_TIMEOUT_S, serve.current
            )
        assert serve.terminate() == 0
    export = run_ledger(env, "export", "usage", "--format", "jsonl")
    charged = sorted(json.loads(line)["event_id"] for line in export.stdout.splitlines())
    assert charged == sorted(event.event_id for event in events)
    client.delete(*(partition_stream(stream_name, k, PARTITIONS) for k in range(PARTITIONS)))
    client.close()


def test_the_role_comes_from_the_environment_and_defaults_to_all() -> None:
    assert Settings.from_env({}).role == "all"
    assert Settings.from_env({"LEDGER_ROLE": "ingest"}).role == "ingest"
    with pytest.raises(ConfigError):
        Settings.from_env({"LEDGER_ROLE": "worker"})
