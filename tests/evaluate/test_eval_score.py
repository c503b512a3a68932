"""Score mode end to end: a known predictions file (malformed, box-less, duplicated lines) gives known numbers."""

from __future__ import annotations

import gzip
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from jobs.evaluate import main
from tests.evaluate.evaluate_helpers import commit_records, make_record
from vcot.evaluate.scoring import load_records
from vcot.io import manifest, shards, storage
from vcot.scoring.metrics import best_constant_box

KNOWN_PREDICTIONS = [
    json.dumps({"id": "test:gqa:0", "prediction": "The <ref>gear</ref><box>[100, 100, 300, 300]</box> is red. Answer: red"}),
    json.dumps({"id": "test:gqa:1", "prediction": "<ref>gear</ref><box>[100, 100, 300, 200]</box> Answer: green"}),
    json.dumps({"id": "test:gqa:1", "prediction": "<box>[100, 100, 300, 300]</box> Answer: blue"}),  # duplicate: ignored
    json.dumps(
        {"id": "test:gqa:2", "prediction": "<ref>a</ref><box>[0, 0, 500, 500]</box> and <ref>a</ref><box>[0,0,500,500]</box>. Answer: 2"}
    ),
    json.dumps({"id": "test:docvqa:3", "prediction": "<box>[400, 200, 200, 400]</box> <box>[1, 2, 3]</box> Answer: TOTAL."}),
    json.dumps({"id": "test:docvqa:4", "prediction": "I cannot see it. Answer: B"}),
    json.dumps({"id": "not-a-record", "prediction": "<box>[0, 0, 10, 10]</box>"}),
    '{"id": "test:docvqa:5", "prediction": ',  # malformed: the record counts as without prediction
    json.dumps({"id": "test:gqa:0"}),
]


class _ReportParser(HTMLParser):
    """Collects what a reader of the report sees: table rows, images, box rectangles, histogram bins."""

    def __init__(self) -> None:
        super().__init__()
        self.table_rows: list[list[str]] = []
        self.images: list[str] = []
        self.rects: dict[str, int] = {"gt": 0, "pred": 0, "constant": 0}
        self.bins: list[int] = []
        self.external: list[str] = []
        self.ids_with_regression: list[str] = []
        self._in_table = self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table" and attributes.get("id") == "metrics":
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.table_rows.append([])
        elif self._in_table and tag in ("td", "th"):
            self._in_cell = True
            self.table_rows[-1].append("")
        elif tag == "img":
            self.images.append(attributes.get("src") or "")
        elif tag == "rect" and attributes.get("class") in self.rects:
            self.rects[attributes["class"]] += 1  # type: ignore[index]
        elif tag == "rect" and attributes.get("class") == "bin":
            self.bins.append(int(attributes["data-count"] or 0))
        for name in ("href", "src"):
            value = attributes.get(name)
            if value and not value.startswith("data:"):
                self.external.append(value)
        if attributes.get("id") == "regression":
            self.ids_with_regression.append(attributes.get("class") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_table and self._in_cell:
            self.table_rows[-1][-1] += data


def parse_report(text: str) -> _ReportParser:
    parser = _ReportParser()
    parser.feed(text)
    return parser


def _run(argv: list[str]) -> int:
    return main(argv)


def test_known_predictions_give_known_numbers(known_data: tuple[str, list], tmp_path: Path) -> None:
    data, records = known_data
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("\n".join(KNOWN_PREDICTIONS) + "\n")
    output = str(tmp_path / "eval")
    assert _run(["--predictions", str(predictions), "--data", data, "--output", output]) == 0

    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    overall = metrics["overall"]
    # Scored: records 0-4 (5 has no valid prediction line). Hand computation:
    # boxes: r0 IoU 1, r1 IoU 0.5 (not > 0.5), r2 two copies of one truth box (IoU 1, 1), r3 two invalid, r4 none.
    assert overall["samples"] == 5 and overall["grounded_samples"] == 5
    assert overall["box_detection_rate"] == pytest.approx(3 / 5)
    assert overall["predicted_boxes"] == 4
    assert overall["mean_iou"] == pytest.approx((1 + 0.5 + 1 + 1) / 4, abs=1e-5)
    assert overall["iou_success_rate"] == pytest.approx(3 / 4)
    # Acc: r0 1, r1 0 (0.5 - eps < 0.5), r2 1 pair of max(2, 2), r3 0, r4 0.
    assert overall["acc_at_50"] == pytest.approx((1 + 0 + 0.5 + 0 + 0) / 5)
    assert overall["acc_at_75"] == pytest.approx((1 + 0 + 0.5 + 0 + 0) / 5)
    # Answers: r0 red ok, r1 green wrong, r2 2 ok, r3 TOTAL. ok, r4 choice B (no) wrong.
    assert overall["answer_accuracy"] == pytest.approx(3 / 5)
    assert overall["invalid_boxes"] == 2 and overall["invalid_reasons"] == {"inverted": 1, "wrong_arity": 1}
    assert overall["samples_with_invalid_boxes"] == 1
    # First box against the first object: r0 1, r1 0.5, r2 1 (its first box is the first object), r3 0, r4 0.
    assert overall["first_object_iou"] == pytest.approx(2.5 / 5, abs=1e-5)
    assert overall["first_object_acc_at_50"] == pytest.approx(2 / 5)
    # The best constant box for these first objects: (100, 100, 300, 300) alone reaches (1 + 1 + 0.16 + 1/7 + 0) / 5.
    first_truths = [r["objects"][0]["box"] for r in records[:5]]
    assert overall["constant_box_iou"] == pytest.approx(best_constant_box(first_truths)[1])
    assert overall["constant_box_iou"] >= (2 + 0.16 + 1 / 7) / 5 - 1e-5
    gqa_constant = metrics["subsets"]["gqa"]["constant_box_iou"]  # per subset, on that subset's objects
    assert gqa_constant == pytest.approx(best_constant_box(first_truths[:3])[1]) and gqa_constant >= 2.16 / 3 - 1e-5
    gqa, docvqa = metrics["subsets"]["gqa"], metrics["subsets"]["docvqa"]
    assert gqa["samples"] == 3 and gqa["box_detection_rate"] == 1.0 and gqa["acc_at_50"] == pytest.approx(0.5)
    assert gqa["answer_accuracy"] == pytest.approx(2 / 3)
    assert docvqa["samples"] == 2 and docvqa["predicted_boxes"] == 0 and docvqa["mean_iou"] == 0.0
    assert docvqa["answer_accuracy"] == 0.5 and docvqa["invalid_boxes"] == 2
    assert metrics["join"] == {"scored": 5, "records_without_prediction": 1, "predictions_without_record": 1}
    assert metrics["details"]["skipped_predictions"] == {
        "duplicate_id": 1,
        "malformed_json": 1,
        "missing_id_or_prediction": 1,
    }

    # Predictions output: raw text, parsed boxes and per-sample IoU, listed in the manifest.
    committed = manifest.read_manifest(output)
    assert sorted(f["path"] for f in committed["files"]) == [
        "metrics.json",
        "predictions/00000-of-00001.jsonl.gz",
        "report.html",
    ]
    rows = {row["id"]: row for row in shards.read_jsonl(manifest.committed_files(output, "predictions/")[0])}
    assert rows["test:gqa:1"]["prediction"].endswith("Answer: green")
    assert rows["test:gqa:1"]["boxes"] == [{"ref": "gear", "box": [100, 100, 300, 200]}]
    assert rows["test:gqa:1"]["mean_iou"] == pytest.approx(0.5, abs=1e-5)
    assert rows["test:docvqa:3"]["boxes"] == [] and rows["test:docvqa:3"]["mean_iou"] is None
    assert [i["reason"] for i in rows["test:docvqa:3"]["invalid_boxes"]] == ["inverted", "wrong_arity"]

    # The report: metric table (overall + 2 subsets), an image per sample, every box drawn, the histogram.
    report = parse_report((tmp_path / "eval" / "report.html").read_text())
    assert [row[0] for row in report.table_rows] == ["subset", "overall", "docvqa", "gqa"]
    assert report.table_rows[1][1] == "5"
    assert len(report.images) == 5 and all(src.startswith("data:image/jpeg;base64,") for src in report.images)
    assert report.rects == {"gt": 6, "pred": 4, "constant": 5}  # the set's constant box, dashed, on every sample
    header = report.table_rows[0]
    assert "first-object IoU" in header and "constant box IoU" in header and "first-object Acc@0.5" in header
    assert "no model that ignores the image can beat it" in (tmp_path / "eval" / "report.html").read_text()
    assert sum(report.bins) == 4 and report.bins[-1] == 3  # three boxes with IoU ~1
    assert report.external == [] and report.ids_with_regression == []

    # A rerun is a no-op; --overwrite redoes it.
    before = (tmp_path / "eval" / "_SUCCESS").stat().st_mtime_ns
    assert _run(["--predictions", str(predictions), "--data", data, "--output", output]) == 0
    assert (tmp_path / "eval" / "_SUCCESS").stat().st_mtime_ns == before


def test_qwen25_absolute_predictions_are_mapped_back_once(tmp_path: Path) -> None:
    root = str(tmp_path)
    # 1400 x 700 stays 1400 x 700 under smart_resize (multiples of 28, within Qwen's budget).
    record = make_record(root, 0, "gqa", [[500, 500, 929, 900]], "x", width=1400, height=700)
    data = commit_records(root, [record])
    predictions = tmp_path / "p.jsonl"
    text = "<box>[700, 350, 1300, 630]</box> <box>[1300, 0, 1450, 100]</box> Answer: x"
    predictions.write_text(json.dumps({"id": record["id"], "prediction": text}) + "\n")

    out = str(tmp_path / "abs")
    assert _run(["--predictions", str(predictions), "--data", data, "--output", out, "--coords", "qwen2.5-absolute"]) == 0
    row = next(shards.read_jsonl(storage.join(out, "predictions/00000-of-00001.jsonl.gz")))
    assert row["boxes"] == [{"ref": None, "box": [500, 500, 929, 900]}]
    assert [i["reason"] for i in row["invalid_boxes"]] == ["out_of_range"]  # beyond the resized width: not clamped
    assert row["best_ious"] == [pytest.approx(1.0, abs=1e-5)]

    # Read as house coordinates instead, both boxes are out of range: no second interpretation is tried.
    out = str(tmp_path / "house")
    assert _run(["--predictions", str(predictions), "--data", data, "--output", out]) == 0
    metrics = storage.read_json(storage.join(out, "metrics.json"))
    assert metrics["overall"]["predicted_boxes"] == 0 and metrics["overall"]["invalid_reasons"] == {"out_of_range": 2}


def test_split_flag_and_s3(s3_bucket: str, tmp_path: Path) -> None:
    root = f"{s3_bucket}/eval-test"
    val = [make_record(root, 0, "gqa", [[0, 0, 500, 500]], "a")]
    train = [dict(make_record(root, 1, "gqa", [[0, 0, 500, 500]], "b"), split="train")]
    data = commit_records(root, val, train)
    assert [r["id"] for r in load_records(data, "train")] == ["test:gqa:1"]
    predictions = f"{root}/predictions.jsonl"
    storage.write_text(predictions, json.dumps({"id": "test:gqa:1", "prediction": "<box>[0, 0, 500, 500]</box> Answer: b"}))
    output = f"{root}/out"
    assert _run(["--predictions", predictions, "--data", data, "--split", "train", "--output", output]) == 0
    metrics = storage.read_json(f"{output}/metrics.json")
    assert metrics["overall"]["acc_at_75"] == 1.0 and metrics["overall"]["answer_accuracy"] == 1.0
    assert "data:image/jpeg;base64," in storage.read_text(f"{output}/report.html")


def test_an_empty_split_commits_nothing(tmp_path: Path, capsys: Any) -> None:
    """A val split whose file holds no record (convert with --val-fraction 0): exit 2 naming --split, nothing committed
    (it used to fail as if no prediction matched, exit 1)."""
    train = dict(make_record(str(tmp_path), 0, "gqa", [[0, 0, 500, 500]], "a"), split="train")
    data = commit_records(str(tmp_path), [], [train])
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps({"id": "test:gqa:0", "prediction": "x"}) + "\n")
    output = str(tmp_path / "o")
    assert _run(["--predictions", str(predictions), "--data", data, "--output", output]) == 2
    assert f"{data} holds no record under val/ (its files are empty): choose another --split" in capsys.readouterr().err
    assert not manifest.is_committed(output)
    assert _run(["--predictions", str(predictions), "--data", data, "--output", output, "--split", "all"]) == 0


def test_user_errors_are_one_line(known_data: tuple[str, list], tmp_path: Path, capsys: Any) -> None:
    data, _ = known_data
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps({"id": "other", "prediction": "x"}) + "\n")
    assert _run(["--predictions", str(predictions), "--data", data, "--output", str(tmp_path / "o")]) == 2
    assert "no prediction matches a record id (6 records, 1 responses)" in capsys.readouterr().err
    assert _run(["--predictions", str(predictions), "--data", data, "--output", str(tmp_path / "o"), "--split", "test"]) == 2
    assert not manifest.is_committed(str(tmp_path / "o"))
    with pytest.raises(SystemExit) as info:
        _run(["--predictions", str(predictions), "--model", "m", "--data", data, "--output", "o"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        _run(["--pointer", "p.json", "--data", data, "--regression-metrics", "mean_iou,mean_iuo"])
    assert info.value.code == 2 and "unknown mean_iuo" in capsys.readouterr().err


def test_a_line_that_is_not_utf8_is_counted_as_malformed(known_data: tuple[str, list], tmp_path: Path) -> None:
    data, _ = known_data
    predictions = tmp_path / "p.jsonl.gz"  # compressed too: the bytes reach the JSON parser as they are
    good = json.dumps({"id": "test:gqa:0", "prediction": "<box>[100, 100, 300, 300]</box> Answer: red"}).encode()
    latin1 = '{"id": "test:gqa:1", "prediction": "caf\u00e9 Answer: blue"}'.encode("latin-1")  # \xe9: not UTF-8
    storage.write_bytes(str(predictions), gzip.compress(good + b"\n" + latin1 + b"\n"))
    output = str(tmp_path / "o")
    assert _run(["--predictions", str(predictions), "--data", data, "--output", output]) == 0
    metrics = storage.read_json(f"{output}/metrics.json")
    assert metrics["details"]["skipped_predictions"] == {"malformed_json": 1}
    assert metrics["join"]["scored"] == 1 and metrics["overall"]["mean_iou"] == pytest.approx(1.0)


def test_evaluate_returns_its_manifest_or_none_when_already_committed(
    known_data: tuple[str, list], tmp_path: Path
) -> None:
    """As every stage: the manifest it committed, or None for an output that was already committed."""
    from vcot.evaluate.config import EvaluateConfig
    from vcot.evaluate.stage import evaluate

    data, _ = known_data
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("\n".join(KNOWN_PREDICTIONS) + "\n")
    config = EvaluateConfig(predictions=str(predictions), data=data, output=str(tmp_path / "eval"))
    committed = evaluate(config)
    assert committed == manifest.read_manifest(str(tmp_path / "eval"))
    assert committed["stage"] == "evaluate" and committed["stats"]["samples"] == 5  # the records with a prediction
    assert evaluate(config) is None
