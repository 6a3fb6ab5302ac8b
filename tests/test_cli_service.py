"""The commands beside a running `ledger serve`, as real processes: the serve holds its data dir
and says there where it answers; `ledger publish` and `ledger simulate` find it there (or are
told in one line that none runs), and every failure is one line on stderr with its exit code."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.service_support import (
    DefaultService,
    HttpClient,
    eventually,
    newcomer_env,
    run_ledger_in,
    spawn_default_service,
    stop_default_service,
)

SEED_FLAGS = (
    "--model",
    "qwen3.6-plus",
    "--input-tokens",
    "8349",
    "--cached-tokens",
    "40794",
    "--output-tokens",
    "573",
)
"""The seed example: 1.67 + 0.82 + 0.69 = 3.18 credits."""


def service_file(service: DefaultService) -> dict[str, Any]:
    return json.loads((service.data_dir / "serve.json").read_text())


def one_line(stderr: str) -> str:
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    assert stderr.startswith("ledger: "), stderr
    return stderr


def new_team(admin: HttpClient, tier: str) -> tuple[str, str]:
    """A new subscription with one seat `alice` of `tier`: their ids."""
    team = f"team-{uuid.uuid4().hex[:8]}"
    seat = "alice"
    assert admin.request("POST", "/v1/subscriptions", {"subscription_id": team}).status == 201
    body = {"seat_id": seat, "tier": tier}
    assert admin.request("POST", f"/v1/subscriptions/{team}/seats", body).status == 201
    return team, seat


@pytest.fixture
def admin(default_serve: DefaultService) -> HttpClient:
    return default_serve.admin()


@pytest.fixture
def stream(default_serve: DefaultService) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(service_file(default_serve)["redis_url"])
    yield client
    client.close()


# -- the serve and its data dir ------------------------------------------------------------------


def test_serve_writes_where_it_answers_into_its_data_dir(default_serve: DefaultService) -> None:
    found = service_file(default_serve)
    assert found["pid"] == default_serve.process.pid
    assert found["http_url"] == default_serve.base_url
    assert found["usage_stream"] == "ledger.usage"
    assert redis.Redis.from_url(found["redis_url"]).ping()
    assert (default_serve.data_dir / "serve.json").stat().st_mode & 0o777 == 0o600


def test_a_second_serve_on_a_data_dir_in_use_stops_in_one_line(
    default_serve: DefaultService,
) -> None:
    second = default_serve.ledger("serve", "--port", "1")
    assert second.returncode == 4
    message = one_line(second.stderr)
    assert "in use by another `ledger serve`" in message
    assert f"pid {default_serve.process.pid}" in message
    assert default_serve.admin().get("/readyz").status == 200  # the first one serves on


def test_a_clean_stop_removes_the_service_file(tmp_path: Path) -> None:
    service = spawn_default_service(tmp_path)
    assert stop_default_service(service) == 0
    assert not (service.data_dir / "serve.json").exists()


def test_a_file_left_by_a_killed_serve_is_known_stale(tmp_path: Path) -> None:
    service = spawn_default_service(tmp_path)
    pid = service.process.pid
    os.kill(pid, signal.SIGKILL)
    service.process.wait()
    assert (service.data_dir / "serve.json").exists()

    published = service.ledger("publish", "--subscription", "t", "--seat", "s", *SEED_FLAGS)
    assert published.returncode == 4
    message = one_line(published.stderr)
    assert "no `ledger serve` is running on the data dir" in message
    assert f"left from pid {pid}" in message


# -- ledger publish ------------------------------------------------------------------------------


def test_publish_from_flags_is_charged_and_shown_by_the_next_read(
    default_serve: DefaultService, admin: HttpClient
) -> None:
    team, seat_id = new_team(admin, "standard")
    published = default_serve.ledger(
        "publish", "--subscription", team, "--seat", seat_id, *SEED_FLAGS
    )
    assert published.returncode == 0, published.stderr
    assert published.stdout.startswith("accepted: event evt-")
    seat = admin.get(f"/v1/subscriptions/{team}/seats/{seat_id}").body  # no waiting: it is there
    assert (seat["used"], seat["remaining"]) == ("3.18", "24996.82")


def test_publish_takes_one_json_event_on_stdin(
    default_serve: DefaultService, admin: HttpClient
) -> None:
    team, seat_id = new_team(admin, "premium")
    event = {
        "event_id": "from-stdin",
        "subscription_id": team,
        "seat_id": seat_id,
        "model": "qwen3.6-plus",
        "output_tokens": 1000,
        "occurred_at": "2026-05-01T10:00:00Z",
    }
    published = default_serve.ledger("publish", stdin=json.dumps(event))
    assert published.returncode == 0, published.stderr
    assert "event from-stdin on ledger.usage" in published.stdout
    usage = admin.get(f"/v1/subscriptions/{team}/usage").body["items"]
    assert [(row["event_id"], row["credits"]) for row in usage] == [("from-stdin", "1.20")]


def test_publish_reports_a_dead_letter_with_its_reason_and_exit_3(
    default_serve: DefaultService, admin: HttpClient
) -> None:
    team, _ = new_team(admin, "standard")
    published = default_serve.ledger(
        "publish", "--subscription", team, "--seat", "nobody", *SEED_FLAGS
    )
    assert published.returncode == 3
    assert "was dead-lettered: unknown_seat: " in one_line(published.stderr)


def test_publish_without_waiting_prints_where_the_event_went(
    default_serve: DefaultService, admin: HttpClient
) -> None:
    team, seat_id = new_team(admin, "standard")
    flags = ("--subscription", team, "--seat", seat_id, "--event-id", "no-wait", *SEED_FLAGS)
    published = default_serve.ledger("publish", "--no-wait", *flags)
    assert published.returncode == 0, published.stderr
    assert published.stdout.startswith("published: event no-wait on ledger.usage, entry ")
    eventually(
        lambda: admin.get(f"/v1/subscriptions/{team}/seats/{seat_id}").body["used"],
        lambda used: used == "3.18",
        "the charge",
    )


def test_publish_refuses_an_invalid_event_before_sending_it(
    default_serve: DefaultService, stream: redis.Redis
) -> None:
    before = stream.xlen("ledger.usage")
    for stdin in ('{"event_id": "x"}', "not json"):
        refused = default_serve.ledger("publish", stdin=stdin)
        assert refused.returncode == 2
        assert one_line(refused.stderr).startswith("ledger: the event on stdin: ")
    flags = default_serve.ledger("publish", "--subscription", "t", "--model", "m")
    assert flags.returncode == 2
    assert one_line(flags.stderr) == "ledger: --subscription needs --seat\n"
    assert stream.xlen("ledger.usage") == before


def test_publish_without_a_running_serve_says_so_in_one_line(tmp_path: Path) -> None:
    published = run_ledger_in(
        tmp_path, "publish", "--subscription", "t", "--seat", "s", *SEED_FLAGS
    )
    assert published.returncode == 4
    assert "no `ledger serve` is running on the data dir" in one_line(published.stderr)


# -- ledger simulate -----------------------------------------------------------------------------


def simulate(service: DefaultService, *args: str) -> tuple[str, dict[str, Any]]:
    """Run `ledger simulate` beside the serve with a prefix of its own; the prefix and the
    JSON summary."""
    prefix = f"sim{uuid.uuid4().hex[:6]}"
    done = service.ledger("simulate", "--id-prefix", prefix, "--seed", "7", *args)
    assert done.returncode == 0, done.stderr
    return prefix, json.loads(done.stdout)


def charged(admin: HttpClient, subscription: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = admin.get(
        f"/v1/subscriptions/{subscription}/usage", limit=1000
    ).body["items"]
    return items


def all_charged(admin: HttpClient, prefix: str, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The usage rows of every subscription of the simulation, once all its events are in."""
    teams = [f"{prefix}-sub-{n}" for n in range(summary["subscriptions"])]
    rows: list[dict[str, Any]] = eventually(
        lambda: [row for team in teams for row in charged(admin, team)],
        lambda rows: len(rows) >= summary["valid_unique"],
        "every valid event charged",
    )
    return rows


SIMULATION = ("--events", "120", "--subscriptions", "2", "--seats-per-subscription", "3")


def test_simulate_sets_up_through_the_running_serve_with_seat_n_in_every_subscription(
    default_serve: DefaultService, admin: HttpClient
) -> None:
    prefix, summary = simulate(default_serve, *SIMULATION, "--duplicate-ratio", "0.05")
    assert summary["setup"]["created"] == 2 + 6 + 2
    rows = all_charged(admin, prefix, summary)
    assert len({row["event_id"] for row in rows}) == len(rows) == 120  # duplicates charged once
    assert {row["seat_id"] for row in rows} <= {"seat-0", "seat-1", "seat-2"}


def test_simulate_with_prefixed_seat_ids_names_each_seat_after_its_subscription(
    default_serve: DefaultService, admin: HttpClient
) -> None:
    prefix, summary = simulate(
        default_serve, *SIMULATION, "--seat-ids", "prefixed", "--bad-ratio", "0.05"
    )
    assert summary["setup"]["created"] == 2 + 6 + 2
    rows = all_charged(admin, prefix, summary)
    assert len(rows) == 120
    for row in rows:
        assert row["seat_id"].startswith(f"{prefix}-sub-"), row


def test_simulate_a_second_time_finds_what_it_set_up(default_serve: DefaultService) -> None:
    prefix = f"sim{uuid.uuid4().hex[:6]}"
    args = ("simulate", "--id-prefix", prefix, "--seed", "3")
    first = default_serve.ledger(*args, "--events", "0", "--subscriptions", "2")
    again = default_serve.ledger(*args, "--events", "0", "--subscriptions", "2")
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    made = 2 + 2 * 8 + 2
    assert json.loads(first.stdout)["setup"] | {"position": 0} == {
        "created": made,
        "existing": 0,
        "position": 0,
    }
    assert json.loads(again.stdout)["setup"]["existing"] == made


def test_simulate_without_a_running_serve_says_so_in_one_line(tmp_path: Path) -> None:
    done = run_ledger_in(tmp_path, "simulate", "--events", "5")
    assert done.returncode == 4
    assert "no `ledger serve` is running on the data dir" in one_line(done.stderr)


def test_simulate_setup_with_a_redis_but_no_serve_says_so_and_publishes_nothing(
    tmp_path: Path, redis_url: str, stream_name: str, redis_sync: redis.Redis
) -> None:
    env = newcomer_env(LEDGER_REDIS_URL=redis_url, LEDGER_PORT="1", LEDGER_ADMIN_TOKEN="t" * 32)
    done = run_ledger_in(tmp_path, "simulate", "--stream", stream_name, env=env)
    assert done.returncode == 4
    assert "no `ledger serve` answers at http://127.0.0.1:1" in one_line(done.stderr)
    assert redis_sync.xlen(stream_name) == 0
