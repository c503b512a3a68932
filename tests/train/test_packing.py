"""Packing (issue 33): a packed row gives each sample the logits and loss of its unpacked batch (both families,
images of different sizes in one row), and no sample attends to its neighbour."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from trl.trainer.utils import add_fused_lm_head

from vcot.grounding.model_format import ModelFormat
from vcot.models.loading import load_model_and_processor, model_family
from vcot.tokenize import Encoder
from vcot.train.data import Collator
from vcot.train.packing import PackedCollator, pack_indices, use_packed_positions


@pytest.fixture(scope="module", params=["tiny_model_dir", "tiny_qwen3vl_dir"])
def model_dir(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


def rows_and_model(
    model_dir: Path, one_record: Callable[..., dict], count: int = 3, attention: str = "sdpa"
) -> tuple[list[dict], Any, Any]:
    model, processor = load_model_and_processor(str(model_dir), for_training=True)
    model.set_attn_implementation(attention)
    model.eval()  # no dropout: the same logits twice
    encoder = Encoder(processor, ModelFormat.for_processor(processor, model_family(str(model_dir))))
    return [encoder.encode(one_record(i, seed=i)) for i in range(count)], model, processor


def sample_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each position's next-token loss (0 where nothing is learned), as transformers shifts and scores them."""
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), shifted, ignore_index=-100, reduction="none")


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_row_gives_each_sample_its_unpacked_logits_and_loss(
    model_dir: Path, one_record: Callable[..., dict], attention: str
) -> None:
    rows, model, processor = rows_and_model(model_dir, one_record, attention=attention)
    assert len({tuple(row["image_grid_thw"]) for row in rows}) > 1  # images of different sizes in one row
    unpacked = Collator(processor)(rows)
    packed = PackedCollator(processor)([rows])
    use_packed_positions(model)
    with torch.no_grad():
        alone = model(**unpacked, use_cache=False)
        together = model(**packed)
    losses = sample_losses(together.logits, packed["labels"])[0]
    start = 0
    for i, row in enumerate(rows):
        end = start + len(row["input_ids"])
        expected = alone.logits[i, : len(row["input_ids"])]
        assert torch.allclose(together.logits[0, start:end], expected, atol=1e-4), (
            i,
            (together.logits[0, start:end] - expected).abs().max(),
        )
        own = sample_losses(alone.logits[i : i + 1], unpacked["labels"][i : i + 1])[0, : len(row["input_ids"])]
        assert torch.allclose(losses[start:end], own, atol=1e-4)
        start = end
    assert start == packed["input_ids"].shape[1]  # no padding at all in a single packed row
    assert torch.allclose(together.loss, alone.loss, atol=1e-4)  # the same tokens learned, the same mean
    add_fused_lm_head(model)  # SFT's fused LM head (recipe fused_lm_head) reads the packed positions too
    with torch.no_grad():
        assert torch.allclose(model(**packed, fused_lm_head=True).loss, alone.loss, atol=1e-4)


def test_no_sample_attends_to_its_neighbour(model_dir: Path, one_record: Callable[..., dict]) -> None:
    """Changing the first sample's answer leaves the second sample's logits as they were; the same rows joined
    with the usual positions and mask (what packing must not do) would not."""
    rows, model, processor = rows_and_model(model_dir, one_record, count=2)
    changed = dict(rows[0], input_ids=list(rows[0]["input_ids"]))
    changed["input_ids"][-3] = (changed["input_ids"][-3] + 1) % 100 + 10
    collate = PackedCollator(processor)
    use_packed_positions(model)
    second = slice(len(rows[0]["input_ids"]), None)
    with torch.no_grad():
        logits = [model(**collate([[first, rows[1]]])).logits[0, second] for first in (rows[0], changed)]
    assert torch.equal(logits[0], logits[1])

    naive = [collate([[first, rows[1]]]) for first in (rows[0], changed)]
    with torch.no_grad():
        leaked = [model(**{k: v for k, v in batch.items() if k != "pack_lengths"}, use_cache=False).logits[0, second]
                  for batch in naive]  # fmt: skip
    assert not torch.allclose(leaked[0], leaked[1])


def test_a_batch_of_packs_pads_each_row_and_masks_the_padding(model_dir: Path, one_record: Callable[..., dict]) -> None:
    rows, model, processor = rows_and_model(model_dir, one_record, count=3)
    packed = PackedCollator(processor)([[rows[0], rows[1]], [rows[2]]])
    use_packed_positions(model)
    width = len(rows[0]["input_ids"]) + len(rows[1]["input_ids"])
    assert packed["input_ids"].shape == (2, max(width, len(rows[2]["input_ids"])))
    assert (packed["labels"][1, len(rows[2]["input_ids"]) :] == -100).all()
    with torch.no_grad():
        together = model(**packed).logits[1, : len(rows[2]["input_ids"])]
        alone = model(**Collator(processor)([rows[2]]), use_cache=False).logits[0]
    assert torch.allclose(together, alone, atol=1e-4)


def test_packs_hold_every_row_once_within_capacity() -> None:
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 40))]
        capacity = rng.randint(20, 100)
        packs = pack_indices(lengths, capacity)
        assert sorted(i for pack in packs for i in pack) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in pack) <= capacity or len(pack) == 1 for pack in packs)


@pytest.mark.integration
def test_sft_trains_on_packed_rows(tokenized_data: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    """``packing: N`` in a recipe: the train stage packs its rows (evaluation's stay as they are) and learns."""
    import json

    from vcot.train import TrainConfig, train
    from vcot.train.data import TokenizedDataset
    from vcot.train.packing import PackedDataset

    rows = TokenizedDataset(tokenized_data, "train")
    capacity = 4 * max(rows.lengths())
    settings = (f"packing={capacity},per_device_train_batch_size=1,max_steps=12,num_train_epochs=20,logging_steps=1,"
                "save_steps=12,eval_steps=12")  # fmt: skip
    output = tmp_path / "packed"
    assert train(TrainConfig(data=tokenized_data, model=str(tiny_model_dir), output=str(output), recipe="tiny-cpu",
                             set=settings, threads=1))  # fmt: skip
    metrics = json.loads((output / "metrics.json").read_text())
    losses = [entry["loss"] for entry in metrics["log_history"] if "loss" in entry]
    assert len(losses) == 12 and losses[-1] < losses[0] - 0.5, losses
    assert "eval_loss" in metrics["eval"]
    assert metrics["throughput"]["padding_share"] == 0.0  # one packed row a step: nothing computed on padding
    packs = PackedDataset(rows, capacity)
    assert len(packs) < len(rows) / 3  # about four rows a packed row
