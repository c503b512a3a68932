"""What evaluate refuses before reading anything: inputs of the wrong stage, an output that holds an input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jobs.evaluate import main
from vcot.io import manifest, shards


def _predictions(tmp_path: Path, records: list[dict[str, Any]]) -> str:
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps({"id": r["id"], "prediction": "Answer: x"}) + "\n" for r in records))
    return str(path)


def _tokenize_output(root: Path) -> str:
    tokens = str(root / "tokens")
    files = [shards.write_file(tokens, "val/00000-of-00001.parquet", b"PAR1\x00\x01not json\xffPAR1")]
    manifest.commit(tokens, stage="tokenize", files=files, config={})
    return tokens


def test_data_of_the_wrong_stage_is_named_in_one_line(
    known_data: tuple[str, list[dict[str, Any]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, records = known_data
    tokens = _tokenize_output(tmp_path)
    code = main(["--predictions", _predictions(tmp_path, records), "--data", tokens, "--output", str(tmp_path / "e")])
    assert code == 2
    assert f"vcot-evaluate: error: {tokens} is a tokenize output; expected records" in capsys.readouterr().err


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_that_is_the_data_is_refused_and_the_data_kept(
    known_data: tuple[str, list[dict[str, Any]]], tmp_path: Path, capsys: pytest.CaptureFixture[str], overwrite: bool
) -> None:
    data, records = known_data
    argv = ["--predictions", _predictions(tmp_path, records), "--data", data, "--output", data]
    assert main(argv + (["--overwrite"] if overwrite else [])) == 2
    assert "same place or one holds the other" in capsys.readouterr().err
    assert len(list(manifest.committed_records(data, ("val/",)))) == len(records)


def test_an_adapter_that_is_another_stages_output_is_refused(
    known_data: tuple[str, list[dict[str, Any]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = known_data
    tokens = _tokenize_output(tmp_path)
    argv = ["--model", str(tmp_path / "no-model"), "--data", data, "--output", str(tmp_path / "e")]
    assert main([*argv, "--adapter", tokens]) == 2  # refused before any model is loaded
    assert f"{tokens} is a tokenize output; expected the adapter/ folder of a train output" in capsys.readouterr().err
    assert main([*argv, "--adapter", f"{tokens}/adapter"]) == 2
    assert f"{tokens} is a tokenize output; expected a train output" in capsys.readouterr().err


def test_the_adapter_of_a_full_finetune_is_refused_with_the_model_to_pass(
    known_data: tuple[str, list[dict[str, Any]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = known_data
    run = tmp_path / "run" / "train"  # a full fine-tune's output: model/ with its card, no adapter/
    (run / "model").mkdir(parents=True)
    (run / "model" / "vcot-model.json").write_text(json.dumps({"base_model": "m", "coords": "norm1000"}))
    manifest.commit(str(run), stage="train", files=[], config={"recipe_values": {"finetune": "full"}})
    argv = ["--model", str(tmp_path / "no-model"), "--adapter", f"{run}/adapter", "--data", data]
    assert main([*argv, "--output", str(tmp_path / "e")]) == 2  # refused before any model is loaded
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"vcot-evaluate: error: {run} is a full fine-tune: pass --model {run}/model without --adapter"
