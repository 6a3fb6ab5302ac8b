"""The web console (issue 6): static pages at `/console/` that read and write only through /v1.

The assets are plain files in `services/console/` (no build step, no CDN); the browser keeps
the token in sessionStorage and sends it as a bearer header like any other API client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from litestar import Request, Response, Router
from litestar.datastructures import CacheControlHeader
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

CONSOLE_PATH: Final = "/console"
CONSOLE_DIR: Final = Path(__file__).parent / "console"
ASSET_MAX_AGE_S: Final = 60
"""Short: a new release's assets reach an open console within a minute."""


async def _add_trailing_slash(request: Request[Any, Any, Any]) -> Response[Any] | None:
    """`/console` -> `/console/`, so the page's relative asset and API paths resolve."""
    # The router sees "/console" for both; only the raw path tells them apart.
    if request.scope.get("raw_path") == CONSOLE_PATH.encode():
        return Redirect(CONSOLE_PATH + "/")
    return None


def console_router() -> Router:
    """The console's static files, `index.html` answering `/console/`."""
    return create_static_files_router(
        path=CONSOLE_PATH,
        directories=[CONSOLE_DIR],
        html_mode=True,
        name="console",
        cache_control=CacheControlHeader(max_age=ASSET_MAX_AGE_S),
        include_in_schema=False,
        before_request=_add_trailing_slash,
    )
