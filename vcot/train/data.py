"""Tokenized rows in, model batches out: the Parquet dataset and the collator that loads the pixels.

Rows come from a committed tokenize output (``vcot.tokenize``): token ids, assistant-only labels and, in
multimodal mode, the image URI and its patch grid. The collator pads the ids, loads and preprocesses each
image with the model's own image processor, and checks the grid it gets against the one tokenize counted
image tokens for (a mismatch means the image changed or the pixel budget differs: a clear error, not a
silently misaligned batch).
"""

from __future__ import annotations

import io
import tempfile
from itertools import groupby
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vcot import manifest
from vcot.errors import VcotError
from vcot.images import load_rgb
from vcot.model_format import IGNORE_INDEX, IMAGE_PAD


class TokenizedDataset(Dataset):
    """The rows of one split (``train`` or ``val``) of a committed tokenize output, held as an Arrow table."""

    def __init__(self, data_uri: str, split: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for _, data in manifest.read_committed(data_uri, f"{split}/", expect_stage="tokenize"):
            tables.append(pq.read_table(io.BytesIO(data)))
        self.table = pa.concat_tables(tables) if tables else None
        self.split = split

    def __len__(self) -> int:
        return 0 if self.table is None else self.table.num_rows

    def __getitem__(self, index: int) -> dict[str, Any]:
        assert self.table is not None
        return {name: self.table.column(name)[index].as_py() for name in self.table.column_names}


class Collator:
    """Pad rows into a batch; in multimodal mode add ``pixel_values`` and ``image_grid_thw`` from the images."""

    def __init__(self, processor: Any) -> None:
        self.image_processor = processor.image_processor
        self.pad_id = processor.tokenizer.pad_token_id
        self.image_token_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # right padding, as in training with the processor
            length = len(row["input_ids"])
            input_ids[i, :length] = torch.tensor(row["input_ids"])
            labels[i, :length] = torch.tensor(row["labels"])
            attention_mask[i, :length] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

        with_images = [row for row in rows if row.get("image")]
        if with_images:
            pixels = self.pixels(with_images)
            for row, grid in zip(with_images, pixels["image_grid_thw"].tolist(), strict=True):
                if grid != list(row["image_grid_thw"]):
                    raise VcotError(
                        f"image {row['image']} of {row['id']} gives patch grid {grid} but tokenize counted "
                        f"{row['image_grid_thw']}: the image changed or the pixel budget differs; re-run tokenize"
                    )
            batch["pixel_values"] = pixels["pixel_values"]
            batch["image_grid_thw"] = pixels["image_grid_thw"]
            # Marks image tokens (1) vs text (0): the model needs it to lay out 3D rope positions.
            batch["mm_token_type_ids"] = (input_ids == self.image_token_id).long()
        return batch


    def pixels(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Preprocessed images of ``rows``, in order: a row whose mixture source had its own pixel budget
        (``min_pixels``/``max_pixels`` columns, ``vcot.tokenize.mixture``) is resized with it, others with the
        processor's (the model format's) budget. One processor call per run of rows with the same budget."""
        parts = []
        for budget, group in groupby(rows, key=lambda row: (row.get("min_pixels"), row.get("max_pixels"))):
            size = {} if budget == (None, None) else {"size": {"shortest_edge": budget[0], "longest_edge": budget[1]}}
            images = [load_rgb(row["image"]) for row in group]
            parts.append(self.image_processor(images=images, return_tensors="pt", **size))
        return {key: torch.cat([part[key] for part in parts]) for key in ("pixel_values", "image_grid_thw")}


def local_scratch(name: str) -> Path:
    """A per-run local folder that is the same path on every restart (so checkpoint paths stay valid)."""
    path = Path(tempfile.gettempdir()) / "vcot-train" / name
    path.mkdir(parents=True, exist_ok=True)
    return path
