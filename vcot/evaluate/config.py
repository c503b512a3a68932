"""Configuration of ``vcot-evaluate``: one of three modes, chosen by which input is given.

- score mode, ``--predictions FILE``: score existing responses (a teacher's, an API model's) without a model;
- model mode, ``--model URI [--adapter URI]``: generate responses with batched greedy decoding, then score;
- scheduled mode, ``--pointer URI``: evaluate the model the newest-model pointer names, append the result to
  a history and flag a regression (exit code 3). What the CronJob runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vcot.boxes import BoxFormat
from vcot.config import option
from vcot.evaluate.metrics import RATE_METRICS
from vcot.model_format import FAMILIES, Coords, Family, Mode

DEFAULT_REGRESSION_METRICS = ["mean_iou", "iou_success_rate", "acc_at_50", "answer_accuracy"]


@dataclass
class EvaluateConfig:
    """Score grounded responses against committed records: metrics.json, predictions, an HTML report."""

    data: str = option(help="Committed records to evaluate on (the output of convert or distill).")
    output: str | None = option(
        None,
        help="Where to write predictions, metrics.json, report.html. Scheduled mode: the prefix under which each "
        "run gets <run path under the pointer dir>/ (default <pointer dir>/evals).",
    )
    split: str = option("val", help="Which committed split of --data to evaluate (files under <split>/).")
    predictions: str | None = option(None, help='Score mode: JSONL of {"id": ..., "prediction": "<raw text>"}.')
    model: str | None = option(None, help="Model mode: the base model (local folder or s3:// prefix).")
    adapter: str | None = option(None, help="Model mode: a PEFT adapter folder with vcot-model.json (from train).")
    pointer: str | None = option(None, help="Scheduled mode: the newest-model pointer JSON written by train.")
    history: str | None = option(
        None, help="Scheduled mode: the history JSONL to append to (default: eval-history.jsonl beside --pointer)."
    )
    regression_threshold: float = option(
        0.02, help="Flag a regression when a watched metric drops more than this (absolute) below the previous or best entry."
    )
    regression_metrics: list[str] = option(
        DEFAULT_REGRESSION_METRICS, help="Comma-separated overall metrics watched for regressions."
    )
    coords: Coords | None = option(
        None,
        help="Frame of the responses' boxes: norm1000 (house) or qwen2.5-absolute. Default: the adapter's "
        "vcot-model.json (a different value is refused); norm1000 in score mode.",
    )
    box_format: BoxFormat | None = option(
        None, help="How responses write boxes: house, obj, qwen or json. Default: vcot-model.json, else house."
    )
    family: Family = option(
        "qwen2.5-vl", help=f"Score mode: the model family whose image geometry qwen2.5-absolute boxes assume ({', '.join(FAMILIES)})."
    )
    min_pixels: int | None = option(None, help="Image min pixels (default: vcot-model.json, else the processor's / family's).")
    max_pixels: int | None = option(None, help="Image max pixels (default: vcot-model.json, else the processor's / family's).")
    max_new_tokens: int = option(512, help="Model mode: the most tokens generated per response.")
    batch_size: int = option(16, help="Model mode: responses generated together (left padded).")
    repetition_penalty: float = option(1.2, help="Model mode: repetition penalty (the seed's 1.2; 1.0 turns it off).")
    box_aware_penalty: bool = option(
        False, help="Model mode: do not penalize coordinate digits inside an open <box> (NOTES: 1.2 hurts coordinates)."
    )
    prompt_mode: Mode | None = option(
        None, help="Model mode: prompt with the image (multimodal) or text only. Default: vcot-model.json, else multimodal."
    )
    threads: int = option(
        0, help="Model mode on CPU: torch threads (0: torch's default, the node's cores; set the pod's CPU limit on shared nodes)."
    )
    quantize: Literal["4bit", "8bit"] | None = option(None, help="Model mode: load the base model quantized: 4bit (NF4) or 8bit.")
    max_samples: int | None = option(None, help="Evaluate only the first N records (quick checks).")
    report_samples: int = option(48, help="How many samples the HTML report shows with their images.")
    overwrite: bool = option(False, help="Rewrite a committed output instead of skipping it.")

    def __post_init__(self) -> None:
        modes = [name for name in ("predictions", "model", "pointer") if getattr(self, name)]
        if len(modes) != 1:
            raise ValueError("give exactly one of --predictions (score mode), --model (model mode) or --pointer (scheduled)")
        if self.output is None and not self.pointer:
            raise ValueError("--output is required: where to write predictions, metrics.json and report.html")
        if self.adapter and not self.model:
            raise ValueError("--adapter needs --model (the base model it was trained on)")
        if self.history and not self.pointer:
            raise ValueError("--history is only used with --pointer (scheduled re-evaluation)")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("--batch-size and --max-new-tokens must be at least 1")
        if self.repetition_penalty <= 0:
            raise ValueError("--repetition-penalty must be positive (1.0 turns it off)")
        unknown = [name for name in self.regression_metrics if name not in RATE_METRICS]
        if unknown:
            raise ValueError(f"--regression-metrics: unknown {', '.join(unknown)}; choose from {', '.join(RATE_METRICS)}")
        if self.regression_threshold < 0:
            raise ValueError("--regression-threshold must be >= 0")
        if self.threads < 0:
            raise ValueError("--threads must be >= 0 (0 keeps torch's default)")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError("--max-samples must be at least 1")
        if self.family not in FAMILIES:
            raise ValueError(f"--family {self.family!r} is not one of {', '.join(FAMILIES)}")
        self.split = self.split.strip("/")

    @property
    def mode(self) -> str:
        return "score" if self.predictions else "model" if self.model else "scheduled"
