"""Logging keeps working when stderr is swapped after it was configured."""

from __future__ import annotations

import io
import sys

import pytest

from vcot.log import configure_logging, get_logger


def test_logs_follow_the_current_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging("json")
    first.close()  # what pytest's capture does to the stream a test configured logging under
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    get_logger("t").info("hello", n=1)
    assert '"event": "hello"' in second.getvalue()
