"""The served OpenAPI document says exactly what the server accepts: ids with the id alphabet,
instants with their format and bounds, `as_of` as a position or an instant, request bodies that
refuse unknown fields with `additionalProperties: false`, an optional body as optional, and an
`Allow` header on every OPTIONS answer that lists the methods the document lists."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar.exceptions import LitestarDeprecationWarning

from schemas.instants import InstantOutOfRange, bounded_utc
from schemas.limits import ID_PATTERN, INSTANT_PATTERN, MAX_ID_CHARS, MAX_INSTANT, MIN_INSTANT
from tests.support.api_app import ADMIN, Api, auth, open_api

POSITION_PATTERN = r"^position:[0-9]+$"
ID_QUERY_PARAMETERS = {"seat"}
"""Query parameters that hold an id."""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, dict[str, Any]]]:
    with open_api(tmp_path_factory.mktemp("document")) as api:
        yield api, api.get("/schema/openapi.json", token=None).json()


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                yield path, method, operation


def _body_schemas(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object schema a request body may be, by where it is."""
    for path, method, operation in _operations(document):
        content = operation.get("requestBody", {}).get("content", {})
        for media in content.values():
            schema = _resolve(document, media["schema"])
            for variant in schema.get("oneOf", [schema]):
                variant = _resolve(document, variant)
                if variant.get("type") == "object":
                    yield f"{method.upper()} {path}", variant


def _is_id(schema: dict[str, Any]) -> bool:
    return (
        schema.get("pattern") == ID_PATTERN
        and schema.get("minLength") == 1
        and schema.get("maxLength") == MAX_ID_CHARS
    )


def test_every_handler_is_declared_as_litestar_3_reads_it(tmp_path: Path) -> None:
    """A request body without its marker (`JSONBody[...]`), or another reserved argument
    without its type, is a deprecation warning now and a different handler in Litestar 3."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_api(tmp_path):
            pass
    deprecated = [str(w.message) for w in caught if w.category is LitestarDeprecationWarning]
    assert deprecated == []


def test_every_path_parameter_and_id_query_parameter_carries_the_id_alphabet(
    served: tuple[Api, dict[str, Any]],
) -> None:
    _, document = served
    seen = set()
    for path, method, operation in _operations(document):
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path" or parameter["name"] in ID_QUERY_PARAMETERS:
                seen.add(parameter["name"])
                schema = parameter["schema"]
                assert _is_id(schema), (method, path, parameter)
    assert {"sub", "seat", "token_id"} <= seen


def test_every_id_in_a_request_body_carries_the_id_alphabet(
    served: tuple[Api, dict[str, Any]],
) -> None:
    _, document = served
    ids = 0
    for where, schema in _body_schemas(document):
        for name, field in schema.get("properties", {}).items():
            if name.endswith("_id"):
                assert _is_id(field), (where, name, field)
                ids += 1
            if name.endswith("_ids") and field.get("type") != "null":
                assert field["type"] == "array" and _is_id(field["items"]), (where, name, field)
                ids += 1
    assert ids >= 4


def test_every_request_body_refuses_unknown_fields_and_says_so(
    served: tuple[Api, dict[str, Any]],
) -> None:
    api, document = served
    bodies = list(_body_schemas(document))
    assert len(bodies) >= 6
    for where, schema in bodies:
        assert schema.get("additionalProperties") is False, where
    refused = api.client.post(
        "/v1/clock", json={"now": "2026-03-01T00:00:00Z", "x": 1}, headers=auth(ADMIN)
    )
    assert refused.status_code == 400


def _as_string(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema of a string, or of a string or null (whose string facets sit beside `oneOf`)."""
    variants = schema.get("oneOf")
    if variants is None:
        return schema
    assert {v["type"] for v in variants} == {"string", "null"}, schema
    return {"type": "string", **{k: v for k, v in schema.items() if k != "oneOf"}}


def _instant_schemas(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, schema in _body_schemas(document):
        for name in ("anchor", "now"):
            if name in schema.get("properties", {}):
                yield f"{where} {name}", _as_string(schema["properties"][name])
    for path, method, operation in _operations(document):
        for parameter in operation.get("parameters", []):
            if parameter["name"] in {"from", "to"}:
                yield f"{method} {path} {parameter['name']}", parameter["schema"]


def test_every_instant_is_a_bounded_date_time_string(served: tuple[Api, dict[str, Any]]) -> None:
    _, document = served
    instants = list(_instant_schemas(document))
    assert len(instants) >= 4
    for where, schema in instants:
        assert schema.get("type") == "string", where
        assert schema.get("format") == "date-time", where
        assert schema.get("pattern") == INSTANT_PATTERN, where


def test_as_of_is_a_position_or_a_bounded_instant(served: tuple[Api, dict[str, Any]]) -> None:
    _, document = served
    as_ofs = [
        parameter["schema"]
        for _, _, operation in _operations(document)
        for parameter in operation.get("parameters", [])
        if parameter["name"] == "as_of"
    ]
    assert len(as_ofs) >= 7
    for schema in as_ofs:
        assert {(s.get("pattern"), s.get("format")) for s in schema["oneOf"]} == {
            (POSITION_PATTERN, None),
            (INSTANT_PATTERN, "date-time"),
        }


def test_a_body_that_may_be_left_out_is_documented_as_optional(
    served: tuple[Api, dict[str, Any]],
) -> None:
    api, document = served
    packs = document["paths"]["/v1/subscriptions/{sub}/packs"]["post"]
    assert packs["requestBody"]["required"] is False
    assert api.post("/v1/subscriptions/team-1/packs", None).status_code == 201
    assert document["paths"]["/v1/clock"]["post"]["requestBody"]["required"] is True


def test_a_token_request_says_which_roles_name_subscriptions(
    served: tuple[Api, dict[str, Any]],
) -> None:
    _, document = served
    content = document["paths"]["/v1/tokens"]["post"]["requestBody"]["content"]
    variants = [_resolve(document, v) for v in content["application/json"]["schema"]["oneOf"]]
    by_role = {v["properties"]["role"]["const"]: v for v in variants}
    assert set(by_role) == {"admin", "auditor", "gateway", "viewer"}
    viewer = by_role["viewer"]["properties"]["subscription_ids"]
    assert (viewer["minItems"], viewer["maxItems"]) == (1, 1)
    assert "subscription_ids" in by_role["gateway"]["required"]
    assert "subscription_ids" not in by_role["admin"].get("required", [])


def test_every_options_answer_lists_the_methods_the_document_lists(
    served: tuple[Api, dict[str, Any]],
) -> None:
    api, document = served
    for path, methods in document["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        answer = api.client.options(concrete, headers=auth(ADMIN))
        assert answer.status_code == 204, path
        allowed = {m.strip() for m in answer.headers["allow"].split(",")}
        documented = {m.upper() for m in methods if m != "parameters"}
        assert allowed == documented | {"OPTIONS"}, path


# -- the instant pattern and the bounds agree ---------------------------------------------

_OFFSETS = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))


def _written(instant: datetime, z: bool, digits: int) -> str:
    text = instant.isoformat(timespec="microseconds" if digits else "seconds")
    if digits:
        text = text[: 20 + digits] + text[26:]
    return text.replace("+00:00", "Z") if z else text


def _accepted(text: str) -> bool:
    try:
        bounded_utc(datetime.fromisoformat(text), "instant")
    except (InstantOutOfRange, ValueError):
        return False
    return True


@given(
    st.datetimes(
        min_value=datetime(1999, 12, 30),
        max_value=datetime(2200, 1, 2),
        timezones=_OFFSETS,
    )
    | st.datetimes(timezones=_OFFSETS),
    st.booleans(),
    st.integers(0, 6),
)
def test_the_instant_pattern_admits_only_instants_within_the_bounds(
    instant: datetime, z: bool, digits: int
) -> None:
    """What the pattern admits lies within the bounds; what it refuses inside them is only an
    instant written on a day next to a bound with an offset that carries it across."""
    text = _written(instant, z, digits)
    matches = re.fullmatch(INSTANT_PATTERN, text) is not None
    if matches:
        assert _accepted(text), text
    elif _accepted(text):
        one_day = timedelta(days=1)
        near_a_bound = {
            MIN_INSTANT.date() - one_day,
            MIN_INSTANT.date(),
            MAX_INSTANT.date(),
            MAX_INSTANT.date() + one_day,
        }
        assert instant.date() in near_a_bound, text


def test_the_instant_pattern_admits_the_bounds_themselves() -> None:
    for text in (
        "2000-01-01T00:00:00Z",
        "2000-01-01T00:00:00+00:00",
        "2000-01-01T00:00:00-05:00",
        "2199-12-31T23:59:59.999999Z",
        "2199-12-31T23:59:59+23:59",
        "2026-02-04T10:00:00.5+05:30",
    ):
        assert re.fullmatch(INSTANT_PATTERN, text), text
    for text in ("1999-12-31T23:59:59Z", "2200-01-01T00:00:00Z", "2199-12-31T23:00:00-01:00"):
        assert not re.fullmatch(INSTANT_PATTERN, text), text
    assert datetime(2000, 1, 1, tzinfo=UTC) == MIN_INSTANT
