"""Tokenized rows in, model batches out: the Parquet dataset and the collator that loads the pixels.

Rows come from a committed tokenize output (``vcot.tokenize``): token ids, assistant-only labels and, in
multimodal mode, the image URI and its patch grid. The collator pads the ids, loads and preprocesses each
image with the model's own image processor, and checks the grid it gets against the one tokenize counted
image tokens for (a mismatch means the image changed or the pixel budget differs: a clear error, not a
silently misaligned batch).

One bad image never stops a run: tokenize already skips records whose recorded size PIL would refuse to decode
(``image_too_large``); an image that still cannot be decoded here (its file changed, or is gone, after tokenize)
gives its row a blank image of the grid tokenize counted and no label at all, so the row trains nothing; each such
row is logged (``image_unloadable``) with a running count.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from itertools import groupby
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vcot.errors import MissingError, VcotError
from vcot.grounding.model_format import IGNORE_INDEX
from vcot.io import manifest
from vcot.io.images import load_rgb
from vcot.io.shards import read_verified
from vcot.log import get_logger
from vcot.models.loading import image_token_types
from vcot.train import distributed

log = get_logger(__name__)


class TokenizedDataset(Dataset):
    """The rows of one split (``train`` or ``val``) of a committed tokenize output, memory-mapped from local Arrow
    files: the process holds only the rows it reads, and the ranks of a node share one copy (the page cache).

    The committed Parquet shards are downloaded one at a time (checked against the manifest), converted to
    uncompressed Arrow files in ``cache`` with token ids in the narrowest integer type that holds ``vocab_size``
    (a node's first rank converts, the others wait), then mapped. ``cache`` of ``None``: a private folder removed
    with the dataset.
    """

    def __init__(self, data_uri: str, split: str, *, cache: Path | None = None, vocab_size: int | None = None) -> None:
        import pyarrow as pa

        self.split = split
        shared = cache is not None
        if cache is None:
            cache = Path(tempfile.mkdtemp(prefix="vcot-rows-"))
            weakref.finalize(self, shutil.rmtree, cache, True)
        folder = cache / split
        if not shared or distributed.local_rank() == 0:
            convert_split(data_uri, split, folder, vocab_size)
        if shared:
            distributed.barrier()
        tables = [pa.ipc.open_file(pa.memory_map(str(path))).read_all() for path in sorted(folder.glob("*.arrow"))]
        self.table = pa.concat_tables(tables) if tables else None
        self.reads = 0

    def __len__(self) -> int:
        return 0 if self.table is None else self.table.num_rows

    def lengths(self) -> list[int]:
        """Every row's token count, from the ``length`` column tokenize writes (no row is read): what
        ``group_by_length`` batches by."""
        import pyarrow.compute as pc

        if self.table is None:
            return []
        if "length" in self.table.column_names:
            return self.table.column("length").to_pylist()
        return pc.list_value_length(self.table.column("input_ids")).to_pylist()

    def __getitem__(self, index: int) -> dict[str, Any]:
        assert self.table is not None
        self.reads += 1
        return self.table.slice(index, 1).to_pylist()[0]


def token_type(vocab_size: int | None, *, signed: bool) -> Any:
    """The narrowest Arrow integer type for token ids below ``vocab_size`` (labels also hold -100: signed).

    >>> str(token_type(151_665, signed=False)), str(token_type(600, signed=True)), str(token_type(None, signed=True))
    ('uint32', 'int16', 'int32')
    """
    import pyarrow as pa

    if vocab_size is None:
        return pa.int32()
    if signed:
        return pa.int16() if vocab_size <= 2**15 else pa.int32()
    return pa.uint16() if vocab_size <= 2**16 else pa.uint32()


def convert_split(data_uri: str, split: str, folder: Path, vocab_size: int | None) -> None:
    """The split's committed shards as Arrow files in ``folder`` (kept when ``_DONE`` names the same shards)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    listed = manifest.committed_entries(data_uri, f"{split}/", expect_stage="tokenize")
    done = folder / "_DONE"
    signature = "\n".join(f"{entry.path} {entry.sha256} {vocab_size}" for _, entry in listed)
    if done.exists() and done.read_text(encoding="utf-8") == signature:
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    narrow = {
        "input_ids": pa.list_(token_type(vocab_size, signed=False)),
        "labels": pa.list_(token_type(vocab_size, signed=True)),
    }
    for index, (uri, entry) in enumerate(listed):
        local = folder / "shard.parquet"
        local.write_bytes(read_verified(uri, entry))
        parquet = pq.ParquetFile(local)
        schema = pa.schema([pa.field(f.name, narrow.get(f.name, f.type)) for f in parquet.schema_arrow])
        with pa.OSFile(str(folder / f"{index:05d}.arrow"), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for batch in parquet.iter_batches(batch_size=65_536):  # few, large chunks: a row is found fast
                writer.write_batch(batch.cast(schema))
        local.unlink()
    done.write_text(signature, encoding="utf-8")
    pa.default_memory_pool().release_unused()  # the conversion's buffers: not kept for the whole run


class Collator:
    """Pad rows into a batch; in multimodal mode add ``pixel_values`` and ``image_grid_thw`` from the images."""

    def __init__(self, processor: Any) -> None:
        self.image_processor = processor.image_processor
        self.pad_id = processor.tokenizer.pad_token_id
        self.tokenizer = processor.tokenizer
        self.unloadable = 0
        """Rows whose image could not be decoded, in this process (a dataloader worker counts its own)."""

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
        return self.with_images(batch, rows, [(i, 0, len(row["input_ids"])) for i, row in enumerate(rows)])

    def with_images(
        self, batch: dict[str, torch.Tensor], rows: list[dict[str, Any]], spans: list[tuple[int, int, int]]
    ) -> dict[str, torch.Tensor]:
        """``batch`` with the rows' images (in order); ``spans[k]``: where ``rows[k]`` lies in it (batch row, start,
        end), so that a row whose image cannot be decoded has its labels masked, and only its own."""
        with_images = [row for row in rows if row.get("image")]
        if with_images:
            pixels, unloadable = self.pixels(with_images)
            for row, (i, start, end) in zip(rows, spans, strict=True):
                if id(row) in unloadable:  # a blank image stands in: the row must teach nothing about it
                    batch["labels"][i, start:end] = IGNORE_INDEX
            for row, grid in zip(with_images, pixels["image_grid_thw"].tolist(), strict=True):
                if grid != list(row["image_grid_thw"]):
                    raise VcotError(
                        f"image {row['image']} of {row['id']} gives patch grid {grid} but tokenize counted "
                        f"{row['image_grid_thw']}: the image changed or the pixel budget differs; re-run tokenize"
                    )
            batch["pixel_values"] = pixels["pixel_values"]
            batch["image_grid_thw"] = pixels["image_grid_thw"]
            batch["mm_token_type_ids"] = image_token_types(batch["input_ids"], self.tokenizer)  # the images' 3-D layout
        return batch


    def pixels(self, rows: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], set[int]]:
        """Preprocessed images of ``rows``, in order, and the ``id()`` of the rows whose image could not be decoded
        (:meth:`image`). A row whose mixture source had its own pixel budget (``min_pixels``/``max_pixels`` columns,
        ``vcot.tokenize.mixture``) is resized with it, others with the processor's (the model format's) budget. One
        processor call per run of rows with the same budget."""
        parts = []
        unloadable: set[int] = set()
        for budget, group in groupby(rows, key=lambda row: (row.get("min_pixels"), row.get("max_pixels"))):
            size = {} if budget == (None, None) else {"size": {"shortest_edge": budget[0], "longest_edge": budget[1]}}
            images = [self.image(row, unloadable) for row in group]
            parts.append(self.image_processor(images=images, return_tensors="pt", **size))
        return {key: torch.cat([part[key] for part in parts]) for key in ("pixel_values", "image_grid_thw")}, unloadable

    def image(self, row: dict[str, Any], unloadable: set[int]) -> Any:
        """The row's image; one that cannot be decoded (over PIL's decompression-bomb limit, corrupt, gone) or is not
        the size its record says is replaced by a blank image of exactly the grid tokenize counted, and the row is
        added to ``unloadable``.
        Storage that cannot be reached is not a bad image: it stops the run."""
        from PIL import Image, UnidentifiedImageError

        try:
            image = load_rgb(row["image"])
            recorded = (row.get("width"), row.get("height"))
            if None in recorded or image.size == recorded:
                return image
            error: Exception = ValueError(
                f"the image is {image.size[0]}x{image.size[1]} but its record says {recorded[0]}x{recorded[1]}: its "
                "boxes and grid are of another image (a photo stored turned is read upright since vcot applies its "
                "EXIF orientation: re-run convert and tokenize)"
            )
        except MissingError as exc:  # unreachable storage or refused credentials stop the run instead
            error = exc
        except (Image.DecompressionBombError, UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            error = exc
        self.unloadable += 1
        unloadable.add(id(row))
        log.warning(
            "image_unloadable", id=row["id"], image=row["image"], error=str(error)[:300], rows_so_far=self.unloadable,
            hint="the row trains nothing; fix the image, or re-run convert and tokenize",
        )
        _, grid_h, grid_w = (int(v) for v in row["image_grid_thw"])
        patch = int(self.image_processor.patch_size)
        return Image.new("RGB", (grid_w * patch, grid_h * patch))


def local_scratch(name: str) -> Path:
    """A per-run local folder that is the same path on every restart (so checkpoint paths stay valid)."""
    path = Path(tempfile.gettempdir()) / "vcot-train" / name
    path.mkdir(parents=True, exist_ok=True)
    return path
