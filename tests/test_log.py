"""Logging keeps working when stderr is swapped after it was configured."""

from __future__ import annotations

import io
import logging
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


def _crash_with_a_secret_local() -> None:
    password = "hunter2-only-in-a-local"  # noqa: F841 - what rich's tracebacks used to print
    raise RuntimeError("deep bug")


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_tracebacks_show_no_local_variables(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging(fmt)
    try:
        _crash_with_a_secret_local()
    except RuntimeError:
        get_logger("t").exception("crashed")
    assert "RuntimeError: deep bug" in stream.getvalue() and "_crash_with_a_secret_local" in stream.getvalue()
    assert "hunter2" not in stream.getvalue()


def test_secret_environment_values_and_url_credentials_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
    monkeypatch.setenv("VCOT_MAX_NEW_TOKENS", "51200000")  # not a secret: "tokens" is not "token"
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    for fmt in ("console", "json"):
        configure_logging(fmt)
        log = get_logger("t")
        log.warning("oops", error="refused wJalrXUtnFEMI/K7MDENG", url="https://me:pw@llm.example/v1", n=51200000)
    assert "wJalrXUtnFEMI" not in stream.getvalue() and ":pw@" not in stream.getvalue()
    assert stream.getvalue().count("https://***@llm.example/v1") == 2 and stream.getvalue().count("51200000") == 2


class _RecordingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_each_line_is_one_write(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun's ranks share one stdout pipe: a line written as text then newline in two writes interleaves
    with another rank's (``{...}{...}\\n\\n``), and the JSON lines a log collector reads no longer parse."""
    stream = _RecordingStream()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging(fmt)
    get_logger("t").info("hello", n=1)
    get_logger("t").warning("again")
    assert len(stream.writes) == 2 and all(text.endswith("\n") and text.count("\n") == 1 for text in stream.writes)


def test_a_missing_optional_cpu_kernel_is_not_reported_as_a_failure() -> None:
    configure_logging("console")
    assert not logging.getLogger("bitsandbytes.backends.cpu.ops").isEnabledFor(logging.WARNING)
    assert logging.getLogger("bitsandbytes").isEnabledFor(logging.WARNING)  # only that one
    assert logging.getLogger("peft").isEnabledFor(logging.WARNING)
