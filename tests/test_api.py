"""The HTTP API over real SQLite files: balances, usage, as_of, the log, tokens and access, the
admin writes through the single writer, the manual clock and /metrics (the v1 HTTP API and its
access rules), and RFC 9457 problems for every error."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from ledger.application import Ledger
from ledger.errors import ConcurrentAppend, Rejected
from ledger.log import us_from_datetime
from projections.runner import ProjectionRunner
from services.api.app import app_from_parts
from services.api.problems import PROBLEMS, REJECTION_PROBLEMS
from services.auth.tokens import TOKEN_PREFIX, TOKENS_FILE, SqliteTokenStore, ensure_admin_token
from services.bootstrap import Parts, bootstrap, make_clock
from services.config import Settings
from services.metrics import LedgerMetrics
from services.writer import LedgerWriter
from tests.support.api_app import ADMIN, ANCHOR, NOW, Api, auth, expect_problem, open_api


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with open_api(tmp_path) as opened:
        yield opened


# -- reads ----------------------------------------------------------------------------------


def test_the_seed_charge_shows_in_usage_details_with_its_coefficients(api: Api) -> None:
    page = api.get("/v1/subscriptions/team-1/usage", seat="alice", limit=1).json()
    [row] = page["items"]
    assert (row["event_id"], row["seat_id"], row["model"]) == ("seed-1", "alice", "qwen3.6-plus")
    assert row["credits"] == "3.18" and row["product"] == "text"
    assert row["recorded_at"].startswith("2026-02-01T10:00:01")
    assert row["occurred_at"].startswith("2026-02-01T10:00:00")
    assert row["usage"]["input_tokens"] == 8349 and row["usage"]["cached_tokens"] == 40794
    coefficients = row["coefficients"]
    assert (coefficients["input_per_1k"], coefficients["cached_per_1k"]) == ("0.20", "0.02")
    assert coefficients["output_per_1k"] == "1.20"
    assert row["allocation"] == [{"source": "seat", "id": "alice", "credits": "3.18"}]
    assert page["next_cursor"] is not None


def test_usage_pages_follow_the_cursor_and_filter(api: Api) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 4}
        if cursor is not None:
            params["cursor"] = cursor
        page = api.get("/v1/subscriptions/team-1/usage", **params).json()
        seen += [row["event_id"] for row in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["seed-1", *(f"big-{i}" for i in range(10))]
    after = api.get("/v1/subscriptions/team-1/usage", **{"from": "2026-02-02T00:00:00Z"}).json()
    assert len(after["items"]) == 10
    assert api.get("/v1/subscriptions/team-1/usage", seat="bob").json()["items"] == []
    big = api.get("/v1/subscriptions/team-1/usage", **{"from": "2026-02-02T00:00:00Z"}).json()
    assert big["items"][-1]["allocation"] == [
        {"source": "pack", "id": "p1", "credits": "10996.82"},
        {"source": "pack", "id": "p2", "credits": "60003.18"},
    ]


def test_a_seat_overflowing_into_two_packs_shows_both_balances(api: Api) -> None:
    packs = api.get("/v1/subscriptions/team-1/packs").json()["items"]
    assert [p["pack_id"] for p in packs] == ["p1", "p2"]
    p1, p2 = packs
    assert (p1["credits"], p1["remaining"], p1["status"]) == ("625000.00", "0.00", "exhausted")
    assert (p2["remaining"], p2["status"], p2["expired"]) == ("564996.82", "active", "0.00")
    assert p1["expires_at"].startswith("2026-03-02T10:00:00")
    assert p1["expires_in_seconds"] == 26 * 86_400
    assert p2["expires_in_seconds"] == 27 * 86_400
    seat = api.get("/v1/subscriptions/team-1/seats/alice").json()
    assert (seat["quota"], seat["used"], seat["remaining"]) == ("25000.00", "25000.00", "0.00")
    assert (seat["tier"], seat["status"]) == ("standard", "active")
    assert seat["cycle_start"].startswith("2026-01-31T09:00:00")
    billing = api.get("/v1/subscriptions/team-1/billing").json()
    assert billing["total_credits"] == "1525000.00"  # 25000 + 250000 + 2 x 625000
    assert billing["remaining"] == "814996.82"  # bob's 250000 + p2
    assert billing["next_expiration"] == {
        "pack_id": "p2",
        "expires_at": p2["expires_at"],
        "expires_in_seconds": 27 * 86_400,
    }


def test_overview_names_every_spec_field(api: Api) -> None:
    view = api.get("/v1/subscriptions/team-1/overview").json()
    for field in (
        "subscription_id",
        "cycle_start",
        "cycle_end",
        "quota_total",
        "quota_used",
        "utilization_percent",
        "seats",
        "packs_remaining",
        "uncovered",
    ):
        assert field in view
    assert (view["quota_total"], view["quota_used"]) == ("275000.00", "25000.00")
    assert view["utilization_percent"] == "9.09"
    assert [s["seat_id"] for s in view["seats"]] == ["alice", "bob"]
    assert (view["packs_remaining"], view["uncovered"]) == ("564996.82", "0.00")
    team2 = api.get("/v1/subscriptions/team-2/overview").json()
    assert (team2["uncovered"], team2["utilization_percent"]) == ("46000.00", "100.00")


def test_suspension_shows_in_authorization(api: Api) -> None:
    path = "/v1/subscriptions/{}/seats/{}/authorization"
    carol = api.get(path.format("team-2", "carol")).json()
    assert carol == {"allowed": False, "available": "0.00", "held": "0.00", "reason": "suspended"}
    alice = api.get(path.format("team-1", "alice")).json()
    assert alice == {"allowed": True, "available": "564996.82", "held": "0.00", "reason": "ok"}
    nobody = api.get(path.format("team-1", "nobody")).json()
    assert (nobody["allowed"], nobody["reason"]) == (False, "unknown")
    assert api.get("/v1/subscriptions/team-2/seats/carol").json()["status"] == "suspended"


def test_as_of_answers_the_past_after_later_events(api: Api) -> None:
    before = {"as_of": "2026-02-01T23:00:00Z"}
    seat = api.get("/v1/subscriptions/team-1/seats/alice", **before).json()
    assert (seat["used"], seat["remaining"]) == ("3.18", "24996.82")
    assert api.get("/v1/subscriptions/team-1/packs", **before).json()["items"] == []
    usage = api.get("/v1/subscriptions/team-1/usage", **before).json()
    assert [row["event_id"] for row in usage["items"]] == ["seed-1"]
    head = api.get("/v1/audit/digest").json()
    # One pack bought, nothing drawn yet: p1 full, counted from the as_of instant.
    one_pack = {"as_of": "2026-02-02T10:00:00Z"}
    [p1] = api.get("/v1/subscriptions/team-1/packs", **one_pack).json()["items"]
    assert (p1["remaining"], p1["expires_in_seconds"]) == ("625000.00", 28 * 86_400)
    carol = api.get("/v1/subscriptions/team-2/seats/carol/authorization", **one_pack).json()
    assert carol == {"allowed": True, "available": "25000.00", "held": "0.00", "reason": "ok"}
    at_5 = api.get("/v1/audit/digest", as_of="position:5").json()
    assert at_5["position"] == 5 and at_5["hash"] != head["hash"]
    [opened] = [
        record["position"]
        for record in api.get("/v1/log").json()["items"]
        if (record["event"]["type"], record["event"]["subscription_id"])
        == ("subscription.opened", "team-2")
    ]
    path = "/v1/subscriptions/team-2/overview"
    assert api.get(path, as_of=f"position:{opened - 1}").status_code == 404
    assert api.get(path, as_of=f"position:{opened}").status_code == 200


def test_the_log_pages_records_with_their_hashes(api: Api) -> None:
    first = api.get("/v1/log", limit=2).json()
    assert [r["position"] for r in first["items"]] == [1, 2]
    assert first["items"][0]["prev_hash"] == "00" * 32
    assert first["items"][1]["prev_hash"] == first["items"][0]["hash"]
    assert first["items"][0]["event"]["type"] == "subscription.opened"
    assert first["next_after"] == 2
    head = api.get("/v1/audit/digest").json()
    rest = api.get("/v1/log", after=2, limit=1000).json()
    assert rest["next_after"] is None
    assert rest["items"][-1]["position"] == head["position"]
    assert rest["items"][-1]["hash"] == head["hash"]
    past = api.get("/v1/log", as_of="position:3").json()
    assert [r["position"] for r in past["items"]] == [1, 2, 3]


def test_health_and_readiness_need_no_token(api: Api) -> None:
    assert api.get("/healthz", token=None).json() == {"status": "ok"}
    ready = api.get("/readyz", token=None).json()
    assert ready["status"] == "ready" and ready["position"] == ready["head"] > 0


def test_the_openapi_document_is_served(api: Api) -> None:
    document = api.get("/schema/openapi.json", token=None).json()
    assert "/v1/subscriptions/{sub}/usage" in document["paths"]
    assert "/v1/tokens" in document["paths"]
    packs = document["paths"]["/v1/subscriptions/{sub}/packs"]
    assert {"get", "post"} <= set(packs) and {"200", "201"} <= set(packs["post"]["responses"])
    assert {"patch", "delete", "get"} <= set(
        document["paths"]["/v1/subscriptions/{sub}/seats/{seat}"]
    )
    assert {"get", "post"} <= set(document["paths"]["/v1/clock"])
    assert "/metrics" in document["paths"]


# -- writes ---------------------------------------------------------------------------------


def test_opening_a_subscription_answers_its_overview_anchored_at_the_ledger_clock(
    api: Api,
) -> None:
    opened = api.post("/v1/subscriptions", {"subscription_id": "team-3"})
    assert opened.status_code == 201, opened.text
    assert opened.headers["location"] == "/v1/subscriptions/team-3/overview"
    view = opened.json()
    assert (view["subscription_id"], view["cycle"], view["seats"]) == ("team-3", 0, [])
    assert view["cycle_start"].startswith("2026-02-04T10:00:00")  # the ledger clock's now
    assert view["cycle_end"].startswith("2026-03-04T10:00:00")
    assert (view["quota_total"], view["utilization_percent"]) == ("0.00", "0.00")
    assert api.get("/v1/subscriptions/team-3/overview").json() == view


@pytest.mark.parametrize("subscription_id", ["équipe", "a/b", "a b", "a?b", "x" * 129, ""])
def test_an_id_that_could_not_be_written_in_a_path_is_refused(
    api: Api, subscription_id: str
) -> None:
    """Ids appear in paths: 1 to 128 of A-Z a-z 0-9 . _ - : @, so each can be written as it is."""
    refused = expect_problem(
        api.post("/v1/subscriptions", {"subscription_id": subscription_id}), 400, "invalid-body"
    )
    assert "subscription_id" in refused["detail"]


def test_the_location_of_a_new_subscription_is_its_overview(api: Api) -> None:
    opened = api.post("/v1/subscriptions", {"subscription_id": "team.b:2@x_y-z"})
    assert opened.status_code == 201, opened.text
    assert opened.headers["location"] == "/v1/subscriptions/team.b:2@x_y-z/overview"


def test_the_bootstrap_admin_token_cannot_be_revoked_over_the_api(api: Api) -> None:
    refused = api.client.delete("/v1/tokens/admin-bootstrap", headers=auth(ADMIN))
    assert refused.status_code == 409
    assert refused.json()["type"].endswith("token-not-revocable")
    assert api.get("/v1/audit/digest").status_code == 200  # still the admin


def test_opening_a_subscription_again_is_200_with_its_state_and_appends_nothing(api: Api) -> None:
    first = api.post("/v1/subscriptions", {"subscription_id": "team-3"})
    again = api.post("/v1/subscriptions", {"subscription_id": "team-3"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    same_anchor = {"subscription_id": "team-3", "anchor": "2026-02-04T11:00:00+01:00"}
    assert api.post("/v1/subscriptions", same_anchor).status_code == 200
    opened = [e for e in api.logged("subscription.opened") if e["subscription_id"] == "team-3"]
    assert len(opened) == 1


def test_opening_an_existing_subscription_with_another_anchor_is_409(api: Api) -> None:
    other = {"subscription_id": "team-1", "anchor": "2026-02-01T00:00:00Z"}
    body = expect_problem(api.post("/v1/subscriptions", other), 409, "subscription-exists")
    assert "2026-01-31T09:00:00" in body["detail"]


def test_an_anchor_after_the_ledger_clock_is_refused(api: Api) -> None:
    later = {"subscription_id": "team-3", "anchor": "2026-02-05T00:00:00Z"}
    body = expect_problem(api.post("/v1/subscriptions", later), 409, "invalid-command")
    assert body["reason"] == "invalid_command"
    assert api.get("/v1/subscriptions/team-3/overview").status_code == 404


def test_an_anchor_in_the_past_starts_the_cycle_that_contains_now(api: Api) -> None:
    past = {"subscription_id": "team-3", "anchor": "2025-12-04T10:00:00Z"}
    view = api.post("/v1/subscriptions", past).json()
    assert view["cycle"] == 2 and view["cycle_start"].startswith("2026-02-04T10:00:00")


def test_adding_a_seat_answers_its_balance_with_the_full_tier_quota(api: Api) -> None:
    added = api.post("/v1/subscriptions/team-1/seats", {"seat_id": "dave", "tier": "advanced"})
    assert added.status_code == 201, added.text
    seat = added.json()
    assert (seat["seat_id"], seat["tier"], seat["status"]) == ("dave", "advanced", "active")
    assert (seat["quota"], seat["used"], seat["remaining"]) == ("100000.00", "0.00", "100000.00")
    assert seat["cycle_start"].startswith("2026-01-31T09:00:00")
    assert api.get("/v1/subscriptions/team-1/seats/dave").json() == seat
    overview = api.get("/v1/subscriptions/team-1/overview").json()
    assert [s["seat_id"] for s in overview["seats"]] == ["alice", "bob", "dave"]


def test_adding_the_same_seat_again_is_200_and_appends_nothing(api: Api) -> None:
    body = {"seat_id": "dave", "tier": "advanced"}
    first = api.post("/v1/subscriptions/team-1/seats", body)
    again = api.post("/v1/subscriptions/team-1/seats", body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert len([e for e in api.logged("seat.added") if e["seat_id"] == "dave"]) == 1


def test_a_seat_id_in_use_with_another_tier_is_409(api: Api) -> None:
    other_tier = {"seat_id": "alice", "tier": "premium"}
    body = expect_problem(
        api.post("/v1/subscriptions/team-1/seats", other_tier), 409, "seat-exists"
    )
    assert "PATCH" in body["detail"]


def test_a_seat_id_another_subscription_has_is_a_new_seat_here(api: Api) -> None:
    """Seat ids name a seat within their subscription: carol of team-2 is no seat of team-1."""
    elsewhere = {"seat_id": "carol", "tier": "standard"}
    created = api.post("/v1/subscriptions/team-1/seats", elsewhere)
    assert created.status_code == 201, created.text
    assert created.json()["subscription_id"] == "team-1"


def test_a_seat_in_an_unknown_subscription_is_404(api: Api) -> None:
    new_seat = {"seat_id": "zed", "tier": "standard"}
    unknown = expect_problem(api.post("/v1/subscriptions/team-9/seats", new_seat), 404, "not-found")
    assert unknown["detail"] == "no subscription 'team-9'"


def test_an_upgrade_is_immediate_remaining_is_new_quota_less_used(api: Api) -> None:
    changed = api.patch("/v1/subscriptions/team-1/seats/alice", {"tier": "premium"})
    assert changed.status_code == 200, changed.text
    seat = changed.json()
    assert (seat["tier"], seat["pending_tier"]) == ("premium", None)
    assert (seat["quota"], seat["used"], seat["remaining"]) == (
        "250000.00",
        "25000.00",
        "225000.00",
    )


def test_a_downgrade_waits_for_the_next_cycle_and_a_retry_records_nothing(api: Api) -> None:
    first = api.patch("/v1/subscriptions/team-1/seats/bob", {"tier": "standard"})
    seat = first.json()
    assert (seat["tier"], seat["pending_tier"], seat["quota"]) == (
        "premium",
        "standard",
        "250000.00",
    )
    again = api.patch("/v1/subscriptions/team-1/seats/bob", {"tier": "standard"})
    assert (again.status_code, again.json()) == (200, seat)
    assert len([e for e in api.logged("seat.tier_changed") if e["seat_id"] == "bob"]) == 1


def test_an_upgrade_resumes_a_suspended_seat(api: Api) -> None:
    seat = api.patch("/v1/subscriptions/team-2/seats/carol", {"tier": "premium"}).json()
    assert (seat["status"], seat["remaining"]) == ("active", "225000.00")
    check = api.get("/v1/subscriptions/team-2/seats/carol/authorization").json()
    assert check == {"allowed": True, "available": "225000.00", "held": "0.00", "reason": "ok"}


def test_removing_a_seat_answers_it_removed_and_again_changes_nothing(api: Api) -> None:
    removed = api.delete("/v1/subscriptions/team-1/seats/bob")
    assert removed.status_code == 200, removed.text
    seat = removed.json()
    assert (seat["status"], seat["remaining"]) == ("removed", "0.00")
    again = api.delete("/v1/subscriptions/team-1/seats/bob")
    assert (again.status_code, again.json()) == (200, seat)
    assert len(api.logged("seat.removed")) == 1
    check = api.get("/v1/subscriptions/team-1/seats/bob/authorization").json()
    assert (check["allowed"], check["reason"]) == (False, "removed")


def test_a_removed_seat_cannot_change_tier_or_be_added_again(api: Api) -> None:
    api.delete("/v1/subscriptions/team-1/seats/bob")
    patched = api.patch("/v1/subscriptions/team-1/seats/bob", {"tier": "advanced"})
    assert expect_problem(patched, 409, "seat-removed")["reason"] == "seat_removed"
    re_added = api.post("/v1/subscriptions/team-1/seats", {"seat_id": "bob", "tier": "premium"})
    expect_problem(re_added, 409, "seat-removed")


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
def test_a_seat_that_is_unknown_or_in_another_subscription_is_404(api: Api, method: str) -> None:
    body = {"tier": "premium"} if method == "PATCH" else None
    for seat in ("nobody", "carol"):
        path = f"/v1/subscriptions/team-1/seats/{seat}"
        expect_problem(
            api.client.request(method, path, json=body, headers=auth(ADMIN)), 404, "not-found"
        )
    before = api.get("/v1/subscriptions/team-2/seats/carol").json()
    assert before["status"] == "suspended" and before["tier"] == "standard"


def test_buying_a_pack_answers_it_valid_for_a_month_from_the_ledger_clock(api: Api) -> None:
    bought = api.post("/v1/subscriptions/team-1/packs", {"pack_id": "p3"})
    assert bought.status_code == 201, bought.text
    pack = bought.json()
    assert (pack["pack_id"], pack["credits"], pack["remaining"]) == ("p3", "625000.00", "625000.00")
    assert (pack["status"], pack["expired"]) == ("active", "0.00")
    assert pack["purchased_at"].startswith("2026-02-04T10:00:00")
    assert pack["expires_at"].startswith("2026-03-04T10:00:00")
    assert pack["expires_in_seconds"] == 28 * 86_400
    packs = api.get("/v1/subscriptions/team-1/packs").json()["items"]
    assert [p["pack_id"] for p in packs] == ["p1", "p2", "p3"] and packs[2] == pack


def test_a_pack_id_bought_already_is_200_and_never_bought_twice(api: Api) -> None:
    first = api.post("/v1/subscriptions/team-1/packs", {"pack_id": "p3"})
    again = api.post("/v1/subscriptions/team-1/packs", {"pack_id": "p3"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    expired_id = api.post("/v1/subscriptions/team-1/packs", {"pack_id": "p1"})
    assert expired_id.status_code == 200 and expired_id.json()["remaining"] == "0.00"
    assert [e["pack_id"] for e in api.logged("pack.purchased")] == ["p1", "p2", "p3"]


def test_a_retry_with_the_same_idempotency_key_returns_the_first_pack(api: Api) -> None:
    path = "/v1/subscriptions/team-1/packs"
    first = api.post(path, None, **{"Idempotency-Key": "order-42"})
    assert first.status_code == 201, first.text
    pack_id = first.json()["pack_id"]
    assert pack_id.startswith("pack-")
    again = api.post(path, {}, **{"Idempotency-Key": "order-42"})
    assert (again.status_code, again.json()) == (200, first.json())
    assert [e["pack_id"] for e in api.logged("pack.purchased")] == ["p1", "p2", pack_id]
    # The same key in another subscription is another purchase.
    other = api.post("/v1/subscriptions/team-2/packs", None, **{"Idempotency-Key": "order-42"})
    assert other.status_code == 201 and other.json()["pack_id"] != pack_id
    # A caller's own pack_id is its key: the header does not override it.
    own = api.post(path, {"pack_id": "p3"}, **{"Idempotency-Key": "order-42"})
    assert own.status_code == 201 and own.json()["pack_id"] == "p3"


def test_without_a_pack_id_or_key_every_request_buys_a_new_pack(api: Api) -> None:
    first = api.post("/v1/subscriptions/team-1/packs")
    second = api.post("/v1/subscriptions/team-1/packs", {})
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["pack_id"] != second.json()["pack_id"]
    assert len(api.logged("pack.purchased")) == 4


def test_buying_a_pack_resumes_a_suspended_seat(api: Api) -> None:
    api.post("/v1/subscriptions/team-2/packs", {"pack_id": "q1"})
    check = api.get("/v1/subscriptions/team-2/seats/carol/authorization").json()
    assert check == {"allowed": True, "available": "625000.00", "held": "0.00", "reason": "ok"}


def test_a_pack_for_an_unknown_subscription_is_404(api: Api) -> None:
    expect_problem(api.post("/v1/subscriptions/team-9/packs", {"pack_id": "x"}), 404, "not-found")


def test_every_refusal_of_the_core_has_a_problem_type() -> None:
    reasons: set[str] = set()
    pending: list[type[Rejected]] = [Rejected]
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        if cls is not Rejected:
            reasons.add(cls.reason)
    assert reasons == set(REJECTION_PROBLEMS)
    assert set(REJECTION_PROBLEMS.values()) <= set(PROBLEMS)


# -- the manual clock -----------------------------------------------------------------------


def test_moving_the_clock_past_a_cycle_end_grants_new_quotas(api: Api) -> None:
    moved = api.post("/v1/clock", {"now": "2026-03-01T00:00:00Z"})
    assert moved.status_code == 200, moved.text
    body = moved.json()
    assert body["now"] == "2026-03-01T00:00:00Z"
    assert body["packs_expired"] == []
    assert [(c["subscription_id"], c["cycle"]) for c in body["cycles_started"]] == [
        ("team-1", 1),
        ("team-2", 1),
    ]
    assert body["cycles_started"][0]["cycle_start"] == "2026-02-28T09:00:00Z"  # Jan 31 + 1 month
    alice = api.get("/v1/subscriptions/team-1/seats/alice").json()
    assert (alice["used"], alice["remaining"]) == ("0.00", "25000.00")
    assert alice["cycle_start"] == "2026-02-28T09:00:00Z"
    carol = api.get("/v1/subscriptions/team-2/seats/carol").json()
    assert (carol["status"], carol["remaining"]) == ("active", "25000.00")
    assert api.get("/v1/clock").json() == {"now": "2026-03-01T00:00:00Z", "manual": True}


def test_moving_the_clock_past_a_pack_expiry_reports_the_expired_credits(api: Api) -> None:
    api.post("/v1/clock", {"now": "2026-03-01T00:00:00Z"})
    body = api.post("/v1/clock", {"now": "2026-03-03T10:00:00Z"}).json()
    assert body["cycles_started"] == []
    assert body["packs_expired"] == [
        {
            "subscription_id": "team-1",
            "pack_id": "p1",
            "expires_at": "2026-03-02T10:00:00Z",
            "expired": "0.00",
        },
        {
            "subscription_id": "team-1",
            "pack_id": "p2",
            "expires_at": "2026-03-03T10:00:00Z",
            "expired": "564996.82",
        },
    ]
    p1, p2 = api.get("/v1/subscriptions/team-1/packs").json()["items"]
    assert (p2["status"], p2["remaining"], p2["expired"]) == ("expired", "0.00", "564996.82")
    assert (p1["status"], p2["expires_in_seconds"]) == ("expired", 0)
    billing = api.get("/v1/subscriptions/team-1/billing").json()
    assert billing["next_expiration"] is None
    again = api.post("/v1/clock", {"now": "2026-03-03T10:00:00Z"}).json()
    assert (again["cycles_started"], again["packs_expired"]) == ([], [])


def test_the_clock_never_moves_back(api: Api) -> None:
    back = api.post("/v1/clock", {"now": "2026-02-01T00:00:00Z"})
    body = expect_problem(back, 409, "clock-backwards")
    assert "now" in body["detail"] and body["parameter"] == "now"
    assert api.get("/v1/clock").json()["now"] == "2026-02-04T10:00:00Z"
    assert api.clock.now_us() == us_from_datetime(NOW)


@pytest.mark.parametrize(
    "now", ["9999-12-31T23:59:59Z", "2200-01-01T00:00:00Z", "1970-01-01T00:00:00Z"]
)
def test_a_clock_move_outside_the_bounds_is_a_400_and_changes_nothing(api: Api, now: str) -> None:
    head = api.get("/v1/audit/digest").json()
    body = expect_problem(api.post("/v1/clock", {"now": now}), 400, "invalid-body")
    assert "now" in body["detail"] and "2199-12-31" in body["detail"]
    assert api.clock.now_us() == us_from_datetime(NOW)
    assert api.get("/v1/audit/digest").json() == head
    assert api.get("/v1/subscriptions/team-1/overview").status_code == 200


@pytest.mark.parametrize(
    "anchor", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1999-12-31T23:59:59Z", 0]
)
def test_an_anchor_outside_the_bounds_is_a_400_and_appends_nothing(api: Api, anchor: Any) -> None:
    head = api.get("/v1/audit/digest").json()
    body = {"subscription_id": "far", "anchor": anchor}
    refused = expect_problem(api.post("/v1/subscriptions", body), 400, "invalid-body")
    assert "anchor" in refused["detail"]
    assert api.get("/v1/audit/digest").json() == head


# -- metrics --------------------------------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
_SAMPLE = re.compile(
    rf"^({_NAME})(?:\{{({_LABEL}(?:,{_LABEL})*)\}})? "
    r"(-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|\+Inf|-Inf|NaN)$"
)
_HELP = re.compile(rf"^# HELP ({_NAME}) \S.*$")
_TYPE = re.compile(rf"^# TYPE ({_NAME}) (counter|gauge|histogram)$")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """Prometheus text format 0.0.4, strictly: family -> [(sample name, labels, value)]."""
    assert text.endswith("\n")
    families: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    kinds: dict[str, str] = {}
    family = None
    for line in text.splitlines():
        if match := _HELP.match(line):
            family = match.group(1)
            assert family not in families, f"{family} described twice"
            families[family] = []
        elif match := _TYPE.match(line):
            assert match.group(1) == family, line
            kinds[family] = match.group(2)
        else:
            match = _SAMPLE.match(line)
            assert match is not None and family is not None, f"not a sample: {line!r}"
            name, labels, value = match.groups()
            suffixes = ("_bucket", "_sum", "_count") if kinds[family] == "histogram" else ("",)
            assert name in {family + suffix for suffix in suffixes}, line
            families[family].append((name, dict(_PAIR.findall(labels or "")), float(value)))
    return families


def test_metrics_are_prometheus_text_without_a_token(api: Api) -> None:
    api.get("/v1/subscriptions/team-1/overview")
    api.get("/v1/subscriptions/team-2/overview")
    api.get("/v1/subscriptions/team-9/overview")
    api.metrics.events_ingested.inc(3)
    api.metrics.charges.inc(2)
    api.metrics.credits_deducted_ucr.inc(71_000_000_000)
    api.metrics.dead_lettered.labels(reason="invalid_json").inc()
    api.metrics.dead_lettered.labels(reason='odd "reason"\n').inc(2)
    api.metrics.consumer_lag.set(7)
    response = api.get("/metrics", token=None)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = parse_exposition(response.text)
    assert families["ledger_events_ingested_total"] == [("ledger_events_ingested_total", {}, 3)]
    assert families["ledger_charges_total"][0][2] == 2
    assert families["ledger_credits_deducted_ucr_total"][0][2] == 71_000_000_000
    assert families["ledger_consumer_lag_events"][0][2] == 7
    assert families["ledger_projection_lag_events"][0][2] == 0
    reasons = {
        labels["reason"]: value
        for _, labels, value in families["ledger_events_dead_lettered_total"]
    }
    assert reasons == {"invalid_json": 1, 'odd \\"reason\\"\\n': 2}
    overview = [
        (name, labels, value)
        for name, labels, value in families["ledger_http_request_duration_seconds"]
        if labels.get("route") == "/v1/subscriptions/{sub}/overview"
    ]
    ok = [s for s in overview if s[1]["status"] == "200"]
    missing = [s for s in overview if s[1]["status"] == "404"]
    assert {s[1]["method"] for s in overview} == {"GET"}
    buckets = [v for name, _, v in ok if name.endswith("_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == 2
    assert [s[1]["le"] for s in ok if s[0].endswith("_bucket")][-1] == "+Inf"
    assert [v for name, _, v in ok if name.endswith("_count")] == [2]
    assert [v for name, _, v in missing if name.endswith("_count")] == [1]
    [total] = [v for name, _, v in ok if name.endswith("_sum")]
    assert 0 < total < 10


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("/v1/subscriptions/team-1/usage", {"limit": 0}, "limit"),
        ("/v1/subscriptions/team-1/usage", {"limit": 1001}, "limit"),
        ("/v1/subscriptions/team-1/usage", {"cursor": "not-a-cursor!"}, "cursor"),
        ("/v1/subscriptions/team-1/usage", {"from": "yesterday"}, "from"),
        ("/v1/subscriptions/team-1/overview", {"as_of": "last tuesday"}, "as_of"),
        ("/v1/log", {"limit": 5000}, "limit"),
        ("/v1/log", {"after": -1}, "after"),
    ],
)
def test_bad_query_parameters_are_400_problems_naming_them(
    api: Api, path: str, params: dict[str, Any], parameter: str
) -> None:
    body = expect_problem(api.get(path, **params), 400, "invalid-parameter")
    assert parameter in body["detail"]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/v1/subscriptions/team-1/seats", {"seat_id": "x", "tier": "gold"}, "tier"),
        ("POST", "/v1/subscriptions/team-1/seats", {"tier": "standard"}, "seat_id"),
        ("POST", "/v1/subscriptions/team-1/seats", {"seat_id": 5, "tier": "standard"}, "seat_id"),
        ("POST", "/v1/subscriptions/team-1/seats", {"seat_id": "", "tier": "standard"}, "seat_id"),
        (
            "POST",
            "/v1/subscriptions/team-1/seats",
            {"seat_id": "x", "tier": "standard", "seats": 2},
            "seats",
        ),
        ("POST", "/v1/subscriptions", {"subscription_id": "t", "anchor": "soon"}, "anchor"),
        (
            "POST",
            "/v1/subscriptions",
            {"subscription_id": "t", "anchor": "2026-02-01T00:00:00"},
            "anchor",
        ),
        ("POST", "/v1/subscriptions", {}, "subscription_id"),
        ("POST", "/v1/subscriptions", {"subscription_id": "x" * 129}, "subscription_id"),
        ("PATCH", "/v1/subscriptions/team-1/seats/alice", {"tier": "gold"}, "tier"),
        ("PATCH", "/v1/subscriptions/team-1/seats/alice", {}, "tier"),
        ("POST", "/v1/subscriptions/team-1/packs", {"pack_id": 3}, "pack_id"),
        ("POST", "/v1/subscriptions/team-1/packs", {"credits": "9"}, "credits"),
        ("POST", "/v1/clock", {"now": "2026-03-01T00:00:00"}, "now"),
        ("POST", "/v1/clock", {"later": True}, "later"),
    ],
)
def test_bad_write_bodies_are_400_problems_naming_the_field(
    api: Api, method: str, path: str, body: Any, field: str
) -> None:
    head = api.get("/v1/audit/digest").json()
    response = api.client.request(method, path, json=body, headers=auth(ADMIN))
    problem = expect_problem(response, 400, "invalid-body")
    assert problem["detail"].startswith(f"{field}: ")
    assert [e["parameter"] for e in problem["errors"]] == [field]
    assert api.get("/v1/audit/digest").json() == head


def test_an_idempotency_key_is_bounded(api: Api) -> None:
    response = api.post("/v1/subscriptions/team-1/packs", {}, **{"Idempotency-Key": "k" * 256})
    problem = expect_problem(response, 400, "invalid-parameter")
    assert problem["detail"].startswith("Idempotency-Key: ")


def test_unknown_things_are_404_problems(api: Api) -> None:
    expect_problem(api.get("/v1/subscriptions/team-9/overview"), 404, "not-found")
    expect_problem(api.get("/v1/subscriptions/team-1/seats/nobody"), 404, "not-found")
    expect_problem(api.get("/v1/nowhere"), 404, "not-found")


def test_bodies_are_bounded_and_checked(api: Api) -> None:
    huge = {"role": "viewer", "subscription_ids": ["x" * 100] * 1000}
    response = api.client.post("/v1/tokens", json=huge, headers=auth(ADMIN))
    expect_problem(response, 413, "body-too-large")
    wrong = api.client.post("/v1/tokens", json={"role": "root"}, headers=auth(ADMIN))
    expect_problem(wrong, 400, "invalid-body")
    two = {"role": "viewer", "subscription_ids": ["team-1", "team-2"]}
    expect_problem(
        api.client.post("/v1/tokens", json=two, headers=auth(ADMIN)), 400, "invalid-body"
    )


# -- access ---------------------------------------------------------------------------------

SUBSCRIPTION_READS = [
    "/v1/subscriptions/team-1/overview",
    "/v1/subscriptions/team-1/packs",
    "/v1/subscriptions/team-1/billing",
    "/v1/subscriptions/team-1/usage",
]
SEAT_READS = [
    "/v1/subscriptions/team-1/seats/alice",
    "/v1/subscriptions/team-1/seats/alice/authorization",
]
AUDIT_READS = ["/v1/log", "/v1/audit/digest"]


WRITES: list[tuple[str, str, Any]] = [
    ("POST", "/v1/subscriptions/team-1/seats", {"seat_id": "erin", "tier": "standard"}),
    ("PATCH", "/v1/subscriptions/team-1/seats/alice", {"tier": "premium"}),
    ("DELETE", "/v1/subscriptions/team-1/seats/bob", None),
    ("POST", "/v1/subscriptions/team-1/packs", {"pack_id": "p9"}),
]
"""Admin writes inside team-1, each with a valid body."""
ADMIN_ONLY: list[tuple[str, str, Any]] = [
    ("POST", "/v1/subscriptions", {"subscription_id": "team-7"}),
    ("POST", "/v1/clock", {"now": "2026-02-05T00:00:00Z"}),
    ("POST", "/v1/tokens", {"role": "auditor"}),
    ("DELETE", "/v1/tokens/tok_x", None),
]
"""Admin-only paths outside any subscription."""


def _call(api: Api, method: str, path: str, token: str | None, body: Any = None) -> Any:
    return api.client.request(method, path, json=body, headers=auth(token))


EVERY_V1: list[tuple[str, str, Any]] = [
    *(("GET", p, None) for p in SUBSCRIPTION_READS + SEAT_READS + AUDIT_READS),
    ("GET", "/v1/clock", None),
    *WRITES,
    *ADMIN_ONLY,
]


@pytest.mark.parametrize(("method", "path", "body"), EVERY_V1)
def test_every_v1_path_without_a_good_token_is_401(
    api: Api, method: str, path: str, body: Any
) -> None:
    head = api.get("/v1/audit/digest").json()
    expect_problem(_call(api, method, path, None, body), 401, "unauthorized")
    expect_problem(_call(api, method, path, "lt_not-a-token", body), 401, "unauthorized")
    basic = {"Authorization": f"Basic {ADMIN}"}
    expect_problem(api.client.request(method, path, json=body, headers=basic), 401, "unauthorized")
    if body is not None:  # a caller without a token learns nothing of the body's shape either
        bad = api.client.request(method, path, json={"nope": True})
        expect_problem(bad, 401, "unauthorized")
    assert api.get("/v1/audit/digest").json() == head


def test_options_on_a_v1_path_without_a_token_is_401_too(api: Api) -> None:
    path = "/v1/subscriptions/team-1/seats/alice/authorization"
    expect_problem(api.client.options(path), 401, "unauthorized")


def test_each_v1_route_runs_one_guard_after_authentication(api: Api) -> None:
    """Authentication is middleware: Litestar copies the route handler for every guard of every
    request, and the pre-check, on the gateway's every call, pays for one guard (scope and
    role), not two. Every /v1 path still answers 401 without a token (above)."""
    v1_handlers = [
        handler
        for route in api.client.app.routes
        if route.path.startswith("/v1/")
        for handler in getattr(route, "route_handlers", [])
        if handler.http_methods != {"OPTIONS"}
    ]
    assert v1_handlers
    for handler in v1_handlers:
        assert len(handler.resolve_guards()) == 1, handler


def test_roles_that_may_not_are_403(api: Api) -> None:
    _, gateway = api.token("gateway", ["team-1"])
    _, viewer = api.token("viewer", ["team-1"])
    _, auditor = api.token("auditor")
    for path in SUBSCRIPTION_READS + AUDIT_READS:
        expect_problem(api.get(path, gateway), 403, "forbidden")
    for path in SEAT_READS:
        assert api.get(path, gateway).status_code == 200
    for path in AUDIT_READS:
        expect_problem(api.get(path, viewer), 403, "forbidden")
    for path in SUBSCRIPTION_READS + SEAT_READS:
        assert api.get(path, viewer).status_code == 200
    for path in SUBSCRIPTION_READS + SEAT_READS + AUDIT_READS:
        assert api.get(path, auditor).status_code == 200
    head = api.get("/v1/audit/digest").json()
    for token in (gateway, viewer, auditor):
        assert api.get("/v1/clock", token).status_code == 200
        for method, path, body in WRITES + ADMIN_ONLY:
            expect_problem(_call(api, method, path, token, body), 403, "forbidden")
    assert api.get("/v1/audit/digest").json() == head  # nothing was written
    assert api.get("/v1/clock").json()["now"].startswith("2026-02-04T10:00:00")


def test_a_token_that_may_not_write_learns_nothing_of_the_bodys_shape(api: Api) -> None:
    _, viewer = api.token("viewer", ["team-2"])
    for method, path, body in WRITES + ADMIN_ONLY:
        if body is None:
            continue
        expected = (404, "not-found") if "/team-1" in path else (403, "forbidden")
        expect_problem(_call(api, method, path, viewer, {"nope": True}), *expected)


def test_another_subscriptions_token_gets_404_like_an_unknown_one(api: Api) -> None:
    _, viewer = api.token("viewer", ["team-2"])
    _, gateway = api.token("gateway", ["team-2"])
    for path in SUBSCRIPTION_READS + SEAT_READS:
        unknown = expect_problem(api.get(path.replace("team-1", "team-9")), 404, "not-found")
        expected = {**unknown, "detail": unknown["detail"].replace("team-9", "team-1")}
        response = api.get(path, viewer)
        assert expect_problem(response, 404, "not-found") == expected
        assert "alice" not in response.text and "3.18" not in response.text
    for path in SEAT_READS:
        assert api.get(path, gateway).json() == api.get(path.replace("team-1", "team-9")).json() | {
            "detail": "no subscription 'team-1'"
        }
    assert api.get("/v1/subscriptions/team-2/seats/carol", viewer).status_code == 200
    head = api.get("/v1/audit/digest").json()
    for token in (viewer, gateway):
        for method, path, body in WRITES:
            outside = expect_problem(_call(api, method, path, token, body), 404, "not-found")
            unknown_path = path.replace("team-1", "team-9")
            unknown = expect_problem(
                _call(api, method, unknown_path, token, body), 404, "not-found"
            )
            assert outside == unknown | {"detail": "no subscription 'team-1'"}
        # In its own subscription the role decides: these tokens may not write.
        expect_problem(
            _call(api, "POST", "/v1/subscriptions/team-2/packs", token, {}), 403, "forbidden"
        )
    assert api.get("/v1/audit/digest").json() == head


def test_a_token_made_over_http_works_until_revoked(api: Api) -> None:
    created = api.client.post(
        "/v1/tokens", json={"role": "viewer", "subscription_ids": ["team-1"]}, headers=auth(ADMIN)
    )
    assert created.status_code == 201
    body = created.json()
    assert body["token"].startswith(TOKEN_PREFIX) and body["subscription_ids"] == ["team-1"]
    path = "/v1/subscriptions/team-1/overview"
    assert api.get(path, body["token"]).status_code == 200
    revoked = api.client.delete(f"/v1/tokens/{body['token_id']}", headers=auth(ADMIN))
    assert revoked.status_code == 204
    expect_problem(api.get(path, body["token"]), 401, "unauthorized")
    again = api.client.delete(f"/v1/tokens/{body['token_id']}", headers=auth(ADMIN))
    expect_problem(again, 404, "not-found")


def test_tokens_are_not_stored_in_clear(api: Api) -> None:
    _, token = api.token("auditor")
    created = api.client.post("/v1/tokens", json={"role": "auditor"}, headers=auth(ADMIN))
    files = list(api.data_dir.glob("tokens.sqlite3*"))
    assert files
    stored = b"".join(path.read_bytes() for path in files)
    for secret in (token, created.json()["token"], ADMIN):
        assert secret.encode() not in stored
        assert secret[len(TOKEN_PREFIX) :].encode() not in stored


def test_pack_expiry_countdown_uses_the_ledger_clock(api: Api) -> None:
    packs = api.get("/v1/subscriptions/team-1/packs").json()["items"]
    expires = datetime.fromisoformat(packs[1]["expires_at"].replace("Z", "+00:00"))
    assert timedelta(seconds=packs[1]["expires_in_seconds"]) == expires - NOW


def test_the_app_serves_a_bootstrapped_process(tmp_path: Path) -> None:
    tokens = SqliteTokenStore(tmp_path / TOKENS_FILE)
    admin = ensure_admin_token(tokens, tmp_path, None)
    assert admin is not None
    with ThreadPoolExecutor(max_workers=1) as executor:

        def open_parts() -> tuple[Parts, ProjectionRunner, LedgerWriter]:
            parts = bootstrap(Settings(data_dir=tmp_path))
            runner = parts.projections()
            return parts, runner, LedgerWriter(parts.ledger(), runner, executor)

        parts, runner, writer = executor.submit(open_parts).result()
        app = app_from_parts(parts, runner, tokens, writer, LedgerMetrics())
        with TestClient(app) as client:
            assert client.get("/readyz").json() == {"status": "ready", "position": 0, "head": 0}
            digest = client.get("/v1/audit/digest", headers=auth(admin)).json()
            assert digest == {"position": 0, "hash": "00" * 32}
            usage = client.get("/v1/subscriptions/team-1/usage", headers=auth(admin))
            expect_problem(usage, 404, "not-found")
            opened = client.post(
                "/v1/subscriptions", json={"subscription_id": "team-1"}, headers=auth(admin)
            )
            assert opened.status_code == 201 and opened.json()["cycle"] == 0
            assert client.get("/readyz").json()["position"] == 2
            # The system clock cannot be moved.
            moved = client.post(
                "/v1/clock", json={"now": "2099-01-01T00:00:00Z"}, headers=auth(admin)
            )
            expect_problem(moved, 409, "clock-not-manual")
            clock = client.get("/v1/clock", headers=auth(admin)).json()
            assert clock["manual"] is False
        executor.submit(parts.close).result()
    tokens.close()


def test_a_bootstrapped_manual_clock_moves_for_every_process_reading_it(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, clock="manual", clock_start=ANCHOR)
    tokens = SqliteTokenStore(tmp_path / TOKENS_FILE)
    tokens.set_bootstrap_admin(ADMIN)
    with ThreadPoolExecutor(max_workers=1) as executor:

        def open_parts() -> tuple[Parts, ProjectionRunner, LedgerWriter]:
            parts = bootstrap(settings)
            runner = parts.projections()
            return parts, runner, LedgerWriter(parts.ledger(), runner, executor)

        parts, runner, writer = executor.submit(open_parts).result()
        with TestClient(app_from_parts(parts, runner, tokens, writer, LedgerMetrics())) as client:
            api = Api(client, tokens, tmp_path, parts.clock, LedgerMetrics())
            assert api.post("/v1/subscriptions", {"subscription_id": "t"}).status_code == 201
            pack = api.post("/v1/subscriptions/t/packs", {"pack_id": "p"}).json()
            assert pack["expires_at"] == "2026-02-28T09:00:00Z"  # Jan 31 + 1 month, clamped
            moved = api.post("/v1/clock", {"now": "2026-02-28T09:00:00Z"}).json()
            assert [p["expired"] for p in moved["packs_expired"]] == ["625000.00"]
            assert [c["cycle"] for c in moved["cycles_started"]] == [1]
        executor.submit(parts.close).result()
    tokens.close()
    # `ledger clock show` in another process reads the same file.
    assert make_clock(settings).now_us() == us_from_datetime(datetime(2026, 2, 28, 9, tzinfo=UTC))


def test_a_write_the_store_cannot_take_now_is_503_with_retry_after_and_a_retry_buys_once(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    def busy(self: Ledger, commands: Any) -> Any:
        raise ConcurrentAppend(41, 44)

    key = {"Idempotency-Key": "buy-when-busy"}
    with monkeypatch.context() as patched:
        patched.setattr(Ledger, "execute", busy)
        refused = api.post("/v1/subscriptions/team-1/packs", None, **key)
    body = expect_problem(refused, 503, "store-unavailable")
    assert refused.headers["retry-after"] == "1"
    assert "retry in a second" in body["detail"]
    bought = api.post("/v1/subscriptions/team-1/packs", None, **key)
    again = api.post("/v1/subscriptions/team-1/packs", None, **key)
    assert (bought.status_code, again.status_code) == (201, 200)
    assert bought.json()["pack_id"] == again.json()["pack_id"]
