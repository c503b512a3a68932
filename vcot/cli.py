"""What every entrypoint does around its one library call: logging, config, a clean error line, an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from vcot.config import parse_config, redacted
from vcot.errors import VcotError
from vcot.log import configure_logging, get_logger

C = TypeVar("C")


def run_stage(stage: str, config_cls: type[C], main: Callable[[C], Any], argv: Sequence[str] | None = None) -> int:
    """Parse ``config_cls`` (exit 2 if invalid), log it with secrets redacted, run ``main``.

    A :class:`VcotError` (something the user can fix) prints one line and returns its ``exit_code``
    (1 by default); any other exception is a bug: it is logged with its traceback and raised.
    """
    configure_logging()
    log = get_logger("vcot", stage=stage)
    config = parse_config(config_cls, argv, prog=f"vcot-{stage}")
    log.info("config", **redacted(config))
    try:
        main(config)
    except VcotError as exc:
        log.error("failed", error=str(exc))
        print(f"vcot-{stage}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception:
        log.exception("crashed")
        raise
    return 0
