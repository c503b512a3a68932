"""Each benchmark's own aggregates beside plain accuracy: HR-Bench's average over cycles and TreeBench's Perception and
Reasoning groups, from samples written in VLMEvalKit's layout, in ``metrics.json``, the report and the leaderboard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.evaluate import main as evaluate_main
from jobs.leaderboard import main as leaderboard_main
from tests.convert.test_convert_vlmevalkit import png64, write_tsv
from vcot.convert import ConvertConfig, convert
from vcot.io import manifest


def evaluate(tmp_path: Path, name: str, header: list[str], rows: list[dict], answers: list[str]) -> dict:
    """Convert the rows, answer them as planted (in row order), evaluate; the metrics."""
    source = write_tsv(tmp_path / f"{name}.tsv", header, rows)
    data = tmp_path / "bench" / name
    convert(ConvertConfig(source="vlmevalkit", input=str(source), output=str(data), val_fraction=1.0))
    records = {r["id"]: r for r in manifest.committed_records(str(data))}
    predictions = tmp_path / f"{name}.jsonl"
    predictions.write_text("".join(json.dumps({"id": f"{name}:{i}", "prediction": f"Answer: {a}"}) + "\n"
                                   for i, a in enumerate(answers)))  # fmt: skip
    assert len(records) == len(answers)
    output = tmp_path / "evals" / name
    assert evaluate_main(["--predictions", str(predictions), "--data", str(data), "--split", "all",
                          "--output", str(output)]) == 0  # fmt: skip
    return json.loads((output / "metrics.json").read_text())


def test_hr_bench_is_averaged_over_its_cycles_and_treebench_grouped(tmp_path: Path) -> None:
    header = ["index", "question", "answer", "category", "A", "B", "cycle_category", "image"]
    image = png64(64, 48)
    hr_rows = [{"index": i, "question": f"Question {i}?", "answer": "A", "category": category, "A": "yes", "B": "no",
                "cycle_category": cycle, "image": image if i == 0 else "0"}
               for i, (category, cycle) in enumerate([("FSP", "cycle_1")] * 3 + [("FCP", "cycle_2")])]  # fmt: skip
    metrics = evaluate(tmp_path, "hr_bench_4k", header, hr_rows, ["A", "A", "A", "B"])
    assert metrics["overall"]["answer_accuracy"] == pytest.approx(0.75)  # pooled: 3 of 4
    official = metrics["official"]
    assert official["cycles"] == {"cycle_1": {"FSP": 1.0, "all": 1.0}, "cycle_2": {"FCP": 0.0, "all": 0.0}}
    assert official["cycle_average"]["all"] == pytest.approx(0.5)  # HR-Bench's score: the mean of the cycles
    # each subset summed over the cycles and divided by all of them, as VLMEvalKit does (FSP is in one of two)
    assert official["cycle_average"] == {"FCP": 0.0, "FSP": 0.5, "all": 0.5}

    tree_header = ["index", "image", "question", "A", "B", "answer", "category", "target_instances"]
    categories = ["Perception/OCR", "Perception/Attributes", "Reasoning/Ordering"]
    tree_rows = [{"index": i, "image": image if i == 0 else "0", "question": f"Which {i}?", "A": "x", "B": "y",
                  "answer": "A", "category": category, "target_instances": ""} for i, category in enumerate(categories)]
    tree = evaluate(tmp_path, "TreeBench", tree_header, tree_rows, ["A", "B", "A"])
    assert tree["official"] == {"task_groups": {"Perception": {"samples": 2, "answer_accuracy": 0.5},
                                                "Reasoning": {"samples": 1, "answer_accuracy": 1.0}}}  # fmt: skip
    report = (tmp_path / "evals" / "TreeBench" / "report.html").read_text()
    assert '<table id="task-groups">' in report
    assert '<table id="cycles">' in (tmp_path / "evals" / "hr_bench_4k" / "report.html").read_text()

    assert leaderboard_main(["--evals", str(tmp_path / "evals"), "--output", str(tmp_path / "board")]) == 0
    board = json.loads((tmp_path / "board" / "leaderboard.json").read_text())
    columns = {c["benchmark"]: c for c in board["columns"]}
    cells = {cid: found for row in board["rows"] for cid, found in row["cells"].items()}  # a row per predictions file
    hr = cells[columns["hr_bench_4k"]["id"]]
    assert hr["answer"] == pytest.approx(0.5) and hr["answer_score"] == "exact match, mean of 2 cycles"
    assert columns["hr_bench_4k"]["protocol"].endswith(", exact match, mean of 2 cycles")
    assert cells[columns["TreeBench"]["id"]]["answer"] == pytest.approx(2 / 3)
