"""Sampled generation in process (``vcot.models.generation``): what the base's generation_config.json cannot change."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from tests.conftest import QWEN25_VL_GENERATION
from tests.evaluate.evaluate_helpers import make_record
from vcot.grounding.model_format import ModelFormat
from vcot.models.generation import GenerationSettings, generate_batch
from vcot.models.loading import load_model_and_processor, model_family


def test_sampled_answers_stay_sampled_when_the_base_decodes_greedily_by_default(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Qwen2.5-VL's generation_config.json sets top_k 1: left in place, --temperature (Avg@k) would draw the greedy
    answer every time."""
    model, processor = load_model_and_processor(str(tiny_model_dir))
    model.generation_config.update(**QWEN25_VL_GENERATION)
    fmt = ModelFormat.for_processor(processor, model_family(str(tiny_model_dir)), coords="norm1000")
    records = [make_record(str(tmp_path), 0, "gqa", [[100, 100, 400, 500]], "red")] * 4
    settings = GenerationSettings(fmt=fmt, max_new_tokens=12, temperature=1.0, repetition_penalty=1.0)
    torch.manual_seed(0)
    answers = generate_batch(model, processor, records, settings)
    assert len(set(answers)) > 1, answers


def test_the_answer_turn_of_a_two_phase_model_takes_no_penalty_from_the_base(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rationale_turn model's answer turn is a word or two: Qwen's 1.05 repetition penalty must not reach it."""
    model, processor = load_model_and_processor(str(tiny_model_dir))
    model.generation_config.update(**QWEN25_VL_GENERATION)
    fmt = ModelFormat.for_processor(processor, model_family(str(tiny_model_dir)), coords="norm1000")
    size = processor.image_processor.size
    fmt = dataclasses.replace(fmt, layout="rationale_turn", vision=dataclasses.replace(
        fmt.vision, min_pixels=size.shortest_edge, max_pixels=size.longest_edge))
    penalties: list[object] = []
    generate = model.generate

    def spy(**kwargs: object) -> object:
        penalties.append(kwargs.get("repetition_penalty"))
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    record = make_record(str(tmp_path), 0, "gqa", [[100, 100, 400, 500]], "red")
    generate_batch(model, processor, [record], GenerationSettings(fmt=fmt, max_new_tokens=6, repetition_penalty=1.0))
    assert penalties == [1.0, 1.0]  # the Analyzer turn (as asked), then the answer turn
