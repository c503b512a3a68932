"""Configuration of ``vcot-evaluate``: one of four modes, chosen by which input is given.

- score mode, ``--predictions FILE``: score existing responses (a teacher's, an API model's) without a model;
- model mode, ``--model URI [--adapter URI]``: generate responses with batched greedy decoding, then score;
- served mode, ``--server URL``: ask a model an OpenAI-compatible endpoint serves (vLLM, ...), then score;
- scheduled mode, ``--pointer URI``: evaluate the model the newest-model pointer names, append the result to
  a history and flag a regression (exit code 3). What the CronJob runs.

Across modes: ``--judge-model`` scores answers with an LLM judge besides exact match, ``--benchmark viscot``
(or ``ground-r1``) adds the per-subset table of the VisCoT benchmark, and (model and scheduled mode)
``--prompt-style`` asks for grounded reasoning, the answer alone, or both side by side. Except in score mode,
``--samples``, ``--temperature`` and ``--shuffle-options`` state the protocol (Avg@k, shuffled options:
:mod:`vcot.evaluate.protocol`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from vcot.config import option
from vcot.grounding.boxes import BoxFormat
from vcot.grounding.families import DEFAULT_FAMILY, FAMILIES, Family
from vcot.grounding.model_format import Coords, Mode
from vcot.models.penalty import BOX_AWARE, REPETITION_PENALTY
from vcot.models.served import STRUCTURED_BOXES_HELP
from vcot.scoring.field_metrics import FIELD_RATE_METRICS
from vcot.scoring.metrics import RATE_METRICS

WATCHABLE_METRICS = (*RATE_METRICS, *FIELD_RATE_METRICS, "judge_score")

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
    split: str | None = option(
        None, help="Which committed split of --data to evaluate (files under <split>/; all: train/ and val/). "
        "Default: val; with --benchmark, all."
    )
    predictions: str | None = option(None, help='Score mode: JSONL of {"id": ..., "prediction": "<raw text>"}.')
    model: str | None = option(None, help="Model mode: the base model (local folder or s3:// prefix).")
    adapter: str | None = option(None, help="Model mode: a PEFT adapter folder with vcot-model.json (from train).")
    pointer: str | None = option(None, help="Scheduled mode: the newest-model pointer JSON written by train.")
    server: str | None = option(
        None, help="Served mode: the OpenAI-compatible endpoint serving the model (http://host:8000/v1: vLLM, SGLang, "
        "TGI, a hosted API). The key, if it needs one: OPENAI_API_KEY."
    )
    served_model: str | None = option(
        None, help="Served mode: the model name to ask for (a LoRA's --lora-modules name); default: the only one the "
        "server lists."
    )
    model_card: str | None = option(
        None, help="Served mode: the folder of the served model's vcot-model.json (its export, or the run's adapter/): "
        "frame, prompt, pixel budget. Without it, --coords (and --family) must say the frame."
    )
    server_params: dict[str, Any] = option(
        {}, help='Served mode: more request parameters, a JSON object (vLLM: {"repetition_penalty": 1.0} turns off '
        "the penalty a served generation_config.json sets); recorded with the results."
    )
    structured_boxes: bool = option(False, help="Served mode: " + STRUCTURED_BOXES_HELP)
    server_concurrency: int = option(8, help="Served mode: most requests in flight at once.")
    server_max_attempts: int = option(6, help="Served mode: attempts per request on 429, 5xx, timeouts before the run stops.")
    server_timeout: float = option(300.0, help="Served mode: seconds before one request counts as timed out.")
    server_cache: str | None = option(
        None, help="Served mode: where answers are kept so a rerun never asks twice; default: _served_cache beside --output."
    )
    history: str | None = option(
        None, help="Scheduled mode: the history JSONL to append to (default: eval-history.jsonl beside --pointer); "
        "served mode: append to this history too (none by default)."
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
        DEFAULT_FAMILY, help=f"Score mode: the model family whose image geometry qwen2.5-absolute boxes assume ({', '.join(FAMILIES)})."
    )
    min_pixels: int | None = option(None, help="Image min pixels (default: vcot-model.json, else the processor's / family's).")
    max_pixels: int | None = option(None, help="Image max pixels (default: vcot-model.json, else the processor's / family's).")
    max_new_tokens: int = option(512, help="Model mode: the most tokens generated per response.")
    batch_size: int = option(16, help="Model mode: responses generated together (left padded).")
    repetition_penalty: float = option(
        REPETITION_PENALTY, help="Model mode: repetition penalty (the seed's 1.2; 1.0 turns it off)."
    )
    box_aware_penalty: bool = option(
        BOX_AWARE,
        help="Model mode: do not penalize coordinate digits inside an open <box> (the plain penalty hurts "
        "coordinates: docs/bench-evaluate.md); --no-box-aware-penalty applies the plain one.",
    )
    prompt_mode: Mode | None = option(
        None, help="Model mode: prompt with the image (multimodal) or text only. Default: vcot-model.json, else multimodal."
    )
    threads: int = option(
        0, help="Model mode on CPU: torch threads (0: torch's default, the node's cores; set the pod's CPU limit on shared nodes)."
    )
    quantize: Literal["4bit", "8bit"] | None = option(None, help="Model mode: load the base model quantized: 4bit (NF4) or 8bit.")
    max_samples: int | None = option(None, help="Evaluate only the first N records (quick checks).")
    max_per_subset: int | None = option(
        None, help="Evaluate only the first N records of each subset (150: the slice Ground-R1's scripts take)."
    )
    benchmark: Literal["viscot", "ground-r1"] | None = option(
        None,
        help="viscot: the records are the converted VisCoT benchmark (vcot-convert --source viscot); add its per-subset "
        "table (answer score, detection Acc@0.5 of the reasoning's first box, mean IoU) to metrics.json, the report "
        "and benchmark.csv. ground-r1: the same under Ground-R1's protocol (--source ground-r1; its per-subset rules "
        "score the answers, averaged over the 12 subsets of its table).",
    )
    prompt_style: Literal["cot", "direct", "both"] = option(
        "cot",
        help="Model mode: cot asks for grounded reasoning, direct for the answer alone (no rationale, no boxes), "
        "both runs the two on the same samples and reports the answer accuracy side by side.",
    )
    bin: int = option(
        0,
        help="Model mode: also answer by BiN (LaCoT): sample N rationales from the policy, let the SFT model "
        "(adapter off) answer each, keep the answer most likely across all of them; adds bin and best_of_n "
        "predictions beside greedy ones (0: off; 5 in the paper).",
    )
    bin_scorer: Literal["sft", "policy"] = option(
        "sft", help="BiN: who scores answers after rationales: sft (adapter off, the paper's) or policy (the released code's)."
    )
    bin_temperature: float = option(0.7, help="BiN: the temperature the policy samples rationales at.")
    bin_top_p: float = option(1.0, help="BiN: nucleus sampling's top-p for the rationales (1.0: no cut).")
    samples: int = option(
        1, help="Answer every question this many times and report each metric's mean over them (Avg@k, with its range) "
        "beside the first answer's: sampled at --temperature, or greedy over --shuffle-options orders."
    )
    temperature: float = option(0.0, help="Model and served mode: sampling temperature (0: greedy, the default).")
    top_p: float = option(1.0, help="Model and served mode: nucleus sampling's top-p (with --temperature above 0).")
    seed: int = option(
        0, help="Sampling seed: answer j of a question is drawn with seed + j (served: the request's seed, which vLLM "
        "honours), so a rerun draws the same answers."
    )
    shuffle_options: int | None = option(
        None, help="Show each multiple-choice question's options in an order drawn from this seed, the question's id "
        "and the sample (the same for every model and rerun), so no model gains from where the right option sits; "
        "the order is kept in each prediction row."
    )
    judge_model: str | None = option(
        None,
        help="Also score answers with this OpenAI-compatible model, VisCoT's judge protocol (gpt-4o-mini: "
        "Ground-R1's choice); exact match is still reported. The key comes from OPENAI_API_KEY only.",
    )
    judge_base_url: str | None = option(
        None,
        help="The judge's OpenAI-compatible endpoint (e.g. http://vllm:8000/v1); default: OpenAI (or OPENAI_BASE_URL).",
    )
    judge_cache: str | None = option(
        None, help="Where judge answers are kept so a rerun never pays twice; default: _judge_cache beside --output."
    )
    judge_concurrency: int = option(8, help="Most judge requests in flight at once.")
    judge_max_attempts: int = option(6, help="Attempts per judge request on 429, 5xx, timeouts before the run stops.")
    judge_timeout: float = option(60.0, help="Seconds before one judge request counts as timed out.")
    judge_backoff_base: float = option(1.0, help="First judge retry delay in seconds; doubles each attempt (jitter).")
    judge_backoff_max: float = option(30.0, help="Longest judge retry delay in seconds (Retry-After honoured to it).")
    report_samples: int = option(48, help="How many samples the HTML report shows with their images.")
    overwrite: bool = option(False, help="Rewrite a committed output instead of skipping it.")

    def __post_init__(self) -> None:
        modes = [name for name in ("predictions", "model", "pointer", "server") if getattr(self, name)]
        if len(modes) != 1:
            raise ValueError("give exactly one of --predictions (score mode), --model (model mode), --server (served "
                             "mode) or --pointer (scheduled)")  # fmt: skip
        served_only = [flag for flag, value in (("--served-model", self.served_model), ("--model-card", self.model_card),
                                                ("--server-params", self.server_params),
                                                ("--structured-boxes", self.structured_boxes)) if value]  # fmt: skip
        if served_only and not self.server:
            raise ValueError(f"{', '.join(served_only)}: only with --server (served mode)")
        if self.server and (self.bin or self.quantize):
            raise ValueError("--bin and --quantize need the weights in process (--model), not --server")
        if self.server_concurrency < 1 or self.server_max_attempts < 1 or self.server_timeout <= 0:
            raise ValueError("--server-concurrency, --server-max-attempts must be at least 1, --server-timeout positive")
        if self.output is None and not self.pointer:
            raise ValueError("--output is required: where to write predictions, metrics.json and report.html")
        if self.adapter and not self.model:
            raise ValueError("--adapter needs --model (the base model it was trained on)")
        if self.history and not (self.pointer or self.server):
            raise ValueError("--history is only used with --pointer or --server (a scheduled re-evaluation)")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("--batch-size and --max-new-tokens must be at least 1")
        if self.repetition_penalty <= 0:
            raise ValueError("--repetition-penalty must be positive (1.0 turns it off)")
        unknown = [name for name in self.regression_metrics if name not in WATCHABLE_METRICS]
        if unknown:
            choose = ", ".join(WATCHABLE_METRICS)
            raise ValueError(f"--regression-metrics: unknown {', '.join(unknown)}; choose from {choose}")
        if self.regression_threshold < 0:
            raise ValueError("--regression-threshold must be >= 0")
        if self.threads < 0:
            raise ValueError("--threads must be >= 0 (0 keeps torch's default)")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError("--max-samples must be at least 1")
        if self.family not in FAMILIES:
            raise ValueError(f"--family {self.family!r} is not one of {', '.join(FAMILIES)}")
        if self.max_per_subset is not None and self.max_per_subset < 1:
            raise ValueError("--max-per-subset must be at least 1")
        if self.prompt_style != "cot" and self.predictions:
            raise ValueError("--prompt-style changes the prompt: it needs --model, --server or --pointer (not --predictions)")
        if self.judge_concurrency < 1 or self.judge_max_attempts < 1 or self.judge_timeout <= 0:
            raise ValueError("--judge-concurrency, --judge-max-attempts must be at least 1, --judge-timeout positive")
        if self.judge_backoff_base < 0 or self.judge_backoff_max < 0:
            raise ValueError("--judge-backoff-base and --judge-backoff-max must not be negative")
        if self.bin and (self.predictions or self.bin < 2):
            raise ValueError("--bin N needs N >= 2 and a model (--model or --pointer), not --predictions")
        if self.bin_temperature <= 0 or not 0 < self.bin_top_p <= 1:
            raise ValueError("--bin-temperature must be positive and --bin-top-p in (0, 1]")
        self._check_protocol()
        self.split = (self.split or ("all" if self.benchmark else "val")).strip("/")

    def _check_protocol(self) -> None:
        """Avg@k, sampling and option shuffling (:mod:`vcot.evaluate.protocol`): what combines with what."""
        if self.samples < 1:
            raise ValueError("--samples must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("--temperature must be >= 0 and --top-p in (0, 1]")
        if self.predictions and (self.samples > 1 or self.temperature or self.shuffle_options is not None):
            raise ValueError("--samples, --temperature and --shuffle-options change how questions are asked: they need "
                             "--model, --server or --pointer (predictions were already answered)")  # fmt: skip
        if self.samples > 1 and not self.temperature and self.shuffle_options is None:
            raise ValueError(f"--samples {self.samples} greedy answers to the same prompt are one answer: set "
                             "--temperature (1.0, say) or --shuffle-options SEED")  # fmt: skip
        if self.samples > 1 and (self.prompt_style == "both" or self.bin or self.judge_model):
            raise ValueError("--samples > 1 takes one --prompt-style (cot or direct), no --bin and no --judge-model "
                             "(the judge would score the first answer only)")  # fmt: skip

    @property
    def mode(self) -> str:
        return "score" if self.predictions else "model" if self.model else "served" if self.server else "scheduled"

    @property
    def prompt_styles(self) -> list[str]:
        """The styles to generate with, the first one primary (its rows are ``predictions/``)."""
        return ["cot", "direct"] if self.prompt_style == "both" else [self.prompt_style]
