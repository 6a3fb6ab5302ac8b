"""The HTTP API of a running `ledger serve`, fed through its Redis usage stream: what a
gateway, an admin and an auditor see over the wire, with the manual clock.

Every test here talks to a real process over HTTP and a real Redis; each uses its own
subscriptions, so they share one serve. The clock test moves the clock, so it has its own.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.redis_server import (
    RedisBinaryNotFoundError,
    find_redis_binary,
)
from tests.conftest import no_service
from tests.service_support import (
    ADMIN_TOKEN,
    LEDGER,
    START,
    Response,
    Service,
    eventually,
    start_service,
)
from tests.support.redis_cluster import EmbeddedRedisCluster


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Service]:
    yield from start_service(tmp_path_factory.mktemp("serve"), redis_url)


@pytest.fixture
def own_service(tmp_path: Path, redis_url: str) -> Iterator[Service]:
    yield from start_service(tmp_path, redis_url)


def usage_items(service: Service, sub: str, count: int, **params: Any) -> list[dict[str, Any]]:
    page = eventually(
        lambda: service.api.get(f"/v1/subscriptions/{sub}/usage", **params),
        lambda r: r.status == 200 and len(r.body["items"]) >= count,
        f"{count} usage rows of {sub}",
    )
    return list(page.body["items"])


# -- what a charge shows ------------------------------------------------------------------------


def test_the_seed_example_charges_3_18_credits_shown_in_usage_details_with_coefficients(
    service: Service,
) -> None:
    service.open("seed", {"alice": "standard"})
    event_id = service.publish(
        "seed", "alice", input_tokens=8_349, cached_tokens=40_794, output_tokens=573
    )
    [row] = usage_items(service, "seed", 1)
    assert row["event_id"] == event_id
    assert row["credits"] == "3.18"
    assert (row["model"], row["product"], row["seat_id"]) == ("qwen3.6-plus", "text", "alice")
    assert row["usage"]["input_tokens"] == 8_349 and row["usage"]["cached_tokens"] == 40_794
    components = row["components"]
    assert (components["input"], components["cached"], components["output"]) == (
        "1.67",
        "0.82",
        "0.69",
    )
    coefficients = row["coefficients"]
    assert (
        coefficients["input_per_1k"],
        coefficients["cached_per_1k"],
        coefficients["output_per_1k"],
    ) == ("0.20", "0.02", "1.20")
    assert row["allocation"] == [{"source": "seat", "id": "alice", "credits": "3.18"}]
    seat = service.ok("GET", "/v1/subscriptions/seed/seats/alice")
    assert (seat["used"], seat["remaining"], seat["status"]) == ("3.18", "24996.82", "active")


def test_a_seat_overflowing_into_two_packs_shows_each_packs_balance_and_countdown(
    service: Service,
) -> None:
    service.open("flow", {"bob": "standard"}, packs=("p1", "p2"))
    service.publish_max("flow", "bob", times=10)  # 710,000 = 25,000 seat + 625,000 + 60,000
    usage_items(service, "flow", 10)
    seat = service.ok("GET", "/v1/subscriptions/flow/seats/bob")
    assert (seat["used"], seat["remaining"], seat["pack_used"]) == ("25000.00", "0.00", "685000.00")
    now = datetime.fromisoformat(service.ok("GET", "/v1/clock")["now"])
    packs = {p["pack_id"]: p for p in service.ok("GET", "/v1/subscriptions/flow/packs")["items"]}
    assert (packs["p1"]["remaining"], packs["p1"]["status"]) == ("0.00", "exhausted")
    assert (packs["p2"]["remaining"], packs["p2"]["status"]) == ("565000.00", "active")
    for pack in packs.values():
        expires_at = datetime.fromisoformat(pack["expires_at"])
        assert expires_at == datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
        assert pack["expires_in_seconds"] == int((expires_at - now).total_seconds())
    billing = service.ok("GET", "/v1/subscriptions/flow/billing")
    assert billing["remaining"] == "565000.00"
    assert billing["next_expiration"]["pack_id"] == "p2"  # p1 is exhausted: nothing to expire


def test_two_subscriptions_with_the_same_seat_ids_keep_four_balances(service: Service) -> None:
    """A seat id names a seat within its subscription: a and b of one team and a and b of
    another are four seats, charged, read and listed apart."""
    spend = {("twin-1", "a"): 1, ("twin-1", "b"): 2, ("twin-2", "a"): 3, ("twin-2", "b"): 4}
    for sub in ("twin-1", "twin-2"):
        service.open(sub, {"a": "standard", "b": "standard"})
    for (sub, seat), times in spend.items():
        for _ in range(times):  # 1,000 input tokens at 0.2 / 1K: 0.20 credits each
            service.publish(sub, seat, input_tokens=1_000)
    for (sub, seat), times in spend.items():
        body = eventually(
            lambda sub=sub, seat=seat: service.ok("GET", f"/v1/subscriptions/{sub}/seats/{seat}"),
            lambda body, times=times: body["used"] == f"0.{2 * times}0",
            f"{sub}/{seat} charged",
        )
        assert (body["subscription_id"], body["seat_id"]) == (sub, seat)
        rows = usage_items(service, sub, times, seat=seat)
        assert len(rows) == times and {row["seat_id"] for row in rows} == {seat}


def test_suspension_and_resume_show_in_the_authorization_check(service: Service) -> None:
    service.open("susp", {"carol": "standard"})
    path = "/v1/subscriptions/susp/seats/carol/authorization"
    assert service.ok("GET", path) == {
        "allowed": True,
        "available": "25000.00",
        "held": "0.00",
        "reason": "ok",
    }
    service.publish_max("susp", "carol")  # 71,000: 25,000 from the seat, 46,000 uncovered
    check = eventually(
        lambda: service.ok("GET", path), lambda body: not body["allowed"], "the suspension"
    )
    assert check == {"allowed": False, "available": "0.00", "held": "0.00", "reason": "suspended"}
    overview = service.ok("GET", "/v1/subscriptions/susp/overview")
    assert overview["uncovered"] == "46000.00"
    service.ok("POST", "/v1/subscriptions/susp/packs", {"pack_id": "rescue"})
    assert service.ok("GET", path) == {
        "allowed": True,
        "available": "625000.00",
        "held": "0.00",
        "reason": "ok",
    }


def test_as_of_answers_the_past_after_later_events(service: Service) -> None:
    service.open("past", {"erin": "advanced"})
    service.publish("past", "erin", input_tokens=8_349, cached_tokens=40_794, output_tokens=573)
    [first] = usage_items(service, "past", 1)
    service.publish("past", "erin", input_tokens=8_349, cached_tokens=40_794, output_tokens=573)
    usage_items(service, "past", 2)
    seat_path = "/v1/subscriptions/past/seats/erin"
    assert service.ok("GET", seat_path)["used"] == "6.36"
    at_first = {"as_of": f"position:{first['position']}"}
    assert service.ok("GET", seat_path, params=at_first)["used"] == "3.18"
    assert len(service.ok("GET", "/v1/subscriptions/past/usage", params=at_first)["items"]) == 1
    before_open = {"as_of": "2026-02-01T00:00:00Z"}
    assert service.api.get(seat_path, **before_open).status == 404


# -- tokens over the wire -------------------------------------------------------------------------


def test_a_viewer_sees_its_subscription_only_and_a_revoked_token_stops_at_once(
    service: Service,
) -> None:
    service.open("mine", {"fay": "standard"})
    service.open("theirs", {"gus": "standard"})
    created = service.ok("POST", "/v1/tokens", {"role": "viewer", "subscription_ids": ["mine"]})
    viewer = service.api.with_token(created["token"])
    assert viewer.get("/v1/subscriptions/mine/overview").status == 200
    hidden = viewer.get("/v1/subscriptions/theirs/overview")
    assert hidden.status == 404 and "gus" not in json.dumps(hidden.body)
    assert viewer.request("POST", "/v1/subscriptions/mine/packs", {}).status == 403
    assert viewer.get("/v1/log").status == 403
    service.ok("DELETE", f"/v1/tokens/{created['token_id']}")
    assert viewer.get("/v1/subscriptions/mine/overview").status == 401
    stored = b"".join(p.read_bytes() for p in service.data_dir.glob("tokens.sqlite3*"))
    assert created["token"].encode() not in stored
    assert ADMIN_TOKEN.encode() not in stored


def test_metrics_count_what_was_ingested_and_dead_lettered(service: Service) -> None:
    service.open("counted", {"hal": "standard"})
    service.publish("counted", "hal", input_tokens=1_000)
    service.redis.xadd(service.stream, {"data": b"{not json"})
    usage_items(service, "counted", 1)

    def metrics() -> Response:
        return service.api.get("/metrics")

    text = eventually(
        metrics,
        lambda r: 'ledger_events_dead_lettered_total{reason="invalid_json"}' in r.body,
        "the dead letter counted",
    ).body
    values = {
        line.split(" ")[0]: line.split(" ")[1]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert float(values["ledger_events_ingested_total"]) >= 2
    assert float(values["ledger_charges_total"]) >= 1
    assert float(values["ledger_credits_deducted_ucr_total"]) >= 200_000
    assert "ledger_projection_lag_events" in values


# -- the manual clock -----------------------------------------------------------------------------


def test_a_manual_clock_month_resets_seat_quotas_and_expires_a_pack_reporting_the_amount(
    own_service: Service,
) -> None:
    service = own_service
    service.open("month", {"dave": "standard"}, packs=("pm",))
    service.publish_max("month", "dave")  # 25,000 from the seat, 46,000 from the pack
    usage_items(service, "month", 1)
    assert service.ok("GET", "/v1/subscriptions/month/seats/dave")["remaining"] == "0.00"
    next_month = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
    moved = service.ok("POST", "/v1/clock", {"now": next_month.isoformat()})
    assert datetime.fromisoformat(moved["now"]) == next_month
    assert [(c["subscription_id"], c["cycle"]) for c in moved["cycles_started"]] == [("month", 1)]
    assert [(p["pack_id"], p["expired"]) for p in moved["packs_expired"]] == [("pm", "579000.00")]
    seat = service.ok("GET", "/v1/subscriptions/month/seats/dave")
    assert (seat["used"], seat["remaining"]) == ("0.00", "25000.00")
    assert datetime.fromisoformat(seat["cycle_start"]) == next_month
    [pack] = service.ok("GET", "/v1/subscriptions/month/packs")["items"]
    assert (pack["status"], pack["remaining"], pack["expired"]) == ("expired", "0.00", "579000.00")
    moved_back = service.api.request("POST", "/v1/clock", {"now": START})
    assert moved_back.status == 409
    assert moved_back.body["type"].endswith("clock-backwards")
    # The log the service wrote verifies: chain, prices and allocations.
    done = subprocess.run(
        [*LEDGER, "audit", "verify"],
        env={**os.environ, "LEDGER_DATA_DIR": str(service.data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.startswith("ok:"), done.stdout + done.stderr


def test_a_week_later_the_countdown_has_moved_by_a_week(own_service: Service) -> None:
    service = own_service
    service.open("week", {"ida": "standard"}, packs=("pw",))
    [before] = service.ok("GET", "/v1/subscriptions/week/packs")["items"]
    later = datetime.fromisoformat(START.replace("Z", "+00:00")) + timedelta(days=7)
    service.ok("POST", "/v1/clock", {"now": later.isoformat()})
    [after] = service.ok("GET", "/v1/subscriptions/week/packs")["items"]
    assert before["expires_in_seconds"] - after["expires_in_seconds"] == 7 * 86_400


# -- on a Redis Cluster ---------------------------------------------------------------------------


@pytest.fixture
def cluster_service(tmp_path: Path) -> Iterator[Service]:
    """`ledger serve` with LEDGER_REDIS_CLUSTER=1 on a three-node cluster the fixture starts."""
    try:
        find_redis_binary()
    except RedisBinaryNotFoundError as error:
        no_service(f"no redis-server for a local cluster: {error}")
    with EmbeddedRedisCluster(tmp_path / "cluster", masters=3) as cluster:
        yield from start_service(tmp_path, cluster.url, cluster=True)


def test_serve_on_a_redis_cluster_charges_and_dead_letters_across_slots(
    cluster_service: Service,
) -> None:
    service = cluster_service
    stream, dead = service.stream, f"{service.stream}.dead"
    client = service.redis
    assert client.keyslot(stream) != client.keyslot(dead)
    service.open("clustered", {"ivy": "standard"})
    service.publish("clustered", "ivy", input_tokens=8_349, cached_tokens=40_794, output_tokens=573)
    service.publish_event({"event_id": "bad", "subscription_id": "clustered"})  # no seat
    [row] = usage_items(service, "clustered", 1)
    assert row["credits"] == "3.18"
    [letter] = eventually(service.dead_letters, lambda letters: len(letters) == 1, "dead letter")
    assert letter[b"reason"] == b"invalid_event"
    eventually(
        lambda: client.xpending(stream, "ledger")["pending"], lambda n: n == 0, "acknowledged"
    )
