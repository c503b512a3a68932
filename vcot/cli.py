"""What every entrypoint does around its one library call: logging, config, a clean error line, an exit code.

Exit codes (the Jobs' ``podFailurePolicy`` fails a Job at once on 2, and the CronJob on 2 and 3):

- 0: done (or already committed);
- 1: a problem at run time that a rerun may get past (storage, a missing input, a crash, a stop by SIGTERM);
- 2: invalid settings (a flag, an environment variable, a recipe) or a training run that diverged: a retry cannot help;
- 3: evaluate flagged a regression.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from vcot.config import parse_config, redacted
from vcot.errors import VcotError
from vcot.log import configure_logging, get_logger, mask_secrets

C = TypeVar("C")


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread. A ``BaseException`` (as ``KeyboardInterrupt``), so no stage's
    ``except Exception`` mistakes it for a bad record."""


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (a pod being stopped, ``kill``) unwinds the stage: ``finally`` blocks and context managers run,
    so worker pools shut down and partial uploads are aborted. Distill and train install their own handler
    while they run (they save their progress first). Python runs the handler in the main thread: when the
    signal lands on another thread while the main one waits in a read, it runs once that read returns (a file
    at once, an S3 stream within its read timeout)."""

    def handle(signum: int, frame: Any) -> None:
        _ignore_sigterm()  # once: a second SIGTERM must not interrupt the cleanup
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, handle)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_stage(stage: str, config_cls: type[C], main: Callable[[C], Any], argv: Sequence[str] | None = None) -> int:
    """Parse ``config_cls`` (exit 2 if invalid), log it with secrets redacted, run ``main``; returns the exit code.

    A :class:`VcotError` (something the user can fix) prints one line and returns its ``exit_code``
    (1 by default, 2 for a :class:`~vcot.errors.ConfigError`); SIGTERM prints one line and returns 1;
    any other exception is a bug: it is logged with its (plain, secret-free) traceback and returns 1.
    """
    configure_logging()
    log = get_logger("vcot", stage=stage)
    with _sigterm_unwinds():
        try:
            config = parse_config(config_cls, argv, prog=f"vcot-{stage}")
            log.info("config", **redacted(config))
            main(config)
        except VcotError as exc:
            return _failed(log, stage, str(exc), exc.exit_code)
        except _Terminated:
            log.warning("terminated", signal="SIGTERM")
            return _failed(log, stage, "stopped by SIGTERM before finishing: run the same command again", 1)
        except Exception:
            _ignore_sigterm()
            log.exception("crashed")
            return 1
    return 0


def _ignore_sigterm() -> None:
    """The stage is ending: a SIGTERM now must not cut its report short. Under torchrun it comes when another rank
    exited first (the agent stops the ranks left), and it would leave a traceback instead of the error line."""
    with suppress(ValueError):  # not the main thread: leave signals alone
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _failed(log: Any, stage: str, message: str, code: int) -> int:
    _ignore_sigterm()
    log.error("failed", error=message, exit_code=code)
    # One write per line: torchrun runs its ranks unbuffered (python -u) on one pipe, and print's two writes (the
    # text, then the newline) let another rank's line land between them.
    sys.stderr.write(mask_secrets(f"vcot-{stage}: error: {message}") + "\n")
    return code
