"""How every `ledger` command fails: one line on stderr and an exit code from one table."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import cache, wraps
from typing import Any, TypeVar

import click

from services.config import ConfigError


@cache
def exit_codes() -> dict[type[Exception], int]:
    """Expected failures and their exit codes, the first kind that matches: 2 bad input or
    settings, 3 refused by the ledger, 4 a store, Redis, the HTTP API or a file that cannot be
    reached; a failed audit exits 1. Built at the first failure: the kinds' modules are seconds
    of start-up that a command which does not fail, `ledger serve` above all, need not pay."""
    import httpx
    import msgspec
    import redis

    from ledger.errors import LedgerError, RateCardError, StoreError
    from projections.replay import InvalidAsOf
    from projections.usage import InvalidUsageQuery
    from services.redis_server import EmbeddedRedisError

    return {
        ConfigError: 2,
        InvalidAsOf: 2,
        InvalidUsageQuery: 2,
        msgspec.DecodeError: 2,
        RateCardError: 2,
        StoreError: 4,
        LedgerError: 3,
        OSError: 4,
        EmbeddedRedisError: 4,
        redis.exceptions.RedisError: 4,
        httpx.HTTPError: 4,
    }


@cache
def prefixes() -> dict[type[Exception], str]:
    """What a library's message is about, when the message itself does not say."""
    import httpx
    import redis

    return {redis.exceptions.RedisError: "Redis: ", httpx.HTTPError: "HTTP: "}


NO_ARGS_IS_HELP: tuple[type[Exception], ...] = tuple(
    kind for kind in (getattr(click.exceptions, "NoArgsIsHelpError", None),) if kind is not None
)
"""Click's "a group named without its command" (click >= 8.2): shown as the group's help."""
CLICK_FILE_ERROR_EXIT_CODE = 4
"""A file named on the command line that cannot be opened: I/O, like OSError."""

F = TypeVar("F", bound=Callable[..., Any])


class OneLineGroup(click.Group):
    """The `ledger` group: click's own errors (a bad option, an unreadable file argument)
    leave in one line too, `ledger: <message> (see: <command> --help)`, with click's exit
    code (2 for usage) or 4 for a file that cannot be opened."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            returned = super().main(*args, **kwargs)
        except click.exceptions.Abort:
            click.echo("ledger: aborted", err=True)
            sys.exit(1)
        except click.ClickException as error:
            context = getattr(error, "ctx", None)
            if isinstance(error, NO_ARGS_IS_HELP) and context is not None:
                click.echo(context.get_help())  # `ledger audit` alone: what it can do
                sys.exit(error.exit_code)
            click.echo(f"ledger: {_click_message(error)}", err=True)
            file_error = isinstance(error, click.FileError)
            sys.exit(CLICK_FILE_ERROR_EXIT_CODE if file_error else error.exit_code)
        sys.exit(returned if isinstance(returned, int) else 0)


def _click_message(error: click.ClickException) -> str:
    message = " ".join(error.format_message().split())
    context = getattr(error, "ctx", None)
    if isinstance(error, click.UsageError) and context is not None:
        message += f" (see: {context.command_path} --help)"
    return message


def one_line_errors(command: F) -> F:
    """Run `command`; an expected failure leaves with `ledger: <message>` and its exit code."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Exception as error:
            code = next((c for kind, c in exit_codes().items() if isinstance(error, kind)), None)
            if code is None:
                raise
            message = " ".join(str(error).split()) or type(error).__name__
            prefix = next((p for kind, p in prefixes().items() if isinstance(error, kind)), "")
            click.echo(f"ledger: {prefix}{message}", err=True)
            sys.exit(code)

    return run  # type: ignore[return-value]
