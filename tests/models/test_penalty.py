"""The box-aware repetition penalty: standard outside boxes, coordinate tokens spared inside an open box."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, RepetitionPenaltyLogitsProcessor

from vcot.grounding.boxes import BOX_FORMATS, BoxFormat, render_grounded
from vcot.grounding.model_format import ModelFormat
from vcot.models.generation import BoxAwareRepetitionPenalty, GenerationSettings, penalty_processors
from vcot.models.penalty import coordinate_token_ids, is_coordinate_text


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _ids(tokenizer, text: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return torch.tensor([tokenizer.encode(text)])


def test_coordinate_tokens_are_digits_and_box_punctuation(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = coordinate_token_ids(tokenizer)
    texts = [tokenizer.decode([i]) for i in ids]
    assert all(is_coordinate_text(t) for t in texts)
    for digit in "0123456789":
        assert tokenizer.convert_tokens_to_ids(digit) in ids
    assert tokenizer.convert_tokens_to_ids("a") not in ids
    assert not any(t.strip() in ("<box>", "box", "Answer") for t in texts)


def test_same_as_standard_penalty_outside_a_box(tokenizer) -> None:  # type: ignore[no-untyped-def]
    input_ids = _ids(tokenizer, "The <ref>cat</ref><box>[12, 34, 56, 78]</box> is near 12 and 34")
    scores = torch.randn(1, len(tokenizer), generator=torch.Generator().manual_seed(0))
    expected = RepetitionPenaltyLogitsProcessor(1.2)(input_ids, scores.clone())
    assert torch.equal(BoxAwareRepetitionPenalty(1.2, tokenizer)(input_ids, scores.clone()), expected)


def test_coordinates_are_spared_inside_an_open_box(tokenizer) -> None:  # type: ignore[no-untyped-def]
    closed = _ids(tokenizer, "The <ref>cat</ref><box>[12, 34, 56, 78]</box> and the <ref>dog</ref>")
    opened = _ids(tokenizer, "The <ref>cat</ref><box>[12, 34, 56, 78]</box> and the <ref>dog</ref><box>[12, ")
    penalty = BoxAwareRepetitionPenalty(1.2, tokenizer)
    scores = torch.full((1, len(tokenizer)), 2.0)
    inside = penalty(opened, scores.clone())[0]
    outside = penalty(closed, scores.clone())[0]
    seen_coordinates = [i for i in set(opened[0].tolist()) if penalty.coordinate_mask[i]]
    seen_words = [i for i in set(opened[0].tolist()) if not penalty.coordinate_mask[i]]
    assert seen_coordinates and seen_words
    assert all(inside[i] == 2.0 for i in seen_coordinates)  # spared inside the box
    assert all(inside[i] == pytest.approx(2.0 / 1.2) for i in seen_words)  # everything else still penalized
    assert all(outside[i] == pytest.approx(2.0 / 1.2) for i in set(closed[0].tolist()))


def test_rows_are_judged_separately(tokenizer) -> None:  # type: ignore[no-untyped-def]
    penalty = BoxAwareRepetitionPenalty(1.2, tokenizer)
    pad = tokenizer.pad_token_id
    a = tokenizer.encode("see <box>[1, 2, ")
    b = tokenizer.encode("see <box>[1, 2, 3, 4]</box>")
    width = max(len(a), len(b))
    batch = torch.tensor([[pad] * (width - len(a)) + a, [pad] * (width - len(b)) + b])  # left padded
    assert penalty.rows_inside_box(batch).tolist() == [True, False]


@pytest.mark.parametrize("box_syntax", BOX_FORMATS)
def test_digits_inside_an_open_box_of_each_syntax_are_spared(tokenizer: Any, box_syntax: BoxFormat) -> None:
    """The processor evaluate builds from the run's format knows that format's box: ``<bbox>``, ``"bbox_2d": [``..."""
    box = render_grounded("dog", (12, 34, 56, 78), box_syntax)
    first = "The " + render_grounded("cat", (12, 34, 56, 78), box_syntax) + " and the "
    opened = _ids(tokenizer, first + box[: box.index("34")])
    closed = _ids(tokenizer, first + box + " is near")
    settings = GenerationSettings(fmt=ModelFormat.for_family(box_syntax=box_syntax))
    (penalty,) = penalty_processors(settings, tokenizer)
    scores = torch.full((1, len(tokenizer)), 2.0)
    digits = [i for i in set(opened[0].tolist()) if tokenizer.decode([i]).strip().isdigit()]
    assert digits
    inside, outside = penalty(opened, scores.clone())[0], penalty(closed, scores.clone())[0]
    assert all(inside[i] == 2.0 for i in digits)  # spared inside the open box
    assert all(outside[i] == pytest.approx(2.0 / 1.2) for i in digits)  # penalized once it is closed
