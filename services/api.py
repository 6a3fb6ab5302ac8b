"""The HTTP API, read side (SPEC §3 "HTTP API" and "Access"): balances, usage, the log, tokens.

Handlers answer from the projection runner's in-memory balances, or, with `as_of`, from the
balances replayed to that point of the log. Usage pages come from the read model's index over
a read-only connection of the API's own. Every error is an RFC 9457 problem whose `type` is
one of `PROBLEMS`; a subscription outside a token's scope answers exactly as an unknown one.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec
import structlog
from litestar import Litestar, Request, Response, delete, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from ledger.clock import Clock
from ledger.log import EPOCH, GENESIS_HASH, EventStore, datetime_from_us
from ledger.money import format_credits
from projections.balances import Balances, overview, pack_balances, seat_balance
from projections.replay import (
    MAX_AS_OF_CHARS,
    POSITION_PREFIX,
    InvalidAsOf,
    balances_as_of,
    resolve_as_of,
)
from projections.runner import ProjectionRunner
from projections.usage import (
    DEFAULT_PAGE_ROWS,
    MAX_CURSOR_CHARS,
    MAX_PAGE_ROWS,
    InvalidUsageQuery,
    UsageQuery,
    usage_page,
)
from schemas.commands import Tier
from schemas.limits import MAX_ID_CHARS, MAX_MODEL_CHARS
from schemas.read_models import (
    PackBalance,
    PackStatus,
    SeatBalance,
    SeatStatus,
    UsagePage,
    UsageRow,
)
from schemas.usage import UtcInstant
from services.auth import (
    MAX_SCOPE_SUBSCRIPTIONS,
    ROLES,
    InvalidTokenRequest,
    Principal,
    Role,
    TokenStore,
)
from services.bootstrap import Parts
from services.console import console_router

API_VERSION: Final = "1"
MAX_BODY_BYTES: Final = 64 * 1024
MAX_LOG_PAGE_RECORDS: Final = 1_000
DEFAULT_LOG_PAGE_RECORDS: Final = 100
PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
PROBLEM_BASE: Final = "https://credits-ledger/problems/"

log = structlog.get_logger()

PROBLEMS: Final[dict[str, tuple[int, str]]] = {
    "invalid-parameter": (400, "A query or path parameter is invalid"),
    "invalid-body": (400, "The request body is invalid"),
    "bad-request": (400, "Bad request"),
    "unauthorized": (401, "Missing or invalid bearer token"),
    "forbidden": (403, "The token's role may not do this"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "body-too-large": (413, "The request body is too large"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "internal": (500, "Internal error"),
    "not-ready": (503, "Not ready"),
}
"""Every problem type the API answers with: slug -> (HTTP status, title). Stable."""

_SLUG_BY_STATUS: Final = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
    415: "unsupported-media-type",
    503: "not-ready",
}

SEAT_READERS: Final[frozenset[Role]] = frozenset({"admin", "auditor", "viewer", "gateway"})
SUBSCRIPTION_READERS: Final[frozenset[Role]] = frozenset({"admin", "auditor", "viewer"})
AUDITORS: Final[frozenset[Role]] = frozenset({"admin", "auditor"})
ADMINS: Final[frozenset[Role]] = frozenset({"admin"})


# -- problems -------------------------------------------------------------------------------


class Problem(Exception):
    """An error answered as an RFC 9457 problem of type `slug` (a key of `PROBLEMS`)."""

    def __init__(self, slug: str, detail: str, **extra: Any) -> None:
        assert slug in PROBLEMS, slug
        super().__init__(detail)
        self.slug = slug
        self.detail = detail
        self.extra = extra


def problem_response(
    slug: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response[dict[str, Any]]:
    status, title = PROBLEMS[slug]
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _on_problem(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, Problem)
    headers = {"WWW-Authenticate": "Bearer"} if exc.slug == "unauthorized" else None
    return problem_response(exc.slug, exc.detail, headers, **exc.extra)


def _on_validation(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, ValidationException)
    errors = [
        {"source": e.get("source"), "parameter": e.get("key"), "message": e.get("message")}
        for e in (exc.extra if isinstance(exc.extra, list) else [])
        if isinstance(e, dict)
    ]
    in_body = any(e["source"] == "body" for e in errors)
    named = [f"{e['parameter']}: {e['message']}" for e in errors if e["parameter"]]
    detail = "; ".join(named) if named else str(exc.detail)
    return problem_response(
        "invalid-body" if in_body else "invalid-parameter", detail, errors=errors
    )


def _on_http(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, HTTPException)
    slug = _SLUG_BY_STATUS.get(
        exc.status_code, "internal" if exc.status_code >= 500 else "bad-request"
    )
    return problem_response(slug, str(exc.detail))


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.error("api.unexpected_error", path=request.url.path, exc_info=exc)
    return problem_response("internal", "the server could not answer this request")


# -- response views -------------------------------------------------------------------------


class SeatView(msgspec.Struct, frozen=True):
    subscription_id: str
    seat_id: str
    tier: Tier
    pending_tier: Tier | None
    status: SeatStatus
    quota: str
    used: str
    remaining: str
    pack_used: str
    uncovered: str
    cycle_start: datetime | None
    cycle_end: datetime | None


class PackView(msgspec.Struct, frozen=True):
    pack_id: str
    credits: str
    remaining: str
    expired: str
    purchased_at: datetime
    expires_at: datetime
    expires_in_seconds: int
    status: PackStatus


class PackList(msgspec.Struct, frozen=True):
    items: list[PackView]


class OverviewView(msgspec.Struct, frozen=True):
    subscription_id: str
    cycle: int
    cycle_start: datetime | None
    cycle_end: datetime | None
    quota_total: str
    quota_used: str
    utilization_percent: str
    seats: list[SeatView]
    packs_remaining: str
    uncovered: str
    uncovered_total: str


class NextExpiration(msgspec.Struct, frozen=True):
    pack_id: str
    expires_at: datetime
    expires_in_seconds: int


class BillingView(msgspec.Struct, frozen=True):
    subscription_id: str
    total_credits: str
    """Seat quotas of this cycle (seats not removed) plus the credits of packs not expired."""
    remaining: str
    """What is left of them: seat quota remaining plus pack remaining."""
    next_expiration: NextExpiration | None


class UsageCounts(msgspec.Struct, frozen=True):
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    tool_calls: int
    images: int
    thinking: bool


class ComponentsView(msgspec.Struct, frozen=True):
    input: str
    cached: str
    output: str
    thinking: str
    tools: str
    images: str


class CoefficientsView(msgspec.Struct, frozen=True):
    """Credits per 1K tokens, per tool call and per image."""

    input_per_1k: str
    cached_per_1k: str
    output_per_1k: str
    thinking_per_1k: str
    tool_call: str
    image: str


class AllocationView(msgspec.Struct, frozen=True):
    source: str
    id: str
    credits: str


class UsageRowView(msgspec.Struct, frozen=True):
    position: int
    event_id: str
    recorded_at: datetime
    occurred_at: datetime
    seat_id: str
    model: str
    product: str
    usage: UsageCounts
    components: ComponentsView
    coefficients: CoefficientsView
    rate_card_version: str
    credits: str
    allocation: list[AllocationView]
    request_id: str | None
    api_key_id: str | None
    gateway: str | None


class UsagePageView(msgspec.Struct, frozen=True):
    items: list[UsageRowView]
    next_cursor: str | None


class AuthorizationView(msgspec.Struct, frozen=True):
    allowed: bool
    available: str
    reason: str
    """ok / suspended / removed / unknown / exhausted."""


class LogRecordView(msgspec.Struct, frozen=True):
    position: int
    recorded_at: datetime
    hash: str
    prev_hash: str
    event: dict[str, Any]


class LogPage(msgspec.Struct, frozen=True):
    items: list[LogRecordView]
    next_after: int | None
    """Pass as `after` for the next page; null when this page reached the end."""


class DigestView(msgspec.Struct, frozen=True):
    position: int
    hash: str


class HealthView(msgspec.Struct, frozen=True):
    status: str


class ReadyView(msgspec.Struct, frozen=True):
    status: str
    position: int
    head: int


class TokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: Role
    subscription_ids: (
        Annotated[
            list[Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]],
            msgspec.Meta(max_length=MAX_SCOPE_SUBSCRIPTIONS),
        ]
        | None
    ) = None


class TokenCreated(msgspec.Struct, frozen=True):
    token_id: str
    token: str
    """Shown once: only its hash is kept."""
    role: Role
    subscription_ids: list[str] | None


class TokenSelfView(msgspec.Struct, frozen=True):
    """Who the bearer is (for the console: which actions to offer, which subscription to open)."""

    token_id: str
    role: Role
    subscription_ids: list[str] | None
    """None: every subscription."""
    now: datetime
    """The ledger clock's now, which a manual clock may hold far from the wall clock."""


def seat_view(seat: SeatBalance, balances: Balances) -> SeatView:
    sub = balances.subscriptions[seat.subscription_id]
    return SeatView(
        subscription_id=seat.subscription_id,
        seat_id=seat.seat_id,
        tier=seat.tier,
        pending_tier=seat.pending_tier,
        status=seat.status,
        quota=format_credits(seat.quota_ucr),
        used=format_credits(seat.used_ucr),
        remaining=format_credits(seat.remaining_ucr),
        pack_used=format_credits(seat.pack_used_ucr),
        uncovered=format_credits(seat.uncovered_ucr),
        cycle_start=sub.cycle_start,
        cycle_end=sub.cycle_end,
    )


def seconds_until(instant: datetime, now: datetime) -> int:
    """Whole seconds from `now` to `instant`, 0 once it has passed."""
    return max(0, int((instant - now).total_seconds()))


def pack_view(pack: PackBalance, now: datetime) -> PackView:
    return PackView(
        pack_id=pack.pack_id,
        credits=format_credits(pack.credits_ucr),
        remaining=format_credits(pack.remaining_ucr),
        expired=format_credits(pack.expired_ucr),
        purchased_at=pack.purchased_at,
        expires_at=pack.expires_at,
        expires_in_seconds=seconds_until(pack.expires_at, now),
        status=pack.status,
    )


def percent(basis_points: int) -> str:
    return f"{basis_points // 100}.{basis_points % 100:02d}"


def usage_row_view(row: UsageRow) -> UsageRowView:
    c, k, u = row.components, row.coefficients, row.usage
    return UsageRowView(
        position=row.position,
        event_id=row.event_id,
        recorded_at=row.recorded_at,
        occurred_at=row.occurred_at,
        seat_id=row.seat_id,
        model=row.model,
        product=row.product,
        usage=UsageCounts(
            u.input_tokens, u.cached_tokens, u.output_tokens, u.tool_calls, u.images, u.thinking
        ),
        components=ComponentsView(
            input=format_credits(c.input_ucr),
            cached=format_credits(c.cached_ucr),
            output=format_credits(c.output_ucr),
            thinking=format_credits(c.thinking_ucr),
            tools=format_credits(c.tools_ucr),
            images=format_credits(c.images_ucr),
        ),
        coefficients=CoefficientsView(
            input_per_1k=format_credits(k.input_ucr_per_1k),
            cached_per_1k=format_credits(k.cached_ucr_per_1k),
            output_per_1k=format_credits(k.output_ucr_per_1k),
            thinking_per_1k=format_credits(k.thinking_ucr_per_1k),
            tool_call=format_credits(k.tool_call_ucr),
            image=format_credits(k.image_ucr),
        ),
        rate_card_version=row.rate_card_version,
        credits=format_credits(row.credits_ucr),
        allocation=[
            AllocationView(a.source, a.id, format_credits(a.credits_ucr)) for a in row.allocation
        ],
        request_id=row.request_id,
        api_key_id=row.api_key_id,
        gateway=row.gateway,
    )


def authorization(
    balances: Balances, sub_id: str, seat_id: str, now: datetime
) -> AuthorizationView:
    """May this seat spend now? Its quota left plus the subscription's live packs."""
    seat = balances.seats.get((sub_id, seat_id))
    if seat is None:
        return AuthorizationView(False, format_credits(0), "unknown")
    if seat.status == "removed":
        return AuthorizationView(False, format_credits(0), "removed")
    packs = sum(
        pack.remaining_ucr
        for pack in (balances.packs[(sub_id, p)] for p in balances.pack_ids.get(sub_id, ()))
        if pack.status == "active" and pack.expires_at > now
    )
    available = format_credits(max(0, seat.remaining_ucr) + packs)
    if seat.status == "suspended":
        return AuthorizationView(False, available, "suspended")
    if seat.remaining_ucr <= 0 and packs <= 0:
        return AuthorizationView(False, available, "exhausted")
    return AuthorizationView(True, available, "ok")


# -- the app --------------------------------------------------------------------------------

AsOf = Annotated[
    str | None,
    QueryParameter(
        description="RFC 3339 instant or position:N: answer from the log as of that point",
        max_length=MAX_AS_OF_CHARS,
    ),
]
PathId = Annotated[str, PathParameter(max_length=MAX_ID_CHARS)]


class _UsageReader:
    """The API's own read-only connection to the read model file (the runner writes it)."""

    def __init__(self, path: Path, events: EventStore) -> None:
        self._uri = path.resolve().as_uri() + "?mode=ro"
        self._events = events
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None

    def page(self, query: UsageQuery) -> UsagePage:
        with self._lock:
            if self._connection is None:
                self._connection = sqlite3.connect(
                    self._uri, uri=True, isolation_level=None, check_same_thread=False
                )
            return usage_page(self._connection, self._events, query)

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


def _parse_instant(text: str | None, parameter: str) -> datetime | None:
    if text is None:
        return None
    try:
        return msgspec.convert(text, UtcInstant)
    except msgspec.ValidationError:
        raise Problem(
            "invalid-parameter",
            f"{parameter}: {text!r} is not an RFC 3339 instant with an offset",
            parameter=parameter,
        ) from None


def create_app(
    *,
    events: EventStore,
    read_model_path: Path,
    runner: ProjectionRunner,
    tokens: TokenStore,
    clock: Clock,
    max_body_bytes: int = MAX_BODY_BYTES,
    debug: bool = False,
) -> Litestar:
    """The API over these parts. Handlers run on the event loop's thread, one at a time."""
    usage_reader = _UsageReader(read_model_path, events)

    def access(
        request: Request[Any, Any, Any], roles: frozenset[Role], sub: str | None = None
    ) -> Principal:
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        principal = tokens.authenticate(bearer.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            raise Problem("unauthorized", "send Authorization: Bearer <token> with a live token")
        if principal.role not in roles:
            raise Problem("forbidden", f"a {principal.role} token may not read this")
        if sub is not None and not principal.sees(sub):
            raise _no_subscription(sub)
        return principal

    def position_of(as_of: str) -> int:
        try:
            return resolve_as_of(events, as_of)
        except InvalidAsOf as error:
            raise Problem("invalid-parameter", f"as_of: {error}", parameter="as_of") from None

    def at(as_of: str | None) -> tuple[Balances, datetime]:
        """The balances and the instant a read answers as of."""
        if as_of is None:
            return runner.balances, datetime_from_us(clock.now_us())
        position = position_of(as_of)
        instant = _parse_instant(as_of, "as_of") if not as_of.startswith(POSITION_PREFIX) else None
        if instant is None:
            records = list(events.read(after=position - 1, until=position)) if position else []
            instant = records[0].recorded_at if records else EPOCH
        return balances_as_of(events, position), instant

    def subscription(sub: str, as_of: str | None) -> tuple[Balances, datetime]:
        balances, now = at(as_of)
        if sub not in balances.subscriptions:
            raise _no_subscription(sub)
        return balances, now

    @get("/v1/subscriptions/{sub:str}/overview", summary="A subscription at a glance")
    async def get_overview(
        request: Request[Any, Any, Any], sub: PathId, as_of: AsOf = None
    ) -> OverviewView:
        access(request, SUBSCRIPTION_READERS, sub)
        balances, _ = subscription(sub, as_of)
        view = overview(balances, sub)
        assert view is not None
        return OverviewView(
            subscription_id=sub,
            cycle=view.cycle,
            cycle_start=view.cycle_start,
            cycle_end=view.cycle_end,
            quota_total=format_credits(view.quota_total_ucr),
            quota_used=format_credits(view.quota_used_ucr),
            utilization_percent=percent(view.utilization_basis_points),
            seats=[seat_view(seat, balances) for seat in view.seats],
            packs_remaining=format_credits(view.packs_remaining_ucr),
            uncovered=format_credits(view.uncovered_ucr),
            uncovered_total=format_credits(view.uncovered_total_ucr),
        )

    @get("/v1/subscriptions/{sub:str}/seats/{seat:str}", summary="One seat's balance and status")
    async def get_seat(
        request: Request[Any, Any, Any], sub: PathId, seat: PathId, as_of: AsOf = None
    ) -> SeatView:
        access(request, SEAT_READERS, sub)
        balances, _ = subscription(sub, as_of)
        row = balances.seats.get((sub, seat))
        if row is None:
            raise Problem("not-found", f"no seat {seat!r} in subscription {sub!r}")
        return seat_view(seat_balance(row), balances)

    @get("/v1/subscriptions/{sub:str}/packs", summary="Every pack of the subscription")
    async def get_packs(
        request: Request[Any, Any, Any], sub: PathId, as_of: AsOf = None
    ) -> PackList:
        access(request, SUBSCRIPTION_READERS, sub)
        balances, now = subscription(sub, as_of)
        return PackList([pack_view(pack, now) for pack in pack_balances(balances, sub)])

    @get("/v1/subscriptions/{sub:str}/billing", summary="Credits, balance, next expiration")
    async def get_billing(
        request: Request[Any, Any, Any], sub: PathId, as_of: AsOf = None
    ) -> BillingView:
        access(request, SUBSCRIPTION_READERS, sub)
        balances, now = subscription(sub, as_of)
        view = overview(balances, sub)
        assert view is not None
        live_packs = [p for p in view.packs if p.status != "expired"]
        upcoming = [p for p in live_packs if p.status == "active" and p.expires_at > now]
        seats_remaining = sum(s.remaining_ucr for s in view.seats if s.status != "removed")
        return BillingView(
            subscription_id=sub,
            total_credits=format_credits(
                view.quota_total_ucr + sum(p.credits_ucr for p in live_packs)
            ),
            remaining=format_credits(seats_remaining + view.packs_remaining_ucr),
            next_expiration=(
                NextExpiration(
                    upcoming[0].pack_id,
                    upcoming[0].expires_at,
                    seconds_until(upcoming[0].expires_at, now),
                )
                if upcoming
                else None
            ),
        )

    @get("/v1/subscriptions/{sub:str}/usage", summary="Usage details by time, oldest first")
    async def get_usage(
        request: Request[Any, Any, Any],
        sub: PathId,
        from_: Annotated[
            str | None, QueryParameter(name="from", max_length=MAX_AS_OF_CHARS)
        ] = None,
        to: Annotated[str | None, QueryParameter(max_length=MAX_AS_OF_CHARS)] = None,
        seat: Annotated[str | None, QueryParameter(max_length=MAX_ID_CHARS)] = None,
        model: Annotated[str | None, QueryParameter(max_length=MAX_MODEL_CHARS)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_ROWS)] = DEFAULT_PAGE_ROWS,
        cursor: Annotated[str | None, QueryParameter(max_length=MAX_CURSOR_CHARS)] = None,
        as_of: AsOf = None,
    ) -> UsagePageView:
        access(request, SUBSCRIPTION_READERS, sub)
        # Existence as of the head: a usage page never replays the balances.
        if sub not in runner.balances.subscriptions:
            raise _no_subscription(sub)
        query = UsageQuery(
            subscription_id=sub,
            seat_id=seat,
            model=model,
            recorded_from=_parse_instant(from_, "from"),
            recorded_to=_parse_instant(to, "to"),
            as_of_position=None if as_of is None else position_of(as_of),
            limit=limit,
            cursor=cursor,
        )
        try:
            page = usage_reader.page(query)
        except InvalidUsageQuery as error:
            raise Problem("invalid-parameter", f"cursor: {error}", parameter="cursor") from None
        return UsagePageView([usage_row_view(row) for row in page.items], page.next_cursor)

    @get(
        "/v1/subscriptions/{sub:str}/seats/{seat:str}/authorization",
        summary="Gateway pre-check: may this seat spend now?",
    )
    async def get_authorization(
        request: Request[Any, Any, Any], sub: PathId, seat: PathId, as_of: AsOf = None
    ) -> AuthorizationView:
        access(request, SEAT_READERS, sub)
        balances, now = subscription(sub, as_of)
        return authorization(balances, sub, seat, now)

    @get("/v1/log", summary="The raw hash-chained log, for auditors")
    async def get_log(
        request: Request[Any, Any, Any],
        after: Annotated[int, QueryParameter(ge=0)] = 0,
        limit: Annotated[
            int, QueryParameter(ge=1, le=MAX_LOG_PAGE_RECORDS)
        ] = DEFAULT_LOG_PAGE_RECORDS,
        as_of: AsOf = None,
    ) -> LogPage:
        access(request, AUDITORS)
        end = events.head().position if as_of is None else position_of(as_of)
        until = min(after + limit, end)
        items = [
            LogRecordView(
                position=record.position,
                recorded_at=record.recorded_at,
                hash=record.hash.hex(),
                prev_hash=record.prev_hash.hex(),
                event=msgspec.json.decode(record.data),
            )
            for record in (events.read(after=after, until=until) if until > after else ())
        ]
        return LogPage(items, until if until < end else None)

    @get("/v1/audit/digest", summary="The log's head position and hash")
    async def get_digest(request: Request[Any, Any, Any], as_of: AsOf = None) -> DigestView:
        access(request, AUDITORS)
        if as_of is None:
            head = events.head()
            return DigestView(head.position, head.hash.hex())
        position = position_of(as_of)
        records = list(events.read(after=position - 1, until=position)) if position else []
        return DigestView(position, (records[0].hash if records else GENESIS_HASH).hex())

    @post("/v1/tokens", status_code=HTTP_201_CREATED, summary="Create a token (shown once)")
    async def post_token(
        request: Request[Any, Any, Any], data: JSONBody[TokenRequest]
    ) -> TokenCreated:
        access(request, ADMINS)
        try:
            token_id, token = tokens.create(data.role, data.subscription_ids)
        except InvalidTokenRequest as error:
            raise Problem("invalid-body", str(error)) from None
        scope = None if data.subscription_ids is None else sorted(set(data.subscription_ids))
        return TokenCreated(token_id, token, data.role, scope)

    @delete("/v1/tokens/{token_id:str}", status_code=HTTP_204_NO_CONTENT, summary="Revoke a token")
    async def delete_token(request: Request[Any, Any, Any], token_id: PathId) -> None:
        access(request, ADMINS)
        if not tokens.revoke(token_id):
            raise Problem("not-found", f"no live token {token_id!r}")

    @get("/v1/tokens/self", summary="The bearer token's own role and scope, and the ledger's now")
    async def get_token_self(request: Request[Any, Any, Any]) -> TokenSelfView:
        me = access(request, frozenset(ROLES))
        scope = None if me.subscription_ids is None else sorted(me.subscription_ids)
        return TokenSelfView(me.token_id, me.role, scope, datetime_from_us(clock.now_us()))

    @get("/healthz", summary="Liveness")
    async def healthz() -> HealthView:
        return HealthView("ok")

    @get("/readyz", summary="Readiness: the log and the read models answer")
    async def readyz() -> ReadyView:
        try:
            head = events.head().position
        except Exception as error:
            raise Problem("not-ready", f"the log does not answer: {error}") from None
        return ReadyView("ready", runner.position, head)

    exception_handlers: dict[type[Exception], Callable[..., Response[Any]]] = {
        Problem: _on_problem,
        ValidationException: _on_validation,
        HTTPException: _on_http,
        Exception: _on_unexpected,
    }
    return Litestar(
        route_handlers=[
            get_overview,
            get_seat,
            get_packs,
            get_billing,
            get_usage,
            get_authorization,
            get_log,
            get_digest,
            post_token,
            delete_token,
            healthz,
            readyz,
            get_token_self,
            console_router(),
        ],
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
        request_max_body_size=max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Credits ledger",
            version=API_VERSION,
            security=[{"bearer": []}],
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
            ),
        ),
        on_shutdown=[usage_reader.close],
        debug=debug,
    )


def app_from_parts(parts: Parts, runner: ProjectionRunner, tokens: TokenStore) -> Litestar:
    """The API over a process's parts (its runner keeps `parts.read_store` caught up)."""
    return create_app(
        events=parts.store,
        read_model_path=Path(parts.read_store.path),
        runner=runner,
        tokens=tokens,
        clock=parts.clock,
    )


def _no_subscription(sub: str) -> Problem:
    """The one answer for an unknown subscription and for one outside the token's scope."""
    return Problem("not-found", f"no subscription {sub!r}")
