"""Which adapters a server can take as a LoRA on their base model (the rest are served merged)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vcot.models.served import lora_serving_problem

PROJECTIONS = "modules_to_save=[],lora_target_modules=[q_proj,down_proj]"


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (f"{PROJECTIONS}", None),  # the large recipes' kind of LoRA: the language model's projections
        (f"{PROJECTIONS},tune_vision=true", "adapts the vision tower"),  # down_proj matches the vision MLPs' too
        ("", "trains whole modules (lm_head, merger"),  # tiny-cpu's own
    ],
)
def test_an_adapter_that_vllm_cannot_load_as_a_lora_says_why(
    settings: str, problem: str | None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForImageTextToText

    from vcot.train.common import add_lora
    from vcot.train.recipe import load_recipe

    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    add_lora(base, load_recipe("tiny-cpu", settings)).save_pretrained(tmp_path)
    found = lora_serving_problem(tmp_path)
    assert found == problem if problem is None else problem in found


@pytest.mark.parametrize("setting", [{"use_dora": True}, {"bias": "lora_only"}, {"lora_bias": True}])
def test_dora_and_trained_biases_are_served_merged(setting: dict[str, object], tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "bias": "none", **setting}))
    assert "DoRA or trains biases" in (lora_serving_problem(tmp_path) or "")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "bias": "none"}))
    assert lora_serving_problem(tmp_path) is None
