"""No answer of the HTTP API depends on what another tenant holds.

Two ledgers are built the same way, command for command: a subscription `team-2` that the
callers own, and another tenant. In the first the other tenant is `team-1` with a seat `alice`,
a pack `p1` and a charge `e1`; in the second it holds the same things under names no request
uses. For every /v1 operation of the served OpenAPI document (a path added later is covered
without editing this file) and every role, the same request goes to both: the names it carries
exist in another tenant in the first ledger and nowhere in the second. The answers must be
the same status, the same headers and the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pytest
from litestar.testing import TestClient

from ledger.application import Ledger
from ledger.clock import ManualClock
from ledger.log import us_from_datetime
from ledger.rate_card import load_rate_card
from ledger.stores.sqlite import SqliteEventStore
from projections.notification_store import Webhook
from projections.runner import ProjectionRunner
from projections.stores.notifications_sqlite import SqliteNotificationStore
from projections.stores.sqlite import SqliteReadModelStore
from schemas.commands import (
    AddSeat,
    AdjustSeat,
    BuyPack,
    Command,
    GrantCredits,
    OpenSubscription,
    PlaceHold,
    ReverseCharge,
)
from schemas.limits import ID_PATTERN, MAX_HOLD_TTL_S
from schemas.usage import UsageEvent
from services.api.app import create_app
from services.auth.tokens import SqliteTokenStore, TokenStore
from services.metrics import LedgerMetrics
from services.writer import LedgerWriter

ANCHOR: Final = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)
NOW: Final = datetime(2026, 2, 4, 10, 0, tzinfo=UTC)
ADMIN: Final = "lt_tenants-admin-token"
HOOK_URL: Final = "https://hooks.example.com/ledger"
HOOK_SECRET: Final = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OWN: Final = "team-2"
"""The subscription every caller owns (the scoped tokens see it and nothing else)."""


@dataclass(frozen=True)
class Tenant:
    """The names one subscription gives its things."""

    sub: str
    seat: str
    pack: str
    event: str
    hold: str
    webhook: str
    grant: str
    adjustment: str
    reversal: str


OTHER: Final = Tenant("team-1", "alice", "p1", "e1", "h1", "wh-1", "g1", "a1", "r1")
"""The other tenant of the first ledger: every request names these."""
NOBODY: Final = Tenant("team-x", "xavier", "px", "ex", "hx", "wh-x", "gx", "ax", "rx")
"""The other tenant of the second ledger: no request names these."""
MINE: Final = Tenant(OWN, "carol", "p2", "e2", "h2", "wh-2", "g2", "a2", "r2")

NAMES_BY_PARAMETER: Final[dict[str, str]] = {
    "subscription_id": OTHER.sub,
    "subscription_ids": OTHER.sub,
    "seat": OTHER.seat,
    "seat_id": OTHER.seat,
    "pack": OTHER.pack,
    "pack_id": OTHER.pack,
    "event_id": OTHER.event,
    "hold": OTHER.hold,
    "hold_id": OTHER.hold,
    "webhook": OTHER.webhook,
    "webhook_id": OTHER.webhook,
    "grant": OTHER.grant,
    "grant_id": OTHER.grant,
    "adjustment_id": OTHER.adjustment,
    "reversal_id": OTHER.reversal,
    "token_id": "tok_0123456789abcdef",  # tokens belong to no subscription
}
"""The name a request gives each path, query or body parameter that is an id: what the other
tenant of the first ledger holds. A new kind of id must be added here (and to `_tenant`, so that
the other tenant holds one): until it is, the test fails and names it."""


@dataclass(frozen=True)
class Caller:
    """Who asks (a bearer token) about which subscription."""

    name: str
    token: str
    sub: str
    scoped: bool


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    spec: dict[str, Any]


def _tenant(tenant: Tenant) -> list[Command]:
    return [
        OpenSubscription(tenant.sub, ANCHOR),
        AddSeat(tenant.sub, tenant.seat, "standard"),
        BuyPack(tenant.sub, tenant.pack),
        PlaceHold(tenant.sub, tenant.seat, tenant.hold, 1_000_000, MAX_HOLD_TTL_S),
        GrantCredits(tenant.sub, tenant.grant, 1_000_000, NOW, "goodwill"),
        AdjustSeat(tenant.sub, tenant.seat, tenant.adjustment, 1_000_000, "goodwill"),
    ]


def _reversal(tenant: Tenant) -> ReverseCharge:
    return ReverseCharge(tenant.sub, tenant.event, tenant.reversal, "typo", 1_000_000)


def _usage(tenant: Tenant) -> UsageEvent:
    return UsageEvent(
        event_id=tenant.event,
        subscription_id=tenant.sub,
        seat_id=tenant.seat,
        model="qwen3.6-plus",
        occurred_at=ANCHOR,
        input_tokens=8_349,
        cached_tokens=40_794,
        output_tokens=573,
    )


def _build(data_dir: Path, other: Tenant, tokens: TokenStore, executor: ThreadPoolExecutor) -> Any:
    """A ledger where `other` and MINE hold the same things; its app (on `executor`'s thread)."""
    store = SqliteEventStore(data_dir / "ledger.sqlite3")
    read_store = SqliteReadModelStore(data_dir / "ledger.readmodels.sqlite3", store)
    clock = ManualClock(us_from_datetime(ANCHOR))
    ledger = Ledger(store, load_rate_card(), clock)
    for commands in (_tenant(other), _tenant(MINE)):
        assert {o.status for o in ledger.execute(commands)} == {"applied"}
    assert {o.status for o in ledger.charge([_usage(other), _usage(MINE)])} == {"applied"}
    reversals = ledger.execute([_reversal(other), _reversal(MINE)])
    assert {o.status for o in reversals} == {"applied"}
    clock.set(us_from_datetime(NOW))
    runner = ProjectionRunner(store, read_store)
    runner.catch_up()
    notices = SqliteNotificationStore(data_dir / "ledger.notifications.sqlite3")
    for tenant in (other, MINE):
        webhook = Webhook(
            tenant.sub, tenant.webhook, HOOK_URL, HOOK_SECRET, (), "active", clock.now_us()
        )
        assert notices.create_webhook(webhook)
    app = create_app(
        events=store,
        read_models=read_store.reader(),
        runner=runner,
        tokens=tokens,
        clock=clock,
        writer=LedgerWriter(ledger, runner, executor),
        metrics=LedgerMetrics(),
        notices=notices,
    )
    return app, store


@contextmanager
def _ledger(data_dir: Path, other: Tenant, tokens: TokenStore) -> Iterator[TestClient[Any]]:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer") as executor:
        app, store = executor.submit(_build, data_dir, other, tokens, executor).result()
        try:
            with TestClient(app) as client:
                yield client
        finally:
            executor.submit(store.close).result()


@dataclass
class Ledgers:
    """The two ledgers, the callers and the operations of the served document."""

    with_other: TestClient[Any]
    without: TestClient[Any]
    callers: list[Caller]
    operations: list[Operation]


@pytest.fixture
def ledgers(tmp_path: Path) -> Iterator[Ledgers]:
    tokens = SqliteTokenStore(tmp_path / "tokens.sqlite3")
    tokens.set_bootstrap_admin(ADMIN)
    _, auditor = tokens.create("auditor")
    _, viewer = tokens.create("viewer", [OWN])
    _, gateway = tokens.create("gateway", [OWN])
    callers = [
        Caller("admin", ADMIN, OWN, scoped=False),
        Caller("auditor", auditor, OWN, scoped=False),
        *(
            Caller(f"{role} of {OWN} about {sub}", token, sub, scoped=True)
            for role, token in (("viewer", viewer), ("gateway", gateway))
            for sub in (OWN, OTHER.sub)
        ),
    ]
    with ExitStack() as stack:
        with_other = stack.enter_context(_ledger(tmp_path / "with", OTHER, tokens))
        without = stack.enter_context(_ledger(tmp_path / "without", NOBODY, tokens))
        document = with_other.get("/schema/openapi.json").json()
        assert without.get("/schema/openapi.json").json() == document
        yield Ledgers(with_other, without, callers, _v1_operations(document))
    tokens.close()


def _v1_operations(document: dict[str, Any]) -> list[Operation]:
    """Every /v1 operation of the document; reads first, then refusals, then creations, so
    a creation of one operation leaves the names of the next ones unknown to the subscription
    they ask about (both ledgers get every request: they stay alike either way)."""
    order = {"get": 0, "patch": 1, "delete": 1, "put": 2, "post": 2}
    operations = [
        Operation(method.upper(), path, spec)
        for path, methods in document["paths"].items()
        if path.startswith("/v1/")
        for method, spec in methods.items()
        if method in order
    ]
    assert len(operations) >= 15, "the document lists the /v1 operations"
    return sorted(operations, key=lambda op: (order[op.method.lower()], op.path))


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = document["components"]["schemas"][name]
    return schema


def _id_name(parameter: str, what: str) -> str:
    if parameter not in NAMES_BY_PARAMETER:
        pytest.fail(
            f"{what} takes an id `{parameter}` this test cannot give a name: add it to"
            " NAMES_BY_PARAMETER, and give the other tenant one in _tenant",
            pytrace=False,
        )
    return NAMES_BY_PARAMETER[parameter]


def _value(document: dict[str, Any], name: str, schema: dict[str, Any], what: str) -> Any:
    """A valid value of `schema`; an id is the name the other tenant holds."""
    schema = _resolve(document, schema)
    variants = [s for s in schema.get("oneOf", schema.get("anyOf", [])) if s.get("type") != "null"]
    if variants:
        return _value(document, name, {**schema, **variants[0], "oneOf": []}, what)
    if schema.get("pattern") == ID_PATTERN:
        return _id_name(name, what)
    if "enum" in schema or "const" in schema:
        return schema.get("const", (schema.get("enum") or [None])[0])
    kind = schema.get("type")
    if kind == "object":
        return {
            key: _value(document, key, sub, what)
            for key, sub in schema.get("properties", {}).items()
            if key in schema.get("required", []) or _resolve(document, sub).get("pattern")
        }
    if kind == "array":
        return [_value(document, name, schema.get("items", {}), what)]
    if kind == "integer":
        return max(1, int(schema.get("minimum", 1)))
    if kind == "boolean":
        return False
    if schema.get("format") == "date-time":
        return NOW.isoformat().replace("+00:00", "Z")
    return "x"


def _request(
    document: dict[str, Any], operation: Operation, caller: Caller
) -> tuple[str, dict[str, str], Any]:
    """The path, query and body of `caller`'s request: every id it carries names the other
    tenant's thing (the subscription is the caller's own, or, for a scoped token, may be the
    other tenant's)."""
    what = f"{operation.method} {operation.path}"
    path = operation.path
    query: dict[str, str] = {}
    for parameter in operation.spec.get("parameters", []):
        name, where = parameter["name"], parameter["in"]
        if where == "path":
            value = caller.sub if name == "sub" else _id_name(name, what)
            path = path.replace("{" + name + "}", value)
        elif where == "query" and re.fullmatch(r"seat|pack|.*_id", name):
            query[name] = _id_name(name, what)
    content = operation.spec.get("requestBody", {}).get("content", {})
    body = None
    if "application/json" in content:
        body = _value(document, "data", content["application/json"]["schema"], what)
    return path, query, body


def _names_a_subscription(operation: Operation) -> bool:
    return "{sub}" in operation.path


def test_no_answer_depends_on_what_another_tenant_holds(ledgers: Ledgers) -> None:
    document = ledgers.with_other.get("/schema/openapi.json").json()
    compared = 0
    differences: list[str] = []
    for operation in ledgers.operations:
        for caller in ledgers.callers:
            if not caller.scoped and not _names_a_subscription(operation):
                continue  # an admin or auditor sees every tenant: nothing to hide from it
            path, query, body = _request(document, operation, caller)
            answers = [
                client.request(
                    operation.method,
                    path,
                    params=query,
                    json=body,
                    headers={"Authorization": f"Bearer {caller.token}"},
                )
                for client in (ledgers.with_other, ledgers.without)
            ]
            compared += 1
            seen = [(a.status_code, sorted(a.headers.multi_items()), a.content) for a in answers]
            if seen[0] != seen[1]:
                differences.append(
                    f"{caller.name}: {operation.method} {path} {query or ''} {body or ''}\n"
                    f"  with {OTHER.sub}: {seen[0]}\n  without: {seen[1]}"
                )
    assert not differences, "\n".join(differences)
    assert compared >= 40
