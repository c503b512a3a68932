"""A long loop's progress in both log formats: a bar with the rate and the time left on a console, log lines with
``step``, ``total`` and ``eta_s`` in JSON (what a cluster's log query reads)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

import vcot.progress
from tests.conftest import LogMode, moved_clock
from vcot.log import configure_logging, get_logger
from vcot.progress import Progress, track


@pytest.fixture(autouse=True)
def json_afterwards() -> Iterator[None]:
    yield
    configure_logging("json")  # as main() configures it under pytest


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The progress module's clock, moved by the test: a loaded machine's late sleeps cannot change what is logged."""
    return moved_clock(monkeypatch, vcot.progress)


def test_json_lines_carry_step_total_and_eta(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, clock: list[float]
) -> None:
    configure_logging("json")
    monkeypatch.setenv("VCOT_PROGRESS_SECONDS", "0")
    for _ in track(range(4), "demo_progress", unit="item", split="train"):
        clock[0] += 1.0
    lines = LogMode.lines(capsys.readouterr().err, "demo_progress")
    assert [(line["step"], line["total"], line.get("done")) for line in lines] == [
        (1, 4, None), (2, 4, None), (3, 4, None), (4, 4, None), (4, 4, True)
    ]
    assert all(line["split"] == "train" and line["unit"] == "item" and line["rate"] > 0 for line in lines)
    assert [line["eta_s"] for line in lines] == [3.0, 2.0, 1.0, 0.0, 0.0]  # one item a second, from the rate so far


def test_json_lines_come_every_interval_and_a_short_loop_stays_quiet(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, clock: list[float]
) -> None:
    configure_logging("json")
    monkeypatch.setenv("VCOT_PROGRESS_SECONDS", "3600")
    with Progress("quiet_progress", 100) as progress:
        progress.update(100)
    assert LogMode.lines(capsys.readouterr().err, "quiet_progress") == []
    monkeypatch.setenv("VCOT_PROGRESS_SECONDS", "0.05")
    with Progress("timed_progress", None, unit="B") as progress:  # no total: no ETA
        for _ in range(10):
            clock[0] += 0.02
            progress.update(7)
    lines = LogMode.lines(capsys.readouterr().err, "timed_progress")
    # 0.05 s or more since the last line at 0.06, 0.12 and 0.18 s, then the closing line
    assert [(line["step"], line.get("done")) for line in lines] == [(21, None), (42, None), (63, None), (70, True)]
    assert all(line["total"] is None and line["eta_s"] is None for line in lines)


def test_console_bar_shows_rate_and_time_left_and_log_lines_stay_whole(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("console")
    with Progress("demo_progress", 3, unit="record") as progress:
        for _ in range(3):
            progress.update()
            get_logger("t").info("between_updates", n=1)
    text = capsys.readouterr().err
    assert re.search(r"demo_progress: 100%\|.*\| 3/3 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+record/s\]", text), text
    # each log line starts a line of its own (the bar is cleared first and drawn again below it)
    assert len(re.findall(r"(?:^|[\r\n])\d{4}-\d\d-\d\dT[\d:.]+Z \[info\s*\] between_updates\s+n=1\n", text)) == 3
    assert '"event"' not in text  # no JSON line in console mode
