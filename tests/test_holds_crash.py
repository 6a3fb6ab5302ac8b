"""Holds survive a SIGKILL of `ledger serve`: after the restart a hold placed before is still
active (or expired, once the manual clock passes its time), and the usage that settles it is
charged once, even when it was delivered to the process that was killed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import redis

from tests.crash_support import ServeProcesses, ledger_env, write_rate_card
from tests.service_support import HttpClient, eventually

ADMIN: Final = "crash-test-admin-token"
SMALL: Final = {"input_tokens": 8_349, "cached_tokens": 40_794, "output_tokens": 573}
"""t-alpha prices this at 3.18 credits."""
CLAIM_IDLE_MS: Final = 500


Publish = Callable[[dict[str, Any]], object]


@pytest.fixture(params=["sqlite", "postgres"])
def serve(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str
) -> Iterator[tuple[ServeProcesses, HttpClient, Publish]]:
    """`ledger serve` on a manual clock (SQLite, or PostgreSQL), its API as admin, and a
    gateway's XADD to its stream."""
    stream = f"holds-crash.{uuid.uuid4().hex[:8]}.usage"
    env = ledger_env(
        data_dir=tmp_path / "data",
        redis_url=redis_url,
        stream=stream,
        rate_card=write_rate_card(tmp_path / "rate-card.toml"),
        claim_idle_ms=CLAIM_IDLE_MS,
    )
    env.update(LEDGER_CLOCK="manual", LEDGER_CLOCK_START="2026-03-01T09:00:00Z")
    if request.param == "postgres":
        env.update(
            LEDGER_DATABASE_URL=request.getfixturevalue("postgres_url"),
            LEDGER_DATABASE_SCHEMA=request.getfixturevalue("postgres_schema"),
        )
    processes = ServeProcesses(env, tmp_path)
    client = redis.Redis.from_url(redis_url)
    api = HttpClient(f"http://127.0.0.1:{env['LEDGER_PORT']}", ADMIN)
    with processes.logs_on_failure():
        processes.spawn()
        api.wait_ready()
        yield processes, api, lambda event: client.xadd(stream, {"data": json.dumps(event)})
    client.delete(stream, f"{stream}.dead")
    client.close()


def _usage(event_id: str, hold_id: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "subscription_id": "crash",
        "seat_id": "alice",
        "model": "t-alpha",
        "occurred_at": "2026-03-01T09:00:00Z",
        "hold_id": hold_id,
        **SMALL,
    }


def _ok(api: HttpClient, method: str, path: str, body: Any = None) -> Any:
    reply = api.request(method, path, body)
    assert reply.status < 300, (method, path, reply.status, reply.body)
    return reply.body


def _restart(processes: ServeProcesses, api: HttpClient) -> None:
    processes.kill()
    processes.spawn()
    api.wait_ready()


def _events(api: HttpClient, kind: str) -> list[dict[str, Any]]:
    items = _ok(api, "GET", "/v1/log?limit=1000")["items"]
    return [r["event"] for r in items if r["event"]["type"] == kind]


HOLDS: Final = "/v1/subscriptions/crash/seats/alice/holds"


def _open(api: HttpClient) -> None:
    _ok(api, "POST", "/v1/subscriptions", {"subscription_id": "crash"})
    _ok(api, "POST", "/v1/subscriptions/crash/seats", {"seat_id": "alice", "tier": "standard"})


def test_a_hold_outlives_a_sigkill_and_its_settlement_is_charged_once(
    serve: tuple[ServeProcesses, HttpClient, Publish],
) -> None:
    processes, api, publish = serve
    _open(api)
    _ok(api, "POST", HOLDS, {"hold_id": "h1", "credits": "10"})
    _ok(api, "POST", HOLDS, {"hold_id": "h2", "credits": "10"})
    publish(_usage("e2", "h2"))  # delivered, perhaps charged, perhaps not, when the kill lands
    _restart(processes, api)
    assert _ok(api, "GET", f"{HOLDS}/h1")["status"] == "active"
    publish(_usage("e1", "h1"))
    publish(_usage("e2", "h2"))  # the gateway's retry
    eventually(
        lambda: _ok(api, "GET", "/v1/subscriptions/crash/seats/alice")["used"],
        lambda used: used == "6.36",
        "both settlements charged",
    )
    charges = _events(api, "usage.charged")
    assert sorted(c["event_id"] for c in charges) == ["e1", "e2"]
    assert {c["hold_status"] for c in charges} == {"settled"}
    assert sorted(s["hold_id"] for s in _events(api, "hold.settled")) == ["h1", "h2"]
    seat = _ok(api, "GET", "/v1/subscriptions/crash/seats/alice")
    assert (seat["used"], seat["held"], seat["available"]) == ("6.36", "0.00", "24993.64")


def test_a_hold_that_expires_while_the_ledger_is_down_is_expired_after_the_restart(
    serve: tuple[ServeProcesses, HttpClient, Publish],
) -> None:
    processes, api, publish = serve
    _open(api)
    _ok(api, "POST", HOLDS, {"hold_id": "h1", "credits": "10", "ttl_s": 60})
    _restart(processes, api)
    assert _ok(api, "GET", f"{HOLDS}/h1")["status"] == "active"
    seat = _ok(api, "GET", "/v1/subscriptions/crash/seats/alice")
    assert (seat["held"], seat["available"]) == ("10.00", "24990.00")
    _ok(api, "POST", "/v1/clock", {"now": "2026-03-01T09:02:00Z"})
    eventually(
        lambda: _ok(api, "GET", f"{HOLDS}/h1")["status"],
        lambda status: status == "expired",
        "the ticker expiring the hold",
    )
    publish(_usage("e1", "h1"))
    eventually(lambda: _events(api, "usage.charged"), bool, "the charge")
    [charge] = _events(api, "usage.charged")
    assert (charge["hold_status"], charge["credits_ucr"]) == ("not_active", 3_180_000)
    # The log answers from the store; the seat from the API's balances, which fold the new
    # record at their next look at the log (within the follower's sleep).
    seat = eventually(
        lambda: _ok(api, "GET", "/v1/subscriptions/crash/seats/alice"),
        lambda seat: seat["used"] != "0.00",
        "the seat's balances folding the charge",
    )
    assert (seat["used"], seat["held"]) == ("3.18", "0.00")
