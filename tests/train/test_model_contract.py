"""The model contract end to end: tokenize -> train -> evaluate on the tiny Qwen3-VL (the second family) and on
outputs in the flat layout of vcot 0.1, reading boxes through the recorded format."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from jobs.evaluate import main as evaluate_main
from vcot.grounding.model_format import ModelFormat
from vcot.io import manifest, storage
from vcot.models.loading import MODEL_CARD
from vcot.tokenize import TokenizeConfig, tokenize
from vcot.train import TrainConfig, train

STEPS = "max_steps=2,save_steps=10,eval_steps=10,logging_steps=1"
EVAL_FAST = ["--max-new-tokens", "8", "--batch-size", "4"]

pytestmark = pytest.mark.integration


def test_qwen3vl_tokenizes_trains_and_evaluates_in_its_own_geometry(
    tiny_qwen3vl_dir: Path, record_output: Callable[..., str], tmp_path: Path
) -> None:
    records = record_output(12, seed=3)
    tokens = str(tmp_path / "tokens")
    tokenize(TokenizeConfig(input=[records], output=tokens, model=str(tiny_qwen3vl_dir), coords="qwen2.5-absolute"))
    fmt = ModelFormat.from_dict(manifest.read_manifest(tokens)["config"])
    assert (fmt.family, fmt.vision.patch_size, fmt.vision.factor, fmt.coords) == ("qwen3-vl", 16, 32, "qwen2.5-absolute")

    run = str(tmp_path / "runs" / "q3")
    assert train(TrainConfig(data=tokens, model=str(tiny_qwen3vl_dir), output=run, recipe="tiny-cpu", set=STEPS))
    card = json.loads((Path(run) / "adapter" / MODEL_CARD).read_text())
    assert ModelFormat.from_dict(card) == fmt and card["base_model"] == str(tiny_qwen3vl_dir)

    out = str(tmp_path / "eval")
    args = ["--model", str(tiny_qwen3vl_dir), "--adapter", f"{run}/adapter", "--data", records, "--output", out]
    assert evaluate_main([*args, *EVAL_FAST]) == 0
    details = storage.read_json(f"{out}/metrics.json")["details"]
    assert ModelFormat.from_dict(details["model_format"]) == fmt


def test_outputs_in_the_flat_layout_of_01_still_train_and_evaluate(
    tiny_model_dir: Path, record_output: Callable[..., str], tmp_path: Path
) -> None:
    """A tokenize manifest and an adapter card written by vcot 0.1 (mode/coords/min/max pixels, no model_format)."""
    records = record_output(12, seed=4)
    tokens = str(tmp_path / "tokens")
    tokenize(TokenizeConfig(input=[records], output=tokens, model=str(tiny_model_dir), coords="qwen2.5-absolute"))
    committed = manifest.read_manifest(tokens)
    fmt = ModelFormat.from_dict(committed["config"])
    old_config = {k: v for k, v in committed["config"].items() if k != "model_format"}
    old_config.update(min_pixels=fmt.vision.min_pixels, max_pixels=fmt.vision.max_pixels, patch_size=14, merge_size=2)
    storage.write_json(manifest.manifest_uri(tokens), {**committed, "config": old_config})

    run = str(tmp_path / "runs" / "old")
    assert train(TrainConfig(data=tokens, model=str(tiny_model_dir), output=run, recipe="tiny-cpu", set=STEPS))
    card_path = Path(run) / "adapter" / MODEL_CARD
    assert ModelFormat.from_dict(json.loads(card_path.read_text())) == fmt
    old_card = {"base_model": str(tiny_model_dir), "coords": fmt.coords, "mode": fmt.mode,
                "min_pixels": fmt.vision.min_pixels, "max_pixels": fmt.vision.max_pixels}
    card_path.write_text(json.dumps(old_card))

    out = str(tmp_path / "eval")
    args = ["--model", str(tiny_model_dir), "--adapter", f"{run}/adapter", "--data", records, "--output", out]
    assert evaluate_main([*args, *EVAL_FAST]) == 0
    assert ModelFormat.from_dict(storage.read_json(f"{out}/metrics.json")["details"]["model_format"]) == fmt
