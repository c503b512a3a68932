"""``--benchmark ground-r1``: Ground-R1's answer rules per subset on its real benchmark lines, the per-subset table,
its 12-subset average, and the leaderboard cell that reports it."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from jobs.evaluate import main
from jobs.leaderboard import main as leaderboard_main
from tests.conftest import FIXTURES
from vcot.convert import ConvertConfig, convert
from vcot.evaluate.ground_r1 import letter_score, rouge_score, rule_score, wer_score
from vcot.io import manifest

SAMPLE = FIXTURES / "ground_r1" / "subset150_choice_sample.jsonl"


@pytest.fixture(scope="module")
def ground_r1_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict[str, Any]]]:
    root = tmp_path_factory.mktemp("ground-r1")
    output = str(root / "converted")
    convert(ConvertConfig(source="ground-r1", input=str(SAMPLE), output=output))
    records = list(manifest.committed_records(output))
    assert len(records) == 29 and {r["split"] for r in records} == {"train", "val"}  # --benchmark reads both
    return output, records


def planted(record: dict[str, Any], nth: int) -> tuple[str, float | None]:
    """A response to ``record`` (the subset's ``nth``) and the score Ground-R1's rules give it, worked out here by
    hand from each rule."""
    subset, answer = record["subset"], record["answer"]
    box = f"<ref>it</ref><box>{record['objects'][0]['box']}</box>" if record["objects"] else "No box."
    if subset == "emotic":
        return f"{box} Answer: {answer}", None  # their script does not score it
    if record.get("choices"):  # gqa, openimages: the option named decides, as a letter, "(B)" or its text
        right, wrong = record["answer_index"], record["answer_index"] - 1
        return [(f"{box} Answer: {'ABCD'[right]}", 1.0), (f"{box} Answer: {record['choices'][wrong]}", 0.0),
                (f"{box} Answer: ({'ABCD'[right]})", 1.0)][nth]  # fmt: skip
    first = nth == 0
    if first:
        return f"{box} Answer: {answer.upper()}", 1.0  # case is ignored by every rule
    if subset in ("vsr", "cub"):
        return f"{box} Answer: I think {answer} here", 0.6  # contains the answer
    if subset == "v7w":
        return f"{box} Answer: {answer} and more", 0.0  # exact match only
    if subset == "flickr30k":
        return f"{box} Answer: zzz", 0.0  # no word in common
    words = len(answer.split())  # word error rate: one extra word
    return f"{box} Answer: {answer} extra", words / (words + 1)


def test_each_subset_is_scored_by_its_rule_and_averaged_as_ground_r1_reports(
    ground_r1_data: tuple[str, list], tmp_path: Path
) -> None:
    data, records = ground_r1_data
    expected: dict[str, list[float | None]] = {}
    lines = []
    for record in records:
        response, score = planted(record, len(expected.get(record["subset"], [])))
        expected.setdefault(record["subset"], []).append(score)
        lines.append(json.dumps({"id": record["id"], "prediction": response}) + "\n")
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(lines))
    output = tmp_path / "eval"
    assert main(["--predictions", str(predictions), "--data", data, "--output", str(output),
                 "--benchmark", "ground-r1"]) == 0  # fmt: skip

    table = list(csv.DictReader(io.StringIO((output / "benchmark.csv").read_text())))
    assert [row["name"] for row in table] == [
        "DocVQA", "TextCaps", "TextVQA", "DUDE", "SROIE", "InfographicsVQA", "Flickr30k", "Visual7W", "GQA",
        "Open Images", "VSR", "CUB (Birds-200-2011)", "EMOTIC", "Average"]  # Ground-R1's order; EMOTIC last
    for row in table[:-2]:
        scores = expected[row["subset"]]
        assert float(row["answer_score"]) == pytest.approx(sum(scores) / len(scores), abs=1e-4), row["subset"]
        assert row["rule_score"] == row["answer_score"] and row["in_average"] == "True"
        assert int(row["questions"]) == len(scores)  # a question without a usable box is scored too
    emotic = table[-2]
    assert emotic["answer_score"] == "" and emotic["in_average"] == "False"
    subset_means = [float(row["answer_score"]) for row in table[:-2]]
    assert float(table[-1]["answer_score"]) == pytest.approx(sum(subset_means) / 12, abs=1e-3)

    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["benchmark"]["answer_score"] == "rule" and len(metrics["benchmark"]["averaged_subsets"]) == 12
    report = (output / "report.html").read_text()
    assert "VisCoT benchmark, Ground-R1&#x27;s protocol" in report or "VisCoT benchmark, Ground-R1's protocol" in report

    assert leaderboard_main(["--evals", str(output), "--output", str(tmp_path / "board")]) == 0
    board = json.loads((tmp_path / "board" / "leaderboard.json").read_text())
    column = board["columns"][0]
    assert column["benchmark"] == "VisCoT (Ground-R1)"
    assert column["protocol"].endswith(", Ground-R1's rules, mean of 12 subsets")
    found = board["rows"][0]["cells"][column["id"]]
    assert found["answer"] == pytest.approx(metrics["benchmark"]["average"]["answer_score"])
    assert found["answer_score"] == "Ground-R1's rules, mean of 12 subsets"


def test_the_rules_read_answers_as_ground_r1_s_script_does() -> None:
    # an answer naming an option (vcot's "(A) text" style) is that option; the rest is read as their script reads it
    choice = {"subset": "gqa", "choices": ["Door", "Wall", "Window", "Garage"], "answer_index": 2, "answer": "Window"}
    assert [rule_score(choice, f"Answer: {a}") for a in ("(C)", "Window", "C. Window", "Door", "B")] == [1, 1, 1, 0, 0]
    assert rule_score(choice, "It is the one marked C. that one") == 1.0  # names no option: an "X." anywhere
    # their reading: the first character of the answer when it is A-D, even at the start of a word
    assert letter_score("Answer: Door", "Door", "D") == 1.0
    assert letter_score("Answer: Window", "Window", "C") == 0.0  # the option's text is not read
    assert letter_score("The branches are in front of C. the window", "x", "C") == 1.0
    # one minus the smaller word error rate of the two directions
    assert wer_score("Evelyn Beatrice Hall", "Hall") == pytest.approx(1 / 3)
    assert wer_score("A. C. Monk", "a. c. monk") == 1.0
    # ROUGE with Porter stemming: "wearing" and "wears" are one word (worked out by hand: 0.7831; 0.5397 unstemmed)
    assert rouge_score("The boy is wearing blue", "the boy wears blue") == pytest.approx(0.78307, abs=1e-4)
    record = {"subset": "vsr", "answer": "dog"}
    assert rule_score(record, "It shows. Answer: a dog") == 0.6
    assert rule_score(record, "dog") == 1.0  # no Answer: the whole response is the answer
    assert rule_score({"subset": "emotic", "answer": "joy"}, "Answer: joy") is None
