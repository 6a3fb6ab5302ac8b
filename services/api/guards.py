"""Who may call what: the bearer token guard of every /v1 path, and the guards that check a
token's subscription scope, then its role, before a handler runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from services.api.problems import Problem, no_subscription
from services.auth.tokens import ROLES, Principal, Role, TokenStore

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]

EVERY_ROLE: Final[frozenset[Role]] = frozenset(ROLES)
SEAT_READERS: Final[frozenset[Role]] = EVERY_ROLE
SUBSCRIPTION_READERS: Final[frozenset[Role]] = frozenset({"admin", "auditor", "viewer"})
AUDITORS: Final[frozenset[Role]] = frozenset({"admin", "auditor"})
ADMINS: Final[frozenset[Role]] = frozenset({"admin"})
HOLDERS: Final[frozenset[Role]] = frozenset({"admin", "gateway"})
"""Who may place, extend and release holds."""
SUBSCRIPTION_PARAMETER: Final = "sub"
"""The path parameter that names the subscription a request is about."""


def bearer_token(tokens: TokenStore) -> Guard:
    """The guard of every /v1 path: the request's principal is its live bearer token.

    It runs before the body is read, so a caller without a live token learns nothing, not
    even what a body should look like. Async, so it runs on the event loop (one indexed
    look-up) instead of hopping to a worker thread."""

    async def authenticated(
        connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
    ) -> None:
        scheme, _, bearer = connection.headers.get("authorization", "").partition(" ")
        principal = tokens.authenticate(bearer.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            raise Problem("unauthorized", "send Authorization: Bearer <token> with a live token")
        connection.state.principal = principal

    return authenticated


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    principal = connection.state.principal
    assert isinstance(principal, Principal), "the /v1 guard authenticated the request"
    return principal


def requires(roles: frozenset[Role]) -> Guard:
    """A guard: the token sees the path's subscription (when it names one), and its role is
    one of `roles`. Scope before role: outside its scope a token learns nothing, not even what
    it may do (404, exactly like an unknown subscription)."""

    async def allowed(
        connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
    ) -> None:
        principal = principal_of(connection)
        sub = connection.path_params.get(SUBSCRIPTION_PARAMETER)
        if sub is not None and not principal.sees(sub):
            raise no_subscription(sub)
        if principal.role not in roles:
            raise Problem("forbidden", f"a {principal.role} token may not do this")

    return allowed
