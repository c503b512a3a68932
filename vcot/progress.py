"""How far a long loop has got, shown the way the log is written: a bar on a console, log lines in a cluster.

Console mode (``VCOT_LOG_FORMAT=console``, or a terminal): a tqdm bar with the count, the rate and the time left.
JSON mode (every pod): a log line every ``VCOT_PROGRESS_SECONDS`` seconds (default 30; 0 logs every update) and
one when a loop that logged finishes, each with ``step``, ``total`` (``null`` when unknown), ``rate`` (per second)
and ``eta_s`` (seconds left, ``null`` while unknown): what a log query needs to chart a run or to notice a stall.
A loop shorter than the interval logs nothing, so small jobs stay quiet.

Train, GRPO and RGFN (their trainer callback), evaluate (generation, BiN), tokenize, convert and model loading
(the sync from storage, the weights) all report through :class:`Progress`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from vcot.log import get_logger, log_format

T = TypeVar("T")
DEFAULT_SECONDS = 30.0

log = get_logger("vcot.progress")


def interval_seconds() -> float:
    """Seconds between two JSON progress lines of one loop (``VCOT_PROGRESS_SECONDS``; a bad value: the default)."""
    try:
        value = float(os.environ.get("VCOT_PROGRESS_SECONDS", DEFAULT_SECONDS))
    except ValueError:
        return DEFAULT_SECONDS
    return value if value >= 0 else DEFAULT_SECONDS


class Progress:
    """One loop's progress: ``update(n)`` (thread-safe: boto3 reports bytes from its transfer threads) or
    ``set(step)``, then ``close()`` (or use it as a context manager). ``event`` names its log lines and its bar."""

    def __init__(
        self,
        event: str,
        total: int | None = None,
        *,
        unit: str = "it",
        initial: int = 0,
        unit_scale: bool = False,
        **context: Any,
    ) -> None:
        self.event, self.total, self.unit, self.context = event, total, unit, context
        self.step = self.first = initial
        self.started = self.logged_at = time.monotonic()
        self.interval = interval_seconds()
        self.logged = False
        self._lock = threading.Lock()
        self.bar: Any = None
        if log_format() == "console":
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=event, unit=unit, unit_scale=unit_scale, dynamic_ncols=True,
                file=sys.stderr, leave=True,
            )  # fmt: skip

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(finished=exc[0] is None)

    def rate(self) -> float | None:
        """Steps per second so far (this session's steps: a resumed run does not count the restored ones)."""
        seconds = time.monotonic() - self.started
        done = self.step - self.first
        return done / seconds if done > 0 and seconds > 0 else None

    def eta_s(self) -> float | None:
        """Seconds left at the rate so far, or ``None`` (no total, or no step done yet)."""
        rate = self.rate()
        if self.total is None or rate is None:
            return None
        return round(max(self.total - self.step, 0) / rate, 1)

    def fields(self) -> dict[str, Any]:
        """What a JSON progress line carries."""
        rate = self.rate()
        return {
            "step": self.step,
            "total": self.total,
            "unit": self.unit,
            "rate": round(rate, 4) if rate is not None else None,
            "eta_s": self.eta_s(),
            "elapsed_s": round(time.monotonic() - self.started, 1),
            **self.context,
        }

    def update(self, n: int = 1) -> None:
        with self._lock:
            self._advance(self.step + n)

    def set(self, step: int) -> None:
        with self._lock:
            self._advance(step)

    def _advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.step)
            self.step = step
            return
        self.step = step
        now = time.monotonic()
        if now - self.logged_at >= self.interval:
            self.logged_at, self.logged = now, True
            log.info(self.event, **self.fields())

    def close(self, *, finished: bool = True) -> None:
        """End the bar; in JSON mode, a last line when the loop logged before (``done``: whether it finished)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.logged:
            log.info(self.event, **self.fields(), done=finished)
            self.logged = False


def track(iterable: Iterable[T], event: str, total: int | None = None, **options: Any) -> Iterator[T]:
    """``iterable``, reporting one step per item (``total`` defaults to its ``len()`` when it has one)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(event, total, **options) as progress:
        for item in iterable:
            yield item
            progress.update()
