"""The evaluate stage, top to bottom: resolve the mode, get responses, score, report, commit.

Output layout::

    OUTPUT/predictions/00000-of-00001.jsonl.gz   one row per scored sample: raw text, parsed boxes, IoUs, answer
    OUTPUT/metrics.json                          overall and per-subset metrics, join counts, settings
    OUTPUT/report.html                           the self-contained report
    OUTPUT/_SUCCESS                              the manifest, written last

A committed output is skipped on rerun (``--overwrite`` to redo it). Scheduled mode evaluates into
``<--output or <pointer dir>/evals>/<run path under the pointer dir>/`` (a short hash for a run outside
it), so every run gets its own output and a pointer that has not moved is not evaluated twice.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections import Counter
from typing import Any

from vcot import manifest, shards, storage
from vcot.config import redacted
from vcot.errors import ConfigError
from vcot.evaluate import history as hist
from vcot.evaluate.config import EvaluateConfig
from vcot.evaluate.metrics import summarize_by_subset
from vcot.evaluate.report import build_report
from vcot.evaluate.scoring import join_and_score, load_predictions, load_records
from vcot.log import get_logger
from vcot.model_format import ModelFormat

log = get_logger(__name__)

STAGE = "evaluate"
PREDICTIONS_PATH = f"predictions/{shards.shard_name(0, 1)}"
METRICS_PATH = "metrics.json"
REPORT_PATH = "report.html"


@dataclasses.dataclass(frozen=True)
class Target:
    """What this run evaluates and where it writes."""

    output: str
    model: str | None = None
    adapter: str | None = None
    history: str | None = None
    run: str | None = None


def resolve_target(config: EvaluateConfig) -> Target:
    """Scheduled mode reads the pointer; the other modes take the flags as they are."""
    if not config.pointer:
        return Target(output=str(config.output), model=config.model, adapter=config.adapter)
    pointer = hist.read_pointer(config.pointer)
    home = storage.parent(config.pointer)
    return Target(
        output=storage.join(config.output or storage.join(home, "evals"), hist.run_folder(pointer.run, home)),
        model=pointer.base_model,
        adapter=pointer.adapter,
        history=config.history or storage.join(home, hist.HISTORY_NAME),
        run=pointer.run,
    )


def flag_overrides(config: EvaluateConfig) -> dict[str, Any]:
    """The model-format fields the flags set (``None`` = not given)."""
    given = {
        "coords": config.coords,
        "box_syntax": config.box_format,
        "mode": config.prompt_mode,
        "min_pixels": config.min_pixels,
        "max_pixels": config.max_pixels,
    }
    return {key: value for key, value in given.items() if value is not None}


def score_mode_format(config: EvaluateConfig) -> ModelFormat:
    """Score mode has no model card: the family's geometry (``--family``) with the flags."""
    return ModelFormat.for_family(config.family, **flag_overrides(config))


def with_overrides(fmt: ModelFormat, config: EvaluateConfig, *, source: str) -> ModelFormat:
    """``fmt`` with the flags applied. A frame other than the trained one is refused (its boxes would be read in
    the wrong place); other fields (pixel budget, prompt mode, box syntax) may be changed, with a warning."""
    overrides = flag_overrides(config)
    if "coords" in overrides and overrides["coords"] != fmt.coords:
        raise ConfigError(
            f"--coords {overrides['coords']} contradicts {source} ({fmt.coords}): "
            "drop --coords to read boxes as the model was trained to write them"
        )
    pixels = {key: overrides.pop(key) for key in ("min_pixels", "max_pixels") if key in overrides}
    changed = dataclasses.replace(fmt, **overrides, vision=dataclasses.replace(fmt.vision, **pixels))
    differences = fmt.differences(changed)
    if differences:
        log.warning("model_format_overridden", source=source, **{k: f"{a} -> {b}" for k, (a, b) in differences.items()})
    return changed


def recorded_format(config: EvaluateConfig, target: Target) -> ModelFormat | None:
    """The adapter card's format with the flags applied, or ``None`` when the flags must say it (``--coords``);
    checked before any weight is loaded."""
    from vcot.modeling import MODEL_CARD, adapter_format

    recorded = adapter_format(target.adapter) if target.adapter else None
    if recorded is not None:
        return with_overrides(recorded, config, source=f"the adapter's {MODEL_CARD}")
    if config.coords is None:  # never guessed
        where = f"no {MODEL_CARD} next to the adapter" if target.adapter else "a base model records no frame"
        raise ConfigError(f"{where}: pass --coords norm1000 or --coords qwen2.5-absolute")
    return None


def model_responses(
    config: EvaluateConfig, target: Target, records: list[dict[str, Any]]
) -> tuple[dict[str, str], ModelFormat, dict[str, Any]]:
    """Load the model, settle its format (one interpretation of its boxes), generate."""
    from vcot.evaluate.generation import GenerationSettings, Skipped, generate_responses
    from vcot.modeling import MODEL_CARD, check_base_model, load_model_and_processor, model_family, read_model_card

    recorded = recorded_format(config, target)
    if target.adapter and storage.exists(storage.join(target.adapter, MODEL_CARD)):
        check_base_model(read_model_card(target.adapter), str(target.model))  # before minutes of loading weights
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)  # torch defaults to the node's cores, not the pod's CPU limit
    model, processor = load_model_and_processor(str(target.model), adapter_uri=target.adapter, quantize=config.quantize)
    fmt = recorded or ModelFormat.for_processor(processor, model_family(str(target.model)), **flag_overrides(config))
    # The processor resizes images exactly as the boxes are read back (qwen2.5-absolute depends on it).
    processor.image_processor.size = {"shortest_edge": fmt.vision.min_pixels, "longest_edge": fmt.vision.max_pixels}
    settings = GenerationSettings(
        fmt=fmt,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        repetition_penalty=config.repetition_penalty,
        box_aware_penalty=config.box_aware_penalty,
    )
    texts, timing = generate_responses(model, processor, records, settings)
    responses = {str(record["id"]): text for record, text in zip(records, texts) if isinstance(text, str)}
    skipped = dict(sorted(Counter(text.reason for text in texts if isinstance(text, Skipped)).items()))
    generation = {k: v for k, v in dataclasses.asdict(settings).items() if k != "fmt"}
    return responses, fmt, {"generation": generation, "timing": timing, "skipped_samples": skipped}


def compare_with_history(
    config: EvaluateConfig, target: Target, metrics: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Scheduled mode: this run's history entry, compared with the earlier comparable ones.

    Sets ``metrics["regression"]``; returns the entry (appended once the outputs are written) and the
    timeline the report plots (earlier comparable entries, then this one).
    """
    entry: dict[str, Any] = {
        "run": target.run,
        "model": target.model,
        "adapter": target.adapter,
        "data": config.data,
        "split": config.split,
        "output": target.output,
        "evaluated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "metrics": {k: v for k, v in metrics["overall"].items() if isinstance(v, (int, float))},
    }
    earlier = hist.comparable(hist.read_history(str(target.history)), entry)
    metrics["regression"] = hist.compare(
        metrics["overall"], earlier, metrics=config.regression_metrics, threshold=config.regression_threshold
    )
    entry["regressions"] = metrics["regression"]["regressions"]
    return entry, [*earlier, entry]


def report_details(details: dict[str, Any]) -> dict[str, Any]:
    """The settings line of the report: where things came from and how boxes were generated and read."""
    shown = {k: v for k, v in details.items() if isinstance(v, (str, int, float)) and v != ""}
    fmt = details["model_format"]
    shown["coords"] = fmt["coords"]
    shown["box format"] = fmt["box_syntax"]
    shown["family"] = fmt["family"]
    generation = details.get("generation")
    if generation:
        shown["repetition penalty"] = generation["repetition_penalty"]
        shown["box-aware"] = generation["box_aware_penalty"]
        shown["samples/s"] = details["timing"]["samples_per_second"]
    return shown


def check_adapter(adapter: str) -> None:
    """Refuse an adapter that is not a train output's ``adapter/`` folder but another stage's committed output."""
    stage = manifest.committed_stage(adapter)
    if stage is not None:
        raise ConfigError(f"{adapter} is a {stage} output; expected the adapter/ folder of a train output")
    run = storage.parent(adapter)
    if manifest.committed_stage(run) not in (None, "train"):
        manifest.read_manifest(run, expect_stage="train")  # raises, saying which stage wrote it


def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate per ``config``; returns the metrics. Raises :class:`RegressionError` (exit 3) on a regression."""
    target = resolve_target(config)
    inputs = [config.data, config.predictions, target.model, target.adapter]
    if not manifest.prepare_output(target.output, stage=STAGE, inputs=inputs, overwrite=config.overwrite):
        log.info("already_committed", output=target.output, hint="pass --overwrite to redo it")
        metrics = json.loads(manifest.read_listed(target.output, METRICS_PATH))
        _raise_on_regression(metrics.get("regression"), target.output)
        return metrics
    if target.adapter:
        check_adapter(target.adapter)

    records = load_records(config.data, config.split, config.max_samples)
    log.info("records_loaded", data=config.data, split=config.split, count=len(records))
    details: dict[str, Any] = {"mode": config.mode, "data": config.data, "split": config.split}
    if config.predictions:
        loaded = load_predictions(config.predictions)
        responses, fmt = loaded.by_id, score_mode_format(config)
        details.update(predictions=config.predictions, skipped_predictions=loaded.skipped)
    else:
        responses, fmt, generated = model_responses(config, target, records)
        details.update(model=target.model, adapter=target.adapter, run=target.run, **generated)
    details["model_format"] = fmt.to_dict()

    rows, scores, join = join_and_score(records, responses, fmt)
    metrics = summarize_by_subset(scores, [row["subset"] for row in rows])
    metrics.update(join=join, details=details)

    entry, timeline = compare_with_history(config, target, metrics) if target.history else (None, [])

    records_by_id = {str(record["id"]): record for record in records}
    report = build_report(
        title=f"vcot evaluation: {target.run or target.model or config.predictions}",
        metrics=metrics,
        rows=rows,
        records=records_by_id,
        details=report_details(details),
        max_samples=config.report_samples,
        history=timeline,
        regression=metrics.get("regression"),
    )
    files = [
        shards.write_jsonl(target.output, PREDICTIONS_PATH, rows),
        shards.write_file(target.output, METRICS_PATH, storage.dumps_json(metrics).encode("utf-8")),
        shards.write_file(target.output, REPORT_PATH, report.encode("utf-8")),
    ]
    if target.history and entry is not None:
        hist.append_history(target.history, entry)  # before _SUCCESS: a rerun replaces this entry
    manifest.commit(
        target.output, stage=STAGE, files=files, config=redacted(config), inputs=[config.data], stats=metrics["overall"]
    )
    log.info("evaluated", output=target.output, **{k: metrics["overall"][k] for k in ("samples", "mean_iou", "acc_at_50")})
    _raise_on_regression(metrics.get("regression"), target.output)
    return metrics


def _raise_on_regression(regression: dict[str, Any] | None, output: str) -> None:
    if regression and regression.get("regressions"):
        raise hist.RegressionError(
            "regression: " + "; ".join(regression["regressions"]) + f" (report: {storage.join(output, REPORT_PATH)})"
        )
