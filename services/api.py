"""The HTTP API (SPEC §3 "HTTP API" and "Access"): balances, usage, the log, tokens, the admin
writes, the manual clock and `/metrics`.

Reads answer from the projection runner's in-memory balances, or, with `as_of`, from the
balances replayed to that point of the log. Usage pages come from the read model's index over
a read-only connection of the API's own. Writes go through a `Writer` (services/writer.py) to
the single writer of the log, which returns once the runner has folded them, so a write
answers with the state that includes it. Every error is an RFC 9457 problem whose `type` is
one of `PROBLEMS`; a subscription outside a token's scope answers exactly as an unknown one.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, Final
from urllib.parse import quote

import msgspec
import structlog
from litestar import Litestar, Request, Response, Router, delete, get, patch, post
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import HeaderParameter, JSONBody, PathParameter, QueryParameter
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_201_CREATED,
    HTTP_204_NO_CONTENT,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from ledger.application import Outcome
from ledger.clock import Clock, ManualClock, SharedManualClock
from ledger.errors import (
    DuplicateConflict,
    InvalidCommand,
    SeatExists,
    SeatIsRemoved,
    StoreError,
    SubscriptionExists,
    Undecidable,
    UnknownModel,
    UnknownSeat,
    UnknownSubscription,
)
from ledger.log import EPOCH, GENESIS_HASH, EventStore, datetime_from_us, us_from_datetime
from ledger.money import format_credits
from projections.balances import (
    Balances,
    overview,
    pack_balance,
    pack_balances,
    seat_balance,
)
from projections.live import BalanceSource
from projections.read_store import ReadModelReader
from projections.replay import (
    MAX_AS_OF_CHARS,
    POSITION_PREFIX,
    InvalidAsOf,
    balances_as_of,
    resolve_as_of,
)
from projections.usage import (
    DEFAULT_PAGE_ROWS,
    MAX_CURSOR_CHARS,
    MAX_PAGE_ROWS,
    InvalidUsageQuery,
    UsageQuery,
)
from schemas.commands import (
    AddSeat,
    AdvanceClock,
    BuyPack,
    ChangeTier,
    Command,
    OpenSubscription,
    RemoveSeat,
    Tier,
)
from schemas.events import CycleStarted, PackExpired, PackPurchased
from schemas.instants import bounded_utc
from schemas.limits import MAX_ID_CHARS, MAX_MODEL_CHARS
from schemas.read_models import (
    PackBalance,
    PackStatus,
    SeatBalance,
    SeatStatus,
    UsagePage,
    UsageRow,
)
from schemas.usage import PathId as BodyId
from schemas.usage import UtcInstant
from services.auth.tokens import (
    BOOTSTRAP_ADMIN_ID,
    MAX_SCOPE_SUBSCRIPTIONS,
    ROLES,
    InvalidTokenRequest,
    Principal,
    Role,
    TokenStore,
)
from services.bootstrap import Parts
from services.console import console_router
from services.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from services.metrics import METRICS, WRITER_METRIC_NAMES, LedgerMetrics
from services.write_channel import WriteChannelError
from services.writer import Writer

API_VERSION: Final = "1"
USAGE_FRESHNESS_WAIT_S: Final = 2.0
"""Longest a usage page waits for the projector to fold what the live balances already show."""
USAGE_FRESHNESS_POLL_S: Final = 0.005
MAX_BODY_BYTES: Final = 64 * 1024
MAX_LOG_PAGE_RECORDS: Final = 1_000
DEFAULT_LOG_PAGE_RECORDS: Final = 100
PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
PROBLEM_BASE: Final = "https://credits-ledger/problems/"
MAX_IDEMPOTENCY_KEY_CHARS: Final = 255
PACK_ID_PREFIX: Final = "pack-"
PACK_ID_HEX_CHARS: Final = 32
"""128 bits: a generated pack id is `pack-` and 32 hex digits (37 of MAX_ID_CHARS)."""

log = structlog.get_logger()

PROBLEMS: Final[dict[str, tuple[int, str]]] = {
    "invalid-parameter": (400, "A query or path parameter is invalid"),
    "invalid-body": (400, "The request body is invalid"),
    "bad-request": (400, "Bad request"),
    "unauthorized": (401, "Missing or invalid bearer token"),
    "forbidden": (403, "The token's role may not do this"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "subscription-exists": (409, "A subscription with this id exists with another anchor"),
    "seat-exists": (409, "The seat id is taken"),
    "seat-removed": (409, "The seat was removed"),
    "invalid-command": (409, "The ledger refuses this command in its current state"),
    "unknown-model": (400, "The model is not on the rate card in force"),
    "duplicate-conflict": (409, "The same id was used before with another payload"),
    "clock-not-manual": (409, "The ledger clock is the system clock"),
    "clock-backwards": (409, "The ledger clock only moves forward"),
    "token-not-revocable": (409, "The bootstrap admin token is set by configuration"),
    "body-too-large": (413, "The request body is too large"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "internal": (500, "Internal error"),
    "not-ready": (503, "Not ready"),
    "store-unavailable": (503, "The ledger's store or writer cannot answer now; retry"),
}
"""Every problem type the API answers with: slug -> (HTTP status, title). Stable."""

REJECTION_PROBLEMS: Final[dict[str, str]] = {
    UnknownSubscription.reason: "not-found",
    UnknownSeat.reason: "not-found",
    SubscriptionExists.reason: "subscription-exists",
    SeatExists.reason: "seat-exists",
    SeatIsRemoved.reason: "seat-removed",
    InvalidCommand.reason: "invalid-command",
    Undecidable.reason: "invalid-command",
    UnknownModel.reason: "unknown-model",
    DuplicateConflict.reason: "duplicate-conflict",
}
"""Every `Rejected.reason` of the core -> the problem type a refused write answers with."""

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

EVERY_ROLE: Final[frozenset[Role]] = frozenset(ROLES)
SEAT_READERS: Final[frozenset[Role]] = EVERY_ROLE
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
    for error in errors:
        # msgspec names a missing or unknown field in its message, not in the key.
        field = _FIELD_IN_MESSAGE.search(str(error["message"] or ""))
        if error["source"] == "body" and error["parameter"] == "data" and field:
            error["parameter"] = field.group(1)
        if error["parameter"] in _WIRE_NAMES:
            error["parameter"] = _WIRE_NAMES[error["parameter"]]
    in_body = any(e["source"] == "body" for e in errors)
    named = [f"{e['parameter']}: {e['message']}" for e in errors if e["parameter"]]
    detail = "; ".join(named) if named else str(exc.detail)
    return problem_response(
        "invalid-body" if in_body else "invalid-parameter", detail, errors=errors
    )


_FIELD_IN_MESSAGE: Final = re.compile(r"field `([^`]+)`")
_WIRE_NAMES: Final = {"idempotency_key": "Idempotency-Key"}
"""Handler arguments whose name on the wire differs, for problem details."""


def _on_http(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, HTTPException)
    slug = _SLUG_BY_STATUS.get(
        exc.status_code, "internal" if exc.status_code >= 500 else "bad-request"
    )
    # Keep what the framework says must go with the status (`Allow` on a 405, RFC 9110).
    return problem_response(slug, str(exc.detail), dict(exc.headers or {}) or None)


def _on_store_unavailable(
    request: Request[Any, Any, Any], exc: Exception
) -> Response[dict[str, Any]]:
    """A store (the log, the tokens) or the writer could not answer now (busy, reconnecting,
    the writer process restarting): 503 with Retry-After. Writes are idempotent, so retrying
    one is safe."""
    log.warning("api.store_unavailable", path=request.url.path, error=str(exc))
    return problem_response(
        "store-unavailable", f"{type(exc).__name__}: {exc}", {"Retry-After": "1"}
    )


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


class ClockView(msgspec.Struct, frozen=True):
    now: datetime
    manual: bool
    """True when `POST /v1/clock` may move it (LEDGER_CLOCK=manual)."""


class CycleStartedView(msgspec.Struct, frozen=True):
    subscription_id: str
    cycle: int
    cycle_start: datetime
    cycle_end: datetime


class PackExpiredView(msgspec.Struct, frozen=True):
    subscription_id: str
    pack_id: str
    expires_at: datetime
    expired: str
    """The credits the pack still had when it expired."""


class ClockAdvanced(msgspec.Struct, frozen=True):
    now: datetime
    cycles_started: list[CycleStartedView]
    packs_expired: list[PackExpiredView]
    """What fell due by this move: appended by it, or by the ticker of `ledger serve` in
    between (cycle starts and expiries appended after the request came in)."""


# -- request bodies: the fields of schemas/commands.py, with the subscription from the path ---


class OpenSubscriptionBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    subscription_id: BodyId
    anchor: UtcInstant | None = None
    """The billing anchor; the ledger clock's now when absent."""

    def __post_init__(self) -> None:
        if self.anchor is not None:
            bounded_utc(self.anchor, "anchor")


class AddSeatBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    seat_id: BodyId
    tier: Tier


class ChangeTierBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tier: Tier


class BuyPackBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pack_id: BodyId | None = None
    """Generated when absent: derived from the Idempotency-Key header when one is sent."""


class ClockBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    now: UtcInstant

    def __post_init__(self) -> None:
        bounded_utc(self.now, "now")


def pack_id_for(subscription_id: str, idempotency_key: str | None) -> str:
    """The id of a pack bought without one: the same for every retry with the same key (so
    the decider's "a pack id bought already buys nothing" makes the retry a no-op), random
    without a key."""
    if idempotency_key is None:
        return PACK_ID_PREFIX + secrets.token_hex(PACK_ID_HEX_CHARS // 2)
    material = f"{subscription_id}\x00{idempotency_key}".encode()
    return PACK_ID_PREFIX + hashlib.sha256(material).hexdigest()[:PACK_ID_HEX_CHARS]


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


def overview_view(balances: Balances, sub: str) -> OverviewView:
    view = overview(balances, sub)
    assert view is not None, f"subscription {sub!r} is in the balances"
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
    """The API's own read-only reader of the read model tables (the projector writes them)."""

    def __init__(self, reader: ReadModelReader) -> None:
        self._reader = reader

    def page(self, query: UsageQuery) -> UsagePage:
        return self._reader.page(query)

    def checkpoint(self) -> int:
        """The log position the read model tables hold (0 before the first batch)."""
        return self._reader.checkpoint()

    async def caught_up(self, position: int) -> bool:
        """Wait (at most `USAGE_FRESHNESS_WAIT_S`) until the tables hold `position`, so a usage
        page shows a charge the balances already show; False when they still lag."""
        deadline = time.monotonic() + USAGE_FRESHNESS_WAIT_S
        while self.checkpoint() < position:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(USAGE_FRESHNESS_POLL_S)
        return True

    def close(self) -> None:
        self._reader.close()


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
    read_models: ReadModelReader,
    runner: BalanceSource,
    tokens: TokenStore,
    clock: Clock,
    writer: Writer,
    metrics: LedgerMetrics = METRICS,
    writer_metrics: Callable[[], Awaitable[str]] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    debug: bool = False,
) -> Litestar:
    """The API over these parts. Handlers run on the event loop's thread, one at a time.

    `runner` must be the balances that `writer` catches up after each write (in `ledger
    serve`, the API process's live balances); `clock` the ledger's clock (a manual one may be
    moved by `POST /v1/clock`); `metrics` what `GET /metrics` renders and request latency goes
    to. With `writer_metrics` (the writer in another process), `GET /metrics` shows this
    process's own metrics and, for the writer's (`WRITER_METRIC_NAMES`), what that returns.
    `read_models` answers usage pages; the app closes it on shutdown.
    """
    usage_reader = _UsageReader(read_models)

    async def authenticated(
        connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
    ) -> None:
        """The guard of every /v1 path. It runs before the body is read, so a caller without
        a live token learns nothing, not even what a body should look like. Async, so it runs
        on the event loop (one indexed look-up) instead of hopping to a worker thread."""
        scheme, _, bearer = connection.headers.get("authorization", "").partition(" ")
        principal = tokens.authenticate(bearer.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            raise Problem("unauthorized", "send Authorization: Bearer <token> with a live token")
        connection.state.principal = principal

    def access(
        request: Request[Any, Any, Any], roles: frozenset[Role], sub: str | None = None
    ) -> Principal:
        principal = request.state.principal
        assert isinstance(principal, Principal), "the /v1 guard authenticated the request"
        # Scope before role: outside its scope a token learns nothing, not even what it may do.
        if sub is not None and not principal.sees(sub):
            raise _no_subscription(sub)
        if principal.role not in roles:
            raise Problem("forbidden", f"a {principal.role} token may not do this")
        return principal

    def position_of(as_of: str) -> int:
        try:
            return resolve_as_of(events, as_of)
        except InvalidAsOf as error:
            raise Problem("invalid-parameter", f"as_of: {error}", parameter="as_of") from None

    def now() -> datetime:
        return datetime_from_us(clock.now_us())

    @contextmanager
    def at(as_of: str | None) -> Iterator[tuple[Balances, datetime]]:
        """The balances and the instant a read answers as of; the live balances are held
        still (no fold on the writer thread) until the `with` block ends."""
        if as_of is None:
            with runner.reading() as balances:
                yield balances, now()
            return
        position = position_of(as_of)
        instant = _parse_instant(as_of, "as_of") if not as_of.startswith(POSITION_PREFIX) else None
        if instant is None:
            records = list(events.read(after=position - 1, until=position)) if position else []
            instant = records[0].recorded_at if records else EPOCH
        yield balances_as_of(events, position), instant

    @contextmanager
    def subscription(sub: str, as_of: str | None) -> Iterator[tuple[Balances, datetime]]:
        with at(as_of) as (balances, now):
            if sub not in balances.subscriptions:
                raise _no_subscription(sub)
            yield balances, now

    @get("/v1/subscriptions/{sub:str}/overview", summary="A subscription at a glance")
    async def get_overview(
        request: Request[Any, Any, Any], sub: PathId, as_of: AsOf = None
    ) -> OverviewView:
        access(request, SUBSCRIPTION_READERS, sub)
        with subscription(sub, as_of) as (balances, _):
            return overview_view(balances, sub)

    @get("/v1/subscriptions/{sub:str}/seats/{seat:str}", summary="One seat's balance and status")
    async def get_seat(
        request: Request[Any, Any, Any], sub: PathId, seat: PathId, as_of: AsOf = None
    ) -> SeatView:
        access(request, SEAT_READERS, sub)
        with subscription(sub, as_of) as (balances, _):
            row = balances.seats.get((sub, seat))
            if row is None:
                raise Problem("not-found", f"no seat {seat!r} in subscription {sub!r}")
            return seat_view(seat_balance(row), balances)

    @get("/v1/subscriptions/{sub:str}/packs", summary="Every pack of the subscription")
    async def get_packs(
        request: Request[Any, Any, Any], sub: PathId, as_of: AsOf = None
    ) -> PackList:
        access(request, SUBSCRIPTION_READERS, sub)
        with subscription(sub, as_of) as (balances, now):
            return PackList([pack_view(pack, now) for pack in pack_balances(balances, sub)])

    @get("/v1/subscriptions/{sub:str}/billing", summary="Credits, balance, next expiration")
    async def get_billing(
        request: Request[Any, Any, Any], sub: PathId, as_of: AsOf = None
    ) -> BillingView:
        access(request, SUBSCRIPTION_READERS, sub)
        with subscription(sub, as_of) as (balances, now):
            view = overview(balances, sub)  # a snapshot: built while the balances hold still
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
        with runner.reading() as balances:
            if sub not in balances.subscriptions:
                raise _no_subscription(sub)
        live = runner.position
        query = UsageQuery(
            subscription_id=sub,
            seat_id=seat,
            model=model,
            recorded_from=_parse_instant(from_, "from"),
            recorded_to=_parse_instant(to, "to"),
            # Without as_of, as of the balances' position: a charge shows in a usage page
            # exactly when it shows in the balances, never before (the projector may be ahead
            # of this process's balances) nor after (the page waits for the projector).
            as_of_position=live if as_of is None else position_of(as_of),
            limit=limit,
            cursor=cursor,
        )
        await usage_reader.caught_up(live)
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
        with subscription(sub, as_of) as (balances, now):
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
        if token_id == BOOTSTRAP_ADMIN_ID:
            # Revoking it over the API would lock every admin out until a restart reinstates
            # it; it is replaced by changing LEDGER_ADMIN_TOKEN or the admin-token file.
            raise Problem(
                "token-not-revocable",
                "the bootstrap admin token is LEDGER_ADMIN_TOKEN or the admin-token file:"
                " change it there and restart",
            )
        if not tokens.revoke(token_id):
            raise Problem("not-found", f"no live token {token_id!r}")

    # -- writes: admin only, through the single writer --------------------------------------

    async def write(command: Command) -> Outcome:
        [outcome] = await writer.execute([command])
        if outcome.records:
            assert runner.position >= outcome.records[-1].position, "the writer caught up"
        return outcome

    def refused(outcome: Outcome, sub: str) -> Problem:
        assert outcome.status == "rejected" and outcome.reason is not None
        if outcome.reason == UnknownSubscription.reason:
            return _no_subscription(sub)
        detail = outcome.detail or outcome.reason
        return Problem(REJECTION_PROBLEMS[outcome.reason], detail, reason=outcome.reason)

    def seat_now(sub: str, seat_id: str) -> SeatView:
        with runner.reading() as balances:
            return seat_view(seat_balance(balances.seats[(sub, seat_id)]), balances)

    @post(
        "/v1/subscriptions",
        summary="Open a subscription (201; 200 when it exists already with this anchor)",
        responses={HTTP_200_OK: _again(OverviewView, "The subscription existed already")},
    )
    async def post_subscription(
        request: Request[Any, Any, Any], data: JSONBody[OpenSubscriptionBody]
    ) -> Response[OverviewView]:
        access(request, ADMINS)
        sub = data.subscription_id
        outcome = await write(OpenSubscription(sub, data.anchor))
        created = outcome.status != "rejected"
        with runner.reading() as balances:
            existing = balances.subscriptions.get(sub)
            view = None if existing is None else overview_view(balances, sub)
        if not created:
            if outcome.reason != SubscriptionExists.reason or existing is None:
                raise refused(outcome, sub)
            if data.anchor is not None and data.anchor != existing.anchor:
                raise Problem(
                    "subscription-exists",
                    f"subscription {sub!r} exists with anchor {existing.anchor.isoformat()}",
                    reason=outcome.reason,
                )
        assert view is not None, "an opened subscription is in the balances"
        return Response(
            view,
            status_code=HTTP_201_CREATED if created else HTTP_200_OK,
            headers={"Location": f"/v1/subscriptions/{quote(sub, safe=':@')}/overview"},
        )

    @post(
        "/v1/subscriptions/{sub:str}/seats",
        summary="Add a seat (201; 200 when it exists already with this tier)",
        responses={HTTP_200_OK: _again(SeatView, "The seat existed already with this tier")},
    )
    async def post_seat(
        request: Request[Any, Any, Any], sub: PathId, data: JSONBody[AddSeatBody]
    ) -> Response[SeatView]:
        access(request, ADMINS, sub)
        outcome = await write(AddSeat(sub, data.seat_id, data.tier))
        if outcome.status != "rejected":
            return Response(seat_now(sub, data.seat_id), status_code=HTTP_201_CREATED)
        with runner.reading() as balances:
            row = balances.seats.get((sub, data.seat_id))
            row = None if row is None else msgspec.structs.replace(row)  # a copy to keep
        if outcome.reason != SeatExists.reason or row is None:
            raise refused(outcome, sub)
        if row.status == "removed":
            raise Problem(
                "seat-removed", f"seat {data.seat_id!r} was removed", reason=SeatIsRemoved.reason
            )
        if row.tier != data.tier:
            raise Problem(
                "seat-exists",
                f"seat {data.seat_id!r} exists with tier {row.tier!r}: change it with PATCH",
                reason=outcome.reason,
            )
        return Response(seat_now(sub, data.seat_id), status_code=HTTP_200_OK)

    @patch(
        "/v1/subscriptions/{sub:str}/seats/{seat:str}",
        summary="Change a seat's tier (an upgrade now, a downgrade at the next cycle start)",
    )
    async def patch_seat(
        request: Request[Any, Any, Any], sub: PathId, seat: PathId, data: JSONBody[ChangeTierBody]
    ) -> SeatView:
        access(request, ADMINS, sub)
        outcome = await write(ChangeTier(sub, seat, data.tier))
        if outcome.status == "rejected":
            raise refused(outcome, sub)
        return seat_now(sub, seat)

    @delete(
        "/v1/subscriptions/{sub:str}/seats/{seat:str}",
        status_code=HTTP_200_OK,
        summary="Remove a seat (its history stays; removing it again changes nothing)",
    )
    async def delete_seat(request: Request[Any, Any, Any], sub: PathId, seat: PathId) -> SeatView:
        access(request, ADMINS, sub)
        outcome = await write(RemoveSeat(sub, seat))
        if outcome.status == "rejected":
            raise refused(outcome, sub)
        return seat_now(sub, seat)

    @post(
        "/v1/subscriptions/{sub:str}/packs",
        summary="Buy a shared quota pack (201; 200 when this pack id was bought already)",
        responses={HTTP_200_OK: _again(PackView, "This pack id was bought already")},
    )
    async def post_pack(
        request: Request[Any, Any, Any],
        sub: PathId,
        data: JSONBody[BuyPackBody | None] = None,
        idempotency_key: Annotated[
            str | None,
            HeaderParameter(
                name="Idempotency-Key",
                min_length=1,
                max_length=MAX_IDEMPOTENCY_KEY_CHARS,
                description="Without a pack_id, a retry with the same key buys nothing more",
            ),
        ] = None,
    ) -> Response[PackView]:
        access(request, ADMINS, sub)
        pack_id = (data.pack_id if data is not None else None) or pack_id_for(sub, idempotency_key)
        outcome = await write(BuyPack(sub, pack_id))
        if outcome.status == "rejected":
            raise refused(outcome, sub)
        bought = any(isinstance(record.event(), PackPurchased) for record in outcome.records)
        with runner.reading() as balances:
            pack = pack_balance(balances.packs[(sub, pack_id)])
        return Response(
            pack_view(pack, now()),
            status_code=HTTP_201_CREATED if bought else HTTP_200_OK,
        )

    # -- the ledger clock ------------------------------------------------------------------

    @get("/v1/clock", summary="The ledger clock's now, and whether it is manual")
    async def get_clock(request: Request[Any, Any, Any]) -> ClockView:
        access(request, EVERY_ROLE)
        return ClockView(now(), isinstance(clock, MANUAL_CLOCKS))

    @post(
        "/v1/clock",
        status_code=HTTP_200_OK,
        summary="Move a manual clock forward, then append the cycle starts and expiries due",
    )
    async def post_clock(
        request: Request[Any, Any, Any], data: JSONBody[ClockBody]
    ) -> ClockAdvanced:
        access(request, ADMINS)
        if not isinstance(clock, MANUAL_CLOCKS):
            raise Problem(
                "clock-not-manual",
                "the ledger runs on the system clock; only LEDGER_CLOCK=manual may be moved",
            )
        before = now()
        # The ticker of `ledger serve` may append what fell due before this request's own tick:
        # everything after this position is what the move made due, whoever appended it.
        position_before = events.head().position
        try:
            clock.set(us_from_datetime(data.now))
        except ValueError:
            raise Problem(
                "clock-backwards",
                f"now: {data.now.isoformat()} is before the ledger clock's {before.isoformat()}",
                parameter="now",
            ) from None
        await writer.execute([AdvanceClock()])
        appended = [
            event
            for record in events.read(after=position_before)
            if isinstance(event := record.event(), CycleStarted | PackExpired)
        ]
        return ClockAdvanced(
            now=now(),
            cycles_started=[
                CycleStartedView(e.subscription_id, e.cycle, e.cycle_start, e.cycle_end)
                for e in appended
                if isinstance(e, CycleStarted)
            ],
            packs_expired=[
                PackExpiredView(
                    e.subscription_id, e.pack_id, e.expires_at, format_credits(e.expired_ucr)
                )
                for e in appended
                if isinstance(e, PackExpired)
            ],
        )

    @get("/metrics", summary="Prometheus text exposition", media_type=METRICS_CONTENT_TYPE)
    async def get_metrics() -> str:
        metrics.projection_lag.set(max(0, events.head().position - usage_reader.checkpoint()))
        if writer_metrics is None:
            return metrics.render()
        own = metrics.registry.names() - WRITER_METRIC_NAMES
        return metrics.render(own) + await writer_metrics()

    @get("/v1/tokens/self", summary="The bearer token's own role and scope, and the ledger's now")
    async def get_token_self(request: Request[Any, Any, Any]) -> TokenSelfView:
        me = access(request, EVERY_ROLE)
        scope = None if me.subscription_ids is None else sorted(me.subscription_ids)
        return TokenSelfView(me.token_id, me.role, scope, now())

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
        StoreError: _on_store_unavailable,
        WriteChannelError: _on_store_unavailable,
        Exception: _on_unexpected,
    }
    v1_handlers: list[HTTPRouteHandler] = [
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
        post_subscription,
        post_seat,
        patch_seat,
        delete_seat,
        post_pack,
        get_clock,
        post_clock,
        get_token_self,
    ]
    for handler in v1_handlers:
        _document_problems(handler, V1_PROBLEM_STATUSES)
    _document_problems(readyz, (HTTP_503_SERVICE_UNAVAILABLE,))
    v1 = Router(
        path="/",
        guards=[authenticated],
        route_handlers=v1_handlers,
        security=[{"bearer": []}],  # health, readiness and metrics need no token (SPEC §3)
    )
    return Litestar(
        route_handlers=[v1, get_metrics, healthz, readyz, console_router()],
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
        middleware=[_latency_middleware(metrics)],
        request_max_body_size=max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Credits ledger",
            version=API_VERSION,
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
            ),
        ),
        on_shutdown=[usage_reader.close],
        debug=debug,
    )


def app_from_parts(
    parts: Parts,
    runner: BalanceSource,
    tokens: TokenStore,
    writer: Writer,
    metrics: LedgerMetrics = METRICS,
) -> Litestar:
    """The API over a process's parts (its runner keeps `parts.read_store` caught up, and is
    the one `writer` catches up after each write)."""
    return create_app(
        events=parts.store,
        read_models=parts.read_store.reader(),
        runner=runner,
        tokens=tokens,
        clock=parts.clock,
        writer=writer,
        metrics=metrics,
    )


MANUAL_CLOCKS: Final = (ManualClock, SharedManualClock)
"""The clocks `POST /v1/clock` may move."""
UNMATCHED_ROUTE: Final = "unmatched"


def _latency_middleware(metrics: LedgerMetrics) -> Callable[[ASGIApp], ASGIApp]:
    """Times every routed request into `metrics.request_latency`, by route template (never the
    raw path: ids would make a series each)."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            started_ns = time.perf_counter_ns()
            status = 500

            async def send_and_note(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_and_note)
            finally:
                metrics.request_latency.observe_ns(
                    time.perf_counter_ns() - started_ns,
                    method=scope["method"],
                    route=scope.get("path_template") or UNMATCHED_ROUTE,
                    status=str(status),
                )

        return timed

    return wrap


class ProblemView(msgspec.Struct, frozen=True):
    """An RFC 9457 problem, as every error is answered (`application/problem+json`)."""

    type: str
    title: str
    status: int
    detail: str
    parameter: str | None = None
    reason: str | None = None
    errors: list[dict[str, Any]] | None = None


V1_PROBLEM_STATUSES: Final = (400, 401, 403, 404, 409, 413, 415, 503)
"""What any /v1 path may answer besides success (a read never 409s; documenting it costs
nothing and keeps one list)."""


def _document_problems(handler: HTTPRouteHandler, statuses: Sequence[int]) -> None:
    """Declare in the OpenAPI document the problem responses a handler may give."""
    responses = dict(handler.responses or {})
    for status in statuses:
        titles = sorted({title for code, title in PROBLEMS.values() if code == status})
        responses.setdefault(
            status,
            ResponseSpec(
                data_container=ProblemView,
                media_type=PROBLEM_MEDIA_TYPE,
                description="; ".join(titles) or "Problem",
                generate_examples=False,
            ),
        )
    handler.responses = responses


def _again(view: type[msgspec.Struct], description: str) -> ResponseSpec:
    """The 200 a repeated create answers with: the current state, nothing appended."""
    return ResponseSpec(data_container=view, description=description, generate_examples=False)


def _no_subscription(sub: str) -> Problem:
    """The one answer for an unknown subscription and for one outside the token's scope."""
    return Problem("not-found", f"no subscription {sub!r}")
