"""The evaluate stage, top to bottom: resolve the mode, get responses, score, report, commit.

Output layout::

    OUTPUT/predictions/00000-of-00001.jsonl.gz   one row per scored sample: raw text, parsed boxes, IoUs, answer
    OUTPUT/predictions-direct/...                --prompt-style both: the direct answers' rows
    OUTPUT/metrics.json                          overall and per-subset metrics, join counts, settings
    OUTPUT/benchmark.csv                         --benchmark: the per-subset table
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
from collections.abc import Sequence
from typing import Any, Literal

from vcot.config import redacted
from vcot.errors import ConfigError
from vcot.evaluate import history as hist
from vcot.evaluate.benchmark import benchmark_csv, benchmark_name, benchmark_table, check_records, official_aggregates
from vcot.evaluate.config import EvaluateConfig
from vcot.evaluate.ground_r1 import add_rule_metrics, add_rule_scores, require_rouge
from vcot.evaluate.judge import add_judge_metrics, judge_endpoint, judge_rows
from vcot.evaluate.protocol import average_at_k, sample_records
from vcot.evaluate.report import build_report, field_sections
from vcot.evaluate.scoring import join_and_score, load_predictions, load_records
from vcot.evaluate.served import served_responses
from vcot.evaluate.styles import compare_styles
from vcot.grounding.model_format import ModelFormat
from vcot.io import layout, manifest, shards, storage
from vcot.log import get_logger
from vcot.models.served import card_folder
from vcot.scoring.field_metrics import add_field_metrics
from vcot.scoring.metrics import summarize_by_subset

log = get_logger(__name__)

STAGE = "evaluate"
PREDICTIONS_PATH = f"predictions/{shards.shard_name(0, 1)}"
METRICS_PATH = "metrics.json"
REPORT_PATH = "report.html"
BENCHMARK_PATH = "benchmark.csv"
SAMPLES_PATH = f"predictions-samples/{shards.shard_name(0, 1)}"


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
        history = config.history if config.server else None  # a served model re-evaluated on a schedule
        return Target(output=str(config.output), model=config.model, adapter=config.adapter, history=history)
    pointer = hist.read_pointer(config.pointer)
    home = storage.parent(config.pointer)
    return Target(
        output=storage.join(config.output or storage.join(home, layout.SCHEDULED_EVALS), hist.run_folder(pointer.run, home)),
        model=pointer.base_model,
        adapter=pointer.adapter,
        history=config.history or storage.join(home, layout.HISTORY),
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


def with_overrides(fmt: ModelFormat, overrides: dict[str, Any], *, source: str) -> ModelFormat:
    """``fmt`` with the flags applied. A frame other than the trained one is refused (its boxes would be read in
    the wrong place); other fields (pixel budget, prompt mode, box syntax) may be changed, with a warning."""
    overrides = dict(overrides)
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


def recorded_format(adapter: str | None, overrides: dict[str, Any], model: str | None = None) -> ModelFormat | None:
    """The card's format with the flags applied, or ``None`` when the flags must say it (``--coords``); checked
    before any weight is loaded. The card is the adapter's, or without one the model's own (a full fine-tune's
    ``model/`` has one)."""
    from vcot.models.loading import MODEL_CARD, adapter_format, refuse_full_finetune

    if adapter:
        refuse_full_finetune(adapter, flag="--adapter")
    home = adapter or model
    recorded = adapter_format(home) if home else None
    if recorded is not None:
        return with_overrides(recorded, overrides, source=f"the {'adapter' if adapter else 'model'}'s {MODEL_CARD}")
    if overrides.get("coords") is None:  # never guessed
        where = f"no {MODEL_CARD} next to the adapter" if adapter else "a base model records no frame"
        raise ConfigError(f"{where}: pass --coords norm1000 or --coords qwen2.5-absolute")
    return None


def served_format(config: EvaluateConfig) -> ModelFormat:
    """Served mode: the served model's card (``--model-card``) with the flags, else the flags, ``--coords`` among them
    (a frame is never guessed)."""
    overrides = flag_overrides(config)
    card = card_folder(config.model_card) if config.model_card else None  # given as the folder or its file
    if not card and "coords" not in overrides:
        raise ConfigError("served mode reads boxes in the served model's frame: pass --model-card (the folder of "
                          "its vcot-model.json: the export, or the run's adapter/), or --coords (and --family)")  # fmt: skip
    recorded = recorded_format(None, overrides, card) if card else None
    if {"min_pixels", "max_pixels"} & overrides.keys():
        log.warning("served_pixel_budget", hint="the server resizes images with its own processor settings: "
                    "--min-pixels/--max-pixels only say how vcot reads its boxes back, so give the budget the server "
                    "uses (vLLM: --mm-processor-kwargs), or boxes in the qwen2.5-absolute frame land elsewhere")  # fmt: skip
    return recorded or ModelFormat.for_family(config.family, **overrides)


def load_generator(
    model_uri: str,
    adapter: str | None,
    overrides: dict[str, Any],
    *,
    quantize: Literal["4bit", "8bit"] | None = None,
    threads: int = 0,
) -> tuple[Any, Any, ModelFormat]:
    """Load the model and its processor and settle its format (one interpretation of its boxes).

    Also what the lmms-eval plugin (``vcot.evaluate.lmms``) loads a model with.
    """
    from vcot.models.loading import (
        MODEL_CARD,
        check_base_model,
        load_model_and_processor,
        model_family,
        read_model_card,
    )

    recorded = recorded_format(adapter, overrides, model_uri)
    if adapter and storage.exists(storage.join(adapter, MODEL_CARD)):
        check_base_model(read_model_card(adapter), model_uri)  # before minutes of loading weights
    if threads:
        import torch

        torch.set_num_threads(threads)  # torch defaults to the node's cores, not the pod's CPU limit
    model, processor = load_model_and_processor(model_uri, adapter_uri=adapter, quantize=quantize)
    fmt = recorded or ModelFormat.for_processor(processor, model_family(model_uri), **overrides)
    # The processor resizes images exactly as the boxes are read back (qwen2.5-absolute depends on it).
    processor.image_processor.size = {"shortest_edge": fmt.vision.min_pixels, "longest_edge": fmt.vision.max_pixels}
    return model, processor, fmt


def model_responses(
    config: EvaluateConfig, target: Target, asked: list[list[dict[str, Any]]]
) -> tuple[list[dict[str, dict[str, str]]], ModelFormat, dict[str, Any]]:
    """Load the model once and generate with each prompt style, once per sample (``asked``: the records as each
    sample asks them): ``[{style: {id: response}}]`` per sample, the format, details (of the first sample)."""
    import torch

    from vcot.models.generation import GenerationSettings, Skipped, generate_responses

    overrides = flag_overrides(config)
    model, processor, fmt = load_generator(
        str(target.model), target.adapter, overrides, quantize=config.quantize, threads=config.threads
    )
    answers: list[dict[str, dict[str, str]]] = [{} for _ in asked]
    details: dict[str, Any] = {}
    for style in config.prompt_styles:
        settings = GenerationSettings(
            fmt=fmt,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
            repetition_penalty=config.repetition_penalty,
            box_aware_penalty=config.box_aware_penalty,
            prompt_style=style,  # type: ignore[arg-type]
            temperature=config.temperature,
            top_p=config.top_p,
        )
        for sample, records in enumerate(asked):
            if config.temperature:
                torch.manual_seed(config.seed + sample)  # answer j is drawn with seed + j, as a server's seed does
            texts, timing = generate_responses(model, processor, records, settings)
            answers[sample][style] = {str(r["id"]): text for r, text in zip(records, texts, strict=True)
                                      if isinstance(text, str)}  # fmt: skip
            if sample:
                continue
            skipped = dict(sorted(Counter(text.reason for text in texts if isinstance(text, Skipped)).items()))
            generation = {k: v for k, v in dataclasses.asdict(settings).items() if k != "fmt"}
            found = {"generation": generation, "timing": timing, "skipped_samples": skipped}
            if not details:
                details = found
            else:
                details.setdefault("other_prompt_styles", {})[style] = found
    if config.bin:
        answers[0]["bin"], answers[0]["best_of_n"], details["bin"] = bin_answers(
            config, model, processor, fmt, asked[0], adapter=target.adapter
        )
    return answers, fmt, details


def bin_answers(
    config: EvaluateConfig, model: Any, processor: Any, fmt: ModelFormat, records: list[dict[str, Any]],
    *, adapter: str | None,
) -> tuple[dict[str, str], dict[str, str], dict[str, Any]]:
    """BiN's and best-of-N's responses (``--bin N``), scored beside greedy decoding's as two more styles; the SFT
    model is the adapter ``adapter`` continued, when its card names one."""
    from vcot.evaluate.bin import BinSettings, bin_responses, load_sft_adapter
    from vcot.models.generation import GenerationSettings

    settings = GenerationSettings(fmt=fmt, max_new_tokens=config.max_new_tokens)
    choice = BinSettings(samples=config.bin, temperature=config.bin_temperature, top_p=config.bin_top_p,
                         scorer=config.bin_scorer, sft_model=load_sft_adapter(model, adapter))  # fmt: skip
    return bin_responses(model, processor, records, settings, choice)


def compare_with_history(
    config: EvaluateConfig, target: Target, metrics: dict[str, Any], details: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Scheduled mode (or served mode with ``--history``): this run's history entry, compared with the earlier
    comparable ones (the same data and split).

    Sets ``metrics["regression"]``; returns the entry (appended once the outputs are written) and the
    timeline the report plots (earlier comparable entries, then this one).
    """
    entry: dict[str, Any] = {
        "run": target.run,
        "model": target.model or details.get("served_model"),
        "adapter": target.adapter,
        **({"server": details["server"], "model_card": config.model_card} if config.server else {}),
        "data": config.data,
        "split": config.split,
        **({"protocol": asked} if (asked := hist.asked_otherwise(details["protocol"])) else {}),  # the default: none
        "output": target.output,
        "evaluated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "metrics": _numbers(metrics["overall"]),
        "subsets": {name: _numbers(values) for name, values in metrics["subsets"].items()},
    }
    earlier = hist.comparable(hist.read_history(str(target.history)), entry)
    metrics["regression"] = hist.compare(
        metrics["overall"], earlier, metrics=config.regression_metrics, threshold=config.regression_threshold
    )
    entry["regressions"] = metrics["regression"]["regressions"]
    return entry, [*earlier, entry]


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def report_details(details: dict[str, Any]) -> dict[str, Any]:
    """The settings line of the report: where things came from and how boxes were generated and read."""
    shown = {k: v for k, v in details.items() if isinstance(v, (str, int, float)) and v != ""}
    fmt = details["model_format"]
    shown["coords"] = fmt["coords"]
    shown["box format"] = fmt["box_syntax"]
    shown["family"] = fmt["family"]
    generation = details.get("generation")
    if generation and "repetition_penalty" in generation:
        shown["repetition penalty"] = generation["repetition_penalty"]
        shown["box-aware"] = generation["box_aware_penalty"]
    if generation:
        shown["samples/s"] = details["timing"]["samples_per_second"]
    return shown


def scored_run(target: Target) -> list[str]:
    """The train run whose adapter (or full fine-tune's ``model/``) was scored, when it is a committed one: recorded
    in the lineage, so that export shows these metrics only for that version of the run."""
    scored = target.adapter or target.model
    run = storage.parent(scored) if scored else ""
    return [run] if run and manifest.committed_stage(run) == "train" else []


def check_adapter(adapter: str) -> None:
    """Refuse an adapter that is not a train output's ``adapter/`` folder but another stage's committed output."""
    stage = manifest.committed_stage(adapter)
    if stage is not None:
        raise ConfigError(f"{adapter} is a {stage} output; expected the adapter/ folder of a train output")
    run = storage.parent(adapter)
    if manifest.committed_stage(run) not in (None, "train"):
        manifest.read_manifest(run, expect_stage="train")  # raises, saying which stage wrote it


def set_metrics(rows: list[dict[str, Any]], scores: list[Any], *, judged: bool) -> dict[str, Any]:
    """Overall and per-subset metrics of one set of scored rows: the seed's, the field's, the judge's."""
    metrics = summarize_by_subset(scores, [row["subset"] for row in rows])
    add_field_metrics(metrics, rows)
    if judged:
        add_judge_metrics(metrics, rows)
    if any("rule_score" in row for row in rows):
        add_rule_metrics(metrics, rows)
    return metrics


def all_metrics(
    config: EvaluateConfig, scored: dict[str, Any], details: dict[str, Any], *, judged: bool,
    more_samples: Sequence[Any] = (),
) -> dict[str, Any]:
    """``metrics.json``: the first prompt style's metrics, the styles side by side, Avg@k over the first answers
    and ``more_samples`` (the other answers' scored rows), the benchmark table."""
    styles = list(scored)
    rows, scores, join = scored[styles[0]]
    metrics = set_metrics(rows, scores, judged=judged)
    metrics.update(join=join, details=details)
    if len(styles) > 1:
        others = {style: set_metrics(*scored[style][:2], judged=judged) for style in styles[1:]}
        metrics["prompt_styles"] = compare_styles({styles[0]: metrics, **others})
    if more_samples:
        metrics["avg_at_k"] = average_at_k([metrics, *(set_metrics(*more[:2], judged=False) for more in more_samples)])
    if config.benchmark:
        metrics["benchmark"] = benchmark_table(metrics, judged=judged, benchmark=config.benchmark)
        if "avg_at_k" in metrics:  # the same table of the k answers' means (a count is not averaged: the first's)
            means = {name: {"samples": metrics["subsets"][name]["samples"], **values}
                     for name, values in metrics["avg_at_k"]["subsets"].items()}  # fmt: skip
            metrics["avg_at_k"]["benchmark"] = benchmark_table({"subsets": means}, judged=False,
                                                               benchmark=config.benchmark)  # fmt: skip
    return metrics


def write_outputs(
    output: str, metrics: dict[str, Any], scored: dict[str, Any], report: str, more_samples: Sequence[Any] = ()
) -> list[Any]:
    """The files the manifest lists: predictions of each prompt style (and of the other samples, each row with its
    ``sample``), metrics, report, the benchmark's CSV."""
    styles = list(scored)
    files = []
    if more_samples:
        rows = [{**row, "sample": sample} for sample, more in enumerate(more_samples, 1) for row in more[0]]
        files.append(shards.write_jsonl(output, SAMPLES_PATH, rows))
    files += [
        shards.write_jsonl(output, PREDICTIONS_PATH, scored[styles[0]][0]),
        shards.write_file(output, METRICS_PATH, storage.dumps_json(metrics).encode("utf-8")),
        shards.write_file(output, REPORT_PATH, report.encode("utf-8")),
    ]
    for style in styles[1:]:
        files.append(shards.write_jsonl(output, f"predictions-{style}/{shards.shard_name(0, 1)}", scored[style][0]))
    if metrics.get("benchmark"):
        files.append(shards.write_file(output, BENCHMARK_PATH, benchmark_csv(metrics["benchmark"]).encode("utf-8")))
    return files


def protocol_details(config: EvaluateConfig) -> dict[str, Any]:
    """How the questions were asked (metrics.json and the leaderboard's header): Avg@k, decoding, option order.

    >>> from vcot.evaluate.config import EvaluateConfig
    >>> protocol_details(EvaluateConfig(data="d", server="http://s/v1", output="o", samples=4, temperature=1.0))
    {'split': 'val', 'max_per_subset': None, 'max_samples': None, 'prompt_style': 'cot', 'samples': 4, 'temperature': 1.0, 'top_p': 1.0, 'seed': 0, 'shuffle_options': None, 'max_new_tokens': 512}
    """
    questions = {"split": config.split, "max_per_subset": config.max_per_subset, "max_samples": config.max_samples}
    if config.predictions:
        return {**questions, "samples": 1, "shuffle_options": None}
    return {**questions, "prompt_style": config.prompt_style, "samples": config.samples,
            "temperature": config.temperature, "top_p": config.top_p, "seed": config.seed,
            "shuffle_options": config.shuffle_options, "max_new_tokens": config.max_new_tokens}  # fmt: skip


def refuse_nothing_answered(
    records: list[dict[str, Any]], by_style: dict[str, dict[str, str]], details: dict[str, Any]
) -> None:
    """Fail, committing nothing, when the model answered none of the records (its every image unreadable, say): a
    report of zero samples would be committed as if it measured something. (Predictions that match no record are
    :func:`vcot.evaluate.scoring.join_and_score`'s refusal.)"""
    if "skipped_samples" not in details or all(by_style.values()):
        return
    skipped = ", ".join(f"{reason} {n}" for reason, n in details["skipped_samples"].items()) or "no response"
    raise ConfigError(
        f"the model answered none of the {len(records)} records: {skipped}; check that the records' images can be "
        "read from here (and are the ones the data stage sized); nothing was committed"
    )


def collect_answers(
    config: EvaluateConfig, target: Target, asked: list[list[dict[str, Any]]], details: dict[str, Any]
) -> tuple[list[dict[str, dict[str, str]]], ModelFormat]:
    """The answers to score, one ``{prompt style: responses}`` per sample, from the mode's source (predictions read
    back, a server asked, or a model run here) and the format they are read in; ``details`` gets what each says."""
    if config.predictions:
        loaded = load_predictions(config.predictions)
        answers, fmt = [{"cot": loaded.by_id}], score_mode_format(config)
        details.update(predictions=config.predictions, skipped_predictions=loaded.skipped)
    elif config.server:
        fmt = served_format(config)
        answers, generated = served_responses(config, asked, fmt, target.output)
        details.update(generated)
    else:
        answers, fmt, generated = model_responses(config, target, asked)
        details.update(model=target.model, adapter=target.adapter, run=target.run, **generated)
    details["model_format"] = fmt.to_dict()
    return answers, fmt


def evaluate(config: EvaluateConfig) -> dict[str, Any] | None:
    """Evaluate per ``config``; returns the manifest (overall metrics in ``stats``), or ``None`` when the output was
    already committed. Raises :class:`RegressionError` (exit 3) on a regression, also then."""
    if config.pointer and not storage.exists(config.pointer):  # a new cluster's nightly run: not a failure
        log.warning("no_model_yet", pointer=config.pointer, hint="a training run that moves the pointer writes it; "
                    "nothing to re-evaluate until then")  # fmt: skip
        return None
    target = resolve_target(config)
    if config.benchmark == "ground-r1":
        require_rouge()
    inputs = [config.data, config.predictions, target.model, target.adapter, config.model_card]
    if not manifest.prepare_output(target.output, stage=STAGE, inputs=inputs, overwrite=config.overwrite):
        log.info("already_committed", output=target.output, hint="pass --overwrite to redo it")
        metrics = json.loads(manifest.read_listed(target.output, METRICS_PATH))
        _raise_on_regression(metrics.get("regression"), target.output)
        return None
    if target.adapter:
        check_adapter(target.adapter)
    judge = judge_endpoint(config, target.output)

    records = load_records(config.data, config.split, config.max_samples, config.max_per_subset)
    if config.benchmark:
        check_records(records, config.benchmark)
    log.info("records_loaded", data=config.data, split=config.split, count=len(records))
    details: dict[str, Any] = {"mode": config.mode, "data": config.data, "split": config.split,
                               "benchmark_name": benchmark_name(records, config.data),
                               "evaluated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                               "protocol": protocol_details(config)}  # fmt: skip
    asked = sample_records(records, config.samples, config.shuffle_options)
    if config.shuffle_options is not None and not any(record.get("choices") for record in records):
        log.warning("nothing_to_shuffle", data=config.data, hint="no record has options: --shuffle-options changes "
                    "nothing (and --samples K without --temperature asks the same question K times)")  # fmt: skip
    answers, fmt = collect_answers(config, target, asked, details)

    by_style = answers[0]
    refuse_nothing_answered(records, by_style, details)
    scored = {style: join_and_score(asked[0], responses, fmt) for style, responses in by_style.items()}
    more_samples = [join_and_score(asked[j], answers[j][config.prompt_style], fmt) for j in range(1, len(asked))]
    records_by_id = {str(record["id"]): record for record in asked[0]}
    if config.benchmark == "ground-r1":
        for rows, _, _ in scored.values():
            add_rule_scores(rows, records_by_id)
        for sample, (rows, _, _) in enumerate(more_samples, 1):
            add_rule_scores(rows, {str(record["id"]): record for record in asked[sample]})
    if judge is not None:
        details["judge"] = judge_rows([row for rows, _, _ in scored.values() for row in rows], records_by_id, *judge)
    metrics = all_metrics(config, scored, details, judged=judge is not None, more_samples=more_samples)
    rows = scored[next(iter(scored))][0]
    official = official_aggregates(rows, records_by_id)
    if official:
        metrics["official"] = official

    entry, timeline = compare_with_history(config, target, metrics, details) if target.history else (None, [])

    report = build_report(
        title=f"vcot evaluation: {target.run or target.model or config.server or config.predictions}",
        metrics=metrics,
        rows=rows,
        records=records_by_id,
        details=report_details(details),
        max_samples=config.report_samples,
        history=timeline,
        regression=metrics.get("regression"),
        extra_sections=field_sections(metrics),
    )
    files = write_outputs(target.output, metrics, scored, report, more_samples)
    if target.history and entry is not None:
        hist.append_history(target.history, entry)  # before _SUCCESS: a rerun replaces this entry
    committed = manifest.commit(target.output, stage=STAGE, files=files, config=redacted(config),
                                inputs=[config.data, *scored_run(target)], stats=metrics["overall"])
    log.info("evaluated", output=target.output, **{k: metrics["overall"][k] for k in ("samples", "mean_iou", "acc_at_50")})
    _raise_on_regression(metrics.get("regression"), target.output)
    return committed


def _raise_on_regression(regression: dict[str, Any] | None, output: str) -> None:
    if regression and regression.get("regressions"):
        raise hist.RegressionError(
            "regression: " + "; ".join(regression["regressions"]) + f" (report: {storage.join(output, REPORT_PATH)})"
        )
