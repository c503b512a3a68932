"""Fixtures for the evaluate tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.evaluate.evaluate_helpers import KNOWN_RECORDS, commit_records, make_record


@pytest.fixture
def known_data(tmp_path: Any) -> tuple[str, list[dict[str, Any]]]:
    root = str(tmp_path)
    records = [make_record(root, i, subset, boxes, answer, **extra) for i, subset, boxes, answer, extra in KNOWN_RECORDS]
    return commit_records(root, records), records


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the tiny model with a vcot-model.json in the flat layout earlier versions wrote."""
    import torch
    from peft import LoraConfig, get_peft_model

    from vcot.models.loading import MODEL_CARD, load_model_and_processor

    model, processor = load_model_and_processor(str(tiny_model_dir))
    torch.manual_seed(0)  # random LoRA weights, the same whichever tests ran before (a test compares their scores)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(adapter)
    size = processor.image_processor.size
    card = {"base_model": str(tiny_model_dir), "coords": "norm1000", "mode": "multimodal",
            "min_pixels": size.shortest_edge, "max_pixels": size.longest_edge}
    (adapter / MODEL_CARD).write_text(json.dumps(card))
    return adapter
