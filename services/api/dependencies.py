"""The parts a handler asks for by name (`events`, `reads`, `writes`, `usage`, `tokens`,
`clock`, `metrics`, `principal`): Litestar dependencies that `create_app` provides."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from litestar import Request
from litestar.di import NamedDependency, Provide
from litestar.params import SkipValidation

from services.api.guards import principal_of
from services.auth.tokens import Principal

T = TypeVar("T")

Injected = NamedDependency[SkipValidation[T]]
"""A handler parameter the app provides by its name. Not validated per request: every value
is the app's own part (or the principal bearer token authentication found)."""


async def _provide_principal(request: Request[Any, Any, Any]) -> Principal:
    return principal_of(request)


def _the(part: object) -> Provide:
    """A dependency that is this one object for every request."""

    def provide() -> object:
        return part

    return Provide(provide, use_cache=True, sync_to_thread=False)


def provided(parts: Mapping[str, object]) -> dict[str, Provide]:
    """The app's dependencies: each of `parts` by its name, and `principal`, who the request
    acts as (on /v1 paths, behind bearer token authentication)."""
    return {"principal": Provide(_provide_principal), **{n: _the(p) for n, p in parts.items()}}
