"""Structured logging, configured once per entrypoint.

JSON lines in a cluster (stdout is not a terminal, or ``VCOT_LOG_FORMAT=json``), readable console
output on a developer's terminal (``VCOT_LOG_FORMAT=console`` forces it). ``VCOT_LOG_LEVEL`` sets the level.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is *now*: a logger configured while stderr was redirected
    (pytest's capture, a notebook) keeps working after the redirection ends."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(fmt: str | None = None, level: str | None = None) -> None:
    fmt = (fmt or os.environ.get("VCOT_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")).lower()
    level_name = (level or os.environ.get("VCOT_LOG_LEVEL") or "INFO").upper()
    numeric_level = logging.getLevelName(level_name)
    if not isinstance(numeric_level, int):
        numeric_level = logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if fmt == "json" else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    # Libraries that use the standard logging module: keep their warnings, drop their chatter.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def get_logger(name: str | None = None, **context: Any) -> Any:
    return structlog.get_logger(name).bind(**context) if context else structlog.get_logger(name)
