"""Log events are snake_case names with the details in fields (as tokenize and train log)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from structlog.testing import capture_logs

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
