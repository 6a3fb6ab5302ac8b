"""How every `ledger` command fails: one line on stderr and an exit code from one table."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
import msgspec
import redis

from ledger.errors import LedgerError
from projections.replay import InvalidAsOf
from projections.usage import InvalidUsageQuery
from services.config import ConfigError

EXIT_CODES: dict[type[Exception], int] = {
    ConfigError: 2,
    InvalidAsOf: 2,
    InvalidUsageQuery: 2,
    msgspec.DecodeError: 2,
    LedgerError: 3,
    OSError: 4,
    redis.exceptions.ConnectionError: 4,
}
"""Expected failures and their exit codes; a failed audit exits 1."""

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
            click.echo(f"ledger: {message}", err=True)
            sys.exit(code)

    return run  # type: ignore[return-value]
