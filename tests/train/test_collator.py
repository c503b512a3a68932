"""The collator builds exactly the batch the processor would (for both model families), and refuses rows whose
image changed; the Qwen3-VL model trains on its batch as the Qwen2.5-VL one does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from vcot.errors import VcotError
from vcot.grounding.model_format import ModelFormat
from vcot.io.images import load_rgb
from vcot.models.loading import load_processor, model_family
from vcot.tokenize import Encoder
from vcot.train.data import Collator


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    return load_processor(str(tiny_model_dir))


@pytest.fixture(scope="module", params=["tiny_model_dir", "tiny_qwen3vl_dir"])
def model_dir(request: pytest.FixtureRequest) -> Path:
    """Each family's tiny model folder."""
    return request.getfixturevalue(request.param)


def test_batch_equals_the_processors_output(model_dir: Path, one_record: Callable[..., dict]) -> None:
    processor = load_processor(str(model_dir))
    encoder = Encoder(processor, ModelFormat.for_processor(processor, model_family(str(model_dir))))
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


def test_qwen3vl_trains_on_the_collators_batch(tiny_qwen3vl_dir: Path, one_record: Callable[..., dict]) -> None:
    """The train stage's Trainer passes the collator's batch as is: the model must take it and learn from it."""
    from vcot.models.loading import load_model_and_processor

    model, processor = load_model_and_processor(str(tiny_qwen3vl_dir), for_training=True)
    encoder = Encoder(processor, ModelFormat.for_processor(processor, "qwen3-vl"))
    batch = Collator(processor)([encoder.encode(one_record(i, seed=i)) for i in range(3)])
    grids = batch["image_grid_thw"]
    assert batch["pixel_values"].dtype == torch.float32 and grids.dtype == torch.int64
    assert batch["pixel_values"].shape == (int(grids.prod(dim=1).sum()), 3 * 2 * 16 * 16)  # 16 px patches, 2 frames
    assert int(batch["mm_token_type_ids"].sum()) == int(grids.prod(dim=1).sum()) // 4

    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(**batch).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 1.0, losses


def test_an_image_that_cannot_be_decoded_trains_nothing_and_never_stops_the_batch(
    tiny_model_dir: Path, one_record: Callable[..., dict], tmp_path: Path
) -> None:
    """Replaced after tokenize by a 20000x20000 PNG (over PIL's decompression-bomb limit), or by bytes that are no
    image: a blank image of the counted grid stands in and the row has no label; the other rows are untouched."""
    from tests.convert.own_data import bomb_png
    from vcot.models.loading import load_model_and_processor

    model, processor = load_model_and_processor(str(tiny_model_dir), for_training=True)
    encoder = Encoder(processor, ModelFormat.for_processor(processor, "qwen2.5-vl"))
    rows = [encoder.encode(one_record(i, seed=i)) for i in range(3)]
    alone = Collator(processor)([rows[1]])
    (tmp_path / "huge.png").write_bytes(bomb_png())
    (tmp_path / "broken.png").write_bytes(b"no image")
    rows[0]["image"], rows[2]["image"] = str(tmp_path / "huge.png"), str(tmp_path / "broken.png")
    collator = Collator(processor)
    batch = collator(rows)

    assert collator.unloadable == 2
    assert batch["image_grid_thw"].tolist() == [row["image_grid_thw"] for row in rows]
    assert (batch["labels"][0] == -100).all() and (batch["labels"][2] == -100).all()
    length = len(rows[1]["input_ids"])
    assert torch.equal(batch["labels"][1, :length], alone["labels"][0])
    first = int(rows[0]["image_grid_thw"][1] * rows[0]["image_grid_thw"][2])
    patches = int(rows[1]["image_grid_thw"][1] * rows[1]["image_grid_thw"][2])
    assert torch.equal(batch["pixel_values"][first : first + patches], alone["pixel_values"])
    assert torch.isfinite(model(**batch).loss)


def test_an_image_of_another_size_than_its_record_trains_nothing(
    tiny_model_dir: Path, one_record: Callable[..., dict], tmp_path: Path
) -> None:
    """A photo stored turned, converted before vcot read EXIF orientation: its record has the stored size, the image
    now loads upright (width and height swapped, the same number of patches): its boxes would be of another image."""
    from PIL import Image

    from vcot.models.loading import load_model_and_processor

    model, processor = load_model_and_processor(str(tiny_model_dir), for_training=True)
    encoder = Encoder(processor, ModelFormat.for_processor(processor, "qwen2.5-vl"))
    rows = [encoder.encode(one_record(i, seed=i)) for i in range(2)]
    width, height = Image.open(rows[0]["image"]).size
    assert (rows[0]["width"], rows[0]["height"]) == (width, height)
    turned = (height, width) if width != height else (width * 2, height // 2)  # a square one: the same pixels count
    Image.open(rows[0]["image"]).resize(turned).save(tmp_path / "turned.png")
    rows[0]["image"] = str(tmp_path / "turned.png")
    collator = Collator(processor)
    batch = collator(rows)
    assert collator.unloadable == 1 and (batch["labels"][0] == -100).all() and not (batch["labels"][1] == -100).all()
