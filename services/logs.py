"""Logging for every process of the ledger: structlog, JSON lines in production, readable
console output at a terminal (LEDGER_LOG_FORMAT chooses either); the libraries'
standard-library logs rendered the same way."""

from __future__ import annotations

import logging
import sys
from typing import Final

import structlog

from services.config import LogFormat

BROKER_LOGGER: Final = "ledger.faststream"
"""The standard-library logger FastStream writes to; rendered like every other line."""


def configure_logging(log_format: LogFormat | None = None) -> None:
    """`log_format` (LEDGER_LOG_FORMAT), else JSON lines when stderr is not a terminal
    (production) and readable console output when it is."""
    if log_format is None:
        log_format = "console" if sys.stderr.isatty() else "json"
    json_lines = log_format == "json"
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    # FastStream and other libraries log through the standard library: render them the same way.
    stdlib = logging.StreamHandler(sys.stderr)
    stdlib.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    for name in ("faststream", BROKER_LOGGER, "uvicorn", "uvicorn.error"):
        library_log = logging.getLogger(name)
        library_log.handlers[:] = [stdlib]
        library_log.propagate = False
        library_log.setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    )
