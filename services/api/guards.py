"""Who may call what: the bearer token authentication of every /v1 path, and the guards that
check a token's subscription scope, then its role, before a handler runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import ASGIApp

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


class NotAuthenticated(RuntimeError):
    """A guard ran on a request the bearer token middleware did not authenticate (a route
    wired outside /v1): refused, never served as nobody."""


class BearerAuthentication(AbstractAuthenticationMiddleware):
    """Every /v1 path's authentication: the request's principal is its live bearer token.

    Litestar's authentication middleware rather than one more guard: it runs before the
    route's guards and before the body is read, so a caller without a live token learns
    nothing, not even what a body should look like; and each guard costs a copy of the route
    handler per request, which the gateway pre-check pays on every call. On the event loop:
    one indexed look-up."""

    def __init__(self, app: ASGIApp, tokens: TokenStore) -> None:
        super().__init__(app, exclude_http_methods=())  # OPTIONS too: nothing without a token
        self.tokens = tokens

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        scheme, _, bearer = connection.headers.get("authorization", "").partition(" ")
        principal = self.tokens.authenticate(bearer.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            raise Problem("unauthorized", "send Authorization: Bearer <token> with a live token")
        return AuthenticationResult(user=principal, auth=None)


def bearer_token(tokens: TokenStore) -> Callable[[ASGIApp], ASGIApp]:
    """The middleware that authenticates every /v1 request by its bearer token (a closure, not
    `DefineMiddleware(..., tokens=...)`: Litestar deep-copies a router's middleware arguments,
    and the token store holds a connection and a lock)."""

    def authenticating(app: ASGIApp) -> ASGIApp:
        return BearerAuthentication(app, tokens)

    return authenticating


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    principal = connection.scope.get("user")
    if not isinstance(principal, Principal):
        raise NotAuthenticated("a /v1 request is authenticated before its guards run")
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
