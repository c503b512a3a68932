"""The collator builds exactly the batch the processor would, and refuses rows whose image changed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from vcot.errors import VcotError
from vcot.images import load_rgb
from vcot.modeling import load_processor
from vcot.model_format import ModelFormat
from vcot.tokenize import Encoder
from vcot.train.data import Collator


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    return load_processor(str(tiny_model_dir))


def test_batch_equals_the_processors_output(processor, one_record: Callable[..., dict]) -> None:  # type: ignore[no-untyped-def]
    encoder = Encoder(processor, ModelFormat.for_processor(processor, "qwen2.5-vl"))
    records = [one_record(i, seed=i) for i in range(3)]  # different image sizes
    rows = [encoder.encode(r) for r in records]
    batch = Collator(processor)(rows)
    processor.tokenizer.padding_side = "right"
    texts = ["".join(encoder.chat_texts(r)) for r in records]
    expected = processor(
        text=texts, images=[load_rgb(r["image"]) for r in records], padding=True, return_tensors="pt"
    )
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
        assert torch.equal(batch[key], expected[key]), key
    assert ((batch["labels"] == -100) | (batch["labels"] == batch["input_ids"])).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_a_row_whose_image_no_longer_matches_is_refused(processor, one_record: Callable[..., dict]) -> None:  # type: ignore[no-untyped-def]
    encoder = Encoder(processor, ModelFormat.for_processor(processor, "qwen2.5-vl"))
    row = encoder.encode(one_record(0))
    row["image_grid_thw"] = [1, 2, 2]
    with pytest.raises(VcotError, match="re-run tokenize"):
        Collator(processor)([row])
