"""The HTTP API's read side over real SQLite files: balances, usage, as_of, the log, tokens and
access (SPEC §3 "HTTP API" and "Access"), and RFC 9457 problems for every error."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from ledger.application import Ledger
from ledger.clock import ManualClock
from ledger.log import us_from_datetime
from ledger.rate_card import load_rate_card
from ledger.sqlite_store import SqliteEventStore
from projections.runner import ProjectionRunner
from projections.store import SqliteReadModelStore
from schemas.commands import AddSeat, BuyPack, Command, OpenSubscription
from schemas.usage import UsageEvent
from services.api import PROBLEM_BASE, app_from_parts, create_app
from services.auth import (
    ADMIN_TOKEN_FILE,
    TOKEN_PREFIX,
    TOKENS_FILE,
    InvalidTokenRequest,
    TokenStore,
    ensure_admin_token,
)
from services.bootstrap import bootstrap
from services.config import Settings

ANCHOR = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 2, 4, 10, 0, tzinfo=UTC)
ADMIN = "lt_test-admin-token"
MAX_TOKENS = 50_000_000  # every component at its bound: 10000 + 1000 + 60000 = 71000 credits
SEED = {
    "subscription_id": "team-1",
    "seat_id": "alice",
    "model": "qwen3.6-plus",
    "input_tokens": 8349,
    "cached_tokens": 40794,
    "output_tokens": 573,
    "occurred_at": datetime(2026, 2, 1, 10, 0, tzinfo=UTC),
}


@dataclass
class Api:
    client: TestClient[Any]
    tokens: TokenStore
    data_dir: Path

    def get(self, path: str, token: str | None = ADMIN, **params: Any) -> Any:
        return self.client.get(path, params=params, headers=_auth(token))

    def token(self, role: str, subscription_ids: list[str] | None = None) -> tuple[str, str]:
        return self.tokens.create(role, subscription_ids)  # type: ignore[arg-type]


def _auth(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def _big(event_id: str, seat: str, sub: str = "team-1") -> UsageEvent:
    return UsageEvent(
        event_id=event_id,
        subscription_id=sub,
        seat_id=seat,
        model="qwen3.6-plus",
        occurred_at=ANCHOR,
        input_tokens=MAX_TOKENS,
        cached_tokens=MAX_TOKENS,
        output_tokens=MAX_TOKENS,
    )


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    store = SqliteEventStore(tmp_path / "ledger.sqlite3")
    read_path = tmp_path / "ledger.readmodels.sqlite3"
    read_store = SqliteReadModelStore(read_path, store)
    clock = ManualClock(us_from_datetime(ANCHOR))
    ledger = Ledger(store, load_rate_card(), clock)

    def run(*commands: Command) -> None:
        for outcome in ledger.execute(list(commands)):
            assert outcome.status == "applied", outcome

    run(
        OpenSubscription("team-1", ANCHOR),
        AddSeat("team-1", "alice", "standard"),
        AddSeat("team-1", "bob", "premium"),
        OpenSubscription("team-2", ANCHOR),
        AddSeat("team-2", "carol", "standard"),
    )
    clock.set(us_from_datetime(datetime(2026, 2, 1, 10, 0, 1, tzinfo=UTC)))
    [seed] = ledger.charge([UsageEvent(event_id="seed-1", **SEED)])  # type: ignore[arg-type]
    assert seed.status == "applied"
    clock.set(us_from_datetime(datetime(2026, 2, 2, 10, 0, tzinfo=UTC)))
    run(BuyPack("team-1", "p1"))
    clock.set(us_from_datetime(datetime(2026, 2, 3, 10, 0, tzinfo=UTC)))
    run(BuyPack("team-1", "p2"))
    # 10 x 71000 on alice: her 25000 quota (less 3.18), then all of p1, then 60003.18 of p2.
    outcomes = ledger.charge([_big(f"big-{i}", "alice") for i in range(10)])
    # carol has no pack: 25000 covered, 46000 uncovered, and she is suspended.
    outcomes += ledger.charge([_big("carol-1", "carol", "team-2")])
    assert {o.status for o in outcomes} == {"applied"}
    clock.set(us_from_datetime(NOW))
    runner = ProjectionRunner(store, read_store)
    runner.catch_up()
    tokens = TokenStore(tmp_path / "tokens.sqlite3")
    tokens.set_bootstrap_admin(ADMIN)
    app = create_app(
        events=store, read_model_path=read_path, runner=runner, tokens=tokens, clock=clock
    )
    with TestClient(app) as client:
        yield Api(client, tokens, tmp_path)
    tokens.close()
    read_store.close()
    store.close()


def _problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == PROBLEM_BASE + slug
    assert body["status"] == status and body["title"] and body["detail"]
    return body


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
    assert carol == {"allowed": False, "available": "0.00", "reason": "suspended"}
    alice = api.get(path.format("team-1", "alice")).json()
    assert alice == {"allowed": True, "available": "564996.82", "reason": "ok"}
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
    assert carol == {"allowed": True, "available": "25000.00", "reason": "ok"}
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


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("/v1/subscriptions/team-1/usage", {"limit": 0}, "limit"),
        ("/v1/subscriptions/team-1/usage", {"limit": 1001}, "limit"),
        ("/v1/subscriptions/team-1/usage", {"cursor": "not-a-cursor!"}, "cursor"),
        ("/v1/subscriptions/team-1/usage", {"from": "yesterday"}, "from"),
        ("/v1/subscriptions/team-1/overview", {"as_of": "last tuesday"}, "as_of"),
        ("/v1/subscriptions/team-1/overview", {"as_of": "position:999"}, "as_of"),
        ("/v1/log", {"limit": 5000}, "limit"),
        ("/v1/log", {"after": -1}, "after"),
    ],
)
def test_bad_query_parameters_are_400_problems_naming_them(
    api: Api, path: str, params: dict[str, Any], parameter: str
) -> None:
    body = _problem(api.get(path, **params), 400, "invalid-parameter")
    assert parameter in body["detail"]


def test_unknown_things_are_404_problems(api: Api) -> None:
    _problem(api.get("/v1/subscriptions/team-9/overview"), 404, "not-found")
    _problem(api.get("/v1/subscriptions/team-1/seats/nobody"), 404, "not-found")
    _problem(api.get("/v1/nowhere"), 404, "not-found")


def test_bodies_are_bounded_and_checked(api: Api) -> None:
    huge = {"role": "viewer", "subscription_ids": ["x" * 100] * 1000}
    response = api.client.post("/v1/tokens", json=huge, headers=_auth(ADMIN))
    _problem(response, 413, "body-too-large")
    wrong = api.client.post("/v1/tokens", json={"role": "root"}, headers=_auth(ADMIN))
    _problem(wrong, 400, "invalid-body")
    two = {"role": "viewer", "subscription_ids": ["team-1", "team-2"]}
    _problem(api.client.post("/v1/tokens", json=two, headers=_auth(ADMIN)), 400, "invalid-body")


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


def _call(api: Api, method: str, path: str, token: str | None) -> Any:
    if method == "POST":
        return api.client.post(path, json={"role": "auditor"}, headers=_auth(token))
    if method == "DELETE":
        return api.client.delete(path, headers=_auth(token))
    return api.client.get(path, headers=_auth(token))


EVERY_V1 = [
    *(("GET", p) for p in SUBSCRIPTION_READS + SEAT_READS + AUDIT_READS),
    ("POST", "/v1/tokens"),
    ("DELETE", "/v1/tokens/tok_x"),
]


@pytest.mark.parametrize(("method", "path"), EVERY_V1)
def test_every_v1_path_without_a_good_token_is_401(api: Api, method: str, path: str) -> None:
    _problem(_call(api, method, path, None), 401, "unauthorized")
    _problem(_call(api, method, path, "lt_not-a-token"), 401, "unauthorized")
    response = api.client.get(path, headers={"Authorization": f"Basic {ADMIN}"})
    assert response.status_code in (401, 405)


def test_roles_that_may_not_are_403(api: Api) -> None:
    _, gateway = api.token("gateway", ["team-1"])
    _, viewer = api.token("viewer", ["team-1"])
    _, auditor = api.token("auditor")
    for path in SUBSCRIPTION_READS + AUDIT_READS:
        _problem(api.get(path, gateway), 403, "forbidden")
    for path in SEAT_READS:
        assert api.get(path, gateway).status_code == 200
    for path in AUDIT_READS:
        _problem(api.get(path, viewer), 403, "forbidden")
    for path in SUBSCRIPTION_READS + SEAT_READS:
        assert api.get(path, viewer).status_code == 200
    for path in SUBSCRIPTION_READS + SEAT_READS + AUDIT_READS:
        assert api.get(path, auditor).status_code == 200
    for token in (gateway, viewer, auditor):
        for method, path in (("POST", "/v1/tokens"), ("DELETE", "/v1/tokens/tok_x")):
            _problem(_call(api, method, path, token), 403, "forbidden")


def test_another_subscriptions_token_gets_404_like_an_unknown_one(api: Api) -> None:
    _, viewer = api.token("viewer", ["team-2"])
    _, gateway = api.token("gateway", ["team-2"])
    for path in SUBSCRIPTION_READS + SEAT_READS:
        unknown = _problem(api.get(path.replace("team-1", "team-9")), 404, "not-found")
        expected = {**unknown, "detail": unknown["detail"].replace("team-9", "team-1")}
        response = api.get(path, viewer)
        assert _problem(response, 404, "not-found") == expected
        assert "alice" not in response.text and "3.18" not in response.text
    for path in SEAT_READS:
        assert api.get(path, gateway).json() == api.get(path.replace("team-1", "team-9")).json() | {
            "detail": "no subscription 'team-1'"
        }
    assert api.get("/v1/subscriptions/team-2/seats/carol", viewer).status_code == 200


def test_a_token_made_over_http_works_until_revoked(api: Api) -> None:
    created = api.client.post(
        "/v1/tokens", json={"role": "viewer", "subscription_ids": ["team-1"]}, headers=_auth(ADMIN)
    )
    assert created.status_code == 201
    body = created.json()
    assert body["token"].startswith(TOKEN_PREFIX) and body["subscription_ids"] == ["team-1"]
    path = "/v1/subscriptions/team-1/overview"
    assert api.get(path, body["token"]).status_code == 200
    revoked = api.client.delete(f"/v1/tokens/{body['token_id']}", headers=_auth(ADMIN))
    assert revoked.status_code == 204
    _problem(api.get(path, body["token"]), 401, "unauthorized")
    again = api.client.delete(f"/v1/tokens/{body['token_id']}", headers=_auth(ADMIN))
    _problem(again, 404, "not-found")


def test_tokens_are_not_stored_in_clear(api: Api) -> None:
    _, token = api.token("auditor")
    created = api.client.post("/v1/tokens", json={"role": "auditor"}, headers=_auth(ADMIN))
    files = list(api.data_dir.glob("tokens.sqlite3*"))
    assert files
    stored = b"".join(path.read_bytes() for path in files)
    for secret in (token, created.json()["token"], ADMIN):
        assert secret.encode() not in stored
        assert secret[len(TOKEN_PREFIX) :].encode() not in stored


# -- tokens ---------------------------------------------------------------------------------


def test_the_admin_token_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path / "tokens.sqlite3")
    data_dir = tmp_path / "data"
    token = ensure_admin_token(tokens, data_dir, None)
    assert token is not None and token.startswith(TOKEN_PREFIX)
    path = data_dir / ADMIN_TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == token
    principal = tokens.authenticate(token)
    assert principal is not None and principal.role == "admin"
    assert ensure_admin_token(tokens, data_dir, None) is None  # printed once only
    assert tokens.authenticate(token) is not None
    # LEDGER_ADMIN_TOKEN replaces it.
    assert ensure_admin_token(tokens, data_dir, "lt_from-env") is None
    assert tokens.authenticate("lt_from-env") is not None
    assert tokens.authenticate(token) is None
    tokens.close()


def test_scopes_follow_the_role(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path / "tokens.sqlite3")
    for role, scope in [
        ("viewer", None),
        ("viewer", ["a", "b"]),
        ("gateway", []),
        ("admin", ["a"]),
        ("auditor", ["a"]),
        ("root", None),
    ]:
        with pytest.raises(InvalidTokenRequest):
            tokens.create(role, scope)  # type: ignore[arg-type]
    token_id, token = tokens.create("gateway", ["a", "b"])
    principal = tokens.authenticate(token)
    assert principal is not None and principal.token_id == token_id
    assert principal.sees("a") and principal.sees("b") and not principal.sees("c")
    assert tokens.authenticate(token + "x") is None and tokens.authenticate("") is None
    assert tokens.revoke(token_id) and not tokens.revoke(token_id)
    assert tokens.authenticate(token) is None
    tokens.close()


def test_pack_expiry_countdown_uses_the_ledger_clock(api: Api) -> None:
    packs = api.get("/v1/subscriptions/team-1/packs").json()["items"]
    expires = datetime.fromisoformat(packs[1]["expires_at"].replace("Z", "+00:00"))
    assert timedelta(seconds=packs[1]["expires_in_seconds"]) == expires - NOW


def test_the_app_serves_a_bootstrapped_process(tmp_path: Path) -> None:
    parts = bootstrap(Settings(data_dir=tmp_path))
    tokens = TokenStore(tmp_path / TOKENS_FILE)
    admin = ensure_admin_token(tokens, tmp_path, None)
    assert admin is not None
    runner = parts.projections()
    with TestClient(app_from_parts(parts, runner, tokens)) as client:
        assert client.get("/readyz").json() == {"status": "ready", "position": 0, "head": 0}
        digest = client.get("/v1/audit/digest", headers=_auth(admin)).json()
        assert digest == {"position": 0, "hash": "00" * 32}
        _problem(
            client.get("/v1/subscriptions/team-1/usage", headers=_auth(admin)), 404, "not-found"
        )
    tokens.close()
    parts.close()
