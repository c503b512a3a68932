"""``--prompt-style``: grounded reasoning vs the answer alone, on the same samples, side by side (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jobs.evaluate import main
from tests.evaluate.evaluate_helpers import commit_records, make_record
from vcot.grounding.model_format import HOUSE
from vcot.grounding.prompts import DIRECT_INSTRUCTION
from vcot.io import manifest, shards, storage
from vcot.models.generation import GenerationSettings, prompt_text
from vcot.models.loading import load_processor


def _rows(output: str, folder: str) -> list[dict[str, Any]]:
    return list(shards.read_jsonl(manifest.committed_files(output, f"{folder}/")[0]))


def test_direct_prompt_asks_for_the_answer_alone(tiny_model_dir: Path) -> None:
    processor = load_processor(str(tiny_model_dir))
    record = {"image": "unused.png", "width": 10, "height": 10, "question": "What color is the gear?"}
    cot = prompt_text(processor, record, GenerationSettings(fmt=HOUSE, prompt_style="cot"))
    direct = prompt_text(processor, record, GenerationSettings(fmt=HOUSE, prompt_style="direct"))
    assert HOUSE.instruction() in cot and DIRECT_INSTRUCTION not in cot
    assert DIRECT_INSTRUCTION in direct and "<box>" not in direct and "Think step by step" not in direct
    assert cot.replace(HOUSE.instruction(), "") == direct.replace(DIRECT_INSTRUCTION, "")  # the same question


def test_both_styles_give_the_side_by_side_table(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = str(tmp_path)
    records = [make_record(root, i, ("gqa", "textvqa")[i % 2], [[100, 100, 400, 400]], "red") for i in range(4)]
    data = commit_records(root, records)
    output = str(tmp_path / "eval")
    argv = ["--model", str(tiny_model_dir), "--coords", "norm1000", "--data", data, "--output", output,
            "--prompt-style", "both", "--max-new-tokens", "8"]
    assert main(argv) == 0

    metrics = storage.read_json(f"{output}/metrics.json")
    cot_rows, direct_rows = _rows(output, "predictions"), _rows(output, "predictions-direct")
    assert len(cot_rows) == len(direct_rows) == 4
    assert metrics["details"]["generation"]["prompt_style"] == "cot"
    assert metrics["details"]["other_prompt_styles"]["direct"]["generation"]["prompt_style"] == "direct"
    comparison = metrics["prompt_styles"]
    assert comparison["styles"] == ["cot", "direct"]
    assert [row["subset"] for row in comparison["rows"]] == ["overall", "gqa", "textvqa"]
    for row in comparison["rows"]:  # every number recomputed from the two predictions files
        def accuracy(rows: list[dict[str, Any]], subset: str = row["subset"]) -> float:
            chosen = [r for r in rows if subset in ("overall", r["subset"])]
            return sum(r["answer_correct"] for r in chosen) / len(chosen)

        assert row["answer_accuracy"] == {"cot": accuracy(cot_rows), "direct": accuracy(direct_rows)}
        assert row["answer_accuracy_difference"] == pytest.approx(accuracy(cot_rows) - accuracy(direct_rows))
        assert row["samples"] == {"cot": 4, "direct": 4} if row["subset"] == "overall" else {"cot": 2, "direct": 2}
    assert metrics["prompt_styles"]["metrics"]["direct"]["overall"]["samples"] == 4
    report = (tmp_path / "eval" / "report.html").read_text()
    assert '<table id="prompt-styles">' in report and "answer acc. cot - direct" in report
    files = {f["path"] for f in manifest.read_manifest(output)["files"]}
    assert "predictions-direct/00000-of-00001.jsonl.gz" in files


def test_prompt_style_needs_a_model(known_data: tuple[str, list], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    data, records = known_data
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps({"id": records[0]["id"], "prediction": "red"}) + "\n")
    argv = ["--predictions", str(predictions), "--data", data, "--output", str(tmp_path / "o"),
            "--prompt-style", "both"]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and "--prompt-style changes the prompt" in capsys.readouterr().err
