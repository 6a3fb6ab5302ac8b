"""The base of every resource under /v1: its handlers document the problems any /v1 path may
answer, and each of its paths answers OPTIONS with every method it serves."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Final

from litestar import Controller, Response
from litestar.enums import HttpMethod
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler
from litestar.status_codes import HTTP_204_NO_CONTENT

from services.api.problems import V1_PROBLEM_STATUSES, problem_responses

OPTIONS: Final = HttpMethod.OPTIONS


def _options_handler(path: str, methods: set[str]) -> HTTPRouteHandler:
    allow = ", ".join(sorted(methods | {OPTIONS}))

    def options(_controller: Any) -> Response[None]:
        return Response(None, status_code=HTTP_204_NO_CONTENT, headers={"Allow": allow})

    handler = HTTPRouteHandler(
        path=path, http_method=[OPTIONS], include_in_schema=False, sync_to_thread=False
    )
    return handler(options)


class V1Controller(Controller):
    """A resource under /v1.

    Litestar 2 answers OPTIONS on a path whose methods come from several handlers with the
    `Allow` of the first handler alone; each path here gets an OPTIONS handler of its own that
    lists them all, registered before the others so that Litestar adds none."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        documented = problem_responses(V1_PROBLEM_STATUSES)
        methods: defaultdict[str, set[str]] = defaultdict(set)
        for handler in list(vars(cls).values()):
            if isinstance(handler, HTTPRouteHandler):
                handler.responses = {**documented, **(handler.responses or {})}
                for path in handler.paths:
                    methods[path] |= set(handler.http_methods)
        for number, (path, served) in enumerate(sorted(methods.items())):
            setattr(cls, f"options_{number}", _options_handler(path, served))

    def get_route_handlers(self) -> list[BaseRouteHandler]:
        handlers = super().get_route_handlers()
        return sorted(handlers, key=lambda h: OPTIONS not in getattr(h, "http_methods", ()))
