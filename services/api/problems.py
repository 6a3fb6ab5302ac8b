"""Every error the API answers is an RFC 9457 problem: the table of problem types, the
exception handlers that map errors to them, and their place in the OpenAPI document."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE

from ledger.errors import (
    DuplicateConflict,
    HoldNotActive,
    InsufficientCredits,
    InvalidCommand,
    SeatExists,
    SeatIsRemoved,
    SeatIsSuspended,
    StoreError,
    SubscriptionExists,
    Undecidable,
    UnknownCharge,
    UnknownGrant,
    UnknownHold,
    UnknownModel,
    UnknownPack,
    UnknownSeat,
    UnknownSubscription,
)
from schemas.instants import INSTANT_RULE
from schemas.limits import ID_PATTERN, ID_RULE, INSTANT_PATTERN
from services.write_channel import WriteChannelError

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
    "subscription-exists": (409, "A subscription with this id exists with another anchor"),
    "seat-exists": (409, "The seat id is taken"),
    "seat-removed": (409, "The seat was removed"),
    "seat-suspended": (409, "The seat is suspended"),
    "insufficient-credits": (409, "Less is available than asked for"),
    "hold-not-active": (409, "The hold has ended"),
    "invalid-command": (409, "The ledger refuses this command in its current state"),
    "unknown-model": (400, "The model is not on the rate card in force"),
    "duplicate-conflict": (409, "The same id was used before with another payload"),
    "clock-not-manual": (409, "The ledger clock is the system clock"),
    "clock-backwards": (409, "The ledger clock only moves forward"),
    "webhook-exists": (409, "The subscription has a webhook with this id"),
    "token-not-revocable": (409, "The bootstrap admin token is set by configuration"),
    "body-too-large": (413, "The request body is too large"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "internal": (500, "Internal error"),
    "not-ready": (503, "Not ready"),
    "store-unavailable": (503, "The ledger's store or writer cannot answer now; retry"),
    "as-of-busy": (503, "Too many reads of the past at once; retry"),
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
    SeatIsSuspended.reason: "seat-suspended",
    InsufficientCredits.reason: "insufficient-credits",
    UnknownHold.reason: "not-found",
    HoldNotActive.reason: "hold-not-active",
    UnknownCharge.reason: "not-found",
    UnknownPack.reason: "not-found",
    UnknownGrant.reason: "not-found",
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
"""The problem type of an error the framework raises, by its status."""

V1_PROBLEM_STATUSES: Final = (400, 401, 403, 404, 409, 413, 415, 503)
"""What any /v1 path may answer besides success (a read never 409s; documenting it costs
nothing and keeps one list)."""
RETRY_AFTER_S: Final = 1
"""What every 503 asks the client to wait before it retries (its Retry-After header)."""
RETRY_SOON: Final = "retry in a second"


class Problem(Exception):
    """An error answered as an RFC 9457 problem of type `slug` (a key of `PROBLEMS`)."""

    def __init__(self, slug: str, detail: str, **extra: Any) -> None:
        assert slug in PROBLEMS, slug
        super().__init__(detail)
        self.slug = slug
        self.detail = detail
        self.extra = extra


class ProblemView(msgspec.Struct, frozen=True):
    """An RFC 9457 problem, as every error is answered (`application/problem+json`)."""

    type: str
    title: str
    status: int
    detail: str
    parameter: str | None = None
    reason: str | None = None
    errors: list[dict[str, Any]] | None = None
    available: str | None = None
    """With `insufficient-credits`: what the seat could have had."""


def no_subscription(sub: str) -> Problem:
    """The one answer for an unknown subscription and for one outside the token's scope."""
    return Problem("not-found", f"no subscription {sub!r}")


def problem_response(
    slug: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response[dict[str, Any]]:
    status, title = PROBLEMS[slug]
    if status == HTTP_503_SERVICE_UNAVAILABLE:
        headers = {"Retry-After": str(RETRY_AFTER_S), **(headers or {})}
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


# -- exception handlers -----------------------------------------------------------------------


def _on_problem(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, Problem)
    headers = {"WWW-Authenticate": "Bearer"} if exc.slug == "unauthorized" else None
    return problem_response(exc.slug, exc.detail, headers, **exc.extra)


_FIELD_IN_MESSAGE: Final = re.compile(r"field `([^`]+)`")
_WIRE_NAMES: Final = {"idempotency_key": "Idempotency-Key", "from_": "from"}
"""Handler arguments whose name on the wire differs, for problem details."""
_RULES_BY_PATTERN: Final = {
    f"Expected `str` matching regex {ID_PATTERN!r}": ID_RULE,
    f"Expected `str` matching regex {INSTANT_PATTERN!r}": INSTANT_RULE,
}
"""What a pattern's rule is, said in words instead of the regular expression."""


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
        error["message"] = _RULES_BY_PATTERN.get(str(error["message"]), error["message"])
    in_body = any(e["source"] == "body" for e in errors)
    named = [e for e in errors if e["parameter"]]
    detail = "; ".join(f"{e['parameter']}: {e['message']}" for e in named) or str(exc.detail)
    # One parameter at fault: name it where every other problem of a parameter names it.
    parameter = {"parameter": named[0]["parameter"]} if len(named) == 1 else {}
    return problem_response(
        "invalid-body" if in_body else "invalid-parameter", detail, errors=errors, **parameter
    )


def _on_http(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, HTTPException)
    slug = _SLUG_BY_STATUS.get(
        exc.status_code, "internal" if exc.status_code >= 500 else "bad-request"
    )
    detail = str(exc.detail)
    if exc.status_code == HTTP_503_SERVICE_UNAVAILABLE:
        detail = f"the ledger cannot answer now: {RETRY_SOON}"
    # Keep what the framework says must go with the status (`Allow` on a 405, RFC 9110).
    return problem_response(slug, detail, dict(exc.headers or {}) or None)


def _on_store_unavailable(
    request: Request[Any, Any, Any], exc: Exception
) -> Response[dict[str, Any]]:
    """A store (the log, the tokens) or the writer could not answer now (busy, reconnecting,
    the writer process restarting): 503 with Retry-After. Writes are idempotent, so retrying
    one is safe. What went wrong goes to the log, not to the client."""
    log.warning(
        "api.store_unavailable", path=request.url.path, error=str(exc), kind=type(exc).__name__
    )
    return problem_response(
        "store-unavailable", f"the ledger's store is busy or reconnecting: {RETRY_SOON}"
    )


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.error("api.unexpected_error", path=request.url.path, exc_info=exc)
    return problem_response("internal", "the server could not answer this request")


EXCEPTION_HANDLERS: Final[dict[type[Exception], Callable[..., Response[Any]]]] = {
    Problem: _on_problem,
    ValidationException: _on_validation,
    HTTPException: _on_http,
    StoreError: _on_store_unavailable,
    WriteChannelError: _on_store_unavailable,
    Exception: _on_unexpected,
}
"""Every error -> its problem: the one table the app hands to Litestar."""


# -- the OpenAPI document ---------------------------------------------------------------------


def problem_responses(statuses: Sequence[int]) -> dict[int, ResponseSpec]:
    """The problem responses of these statuses, as the OpenAPI document declares them."""
    return {
        status: ResponseSpec(
            data_container=ProblemView,
            media_type=PROBLEM_MEDIA_TYPE,
            description="; ".join(
                sorted({title for code, title in PROBLEMS.values() if code == status})
            )
            or "Problem",
            generate_examples=False,
        )
        for status in statuses
    }


def again(view: type[msgspec.Struct], description: str) -> ResponseSpec:
    """The 200 a repeated create answers with: the current state, nothing appended."""
    return ResponseSpec(data_container=view, description=description, generate_examples=False)
