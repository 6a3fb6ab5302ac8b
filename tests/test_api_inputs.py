"""Bad input over HTTP gets a 4xx problem that says what is wrong, and changes nothing: bodies
that are not UTF-8, integers where an instant is documented, ids outside the id alphabet
wherever an id is accepted, cursors out of range, clock moves outside the bounds; duplicate keys
in a JSON object mean the same on the stream and over HTTP; a 503 says what to do; /metrics
may be kept behind a token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from ledger.application import Ledger
from ledger.errors import ConcurrentAppend
from projections.runner import ProjectionRunner
from services.api.app import app_from_parts
from services.auth.tokens import TOKENS_FILE, SqliteTokenStore
from services.bootstrap import Parts, bootstrap
from services.config import Settings
from services.ingest.processor import USAGE_DECODER
from services.metrics import LedgerMetrics
from services.writer import LedgerWriter
from tests.support.api_app import ADMIN, ANCHOR, SEED, Api, auth, expect_problem, open_api

METRICS_TOKEN = "metrics-scraper-token"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with open_api(tmp_path) as opened:
        yield opened


def _digest(api: Api) -> Any:
    return api.get("/v1/audit/digest").json()


# -- bodies ---------------------------------------------------------------------------------


def test_a_body_that_is_not_utf8_is_a_400_problem_and_appends_nothing(api: Api) -> None:
    head = _digest(api)
    response = api.client.post(
        "/v1/subscriptions",
        content=b'{"subscription_id":"\xc3\x28"}',
        headers=auth(ADMIN) | {"Content-Type": "application/json"},
    )
    assert "UTF-8" in expect_problem(response, 400, "invalid-body")["detail"]
    assert _digest(api) == head


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/subscriptions", {"subscription_id": "t", "anchor": 1_800_000_000}, "anchor"),
        ("/v1/subscriptions", {"subscription_id": "t", "anchor": 0}, "anchor"),
        ("/v1/subscriptions", {"subscription_id": "t", "anchor": 1.5e9}, "anchor"),
        ("/v1/clock", {"now": 1_800_000_000}, "now"),
    ],
)
def test_a_number_where_the_document_says_an_instant_is_a_400_problem(
    api: Api, path: str, body: dict[str, Any], field: str
) -> None:
    head = _digest(api)
    refused = expect_problem(api.post(path, body), 400, "invalid-body")
    assert refused["detail"].startswith(f"{field}: ")
    assert _digest(api) == head
    assert api.get("/v1/clock").json()["now"] == "2026-02-04T10:00:00Z"


@pytest.mark.parametrize(
    "anchor",
    [
        "2026-02-01t00:00:00z",  # RFC 3339 allows lower case; the document and the ledger do not
        "2026-02-01 00:00:00Z",
        "2026-02-01T00:00:00.1234567Z",
        "2026-02-30T00:00:00Z",
        "2000-01-01T05:00:00+03:00",  # on the first day of the bounds, no offset ahead of UTC
    ],
)
def test_an_instant_the_document_refuses_is_refused(api: Api, anchor: str) -> None:
    body = {"subscription_id": "t", "anchor": anchor}
    refused = expect_problem(api.post("/v1/subscriptions", body), 400, "invalid-body")
    assert refused["detail"].startswith("anchor: ")


def test_duplicate_keys_mean_the_last_one_on_the_stream_and_over_http_alike(api: Api) -> None:
    usage = json.dumps({**SEED, "event_id": "dup-1", "occurred_at": "2026-02-01T10:00:00Z"})
    on_the_stream = USAGE_DECODER.decode(usage[:-1] + ', "seat_id": "bob"}')
    assert on_the_stream.seat_id == "bob"
    body = b'{"seat_id": "erin", "tier": "standard", "seat_id": "frank"}'
    added = api.client.post(
        "/v1/subscriptions/team-1/seats",
        content=body,
        headers=auth(ADMIN) | {"Content-Type": "application/json"},
    )
    assert added.status_code == 201 and added.json()["seat_id"] == "frank"
    assert api.get("/v1/subscriptions/team-1/seats/erin").status_code == 404


# -- ids ------------------------------------------------------------------------------------


ID_REFUSALS: list[tuple[str, str, dict[str, str], Any, str]] = [
    ("GET", "/v1/subscriptions/%C3%A9quipe/overview", {}, None, "sub"),
    ("GET", "/v1/subscriptions/a%20b/billing", {}, None, "sub"),
    ("GET", "/v1/subscriptions/team-1/seats/al%3Fice", {}, None, "seat"),
    ("GET", "/v1/subscriptions/team-1/seats/al%3Fice/authorization", {}, None, "seat"),
    ("PATCH", "/v1/subscriptions/team-1/seats/al%23ice", {}, {"tier": "advanced"}, "seat"),
    ("DELETE", "/v1/tokens/tok%20x", {}, None, "token_id"),
    ("GET", "/v1/subscriptions/team-1/usage", {"seat": "a/b"}, None, "seat"),
    ("GET", "/v1/subscriptions/team-1/usage", {"seat": ""}, None, "seat"),
]
"""Ids in paths and queries: (method, path, query, body, the parameter named)."""
BODY_ID_REFUSALS: list[tuple[str, Any, str]] = [
    ("/v1/tokens", {"role": "viewer", "subscription_ids": ["team 1"]}, "subscription_ids[0]"),
    ("/v1/tokens", {"role": "gateway", "subscription_ids": [""]}, "subscription_ids[0]"),
    ("/v1/subscriptions/team-1/packs", {"pack_id": "p/1"}, "pack_id"),
    ("/v1/subscriptions/team-1/seats", {"seat_id": "é", "tier": "standard"}, "seat_id"),
]


@pytest.mark.parametrize(("method", "path", "params", "body", "parameter"), ID_REFUSALS)
def test_an_id_outside_the_id_alphabet_in_a_path_or_query_is_refused_naming_it(
    api: Api, method: str, path: str, params: dict[str, str], body: Any, parameter: str
) -> None:
    head = _digest(api)
    response = api.client.request(method, path, params=params, json=body, headers=auth(ADMIN))
    refused = expect_problem(response, 400, "invalid-parameter")
    assert refused["parameter"] == parameter
    assert refused["detail"].startswith(f"{parameter}: ")
    if params.get(parameter) != "":
        assert refused["detail"] == f"{parameter}: an id is 1 to 128 of A-Z a-z 0-9 . _ - : @"
    assert _digest(api) == head


@pytest.mark.parametrize(("path", "body", "parameter"), BODY_ID_REFUSALS)
def test_an_id_outside_the_id_alphabet_in_a_body_is_refused_naming_it(
    api: Api, path: str, body: Any, parameter: str
) -> None:
    head = _digest(api)
    refused = expect_problem(api.post(path, body), 400, "invalid-body")
    assert refused["parameter"] == parameter, refused
    assert _digest(api) == head


# -- query parameters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "cursor",
    [
        "1000000000000000000000000000000-1",
        "1--1000000000000000000000000000000",
        "MTAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDox",  # base64 of "10**30:1"
        "99999999999999999999999-1",
        "1_0-1",
        "MV8wOisx",  # "1_0:+1", base64: int() would take it
    ],
)
def test_a_cursor_out_of_range_or_not_written_by_the_ledger_is_a_400_problem(
    api: Api, cursor: str
) -> None:
    response = api.get("/v1/subscriptions/team-1/usage", cursor=cursor)
    assert expect_problem(response, 400, "invalid-parameter")["parameter"] == "cursor"


def test_a_cursor_the_ledger_wrote_pages_on(api: Api) -> None:
    first = api.get("/v1/subscriptions/team-1/usage", limit=2).json()
    second = api.get("/v1/subscriptions/team-1/usage", limit=2, cursor=first["next_cursor"])
    assert second.status_code == 200
    assert [r["event_id"] for r in second.json()["items"]] == ["big-1", "big-2"]


@pytest.mark.parametrize("as_of", ["position:999", "position:99999999999999999999999999"])
def test_as_of_a_position_the_log_has_not_reached_is_404(api: Api, as_of: str) -> None:
    refused = expect_problem(
        api.get("/v1/subscriptions/team-1/overview", as_of=as_of), 404, "not-found"
    )
    assert refused["parameter"] == "as_of" and "head" in refused["detail"]


@pytest.mark.parametrize(
    "as_of", ["2026-02-01t00:00:00z", "position:-1", "position:١", "1999-12-31T23:59:59Z"]
)
def test_as_of_that_is_no_position_and_no_bounded_instant_is_400(api: Api, as_of: str) -> None:
    response = api.get("/v1/audit/digest", as_of=as_of)
    assert expect_problem(response, 400, "invalid-parameter")["parameter"] == "as_of"


# -- the manual clock -----------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Api, Settings]]:
    """A bootstrapped process's app, on a manual clock kept in a file of the data dir."""
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
            assert api.post("/v1/clock", {"now": "2026-02-10T00:00:00Z"}).status_code == 200
            yield api, settings
        executor.submit(parts.close).result()
    tokens.close()


def _clock_files(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in data_dir.iterdir() if "clock" in p.name}


@pytest.mark.parametrize(
    "now", ["9999-12-31T23:59:59Z", "2200-01-01T00:00:00Z", "1999-12-31T23:59:59Z"]
)
def test_a_clock_move_outside_the_bounds_says_which_instants_may_be_sent_and_changes_nothing(
    served: tuple[Api, Settings], now: str
) -> None:
    api, settings = served
    files, head = _clock_files(settings.data_dir), _digest(api)
    assert files, "the manual clock lives in a file"
    refused = expect_problem(api.post("/v1/clock", {"now": now}), 400, "invalid-body")
    assert refused["detail"].startswith("now: ")
    assert "2000-01-01" in refused["detail"] and "2199-12-31" in refused["detail"]
    assert [e["parameter"] for e in refused["errors"]] == ["now"]
    assert _clock_files(settings.data_dir) == files and _digest(api) == head
    assert api.get("/v1/subscriptions/t/overview").status_code == 200


def test_a_clock_move_backwards_says_from_when_it_may_move_and_changes_nothing(
    served: tuple[Api, Settings],
) -> None:
    api, settings = served
    files, head = _clock_files(settings.data_dir), _digest(api)
    refused = expect_problem(
        api.post("/v1/clock", {"now": "2026-02-01T00:00:00Z"}), 409, "clock-backwards"
    )
    assert refused["parameter"] == "now"
    assert "send an instant at or after 2026-02-10T00:00:00Z" in refused["detail"]
    assert _clock_files(settings.data_dir) == files and _digest(api) == head


# -- 503 ------------------------------------------------------------------------------------


def test_a_503_says_to_retry_and_names_no_internal_class(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    def busy(self: Ledger, commands: Any) -> Any:
        raise ConcurrentAppend(41, 44)

    monkeypatch.setattr(Ledger, "execute", busy)
    refused = api.post("/v1/subscriptions/team-1/packs", {"pack_id": "p9"})
    body = expect_problem(refused, 503, "store-unavailable")
    assert refused.headers["retry-after"] == "1"
    assert "retry in a second" in body["detail"]
    assert "Concurrent" not in refused.text and "Error" not in refused.text
    assert "41" not in body["detail"]


# -- /metrics -------------------------------------------------------------------------------


def test_metrics_need_the_metrics_token_when_one_is_set(tmp_path: Path) -> None:
    with open_api(tmp_path, metrics_token=METRICS_TOKEN) as api:
        for token in (None, "wrong", ADMIN):
            refused = api.get("/metrics", token=token)
            expect_problem(refused, 401, "unauthorized")
            assert refused.headers["www-authenticate"] == "Bearer"
        assert api.get("/metrics", token=METRICS_TOKEN).status_code == 200
        document = api.get("/schema/openapi.json", token=None).json()
        assert document["paths"]["/metrics"]["get"]["security"] == [{"bearer": []}]
        assert "401" in document["paths"]["/metrics"]["get"]["responses"]
        assert api.get("/healthz", token=None).status_code == 200


def test_metrics_need_no_token_when_none_is_set(api: Api) -> None:
    assert api.get("/metrics", token=None).status_code == 200
    document = api.get("/schema/openapi.json", token=None).json()
    assert "security" not in document["paths"]["/metrics"]["get"]


def test_the_metrics_token_comes_from_ledger_metrics_token() -> None:
    assert Settings.from_env({"LEDGER_METRICS_TOKEN": "m"}).metrics_token == "m"
    assert Settings.from_env({}).metrics_token is None
