"""Log events are snake_case names with the details in fields (as tokenize and train log)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from jobs.evaluate import main
from tests.conftest import LogMode
from tests.evaluate.evaluate_helpers import commit_records, make_record
from vcot.evaluate.config import EvaluateConfig
from vcot.evaluate.stage import evaluate

EVENT_NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def test_events_are_snake_case_names(known_data: tuple[str, list], tmp_path: Path) -> None:
    data, records = known_data
    os.remove(records[0]["image"])  # the report cannot draw its thumbnail
    predictions = tmp_path / "predictions.jsonl"
    lines = [
        json.dumps({"id": records[0]["id"], "prediction": "<ref>a</ref><box>[0, 0, 10, 10]</box> Answer: red"}),
        json.dumps({"id": "not-a-record", "prediction": "Answer: red"}),  # a partial join
        '{"id": "broken", ',  # a malformed line
    ]
    predictions.write_text("\n".join(lines) + "\n")
    config = EvaluateConfig(predictions=str(predictions), data=data, output=str(tmp_path / "eval"))
    with capture_logs() as first:
        evaluate(config)
    with capture_logs() as rerun:
        evaluate(config)
    events = {entry["event"]: entry for entry in [*first, *rerun]}
    assert {"prediction_lines_skipped", "partial_join", "thumbnail_unavailable", "already_committed"} <= set(events)
    assert [name for name in events if not EVENT_NAME.match(name)] == []
    committed = events["already_committed"]
    assert committed["output"] == str(tmp_path / "eval") and "--overwrite" in committed["hint"]
    assert events["thumbnail_unavailable"]["image"] == records[0]["image"]


def test_generation_and_bin_show_their_progress_in_both_log_formats(
    log_mode: LogMode, tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Samples generated and records BiN chose for, against how many there are: a bar with the rate and the time
    left on a console, lines with step, total and eta_s in JSON."""
    records = [make_record(str(tmp_path), i, "gqa", [[100, 100, 400, 400]], "red") for i in range(3)]
    data = commit_records(str(tmp_path), records)
    argv = ["--model", str(tiny_model_dir), "--adapter", str(adapter_dir), "--data", data,
            "--output", str(tmp_path / "eval"), "--max-new-tokens", "4", "--batch-size", "2", "--bin", "2"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    for event, unit in (("generate_progress", "sample"), ("bin_progress", "record")):
        if log_mode.fmt == "console":
            done = rf"3/3 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+({unit}/s|s/{unit})\]"
            assert any(re.search(done, bar) for bar in LogMode.bars(err, event)), (event, err[-1500:])
            continue
        lines = [line for line in LogMode.lines(err, event) if not line.get("done")]
        assert [line["step"] for line in lines] == ([2, 3] if event == "generate_progress" else [1, 2, 3])
        assert all(line["total"] == 3 and line["eta_s"] is not None for line in lines) and lines[-1]["eta_s"] == 0
