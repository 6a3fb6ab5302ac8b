"""Holds over HTTP: a gateway reserves credits for a seat, reads, extends and releases them, and
every balance the API shows counts what is held (`held`) and what is left to spend
(`available`)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ledger.log import us_from_datetime
from tests.support.api_app import Api, expect_problem, open_api

BOB = "/v1/subscriptions/team-1/seats/bob"
HOLDS = f"{BOB}/holds"
BOB_QUOTA = "250000.00"
P2_LEFT = "564996.82"
BOB_AVAILABLE = "814996.82"
"""bob's premium quota and what is left of pack p2 (alice spent p1 and part of p2)."""


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with open_api(tmp_path) as api:
        yield api


def _hold(api: Api, hold_id: str, credits: str, token: str | None = None, **body: Any) -> Any:
    payload = {"hold_id": hold_id, "credits": credits, **body}
    return api.post(HOLDS, payload) if token is None else api.post(HOLDS, payload, token)


def test_a_hold_is_placed_with_where_it_took_its_credits_and_when_it_expires(api: Api) -> None:
    placed = _hold(api, "h1", "250010", ttl_s=60)
    assert placed.status_code == 201, placed.text
    hold = placed.json()
    assert hold["status"] == "active" and hold["credits"] == "250010.00"
    assert hold["allocation"] == [
        {"source": "seat", "id": "bob", "credits": BOB_QUOTA},
        {"source": "pack", "id": "p2", "credits": "10.00"},
    ]
    assert hold["expires_at"] == "2026-02-04T10:01:00Z" and hold["expires_in_seconds"] == 60
    assert hold["settled_by"] is None
    assert api.get(f"{HOLDS}/h1").json() == hold
    [logged] = api.logged("hold.placed")
    assert logged["actor"]["role"] == "admin"


def test_the_same_hold_again_answers_200_with_the_same_hold_and_another_body_409(
    api: Api,
) -> None:
    first = _hold(api, "h1", "5")
    again = _hold(api, "h1", "5")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    expect_problem(_hold(api, "h1", "6"), 409, "duplicate-conflict")
    expect_problem(_hold(api, "h1", "5", ttl_s=30), 409, "duplicate-conflict")
    assert len(api.logged("hold.placed")) == 1


def test_a_hold_larger_than_what_is_available_is_refused_with_what_is_available(
    api: Api,
) -> None:
    body = expect_problem(_hold(api, "big", "814996.83"), 409, "insufficient-credits")
    assert body["available"] == BOB_AVAILABLE and body["reason"] == "insufficient_credits"
    assert _hold(api, "h1", "14996.82").status_code == 201
    body = expect_problem(_hold(api, "big", "800000.01"), 409, "insufficient-credits")
    assert body["available"] == "800000.00"
    assert _hold(api, "all", "800000").status_code == 201
    assert api.logged("hold.placed")[-1]["credits_ucr"] == 800_000_000_000


def test_a_suspended_or_removed_seat_or_an_unknown_one_gets_no_hold(api: Api) -> None:
    carol = {"hold_id": "h1", "credits": "1"}
    expect_problem(
        api.post("/v1/subscriptions/team-2/seats/carol/holds", carol), 409, "seat-suspended"
    )
    assert api.delete(BOB).status_code == 200
    expect_problem(_hold(api, "h1", "1"), 409, "seat-removed")
    expect_problem(api.post("/v1/subscriptions/team-1/seats/nobody/holds", carol), 404, "not-found")
    expect_problem(api.post("/v1/subscriptions/team-9/seats/bob/holds", carol), 404, "not-found")


def test_a_hold_is_extended_from_now_and_released_and_an_ended_one_is_not_extended(
    api: Api,
) -> None:
    assert _hold(api, "h1", "5", ttl_s=10).status_code == 201
    api.clock.set(us_from_datetime(datetime(2026, 2, 4, 10, 0, 5, tzinfo=UTC)))
    extended = api.post(f"{HOLDS}/h1/extend", {"ttl_s": 120})
    assert extended.status_code == 200, extended.text
    assert extended.json()["expires_at"] == "2026-02-04T10:02:05Z"
    released = api.delete(f"{HOLDS}/h1")
    assert released.status_code == 200
    assert released.json()["status"] == "released" and released.json()["ended_at"]
    assert api.delete(f"{HOLDS}/h1").json() == released.json()
    assert len(api.logged("hold.released")) == 1
    expect_problem(api.post(f"{HOLDS}/h1/extend", {"ttl_s": 60}), 409, "hold-not-active")


def test_another_seats_hold_or_an_unknown_one_is_not_found(api: Api) -> None:
    assert _hold(api, "h1", "5").status_code == 201
    alice = "/v1/subscriptions/team-1/seats/alice/holds/h1"
    expect_problem(api.get(alice), 404, "not-found")
    expect_problem(api.delete(alice), 404, "not-found")
    expect_problem(api.post(f"{alice}/extend", {"ttl_s": 60}), 404, "not-found")
    expect_problem(api.get(f"{HOLDS}/nope"), 404, "not-found")


@pytest.mark.parametrize(
    "body",
    [
        {"hold_id": "h1", "credits": "0"},
        {"hold_id": "h1", "credits": "0.000000"},
        {"hold_id": "h1", "credits": "-1"},
        {"hold_id": "h1", "credits": "1.0000001"},
        {"hold_id": "h1", "credits": "1000000000"},
        {"hold_id": "h1", "credits": 5},
        {"hold_id": "h1", "credits": "5", "ttl_s": 0},
        {"hold_id": "h1", "credits": "5", "ttl_s": 3601},
        {"hold_id": "h1", "credits": "5", "ttl_s": 1.5},
        {"hold_id": "h1", "credits": "5", "ttl_s": "60"},
        {"hold_id": "h 1", "credits": "5"},
        {"hold_id": "h1", "credits": "5", "seat_id": "bob"},
    ],
)
def test_a_hold_body_out_of_bounds_is_a_400(api: Api, body: dict[str, Any]) -> None:
    expect_problem(api.post(HOLDS, body), 400, "invalid-body")
    assert api.logged("hold.placed") == []


def test_the_smallest_hold_is_one_micro_credit_and_a_whole_ttl_may_be_written_60_0(
    api: Api,
) -> None:
    assert _hold(api, "h1", "0.000001", ttl_s=60.0).json()["credits"] == "0.000001"
    assert api.logged("hold.placed")[0]["ttl_s"] == 60


def test_gateways_of_the_subscription_and_admins_hold_others_do_not(api: Api) -> None:
    _, gateway = api.token("gateway", ["team-1"])
    _, other_gateway = api.token("gateway", ["team-2"])
    _, viewer = api.token("viewer", ["team-1"])
    _, auditor = api.token("auditor")
    assert _hold(api, "h1", "5", token=gateway).status_code == 201
    assert api.get(f"{HOLDS}/h1", gateway).status_code == 200
    assert api.post(f"{HOLDS}/h1/extend", {"ttl_s": 60}, gateway).status_code == 200
    expect_problem(_hold(api, "h2", "5", token=viewer), 403, "forbidden")
    expect_problem(_hold(api, "h2", "5", token=auditor), 403, "forbidden")
    expect_problem(api.delete(f"{HOLDS}/h1", viewer), 403, "forbidden")
    expect_problem(_hold(api, "h2", "5", token=other_gateway), 404, "not-found")
    expect_problem(api.get(f"{HOLDS}/h1", other_gateway), 404, "not-found")
    assert api.get(f"{HOLDS}/h1", viewer).status_code == 200
    assert api.delete(f"{HOLDS}/h1", gateway).json()["status"] == "released"
    assert api.logged("hold.released")[0]["actor"]["role"] == "gateway"


def test_seat_authorization_overview_and_billing_show_held_and_available(api: Api) -> None:
    before = api.get("/v1/subscriptions/team-1/billing").json()
    head = api.get("/v1/audit/digest").json()["position"]
    assert _hold(api, "h1", "250010").status_code == 201
    seat = api.get(BOB).json()
    assert (seat["remaining"], seat["held"], seat["available"]) == (
        BOB_QUOTA,
        "250010.00",
        "564986.82",
    )
    alice = api.get("/v1/subscriptions/team-1/seats/alice").json()
    assert (alice["held"], alice["available"]) == ("0.00", "564986.82")
    check = api.get(f"{BOB}/authorization").json()
    assert check == {"allowed": True, "available": "564986.82", "held": "250010.00", "reason": "ok"}
    overview = api.get("/v1/subscriptions/team-1/overview").json()
    assert overview["held"] == "250010.00"
    assert [s["held"] for s in overview["seats"]] == ["0.00", "250010.00"]
    billing = api.get("/v1/subscriptions/team-1/billing").json()
    assert before["held"] == "0.00" and before["available"] == BOB_AVAILABLE
    assert (billing["held"], billing["available"]) == ("250010.00", "564986.82")
    assert billing["remaining"] == before["remaining"]
    as_before = api.get(BOB, as_of=f"position:{head}").json()
    assert (as_before["held"], as_before["available"]) == ("0.00", BOB_AVAILABLE)


def test_a_seat_whose_credits_are_all_held_is_not_authorized(api: Api) -> None:
    assert _hold(api, "h1", BOB_AVAILABLE).status_code == 201
    check = api.get(f"{BOB}/authorization").json()
    assert check == {
        "allowed": False,
        "available": "0.00",
        "held": BOB_AVAILABLE,
        "reason": "exhausted",
    }
