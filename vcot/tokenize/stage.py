"""The tokenize stage: committed record outputs in, Parquet token shards + a ``_SUCCESS`` manifest out.

Output layout::

    OUTPUT/train/<shard>.parquet   rows of the inputs' train/ records
    OUTPUT/val/<shard>.parquet     rows of the inputs' val/ records (train's eval_loss, early stopping)
    OUTPUT/_SUCCESS                files, counts, config (model, model_format: vcot.grounding.model_format), stats, lineage

Only records usable as grounded training examples (``vcot.grounding.records.grounding_problem`` is ``None``) are
tokenized; the others are counted by reason, as is (multimodal) a record whose image is larger than PIL decodes
(``image_too_large``, by its recorded size: train's collator could never load it). A row longer than
``--max-length`` is dropped and counted, never truncated (a cut through the image tokens would no longer match
the pixels); a warning per subset says how many, and ``--fit-to-budget`` shrinks such a row's image until it fits
instead (counted as ``fitted``).

``--mixture`` reads several record outputs with a weight or a sample count each, and optionally their own
pixel budget and length limit (``vcot.tokenize.mixture``); plain ``--input`` is the one-source mixture.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vcot.config import option, redacted
from vcot.errors import ConfigError
from vcot.grounding.boxes import BOX_FORMATS, BoxFormat
from vcot.grounding.model_format import COORDS, LAYOUTS, MODES, RATIONALE_ROLE, Coords, Layout, Mode, ModelFormat
from vcot.grounding.prompts import rationale_turn_problem
from vcot.grounding.records import grounding_problem, top_reasons
from vcot.io import manifest, storage
from vcot.io.images import TOO_LARGE, decodable_pixels
from vcot.io.shards import ShardFile, file_entry
from vcot.log import get_logger
from vcot.progress import Progress
from vcot.tokenize.encode import Encoder
from vcot.tokenize.mixture import Mixture, MixtureSource, load_mixture, of_inputs

SPLITS = ("train", "val")
LENGTH_BINS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
ROWS_PER_BATCH = 512

log = get_logger(__name__)


@dataclass
class TokenizeConfig:
    """Pre-tokenize grounded records into Parquet shards for training."""

    output: str = option(help="Where to write the Parquet shards (s3://bucket/prefix or a local path).")
    model: str = option(help="Model whose processor tokenizes: a folder, an s3:// prefix or a hub id.")
    input: list[str] = option([], help="Committed record outputs (convert/distill), comma-separated URIs.")
    mixture: str | None = option(
        None,
        help="Mixture YAML file or URI: record outputs with a weight or sample count each, optionally their own "
        "min/max pixels and max length (docs/train.md). With --input, its 'input' source stands for --input's records.",
    )
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
    layout: Layout = option(
        "two_turn",
        help="two_turn: rationale and answer in the assistant turn; rationale_turn: LaCoT's layout, the rationale "
        "in an Analyzer turn of its own, then the answer (what method gfn starts from).",
    )
    system_prompt: str = option(
        "", help="A system turn before every prompt (empty: none, the chat template's default); recorded in the "
        "model format, so evaluate prompts the trained model with it."
    )
    instruction: str = option(
        "",
        help="The instruction after each question (empty: vcot's default, docs/train.md); {box_pattern} and "
        "{coords_hint} are filled in from --box-syntax and --coords. Recorded in the model format, like --system-prompt.",
    )
    max_length: int = option(2048, help="Rows longer than this many tokens are dropped (counted), never truncated.")
    fit_to_budget: bool = option(
        False,
        help="multimodal: a row too long for --max-length gets a smaller image (its own lower max_pixels, recorded "
        "in the row) so that it fits, instead of being dropped; dropped only if not even the smallest image fits.",
    )
    min_pixels: int | None = option(None, help="Image processor min_pixels (default: the model processor's).")
    max_pixels: int | None = option(None, help="Image processor max_pixels (default: the model processor's).")
    shard_index: int | None = option(
        None, help="This pod's part of the work, in [0, num-shards) (default: JOB_COMPLETION_INDEX, else 0)."
    )
    num_shards: int = option(1, help="How many pods split the records (round-robin).")
    run_id: str | None = option(None, help=manifest.RUN_ID_HELP)
    overwrite: bool = option(False, help="Rewrite an output that is already committed.")

    def __post_init__(self) -> None:
        if not self.input and not self.mixture:
            raise ValueError("--input (committed record output URIs) or --mixture (a mixture file) is required")
        if self.mode not in MODES:
            raise ValueError(f"--mode {self.mode!r} is not valid: use {' or '.join(MODES)}")
        if self.coords not in COORDS:
            raise ValueError(f"--coords {self.coords!r} is not valid: use {' or '.join(COORDS)}")
        if self.box_syntax not in BOX_FORMATS:
            raise ValueError(f"--box-syntax {self.box_syntax!r} is not valid: use {', '.join(BOX_FORMATS)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"--layout {self.layout!r} is not valid: use {', '.join(LAYOUTS)}")
        if self.max_length < 16:
            raise ValueError("--max-length must be at least 16 tokens")
        for name in ("min_pixels", "max_pixels"):
            value = getattr(self, name)
            if value is not None and value < 28 * 28:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 784 (one 28x28 patch group)")
        if self.fit_to_budget and self.mode != "multimodal":
            raise ValueError("--fit-to-budget shrinks images: it needs --mode multimodal")
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
                ("min_pixels", pa.int32()),  # null: the model format's budget; set: the row's source has its own
                ("max_pixels", pa.int32()),
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


def report_lengths(split: str, by_subset: dict[str, Counter[str]], config: TokenizeConfig) -> None:
    """A warning per subset that lost rows to ``--max-length`` (large document pages at the default pixel
    budget), and one per subset whose images ``--fit-to-budget`` shrank."""
    for name, counts in sorted(by_subset.items()):
        if counts["too_long"]:
            hint = "" if config.fit_to_budget else "pass --fit-to-budget to shrink their images, or "
            log.warning(
                "too_long_dropped",
                split=split,
                subset=name,
                dropped=counts["too_long"],
                of=counts["records"],
                hint=f"{hint}raise --max-length or lower --max-pixels",
            )
        if counts["fitted"]:
            log.warning("image_budget_lowered", split=split, subset=name, fitted=counts["fitted"], of=counts["records"])


def resolve_mixture(config: TokenizeConfig) -> Mixture:
    """The mixture to tokenize: ``--mixture``'s file (checked), else ``--input`` as one source."""
    return load_mixture(config.mixture, config.input) if config.mixture else of_inputs(config.input)


def source_format(fmt: ModelFormat, source: MixtureSource) -> ModelFormat:
    """The format a source's rows are encoded with: the run's, with the source's own pixel budget if it has one."""
    if source.min_pixels is None and source.max_pixels is None:
        return fmt
    try:
        vision = replace(
            fmt.vision,
            min_pixels=source.min_pixels or fmt.vision.min_pixels,
            max_pixels=source.max_pixels or fmt.vision.max_pixels,
        )
    except ValueError as exc:
        raise ConfigError(f"mixture source {source.name!r}: {exc}") from None
    return replace(fmt, vision=vision)


def record_problem(record: dict[str, Any], max_pixels: int | None) -> str | None:
    """Why ``record`` gives no row: :func:`grounding_problem`, or (multimodal: ``max_pixels`` is
    :func:`vcot.io.images.decodable_pixels`) an image PIL would refuse to decode at train time, by its recorded size.

    >>> record_problem({"width": 20_000, "height": 20_000}, 178_956_970)
    'image_too_large'
    """
    if max_pixels is not None:
        try:
            if int(record["width"]) * int(record["height"]) > max_pixels:
                return TOO_LARGE
        except (KeyError, TypeError, ValueError):
            pass  # no usable size: the grounding check or the encoder says why
    return grounding_problem(record)


def planned(
    source: MixtureSource, split: str, seed: int, max_pixels: int | None = None
) -> Iterator[tuple[dict[str, Any], str | None, int]]:
    """``(record, why it is unusable or None, rows it gives)`` for every record of ``split`` of ``source``, in order.

    Train records follow the source's weight or sample count (a first pass counts the usable ones, unless every
    record is taken once); val records are taken once each. An unusable record counts as one (skipped) row.
    ``max_pixels``: as in :func:`record_problem`.
    """

    def records() -> Iterator[dict[str, Any]]:
        for uri in source.data:
            yield from manifest.committed_records(uri, (f"{split}/",), expect_stage=manifest.RECORD_STAGES)

    base, extra = 1, set()
    if split == "train" and not source.takes_all_once:
        base, extra = source.copies(sum(1 for r in records() if record_problem(r, max_pixels) is None), seed)
    usable = 0
    for record in records():
        problem = record_problem(record, max_pixels)
        if problem is not None:
            yield record, problem, 1
            continue
        yield record, None, base + (usable in extra)
        usable += 1


def _check_inputs(config: TokenizeConfig, mixture: Mixture) -> None:
    """Refuse, before any work, an output that overlaps an input or is another stage's, and inputs that are not
    committed record outputs (reads manifests only)."""
    manifest.check_output(config.output, stage="tokenize", inputs=[*mixture.data, config.model, config.mixture])
    if manifest.is_committed(config.output) and not config.overwrite:
        return  # the rerun no-op: its inputs were checked when it ran
    for input_uri in mixture.data:  # refuses an uncommitted input, or another stage's, with a clear message
        manifest.read_manifest(input_uri, expect_stage=manifest.RECORD_STAGES)


def _claim_output(config: TokenizeConfig, mixture: Mixture, shard: manifest.ShardSpec) -> bool:
    """Claim the output (``False``: already committed); with ``--overwrite`` this deletes a committed one, so
    everything that can be checked is checked before (:func:`_check_inputs`, the mixture, its budgets)."""
    inputs = [*mixture.data, config.model, config.mixture]
    ready = manifest.prepare_output(
        config.output, stage="tokenize", inputs=inputs, overwrite=config.overwrite, shard=shard
    )
    if not ready:
        log.info("already_committed", output=config.output, hint="pass --overwrite to redo it")
    return ready


def _model_format(config: TokenizeConfig, mixture: Mixture) -> tuple[ModelFormat, dict[str, Encoder]]:
    """The run's model format (what train and evaluate read back from the manifest) and an encoder per source,
    each with the source's own pixel budget."""
    from vcot.models.loading import load_processor_for, model_family

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
    fmt = replace(fmt, layout=config.layout, system_prompt=config.system_prompt, instruction_text=config.instruction)
    problem = rationale_turn_problem(processor) if fmt.layout == "rationale_turn" else None
    if problem is not None:
        raise ConfigError(
            f"--layout rationale_turn needs a model whose chat template renders an {RATIONALE_ROLE} turn, and "
            f"{config.model} ({fmt.family}) cannot: {problem}. Use --layout two_turn, or a Qwen2.5-VL model for "
            "RGFN (docs/train.md, RGFN); nothing was written"
        )
    log.info("model_format", **fmt.to_dict())
    return fmt, {source.name: Encoder(processor, source_format(fmt, source)) for source in mixture.sources}


@dataclass
class _SplitTally:
    """What one split's rows add up to across its sources (its ``stats``), and the round-robin position that
    says which rows are this shard's."""

    position: int = 0
    owned: int = 0
    lengths: list[int] = field(default_factory=list)
    supervised: int = 0
    image_tokens: int = 0
    by_subset: dict[str, Counter[str]] = field(default_factory=dict)


def _encode_row(
    encoder: Encoder, record: dict[str, Any], budget: tuple[int, int] | None, max_length: int, fit_to_budget: bool
) -> tuple[dict[str, Any] | str, bool | None]:
    """``(row or why the record gives none, fitted)``: a row too long is dropped, never truncated (a cut through
    the image tokens would no longer match the pixels). ``fitted``: ``None`` unless ``--fit-to-budget`` tried."""
    fitted = None
    try:
        row = encoder.encode(record)
        row["min_pixels"], row["max_pixels"] = budget or (None, None)
        if row["length"] > max_length and fit_to_budget:
            row = encoder.fit(record, row["length"], max_length) or row
            fitted = row["length"] <= max_length
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("encode_error", id=record.get("id"), error=str(exc))
        return "encode_error", None
    if row["length"] > max_length:
        return "too_long", fitted
    return row, fitted


def _write_source(
    source: MixtureSource,
    split: str,
    *,
    config: TokenizeConfig,
    fmt: ModelFormat,
    encoder: Encoder,
    image_pad_id: int,
    seed: int,
    shard: manifest.ShardSpec,
    writer: ParquetShardWriter,
    tally: _SplitTally,
    progress: Progress,
) -> tuple[dict[str, int], Counter[str]]:
    """Write this shard's rows of one source's split; returns the source's counts and why records gave no row
    (the manifest's per-source stats). ``progress`` counts the records read (every shard reads them all)."""
    budget = (encoder.fmt.vision.min_pixels, encoder.fmt.vision.max_pixels) if encoder.fmt != fmt else None
    max_length = source.max_length or config.max_length
    counts = {"usable": 0, "selected": 0, "rows": 0}
    reasons: Counter[str] = Counter()
    max_pixels = decodable_pixels() if fmt.mode == "multimodal" else None
    for record, problem, copies in planned(source, split, seed, max_pixels):
        progress.update()
        owned = sum(1 for copy in range(copies) if shard.owns(tally.position + copy))
        tally.position += copies
        tally.owned += owned
        counts["usable"] += problem is None
        counts["selected"] += copies if problem is None else 0
        if not owned:
            continue
        if problem is not None:
            reasons[problem] += owned
            continue
        subset = tally.by_subset.setdefault(str(record.get("subset") or "unknown"), Counter())
        subset["records"] += owned
        row, fitted = _encode_row(encoder, record, budget, max_length, config.fit_to_budget)
        if fitted is not None:
            subset["fitted"] += owned * fitted
        if isinstance(row, str):
            reasons[row] += owned
            if row == "too_long":
                subset["too_long"] += owned
            continue
        for _ in range(owned):
            writer.write(row)
        counts["rows"] += owned
        tally.lengths += [row["length"]] * owned
        tally.supervised += owned * sum(1 for label in row["labels"] if label != -100)
        if fmt.mode == "multimodal":
            tally.image_tokens += owned * row["input_ids"].count(image_pad_id)
    return counts, reasons


def _split_stats(rows: int, tally: _SplitTally) -> dict[str, Any]:
    """A split's entry in the manifest's stats: row and token counts, lengths, and per-subset counts."""
    lengths = tally.lengths
    return {
        "rows": rows,
        "tokens": sum(lengths),
        "supervised_tokens": tally.supervised,
        "image_tokens": tally.image_tokens,
        "max_length": max(lengths, default=0),
        "mean_length": round(sum(lengths) / len(lengths), 1) if lengths else 0.0,
        "length_histogram": length_histogram(lengths),
        "subsets": {name: dict(sorted(counts.items())) for name, counts in sorted(tally.by_subset.items())},
    }


def split_records(mixture: Mixture, split: str) -> int:
    """How many records of ``split`` the mixture's sources hold, from their manifests (no record is read)."""
    return sum(
        int(entry.get("records") or 0)
        for uri in mixture.data
        for entry in manifest.read_manifest(uri).get("files", [])
        if str(entry.get("path", "")).startswith(f"{split}/")
    )


def _write_split(
    split: str,
    *,
    config: TokenizeConfig,
    mixture: Mixture,
    fmt: ModelFormat,
    encoders: dict[str, Encoder],
    shard: manifest.ShardSpec,
    workdir: Path,
    skipped: Counter[str],
    mixture_stats: dict[str, dict[str, Any]],
) -> tuple[ShardFile, dict[str, Any]]:
    """One split's Parquet shard (every source in mixture order) and its stats; adds to ``skipped`` and to each
    source's entry of ``mixture_stats``. Refuses a single-pod run without a training row."""
    image_pad_id = encoders[mixture.sources[0].name].image_pad_id
    writer = ParquetShardWriter(config.output, f"{split}/{shard.name}.parquet", workdir)
    tally = _SplitTally()
    progress = Progress("tokenize_progress", split_records(mixture, split), unit="record", split=split)
    for source in mixture.sources:
        counts, reasons = _write_source(
            source,
            split,
            config=config,
            fmt=fmt,
            encoder=encoders[source.name],
            image_pad_id=image_pad_id,
            seed=mixture.seed,
            shard=shard,
            writer=writer,
            tally=tally,
            progress=progress,
        )
        skipped.update(reasons)
        mixture_stats[source.name][split] = {**counts, "skipped": dict(sorted(reasons.items()))}
        if split == "train" and source.samples and not counts["usable"]:
            log.warning("mixture_source_empty", source=source.name, data=list(source.data))
    progress.close()
    report_lengths(split, tally.by_subset, config)
    if split == "train" and writer.records == 0 and (shard.count == 1 or tally.owned):
        refuse_no_rows(mixture, shard, tally.owned, skipped)
    return writer.close(), _split_stats(writer.records, tally)


def refuse_no_rows(mixture: Mixture, shard: manifest.ShardSpec, owned: int, skipped: Counter[str]) -> None:
    """Fail before anything is written when no training row came out (committed, train would fail on it later).

    A pod of several that was dealt no record at all (fewer records than pods) commits its empty part instead.
    """
    top = top_reasons(skipped)
    where = "" if shard.count == 1 else f" (shard {shard.index} of {shard.count})"
    raise ConfigError(
        f"no usable training row in {', '.join(mixture.data)}{where}, of {owned} train records: "
        f"{top or 'the train splits are empty'}; check the inputs (convert's quality report: records need a "
        "grounded rationale), or raise --max-length if rows were too long; nothing was committed"
    )


def _commit(
    config: TokenizeConfig,
    fmt: ModelFormat,
    mixture: Mixture,
    files: list[ShardFile],
    stats: dict[str, Any],
    shard: manifest.ShardSpec,
) -> dict[str, Any]:
    """Commit the shards with the settings train needs to read them back (the model format, the mixture)."""
    settings = redacted(config)
    settings["model_format"] = fmt.to_dict()
    settings["mixture"] = mixture.to_dict()
    settings.pop("shard_index", None)
    committed = manifest.commit(
        config.output,
        stage="tokenize",
        files=files,
        config=settings,
        inputs=mixture.data,
        stats=stats,
        shard=shard,
    )
    log.info(
        "committed",
        output=config.output,
        rows={s: stats[s]["rows"] for s in SPLITS},
        skipped=stats["skipped"],
        sources={name: parts["train"]["rows"] for name, parts in stats["mixture"].items()},
    )
    return committed


def tokenize(config: TokenizeConfig) -> dict[str, Any] | None:
    """Run the stage; returns the manifest written, or ``None`` when the output was already committed."""
    mixture = resolve_mixture(config)
    # The mixture file's content is part of what the shards are made of: edited in place, it is another run.
    shard = manifest.shard_of(config, {"mixture_sha256": mixture.sha256} if mixture.sha256 else None)
    _check_inputs(config, mixture)
    # The processor (no weights) before the output is claimed: a source budget it cannot take fails before
    # --overwrite deletes anything or a record is read.
    fmt, encoders = _model_format(config, mixture)
    if not _claim_output(config, mixture, shard):
        return None
    skipped: Counter[str] = Counter()
    stats: dict[str, Any] = {"mixture": {source.name: {} for source in mixture.sources}}
    files: list[ShardFile] = []
    with tempfile.TemporaryDirectory(prefix="vcot-tokenize-") as workdir:
        for split in SPLITS:
            shard_file, stats[split] = _write_split(
                split,
                config=config,
                mixture=mixture,
                fmt=fmt,
                encoders=encoders,
                shard=shard,
                workdir=Path(workdir),
                skipped=skipped,
                mixture_stats=stats["mixture"],
            )
            files.append(shard_file)
    stats["skipped"] = dict(sorted(skipped.items()))
    return _commit(config, fmt, mixture, files, stats, shard)
