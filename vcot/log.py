"""Structured logging, configured once per entrypoint.

JSON lines in a cluster (stdout is not a terminal, or ``VCOT_LOG_FORMAT=json``), readable console
output on a developer's terminal (``VCOT_LOG_FORMAT=console`` forces it). ``VCOT_LOG_LEVEL`` sets the level.

No secret reaches a log in either format: tracebacks are plain (never a frame's local variables, where
API keys and S3 credentials live), and every rendered line, library warnings included, has the values of
secret-named environment variables (``AWS_SECRET_ACCESS_KEY``, ``OPENAI_API_KEY``...) and credentials
written into URLs replaced by ``***``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import structlog

from vcot.config import is_secret_name, mask_url_credentials

MIN_SECRET_LENGTH = 8
"""Shorter values of secret-named variables are not masked (``true``, a test's ``testing``): they would mask
ordinary words everywhere and are no secret worth the name."""


def mask_secrets(text: str) -> str:
    """``text`` with secret environment values and URL credentials replaced by ``***``."""
    values = {value for name, value in os.environ.items() if len(value) >= MIN_SECRET_LENGTH and is_secret_name(name)}
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, "***").replace(json.dumps(value)[1:-1], "***")  # also as a JSON string escapes it
    return mask_url_credentials(text)


QUIET_LOGGERS = {"bitsandbytes.backends.cpu.ops": logging.ERROR}
"""Library warnings that only alarm: bitsandbytes warns on every CPU import that an optional kernels package for
4-bit matmuls on CPU is missing, and nothing here quantizes on a CPU (``make local-train`` printed it twice)."""


def _masked(renderer: Callable[..., str]) -> Callable[..., str]:
    def render(logger: Any, method: str, event_dict: Any) -> str:
        return mask_secrets(renderer(logger, method, event_dict))

    return render


class _MaskingFormatter(logging.Formatter):
    """The standard logging module's lines (libraries' warnings) masked the same way."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is *now*: a logger configured while stderr was redirected
    (pytest's capture, a notebook) keeps working after the redirection ends. A console line written while a
    progress bar (:mod:`vcot.progress`) is shown goes above the bar instead of through it."""

    def write(self, text: str) -> int:
        from tqdm import tqdm

        if getattr(tqdm, "_instances", None):
            with tqdm.external_write_mode(file=sys.stderr):
                return sys.stderr.write(text)
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_FORMAT: str | None = None
"""The format :func:`configure_logging` chose (``None`` before it ran)."""
LIBRARY_BARS_OFF = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")
"""The Hugging Face libraries' own progress bars, turned off in JSON mode: in a pod's log they are lines of
carriage returns (vcot reports the long parts itself, :mod:`vcot.progress`)."""


def log_format() -> str:
    """``"json"`` or ``"console"``: what :func:`configure_logging` chose, else what it would choose now."""
    return _FORMAT or (os.environ.get("VCOT_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")).lower()


def configure_logging(fmt: str | None = None, level: str | None = None) -> None:
    global _FORMAT
    fmt = (fmt or os.environ.get("VCOT_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")).lower()
    _FORMAT = "json" if fmt == "json" else "console"
    if fmt == "json":
        for name in LIBRARY_BARS_OFF:
            os.environ.setdefault(name, "1")
    level_name = (level or os.environ.get("VCOT_LOG_LEVEL") or "INFO").upper()
    numeric_level = logging.getLevelName(level_name)
    if not isinstance(numeric_level, int):
        numeric_level = logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        # rich's or better-exceptions' tracebacks (the default when installed) print every frame's locals
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if fmt == "json" else structlog.dev.set_exc_info,
            _masked(renderer),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        # one write per line (PrintLogger writes the newline separately): torchrun's ranks share a pipe
        logger_factory=structlog.WriteLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    # Libraries that use the standard logging module: keep their warnings, drop their chatter.
    handler = logging.StreamHandler(_CurrentStderr())  # type: ignore[arg-type]
    handler.setFormatter(_MaskingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    for name, quiet_level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet_level)


def get_logger(name: str | None = None, **context: Any) -> Any:
    return structlog.get_logger(name).bind(**context) if context else structlog.get_logger(name)
