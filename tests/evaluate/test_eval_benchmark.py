"""``--benchmark viscot``: a VisCoT-layout file built from the real samples, converted, scored per subset."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from jobs.evaluate import main
from tests.conftest import FIXTURES
from vcot.convert import ConvertConfig, convert
from vcot.evaluate.benchmark import benchmark_csv, benchmark_table
from vcot.io import manifest

SAMPLES = FIXTURES / "viscot"
PER_SUBSET = 4


@pytest.fixture(scope="module")
def benchmark_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict[str, Any]]]:
    """The benchmark sample converted as a user converts the real file: no images, sizes from its detection file,
    the default train/val split (``--benchmark`` reads both)."""
    root = tmp_path_factory.mktemp("viscot-benchmark")
    items = json.loads((SAMPLES / "benchmark_sample.json").read_text())
    (root / "viscot_benchmark.json").write_text(json.dumps(items))
    output = str(root / "converted")
    convert(ConvertConfig(source="viscot", input=str(root / "viscot_benchmark.json"), output=output,
                          metadata=str(SAMPLES / "benchmark_det_sample.jsonl"), read_image_headers=False))
    records = list(manifest.committed_records(output))
    assert len(records) == len(items) == 36 and {r["split"] for r in records} == {"train", "val"}
    return output, records


def _response(index: int, record: dict[str, Any]) -> str:
    """Cycle through: right box and answer, right box and wrong answer, no box and right answer."""
    box = record["objects"][0]["box"]
    if index % 3 == 0:
        return f"The <ref>region</ref><box>{box}</box> shows it. Answer: {record['answer']}"
    if index % 3 == 1:
        return f"The <ref>region</ref><box>{box}</box> shows it. Answer: not this"
    return f"Answer: {record['answer']}"


def test_benchmark_run_gives_the_per_subset_table(benchmark_data: tuple[str, list], tmp_path: Path) -> None:
    data, records = benchmark_data
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"id": r["id"], "prediction": _response(i, r)}) + "\n"
                                   for i, r in enumerate(records)))
    output = tmp_path / "eval"
    argv = ["--predictions", str(predictions), "--data", data, "--output", str(output), "--benchmark", "viscot",
            "--max-per-subset", str(PER_SUBSET)]
    assert main(argv) == 0

    # what the table must say, computed here from the records that were sent
    expected: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        kept = expected.setdefault(record["subset"], [])
        if len(kept) < PER_SUBSET:
            kept.append(index % 3)
    table = list(csv.DictReader(io.StringIO((output / "benchmark.csv").read_text())))
    assert [row["name"] for row in table] == ["DocVQA", "TextVQA", "SROIE", "Flickr30k", "GQA", "VSR", "Average"]
    for row in table[:-1]:
        cases = expected[row["subset"]]
        assert int(row["questions"]) == PER_SUBSET
        assert float(row["answer_score"]) == pytest.approx(sum(c != 1 for c in cases) / PER_SUBSET, abs=1e-4)
        assert float(row["detection_acc_at_50"]) == pytest.approx(sum(c != 2 for c in cases) / PER_SUBSET, abs=1e-4)
        assert float(row["mean_iou"]) == pytest.approx(sum(c != 2 for c in cases) / PER_SUBSET, abs=1e-4)
        assert row["judge_score"] == "" and row["in_average"] == "True"
    average = table[-1]
    assert int(average["questions"]) == 6 * PER_SUBSET
    assert float(average["answer_score"]) == pytest.approx(
        sum(float(row["answer_score"]) for row in table[:-1]) / 6, abs=1e-3
    )

    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["benchmark"]["answer_score"] == "exact_match" and len(metrics["benchmark"]["subsets"]) == 6
    assert metrics["overall"]["samples"] == 6 * PER_SUBSET and metrics["details"]["split"] == "all"
    report = (output / "report.html").read_text()
    assert '<table id="benchmark">' in report and "answer score (exact match)" in report
    for name in ("DocVQA", "TextVQA", "SROIE", "Flickr30k", "GQA", "VSR", "Average"):
        assert f"<td>{name}</td>" in report
    assert "benchmark.csv" in {f["path"] for f in manifest.read_manifest(str(output))["files"]}


def test_benchmark_refuses_records_of_another_source(known_data: tuple[str, list], tmp_path: Path,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    data, records = known_data
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(json.dumps({"id": records[0]["id"], "prediction": "Answer: red"}) + "\n")
    argv = ["--predictions", str(predictions), "--data", data, "--output", str(tmp_path / "eval"),
            "--benchmark", "viscot"]
    assert main(argv) == 1
    assert "are not viscot records" in capfd.readouterr().err


def test_the_judges_score_is_the_answer_score_when_the_judge_is_on() -> None:
    def subset(samples: int, exact: float, judge: float) -> dict[str, Any]:
        return {"samples": samples, "answer_accuracy": exact, "judge_score": judge, "first_box_acc_at_50": 0.5,
                "truth_mean_iou": 0.4}

    metrics = {"subsets": {"v7w": subset(3, 0.0, 0.9), "gqa": subset(2, 0.5, 0.75), "docvqa": subset(4, 0.25, 0.5)}}
    table = benchmark_table(metrics, judged=True)
    assert [row["name"] for row in table["subsets"]] == ["DocVQA", "GQA", "Visual7W"]  # the paper's order
    assert [row["answer_score"] for row in table["subsets"]] == [0.5, 0.75, 0.9]
    assert table["averaged_subsets"] == ["docvqa", "gqa"]  # Visual7W is not in VisCoT's average
    assert table["average"]["answer_score"] == pytest.approx(0.625)
    assert table["average"]["exact_match"] == pytest.approx(0.375) and table["average"]["questions"] == 6
    lines = benchmark_csv(table).splitlines()
    assert lines[0].startswith("subset,name,questions,answer_score,exact_match,judge_score")
    assert lines[-1].startswith("average,Average,6,0.625,0.375,0.625")
