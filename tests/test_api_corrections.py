"""Corrections over HTTP: adjustments, grants, reversals and voids (admins only), each answered
with the log's record of it and who asked and why; a retry with the same id and body answers the
same, another body 409; every admin write records its actor; the history of admin writes, which
a viewer sees for its own subscription only."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.support.api_app import ADMIN, Api, expect_problem, open_api

SUB = "/v1/subscriptions/team-1"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with open_api(tmp_path) as opened:
        yield opened


def _admin_token_id(api: Api) -> str:
    token_id: str = api.get("/v1/tokens/self").json()["token_id"]
    return token_id


def test_an_adjustment_is_recorded_with_who_asked_and_why_and_a_retry_answers_the_same(
    api: Api,
) -> None:
    body = {"adjustment_id": "adj-1", "credits": "500", "reason": "goodwill for the outage"}
    first = api.post(f"{SUB}/seats/bob/adjustments", body)
    assert first.status_code == 201, first.text
    answer = first.json()
    assert (answer["type"], answer["id"], answer["seat_id"]) == ("seat.adjusted", "adj-1", "bob")
    assert answer["credits"] == "500.00" and answer["reason"] == "goodwill for the outage"
    assert answer["actor"] == {"token_id": _admin_token_id(api), "role": "admin"}
    assert api.get(f"{SUB}/seats/bob").json()["quota"] == "250500.00"
    again = api.post(f"{SUB}/seats/bob/adjustments", body)
    assert again.status_code == 200 and again.json() == answer
    [logged] = api.logged("seat.adjusted")
    assert logged["actor"]["role"] == "admin" and logged["reason"] == "goodwill for the outage"
    assert api.get(f"{SUB}/seats/bob").json()["quota"] == "250500.00"


def test_an_adjustment_id_used_again_with_another_body_is_a_conflict(api: Api) -> None:
    body = {"adjustment_id": "adj-1", "credits": "-5", "reason": "typo"}
    assert api.post(f"{SUB}/seats/bob/adjustments", body).status_code == 201
    for changed in ({"credits": "-6"}, {"reason": "another"}):
        answer = api.post(f"{SUB}/seats/bob/adjustments", body | changed)
        expect_problem(answer, 409, "duplicate-conflict")
    assert len(api.logged("seat.adjusted")) == 1


def test_an_adjustment_taking_more_than_remains_is_refused_with_what_is_available(
    api: Api,
) -> None:
    body = {"adjustment_id": "adj-1", "credits": "-250001", "reason": "too much"}
    expect_problem(api.post(f"{SUB}/seats/bob/adjustments", body), 409, "insufficient-credits")
    for bad in ({"credits": "0"}, {"credits": "1.0000001"}, {"reason": ""}, {"reason": "x" * 501}):
        answer = api.post(f"{SUB}/seats/bob/adjustments", body | bad)
        expect_problem(answer, 400, "invalid-body")
    expect_problem(
        api.post(f"{SUB}/seats/nobody/adjustments", body | {"credits": "1"}), 404, "not-found"
    )


def test_a_grant_is_answered_with_its_expiry_and_a_retry_changes_nothing(api: Api) -> None:
    body = {
        "grant_id": "g-1",
        "credits": "50000",
        "expires_at": "2026-03-01T00:00:00Z",
        "reason": "promised by sales",
    }
    first = api.post(f"{SUB}/grants", body)
    assert first.status_code == 201, first.text
    answer = first.json()
    assert (answer["type"], answer["id"], answer["credits"]) == ("grant.issued", "g-1", "50000.00")
    assert answer["expires_at"].startswith("2026-03-01T00:00:00")
    again = api.post(f"{SUB}/grants", body)
    assert again.status_code == 200 and again.json() == answer
    expect_problem(api.post(f"{SUB}/grants", body | {"credits": "1"}), 409, "duplicate-conflict")
    past = body | {"grant_id": "g-2", "expires_at": "2026-01-01T00:00:00Z"}
    expect_problem(api.post(f"{SUB}/grants", past), 409, "invalid-command")


def test_a_reversal_gives_back_last_taken_first_and_partial_ones_add_up(api: Api) -> None:
    # big-9 took 71000 from pack p2 (alice's quota and p1 were spent by then).
    first = api.post(
        f"{SUB}/charges/big-9/reversals",
        {"reversal_id": "r-1", "credits": "1000", "reason": "double publish"},
    )
    assert first.status_code == 201, first.text
    answer = first.json()
    assert (answer["type"], answer["event_id"], answer["credits"]) == (
        "usage.reversed",
        "big-9",
        "1000.00",
    )
    assert answer["parts"] == [
        {"source": "pack", "id": "p2", "credits": "1000.00", "outcome": "returned"}
    ]
    rest = api.post(
        f"{SUB}/charges/big-9/reversals", {"reversal_id": "r-2", "reason": "double publish"}
    )
    assert rest.status_code == 201 and rest.json()["credits"] == "70000.00"
    rest_again = api.post(
        f"{SUB}/charges/big-9/reversals", {"reversal_id": "r-2", "reason": "double publish"}
    )
    assert rest_again.status_code == 200 and rest_again.json() == rest.json()
    more = {"reversal_id": "r-3", "credits": "0.01", "reason": "one more"}
    expect_problem(api.post(f"{SUB}/charges/big-9/reversals", more), 409, "invalid-command")
    unknown = {"reversal_id": "r-4", "reason": "no such charge"}
    expect_problem(api.post(f"{SUB}/charges/nope/reversals", unknown), 404, "not-found")
    again = api.post(
        f"{SUB}/charges/big-9/reversals",
        {"reversal_id": "r-1", "credits": "1000", "reason": "double publish"},
    )
    assert again.status_code == 200 and again.json() == answer


def test_a_void_removes_what_is_left_and_again_answers_the_first_void(api: Api) -> None:
    first = api.post(f"{SUB}/packs/p2/void", {"reason": "payment refunded"})
    assert first.status_code == 201, first.text
    answer = first.json()
    assert (answer["type"], answer["id"]) == ("pack.voided", "p2")
    assert answer["credits"] == "564996.82"  # 625000 less the 60003.18 alice drew
    again = api.post(f"{SUB}/packs/p2/void", {"reason": "payment refunded"})
    assert again.status_code == 200 and again.json() == answer
    expect_problem(api.post(f"{SUB}/packs/nope/void", {"reason": "x"}), 404, "not-found")
    grant = {"grant_id": "g-1", "credits": "10", "expires_at": "2026-03-01T00:00:00Z"}
    api.post(f"{SUB}/grants", grant | {"reason": "test"})
    voided = api.post(f"{SUB}/grants/g-1/void", {"reason": "issued by mistake"})
    assert voided.status_code == 201 and voided.json()["credits"] == "10.00"
    [listed] = api.get(f"{SUB}/grants", token=api.token("viewer", ["team-1"])[1]).json()["items"]
    assert (listed["status"], listed["remaining"], listed["voided"]) == ("voided", "0.00", "10.00")
    other = api.token("viewer", ["team-2"])[1]
    expect_problem(api.get(f"{SUB}/grants", token=other), 404, "not-found")
    expect_problem(api.post(f"{SUB}/grants/g-1/void", {}), 400, "invalid-body")


def test_only_admins_correct(api: Api) -> None:
    writes: list[tuple[str, dict[str, Any]]] = [
        (f"{SUB}/seats/bob/adjustments", {"adjustment_id": "a", "credits": "1", "reason": "r"}),
        (
            f"{SUB}/grants",
            {"grant_id": "g", "credits": "1", "expires_at": "2026-03-01T00:00:00Z", "reason": "r"},
        ),
        (f"{SUB}/charges/big-9/reversals", {"reversal_id": "r", "reason": "r"}),
        (f"{SUB}/packs/p2/void", {"reason": "r"}),
        (f"{SUB}/grants/g/void", {"reason": "r"}),
    ]
    _, viewer = api.token("viewer", ["team-1"])
    _, gateway = api.token("gateway", ["team-1"])
    _, auditor = api.token("auditor")
    for path, body in writes:
        for token in (viewer, gateway, auditor):
            expect_problem(api.post(path, body, token=token), 403, "forbidden")
    _, other_viewer = api.token("viewer", ["team-2"])
    expect_problem(api.post(*writes[0], token=other_viewer), 404, "not-found")
    assert api.logged("seat.adjusted") == []


def test_every_admin_write_records_who_asked_and_an_optional_reason(api: Api) -> None:
    token_id = _admin_token_id(api)
    api.post("/v1/subscriptions", {"subscription_id": "team-3", "reason": "new customer"})
    api.post("/v1/subscriptions/team-3/seats", {"seat_id": "dave", "tier": "standard"})
    api.patch("/v1/subscriptions/team-3/seats/dave", {"tier": "premium", "reason": "asked"})
    api.post("/v1/subscriptions/team-3/packs", {"pack_id": "p9", "reason": "bought"})
    api.client.delete(
        "/v1/subscriptions/team-3/seats/dave",
        params={"reason": "left the team"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    history = api.get("/v1/subscriptions/team-3/history").json()
    assert [(e["type"], e["reason"]) for e in history["items"]] == [
        ("subscription.opened", "new customer"),
        ("seat.added", None),
        ("seat.tier_changed", "asked"),
        ("pack.purchased", "bought"),
        ("seat.removed", "left the team"),
    ]
    assert {e["actor"]["token_id"] for e in history["items"]} == {token_id}
    assert history["next_after"] is None


def test_viewers_see_corrections_in_their_own_subscriptions_history_only(api: Api) -> None:
    api.post(
        f"{SUB}/seats/bob/adjustments", {"adjustment_id": "a-1", "credits": "7", "reason": "why"}
    )
    api.post(
        "/v1/subscriptions/team-2/seats/carol/adjustments",
        {"adjustment_id": "a-2", "credits": "8", "reason": "other"},
    )
    _, viewer = api.token("viewer", ["team-1"])
    items = api.get(f"{SUB}/history", token=viewer).json()["items"]
    adjustments = [e for e in items if e["type"] == "seat.adjusted"]
    assert [(e["id"], e["credits"], e["reason"]) for e in adjustments] == [("a-1", "7.00", "why")]
    expect_problem(api.get("/v1/subscriptions/team-2/history", token=viewer), 404, "not-found")
    page = api.get(f"{SUB}/history", limit=2).json()
    assert len(page["items"]) == 2 and page["next_after"] == page["items"][-1]["position"]
    rest = api.get(f"{SUB}/history", after=page["next_after"], limit=100).json()["items"]
    assert rest[-1]["id"] == "a-1"
    before = api.get(f"{SUB}/history", as_of=f"position:{adjustments[0]['position'] - 1}")
    assert all(e["type"] != "seat.adjusted" for e in before.json()["items"])


def test_usage_details_show_a_reversal_as_its_own_row_beside_the_charge_it_reverses(
    api: Api,
) -> None:
    body = {"reversal_id": "r-1", "credits": "1000", "reason": "double publish"}
    position = api.post(f"{SUB}/charges/big-9/reversals", body).json()["position"]
    viewer = api.token("viewer", ["team-1"])[1]
    rows = api.get(f"{SUB}/usage", token=viewer, limit=1000, seat="alice").json()["items"]
    charge = next(row for row in rows if row["event_id"] == "big-9")
    assert (charge["kind"], charge["credits"], charge["reversed"]) == (
        "charge",
        "71000.00",
        "1000.00",
    )
    reversal = rows[-1]
    assert (reversal["kind"], reversal["event_id"], reversal["reverses"]) == (
        "reversal",
        "r-1",
        "big-9",
    )
    assert (reversal["credits"], reversal["reason"], reversal["product"]) == (
        "-1000.00",
        "double publish",
        None,
    )
    assert reversal["allocation"] == [{"source": "pack", "id": "p2", "credits": "-1000.00"}]
    before = api.get(f"{SUB}/usage", limit=1000, as_of=f"position:{position - 1}").json()
    assert {row["kind"] for row in before["items"]} == {"charge"}
    assert {row["reversed"] for row in before["items"]} == {"0.00"}
    other_viewer = api.token("viewer", ["team-2"])[1]
    expect_problem(api.get(f"{SUB}/usage", token=other_viewer), 404, "not-found")


def test_billing_and_the_overview_account_for_grants_voids_and_reversals(api: Api) -> None:
    def figures() -> tuple[Any, ...]:
        billing = api.get(f"{SUB}/billing").json()
        overview = api.get(f"{SUB}/overview").json()
        return (
            billing["total_credits"],
            billing["remaining"],
            overview["grants_remaining"],
            overview["voided"],
            overview["packs_remaining"],
        )

    total, remaining, *_ = figures()
    assert figures()[2:] == ("0.00", "0.00", "564996.82")
    grant = {"grant_id": "g-1", "credits": "50000", "expires_at": "2026-03-01T00:00:00Z"}
    api.post(f"{SUB}/grants", grant | {"reason": "promised"})
    assert figures() == (
        _plus(total, "50000"),
        _plus(remaining, "50000"),
        "50000.00",
        "0.00",
        "564996.82",
    )
    grants = api.get(f"{SUB}/grants").json()["items"]
    assert [(g["grant_id"], g["credits"], g["remaining"], g["status"]) for g in grants] == [
        ("g-1", "50000.00", "50000.00", "active")
    ]
    assert grants[0]["expires_at"].startswith("2026-03-01T00:00:00")
    api.post(f"{SUB}/packs/p2/void", {"reason": "refunded"})
    assert figures() == (
        _plus(total, "-575000"),  # p2's 625000 leave the total, the grant's 50000 stay
        _plus(remaining, "-514996.82"),
        "50000.00",
        "564996.82",
        "0.00",
    )
    # big-1 took all its 71000 from p1, which is still valid: they go back to it.
    api.post(f"{SUB}/charges/big-1/reversals", {"reversal_id": "r-1", "reason": "dup"})
    assert figures()[1] == _plus(remaining, "-443996.82")


def _plus(credits: str, delta: str) -> str:
    return f"{Decimal(credits) + Decimal(delta):.2f}"
