"""The convert stage: one source's items -> quality filter -> deterministic split -> shards + manifest.

Reads top to bottom: the config, where a source's inputs are, the loop that routes every item to
exactly one of ``train/``, ``val/`` or ``rejected/``, then the commit and the quality report.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

from vcot.config import option, redacted
from vcot.convert import aokvqa, ground_r1, lacot, llava_cot, own_records, refcoco, scienceqa, viscot, vlmevalkit
from vcot.convert.common import Item, Owns, require_input
from vcot.convert.quality import render_markdown, report
from vcot.convert.routing import OUTPUT_SPLITS, RoutedBlock, route_blocks
from vcot.errors import ConfigError
from vcot.grounding.records import merge_counts, top_reasons
from vcot.io import manifest, storage
from vcot.io.manifest import ShardSpec
from vcot.io.parallel import resolve_workers
from vcot.io.shards import ShardFile, SplitWriters, write_file
from vcot.log import get_logger
from vcot.progress import Progress

log = get_logger(__name__)

STAGE = "convert"
Source = Literal["viscot", "scienceqa", "aokvqa", "llava-cot", "lacot", "vlmevalkit", "refcoco", "ground-r1", "records"]
SHARD_COMPRESSLEVEL = 3
"""gzip level of the record shards: 2.5x faster than the default 6 for files ~20% larger (``docs/bench-convert.md``)."""
NOTED_CHOICES = (
    ("answers_from_refs", "answers_from_refs",
     "no answer of their own: their answer is the names of the objects they locate",
     "--missing-answer reject rejects them instead (docs/convert.md)"),
    ("exif_turned", "exif_turned_images",
     "their images are stored turned with an EXIF orientation, and read upright as displayed",
     "their boxes are right only if drawn on the images as displayed; boxes drawn on the stored pixels "
     "(ms-swift and qwen-vl-utils ignore the tag) need the tag removed first (docs/convert.md)"),
)
"""Accepted records a choice was made for, said in a warning at the end of the run: (quality counter, event,
meaning, hint)."""


@dataclass
class ConvertConfig:
    """Convert a source dataset into canonical grounded records (train/val/rejected shards + quality report)."""

    source: Source = option(
        help="Which dataset --input holds: viscot, scienceqa, aokvqa, llava-cot, lacot (LaCoT's SFT or RL file), "
        "vlmevalkit (a benchmark in VLMEvalKit's TSV layout: TreeBench, V* Bench, HR-Bench, MME-RealWorld-Lite), "
        "refcoco (RefCOCO, RefCOCO+ or RefCOCOg in lmms-eval's Parquet layout), ground-r1 (VisCoT's benchmark as "
        "Ground-R1 evaluates it: visualCoT_eval_subset150_choice.jsonl), or records (your own data)."
    )
    input: str = option(
        help="Input file or folder URI. viscot: the llava-format .json (or .jsonl), or a folder with viscot.json; "
        "scienceqa: problems.json, or a folder with it or with Hugging Face Parquet files; "
        "aokvqa: an aokvqa_v1p0_*.json or a folder of them; llava-cot, lacot: the .json/.jsonl file; "
        "vlmevalkit: a .tsv file or a folder of them; refcoco: a .parquet file or a folder of them (the dataset's data/); "
        "ground-r1: the .jsonl file; "
        "records: a .jsonl/.json/.parquet file or a folder of them (docs/convert.md, your own data)."
    )
    output: str = option(help="Output URI (s3://bucket/prefix or a local path).")
    images: str | None = option(
        None,
        help="Images root URI that the source's image paths are relative to (default: <input folder>/images, "
        "for ground-r1 <input folder>/cot_image_data, "
        "for records the input's folder; for ScienceQA Parquet, vlmevalkit and refcoco, where embedded images are written: "
        "<output>/images).",
    )
    metadata: str | None = option(
        None,
        help="viscot: JSONL with image width/height (VisCOT metadata or detection format); "
        "default <input folder>/metadata.jsonl when it exists.",
    )
    val_fraction: float = option(0.1, help="Share of records in val/, chosen by a hash of the record id.")
    shard_index: int | None = option(None, help="This pod's shard (default: JOB_COMPLETION_INDEX, else 0).")
    num_shards: int = option(1, help="How many pods split the input (each takes every N-th item).")
    run_id: str | None = option(None, help=manifest.RUN_ID_HELP)
    overwrite: bool = option(False, help="Replace a committed output instead of skipping it.")
    workers: int = option(
        0,
        help="viscot: processes converting a JSON array in parallel; 0 = the CPUs this pod may use (its cgroup "
        "limit), 1 = none. The output is the same for any value.",
    )
    read_image_headers: bool = option(
        True, help="viscot: read an image's header for its size when the metadata lacks it (else reject missing_size)."
    )
    check_images: bool = option(
        False, help="viscot, ground-r1: open every image (header only) to check it exists and matches the size the "
        "metadata (the line) gives."
    )
    box_string_frame: Literal["padded", "original"] = option(
        "padded",
        help="viscot: what a box string without ### box is relative to: padded (VisCOT's padded square) or original.",
    )
    rationale_style: Literal["plain", "step-by-step"] = option(
        "plain", help="aokvqa: rationale text as 'r1 r2 r3 Answer: x' or seed 001's 'Let me think step by step: ...'."
    )
    dedup_against: list[str] = option(
        [], help="llava-cot: comma-separated committed convert outputs (aokvqa, scienceqa) whose items to skip."
    )
    bbox_2d_frame: own_records.Bbox2dFrame | None = option(
        None,
        help="records: the frame of Qwen bbox_2d boxes in chat-style records: norm1000 (Qwen3-VL, Qwen2-VL), pixels "
        "(of the original image) or qwen2.5-resized (Qwen2.5-VL's output: pixels of its resized image). Required "
        "when such records occur: the JSON does not say it.",
    )
    benchmark_name: str | None = option(
        None, help="vlmevalkit, refcoco: the benchmark's name in the records (provenance.benchmark) and the leaderboard; "
        "default: the file's name without .tsv (TreeBench, hr_bench_4k, ...); refcoco: the dataset's folder (RefCOCO)."
    )
    missing_answer: own_records.MissingAnswer = option(
        "refs",
        help="records: an ms-swift or chat item with no answer field and no 'Answer:' line: refs answers with the "
        "names of the objects it locates (pure grounding data; counted as answers_from_refs in the quality report), "
        "reject rejects it as no_answer.",
    )

    def __post_init__(self) -> None:
        self.input = storage.absolute(self.input)  # records name their images from these: found from any folder
        self.images = storage.absolute(self.images) if self.images else None
        if not 0.0 <= self.val_fraction <= 1.0:
            raise ValueError(f"--val-fraction {self.val_fraction} must be between 0 and 1")
        if self.workers < 0:
            raise ValueError(f"--workers {self.workers} must be 0 (one per available CPU) or more")
        if self.num_shards < 1:
            raise ValueError("--num-shards must be at least 1")
        self.shard_index = ShardSpec.resolve(self.shard_index, self.num_shards).index  # raises saying what to set
        if self.dedup_against and self.source != "llava-cot":
            raise ValueError("--dedup-against applies to --source llava-cot only")
        if self.bbox_2d_frame is not None and self.source != "records":
            raise ValueError("--bbox-2d-frame applies to --source records only")
        if self.benchmark_name is not None and self.source not in ("vlmevalkit", "refcoco"):
            raise ValueError("--benchmark-name applies to --source vlmevalkit and refcoco only")
        if self.missing_answer != "refs" and self.source != "records":
            raise ValueError("--missing-answer applies to --source records only")

    @property
    def shard(self) -> ShardSpec:
        return manifest.shard_of(self)

    @property
    def inputs(self) -> list[str | None]:
        """What the stage reads (so the output must not overlap it). ScienceQA's (Parquet), vlmevalkit's and refcoco's
        --images are where their embedded images are written, so they are not counted."""
        images = None if self.source in ("scienceqa", "vlmevalkit", "refcoco") else self.images
        return [self.input, self.metadata, images, *self.dedup_against]


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------


def _is_file(uri: str) -> bool:
    return uri.endswith((".json", ".jsonl", ".jsonl.gz", ".parquet"))


def viscot_inputs(config: ConvertConfig) -> tuple[str, str, str | None]:
    """``(json file, images root, metadata or None)`` for a VisCOT input file or folder."""
    data = config.input if _is_file(config.input) else storage.join(config.input, "viscot.json")
    require_input(data, "VisCOT file")
    folder = storage.parent(data)
    metadata = config.metadata
    if metadata is None and storage.exists(storage.join(folder, "metadata.jsonl")):
        metadata = storage.join(folder, "metadata.jsonl")
    elif metadata is not None:
        require_input(metadata, "VisCOT metadata")
    return data, config.images or storage.join(folder, "images"), metadata


def source_blocks(config: ConvertConfig, owns: Owns) -> Iterator[RoutedBlock]:
    """Every owned input item of ``config.source``, converted and routed, in input order, in blocks."""
    if config.source == "viscot":
        data, images, metadata = viscot_inputs(config)
        storage.check_access(images)
        return viscot.iter_blocks(
            data,
            images=images,
            metadata=metadata,
            owns=owns,
            val_fraction=config.val_fraction,
            compresslevel=SHARD_COMPRESSLEVEL,
            workers=resolve_workers(config.workers),
            read_headers=config.read_image_headers,
            check_images=config.check_images,
            frame=config.box_string_frame,
        )
    items: Iterator[Item]
    if config.source == "scienceqa":
        items = scienceqa.iter_items(config.input, images=config.images, output=config.output, owns=owns)
    elif config.source == "aokvqa":
        items = aokvqa.iter_items(config.input, images=config.images, owns=owns, style=config.rationale_style)
    elif config.source == "llava-cot":
        items = llava_cot.iter_items(config.input, images=config.images, owns=owns, dedup_against=config.dedup_against)
    elif config.source == "lacot":
        items = lacot.iter_items(config.input, images=config.images, owns=owns)
    elif config.source == "ground-r1":
        items = ground_r1.iter_items(config.input, images=config.images, owns=owns, check_images=config.check_images)
    elif config.source == "refcoco":
        items = refcoco.iter_items(config.input, images=config.images, output=config.output, owns=owns,
                                   name=config.benchmark_name)  # fmt: skip
    elif config.source == "vlmevalkit":
        items = vlmevalkit.iter_items(config.input, images=config.images, output=config.output, owns=owns,
                                      name=config.benchmark_name)  # fmt: skip
    else:
        items = own_records.iter_items(
            config.input,
            images=config.images,
            output=config.output,
            owns=owns,
            bbox_2d_frame=config.bbox_2d_frame,
            missing_answer=config.missing_answer,
        )
    return route_blocks(items, config.val_fraction, SHARD_COMPRESSLEVEL)


EXPECTED = {
    "viscot": "a JSON array of llava-format VisCOT items as the top level (not inside an object), or JSONL",
    "scienceqa": "problems.json (a JSON object of problems keyed by id) or Hugging Face Parquet files",
    "aokvqa": "aokvqa_v1p0_*.json files, each a JSON array of questions",
    "llava-cot": "a JSON array (or JSONL) of LLaVA-CoT items",
    "lacot": "a JSON array (or JSONL) of LaCoT items ({image, conversations: [human, reason, gpt]})",
    "refcoco": "Parquet files named by split (val-*, testA-*, ...) with question_id, image, answer, bbox",
    "vlmevalkit": "TSV files with a header row (index, image, question, A, B, ..., answer, category)",
    "ground-r1": "JSONL lines with image, width, height, bboxs, dataset, problem, solution "
                 "(visualCoT_eval_subset150_choice.jsonl)",
    "records": "JSONL, a JSON array or Parquet rows of records (our schema, ms-swift grounding or chat turns)",
}
"""What each source's input must hold, for the error on an input that parses but holds no items."""


class _HoldsItems(Exception):
    """Raised by the probe's ``owns`` when it is asked about the first input item."""


def _stop_at_first(index: int) -> bool:
    raise _HoldsItems


def input_holds_items(config: ConvertConfig) -> bool:
    """Whether the input holds any item, read up to the first one only (a shard may own none of a small input).

    One shard owns every item, so for it owning none already means an empty input.
    """
    if config.num_shards == 1:
        return False
    try:  # in this process (workers=1), so the probe's exception reaches here; owns() comes before any conversion
        for _ in source_blocks(replace(config, workers=1), _stop_at_first):
            pass
    except _HoldsItems:
        return True
    return False


def refuse_nothing_accepted(config: ConvertConfig, total: dict[str, Any], example: str) -> None:
    """Fail before anything is committed when this shard had input items and accepted none: committed, the empty
    output would be skipped by every rerun and fail tokenize later. One line: the top reasons and what to check.

    Items are dealt round-robin, so each shard of a run sees a sample of the whole input: a shard that accepts
    none of its items almost always means settings that fit no item (docs/records.md, "Nothing accepted").
    """
    top = top_reasons(total["reasons"])
    where = "" if config.num_shards == 1 else f" (shard {config.shard_index} of {config.num_shards})"
    raise ConfigError(
        f"none of the {total['input']} items of {config.input}{where} was accepted as --source {config.source}: {top}"
        f"{f' (first: {example})' if example else ''}; check that --source {config.source} is this data's layout "
        "and that --images is the folder its image paths are relative to (docs/convert.md, rejection reasons); "
        "nothing was committed"
    )


def _first_detail(block: bytes) -> str:
    """The reason and detail of the first line of a packed ``rejected/`` block (for the refusal's example)."""
    import gzip
    import json

    first = (gzip.decompress(block) if block[:2] == b"\x1f\x8b" else block).split(b"\n", 1)[0]
    line = json.loads(first)
    return f"{line.get('reason')}: {str(line.get('detail'))[:200]}"


def refuse_empty_input(config: ConvertConfig) -> None:
    """Fail before anything is committed when the input parses but holds no items (a wrong file or --source)."""
    if not input_holds_items(config):
        raise ConfigError(
            f"{config.input} holds no {config.source} items: expected {EXPECTED[config.source]}; "
            "check --input and --source (nothing was committed)"
        )


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


def _write_quality(config: ConvertConfig, parts: list[dict[str, Any]]) -> list[ShardFile]:
    """Write ``quality.json`` and ``quality.md`` for the counts of ``parts`` (one per shard); their manifest entries."""
    quality = report(merge_counts(parts), source=config.source, shards=config.num_shards)
    return [
        write_file(config.output, name, text.encode("utf-8"))
        for name, text in (("quality.json", storage.dumps_json(quality)), ("quality.md", render_markdown(quality)))
    ]


def _merged_quality(config: ConvertConfig) -> manifest.Finalize:
    """Writes the report of all shards once the set is complete, before the merged ``_SUCCESS`` that lists it."""
    return lambda shard_manifests: _write_quality(config, [part.get("stats", {}) for part in shard_manifests])


def convert(config: ConvertConfig) -> dict[str, Any] | None:
    """Run the stage for one shard; returns its manifest (quality counts in ``stats``), or ``None`` when the shard
    was already committed (skipped unless --overwrite)."""
    shard = config.shard
    ready = manifest.prepare_output(
        config.output,
        stage=STAGE,
        inputs=config.inputs,
        overwrite=config.overwrite,
        shard=shard,
        finalize=_merged_quality(config),
    )
    if not ready:
        log.info("already_committed", output=config.output, shard=shard.name, hint="pass --overwrite to redo it")
        return None

    counts: dict[str, Any] = {}
    example = ""
    blocks = source_blocks(config, shard.owns)
    outputs = SplitWriters(config.output, shard.name, OUTPUT_SPLITS, compresslevel=SHARD_COMPRESSLEVEL)
    try:
        progress = Progress("convert_progress", unit="item", source=config.source, shard=shard.name)
        for block in blocks:
            for split, (data, records) in block.blocks.items():
                outputs.write_block(split, data, records)
            if not example and "rejected" in block.blocks:
                example = _first_detail(block.blocks["rejected"][0])
            counts = merge_counts([counts, block.stats])
            progress.update(block.items)
        progress.close()
        if not counts.get("subsets"):  # this shard owned no item: an empty input, or a small one (commits empty)
            refuse_empty_input(config)
            counts = {"subsets": {}}
        total = report(counts, source=config.source, shards=shard.count)["total"]
        if total["input"] and not total["accepted"]:
            refuse_nothing_accepted(config, total, example)
        files = outputs.close()
    except BaseException:
        outputs.abort()
        raise
    if shard.count == 1:
        files += _write_quality(config, [counts])
    committed = manifest.commit(
        config.output,
        stage=STAGE,
        files=files,
        config=redacted(config),
        stats=counts,
        shard=shard,
        finalize=_merged_quality(config),
    )
    log.info(
        "converted",
        output=config.output,
        shard=shard.name,
        input=total["input"],
        accepted=total["accepted"],
        rejected=total["rejected"],
        reasons=total["reasons"],
    )
    for counter, event, meaning, hint in NOTED_CHOICES:
        if total[counter]:
            log.warning(event, records=total[counter], of=total["accepted"], meaning=meaning, hint=hint)
    return committed
