"""The tokenize stage: committed record outputs in, Parquet token shards + a ``_SUCCESS`` manifest out.

Output layout::

    OUTPUT/train/<shard>.parquet   rows of the inputs' train/ records
    OUTPUT/val/<shard>.parquet     rows of the inputs' val/ records (train's eval_loss, early stopping)
    OUTPUT/_SUCCESS                files, counts, config (model, model_format: vcot.model_format), stats, lineage

Only records usable as grounded training examples (``vcot.records.grounding_problem`` is ``None``) are
tokenized; the others are counted by reason. A row longer than ``--max-length`` is dropped and counted,
never truncated (a cut through the image tokens would no longer match the pixels).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vcot import manifest, storage
from vcot.config import option, redacted
from vcot.errors import VcotError
from vcot.log import get_logger
from vcot.boxes import BOX_FORMATS, BoxFormat
from vcot.model_format import COORDS, MODES, Coords, Mode, ModelFormat
from vcot.records import grounding_problem
from vcot.shards import ShardFile, file_entry
from vcot.tokenize.encode import Encoder

SPLITS = ("train", "val")
LENGTH_BINS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
ROWS_PER_BATCH = 512

log = get_logger(__name__)


@dataclass
class TokenizeConfig:
    """Pre-tokenize grounded records into Parquet shards for training."""

    input: list[str] = option(help="Committed record outputs (convert/distill), comma-separated URIs.")
    output: str = option(help="Where to write the Parquet shards (s3://bucket/prefix or a local path).")
    model: str = option(help="Model whose processor tokenizes: a folder, an s3:// prefix or a hub id.")
    mode: Mode = option(
        "multimodal", help="multimodal (image tokens + pixels at train time) or text (the seed's: no image)."
    )
    coords: Coords = option(
        "norm1000",
        help="Frame of the targets' boxes: norm1000 (house: 0-1000 of the original image; Qwen3-VL's native frame) "
        "or qwen2.5-absolute (pixels of the resized image, Qwen2.5-VL's native frame).",
    )
    box_syntax: BoxFormat = option(
        "house", help="How boxes are written: house (<ref>/<box>), json (Qwen's native bbox_2d), qwen or obj."
    )
    max_length: int = option(2048, help="Rows longer than this many tokens are dropped (counted), never truncated.")
    min_pixels: int | None = option(None, help="Image processor min_pixels (default: the model processor's).")
    max_pixels: int | None = option(None, help="Image processor max_pixels (default: the model processor's).")
    shard_index: int | None = option(
        None, help="This pod's part of the work, in [0, num-shards) (default: JOB_COMPLETION_INDEX, else 0)."
    )
    num_shards: int = option(1, help="How many pods split the records (round-robin).")
    run_id: str | None = option(None, help=manifest.RUN_ID_HELP)
    overwrite: bool = option(False, help="Rewrite an output that is already committed.")

    def __post_init__(self) -> None:
        if not self.input:
            raise ValueError("--input needs at least one committed record output URI")
        if self.mode not in MODES:
            raise ValueError(f"--mode {self.mode!r} is not valid: use {' or '.join(MODES)}")
        if self.coords not in COORDS:
            raise ValueError(f"--coords {self.coords!r} is not valid: use {' or '.join(COORDS)}")
        if self.box_syntax not in BOX_FORMATS:
            raise ValueError(f"--box-syntax {self.box_syntax!r} is not valid: use {', '.join(BOX_FORMATS)}")
        if self.max_length < 16:
            raise ValueError("--max-length must be at least 16 tokens")
        for name in ("min_pixels", "max_pixels"):
            value = getattr(self, name)
            if value is not None and value < 28 * 28:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 784 (one 28x28 patch group)")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError("--min-pixels must not exceed --max-pixels")
        self.shard_index = self.shard.index  # JOB_COMPLETION_INDEX when not given; raises saying what to set

    @property
    def shard(self) -> manifest.ShardSpec:
        return manifest.shard_of(self)


def length_histogram(lengths: list[int]) -> dict[str, int]:
    """Counts of row lengths per bin, keyed by the bin's upper bound (``"<=512"``) or ``">32768"``.

    >>> length_histogram([100, 128, 129, 40000])
    {'<=128': 2, '<=256': 1, '>32768': 1}
    """
    counts: Counter[str] = Counter()
    for length in lengths:
        label = next((f"<={edge}" for edge in LENGTH_BINS if length <= edge), f">{LENGTH_BINS[-1]}")
        counts[label] += 1
    order = [f"<={edge}" for edge in LENGTH_BINS] + [f">{LENGTH_BINS[-1]}"]
    return {label: counts[label] for label in order if counts[label]}


class ParquetShardWriter:
    """Rows to one Parquet file: written locally in batches, hashed, then copied to ``root/path``."""

    def __init__(self, root: str, path: str, workdir: Path) -> None:
        import pyarrow as pa

        self.root, self.path = root, path
        self.local = workdir / path.replace("/", "__")
        self.schema = pa.schema(
            [
                ("id", pa.string()),
                ("image", pa.string()),
                ("width", pa.int32()),
                ("height", pa.int32()),
                ("image_grid_thw", pa.list_(pa.int32())),
                ("input_ids", pa.list_(pa.int32())),
                ("labels", pa.list_(pa.int32())),
                ("length", pa.int32()),
            ]
        )
        self._rows: list[dict[str, Any]] = []
        self._writer: Any = None
        self.records = 0

    def write(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        self.records += 1
        if len(self._rows) >= ROWS_PER_BATCH:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            self._writer = pq.ParquetWriter(self.local, self.schema, compression="zstd")
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
            self._rows = []

    def close(self) -> ShardFile:
        self._flush()
        self._writer.close()
        entry = file_entry(self.local, self.path, records=self.records)
        with open(self.local, "rb") as source, storage.open_uri(storage.join(self.root, self.path), "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
        return entry


def tokenize(config: TokenizeConfig) -> dict[str, Any] | None:
    """Run the stage; returns the manifest written, or ``None`` when the output was already committed."""
    from tqdm import tqdm

    from vcot.modeling import load_processor_for, model_family

    shard = config.shard
    inputs = [*config.input, config.model]
    ready = manifest.prepare_output(
        config.output, stage="tokenize", inputs=inputs, overwrite=config.overwrite, shard=shard
    )
    if not ready:
        log.info("already_committed", output=config.output, hint="pass --overwrite to redo it")
        return None
    for input_uri in config.input:  # refuses an uncommitted input, or another stage's, with a clear message
        manifest.read_manifest(input_uri, expect_stage=manifest.RECORD_STAGES)

    processor = load_processor_for(config.model)
    fmt = ModelFormat.for_processor(
        processor,
        model_family(config.model),
        coords=config.coords,
        box_syntax=config.box_syntax,
        mode=config.mode,
        min_pixels=config.min_pixels,
        max_pixels=config.max_pixels,
    )
    log.info("model_format", **fmt.to_dict())
    encoder = Encoder(processor, fmt)

    skipped: Counter[str] = Counter()
    stats: dict[str, Any] = {}
    files: list[ShardFile] = []
    with tempfile.TemporaryDirectory(prefix="vcot-tokenize-") as workdir:
        for split in SPLITS:
            writer = ParquetShardWriter(config.output, f"{split}/{shard.name}.parquet", Path(workdir))
            lengths: list[int] = []
            supervised = image_tokens = position = 0
            progress = tqdm(desc=f"tokenize {split}", unit="rec", disable=not sys.stderr.isatty())
            for input_uri in config.input:
                records = manifest.committed_records(input_uri, (f"{split}/",), expect_stage=manifest.RECORD_STAGES)
                for record in records:
                    position += 1
                    if not shard.owns(position - 1):
                        continue
                    progress.update()
                    problem = grounding_problem(record)
                    if problem is not None:
                        skipped[problem] += 1
                        continue
                    try:
                        row = encoder.encode(record)
                    except (ValueError, KeyError, TypeError) as exc:
                        skipped["encode_error"] += 1
                        log.warning("encode_error", id=record.get("id"), error=str(exc))
                        continue
                    if row["length"] > config.max_length:
                        skipped["too_long"] += 1
                        continue
                    writer.write(row)
                    lengths.append(row["length"])
                    supervised += sum(1 for label in row["labels"] if label != -100)
                    image_tokens += row["input_ids"].count(encoder.image_pad_id) if fmt.mode == "multimodal" else 0
            progress.close()
            if writer.records == 0 and split == "train" and shard.count == 1:
                raise VcotError(
                    f"no usable training records in {', '.join(config.input)} (skipped: {dict(skipped)}): "
                    "check the inputs, or raise --max-length if rows were too long"
                )
            files.append(writer.close())
            stats[split] = {
                "rows": writer.records,
                "tokens": sum(lengths),
                "supervised_tokens": supervised,
                "image_tokens": image_tokens,
                "max_length": max(lengths, default=0),
                "mean_length": round(sum(lengths) / len(lengths), 1) if lengths else 0.0,
                "length_histogram": length_histogram(lengths),
            }
    stats["skipped"] = dict(sorted(skipped.items()))
    settings = redacted(config)
    settings["model_format"] = fmt.to_dict()
    settings.pop("shard_index", None)
    committed = manifest.commit(
        config.output, stage="tokenize", files=files, config=settings, inputs=config.input, stats=stats, shard=shard
    )
    log.info("committed", output=config.output, rows={s: stats[s]["rows"] for s in SPLITS}, skipped=stats["skipped"])
    return committed
