"""How every `ledger` command fails: one line on stderr and an exit code from one table."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
import httpx
import msgspec
import redis

from ledger.errors import LedgerError
from projections.replay import InvalidAsOf
from projections.usage import InvalidUsageQuery
from services.config import ConfigError
from services.redis_server import EmbeddedRedisError

EXIT_CODES: dict[type[Exception], int] = {
    ConfigError: 2,
    InvalidAsOf: 2,
    InvalidUsageQuery: 2,
    msgspec.DecodeError: 2,
    LedgerError: 3,
    OSError: 4,
    EmbeddedRedisError: 4,
    redis.exceptions.RedisError: 4,
    httpx.HTTPError: 4,
}
"""Expected failures and their exit codes; a failed audit exits 1."""
PREFIXES: dict[type[Exception], str] = {
    redis.exceptions.RedisError: "Redis: ",
    httpx.HTTPError: "HTTP: ",
}
"""What a library's message is about, when the message itself does not say."""

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(command: F) -> F:
    """Run `command`; an expected failure leaves with `ledger: <message>` and its exit code."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except tuple(EXIT_CODES) as error:
            code = next(c for kind, c in EXIT_CODES.items() if isinstance(error, kind))
            message = " ".join(str(error).split()) or type(error).__name__
            prefix = next((p for kind, p in PREFIXES.items() if isinstance(error, kind)), "")
            click.echo(f"ledger: {prefix}{message}", err=True)
            sys.exit(code)

    return run  # type: ignore[return-value]
