"""Training recipes: every knob of a run in one documented dataclass, presets as YAML files.

A recipe is resolved in three layers, later ones win:

1. the defaults below: the seed's recipe (QLoRA on Qwen2.5-VL-7B), but with no fixed global batch, no held-out
   generation watch and an 80 GiB card (``SEED_ONLY``: the preset sets those; a file that wants them sets them);
2. a YAML file: a shipped preset by name (``vcot/train/recipes/<name>.yaml``) or any file path/URI;
3. ``--set key=value`` overrides (values parsed as YAML: ``--set lora_r=16,quantize=null``).

Unknown keys are refused with the list of valid ones, so a typo never trains with a silent default. Every
problem with a recipe is a one-line :class:`ConfigError` (exit code 2).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vcot.config import load_yaml
from vcot.errors import ConfigError
from vcot.io import storage
from vcot.scoring.metrics import RATE_METRICS
from vcot.scoring.rewards import DEFAULT_WEIGHTS, check_weights

SECTIONS = ("trainer", "peft")
"""Recipe keys that are mappings passed through to a library's config (``--set trainer.field=value`` adds one)."""
RECIPES_DIR = Path(__file__).parent / "recipes"
DEFAULT_RECIPE = "qwen2.5-vl-7b-qlora"
SEED_ONLY = ("gpu_memory_gib", "global_batch_size", "generation_eval_samples", "generation_eval_steps")
"""What the seed preset sets beyond :class:`Recipe`'s defaults: its 48 GiB card, a global batch of 16 kept on any
number of GPUs, and the held-out generation watch. Not in the defaults: they fit the seed's model and data, not any."""
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
METHODS = ("sft", "grpo", "gfn")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")
"""TRL's GRPO loss formulations offered here (token-level aggregation variants of the clipped objective)."""
WITHOUT_OBJECTS = ("skip", "format_accuracy")
WITHOUT_WARMUP = ("constant", "reduce_lr_on_plateau", "greedy")
"""transformers' schedules that take no warm-up (``get_scheduler`` builds them without ``num_warmup_steps``)."""
GENERATION_METRICS = tuple(f"eval_gen_{name}" for name in RATE_METRICS)
"""What the generation evaluation logs (``vcot.train.generation_eval``; SFT, GRPO, RGFN): evaluate's metrics on a
val slice."""
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
"""``report_to`` names and the package each needs (W&B and MLflow read their own environment variables)."""
SHARDINGS = ("fsdp2",)
"""How a recipe spreads one model over its GPUs beyond data parallelism (``sharding``; null: each GPU a whole copy)."""
FINETUNES = ("lora", "full")
"""lora: adapters on a frozen base (with quantize 4bit: QLoRA); full: the weights themselves, no adapter."""

Rule = tuple[str, Callable[[float], bool]]
AT_LEAST_ONE: Rule = (">= 1", lambda v: v >= 1)
NON_NEGATIVE: Rule = (">= 0", lambda v: v >= 0)
POSITIVE: Rule = ("> 0", lambda v: v > 0)
NUMBER_RULES: dict[str, Rule] = {
    **dict.fromkeys(
        ("lora_r", "lora_alpha", "per_device_train_batch_size", "per_device_eval_batch_size",
         "gradient_accumulation_steps", "eval_steps", "save_steps", "save_total_limit", "logging_steps",
         "generation_eval_max_new_tokens", "max_completion_length", "explore_nums", "explore_min_bs", "reward_every",
         "rat_max_len", "gpus"),
        AT_LEAST_ONE,
    ),
    **dict.fromkeys(
        ("global_batch_size", "weight_decay", "max_grad_norm", "neftune_noise_alpha", "early_stopping_patience",
         "early_stopping_threshold", "generation_eval_samples", "generation_eval_steps", "dataloader_num_workers",
         "beta", "rat_min_len", "reward_temp_horizon", "reward_tolerance_horizon", "vision_learning_rate", "packing"),
        NON_NEGATIVE,
    ),
    **dict.fromkeys(
        ("learning_rate", "num_train_epochs", "temperature", "gpu_memory_gib", "reward_temp_start", "reward_temp_end",
         "reward_tolerance_start", "reward_tolerance_end", "subtb_lambda"),
        POSITIVE,
    ),
    **dict.fromkeys(("lora_dropout", "warmup_ratio"), ("in [0, 1)", lambda v: 0 <= v < 1)),
    **dict.fromkeys(("top_p", "vllm_gpu_memory_utilization"), ("in (0, 1]", lambda v: 0 < v <= 1)),
    "max_steps": ("-1 (num_train_epochs decides) or >= 1", lambda v: v == -1 or v >= 1),
    "num_generations": (">= 2 (GRPO compares completions within a group)", lambda v: v >= 2),
    "seed": ("in [0, 2**32)", lambda v: 0 <= v < 2**32),
}  # fmt: skip
"""Every numeric knob's range (whatever the method: a value a method ignores is still refused if absurd)."""


def sampling_cuts(top_p: float, trainer: dict[str, Any]) -> list[str]:
    """The settings that cut GRPO's sampled distribution (nucleus, top-k, min-p), as ``key=value``.

    >>> sampling_cuts(0.9, {"top_k": 0, "min_p": 0.05})
    ['top_p=0.9', 'trainer.min_p=0.05']
    """
    cuts = [f"top_p={top_p}"] if top_p < 1 else []
    return cuts + [f"trainer.{key}={trainer[key]}" for key in ("top_k", "min_p") if trainer.get(key)]


@dataclass
class Recipe:
    """One training run's knobs. The defaults are the seed's recipe but for ``SEED_ONLY``; the YAML presets say what
    each means."""

    method: str = "sft"
    # What the recipe was planned for: its GPUs and their memory (vcot-plan's defaults), and the sharding it needs
    gpus: int = 1
    gpu_memory_gib: float = 80.0
    sharding: str | None = None
    reshard_after_forward: bool = True  # fsdp2: free each layer's gathered weights after its forward (less memory)
    cpu_offload: bool = False  # fsdp2: shards and their optimizer state in CPU memory (slower; for GPUs too small)
    # Model
    quantize: str | None = "4bit"
    gradient_checkpointing: bool = True
    # LoRA
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    tune_vision: bool = False
    modules_to_save: list[str] = field(default_factory=list)
    # Optimization
    learning_rate: float = 1e-4
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    num_train_epochs: float = 2.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 4
    gradient_accumulation_steps: int = 4
    # 0: per_device_train_batch_size x gradient_accumulation_steps x world size; N: keep N whatever the world size
    # (the accumulation is derived: N / (per_device_train_batch_size x world size), which must divide)
    global_batch_size: int = 0
    weight_decay: float = 0.01
    max_grad_norm: float = 0.3
    optim: str = "adamw_8bit"
    neftune_noise_alpha: float | None = 5.0
    seed: int = 42
    # Evaluation, early stopping, checkpoints, logging
    eval_steps: int = 100
    save_steps: int = 100
    save_total_limit: int = 2
    early_stopping_patience: int = 3
    early_stopping_threshold: float = 0.001
    logging_steps: int = 50
    # SFT, GRPO, RGFN: greedy answers to the first N val records every M steps, scored as evaluate scores them (0: off)
    generation_eval_samples: int = 0
    generation_eval_steps: int = 0  # 0: at every evaluation; N: at the evaluations passing a multiple of N steps
    generation_eval_max_new_tokens: int = 512
    metric_for_best_model: str = "eval_loss"  # or one of GENERATION_METRICS (higher is better)
    # Tracking: tensorboard (synced to OUTPUT/tensorboard/ at every log), wandb, mlflow
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    # Outputs
    merge_adapter: bool = False
    dataloader_num_workers: int = 2
    # GRPO: weight per reward of vcot.scoring.rewards (format, accuracy, bbox, dual_iou); 0 computes and logs it only
    reward_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    num_generations: int = 8
    max_completion_length: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.04
    loss_type: str = "dapo"
    use_vllm: bool = False
    vllm_gpu_memory_utilization: float = 0.3
    records_without_objects: str = "skip"
    # GFN (RGFN, LaCoT): rationales sampled per prompt beside the reference, their lengths, the reward schedule
    explore_nums: int = 6
    explore_min_bs: int = 2
    rat_min_len: int = 64
    rat_max_len: int = 700
    reward_every: int = 8
    reward_temp_start: float = 1.0
    reward_temp_end: float = 0.7
    reward_temp_horizon: int = 150
    reward_tolerance_start: float = 1.5
    reward_tolerance_end: float = 1.0
    reward_tolerance_horizon: int = 150
    subtb_lambda: float = 1.0
    # The open end (vcot/train/options.py): what is trained, a vision learning rate, length-grouped batches, and
    # anything else of TrainingArguments/TRL's config (trainer:) and of PEFT's LoraConfig (peft:), checked by name
    finetune: str = "lora"
    vision_learning_rate: float | None = None
    group_by_length: bool = False
    packing: int = 0
    fused_lm_head: bool = True
    peft: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"recipe method={self.method!r} is not valid: use {' or '.join(METHODS)}")
        if not isinstance(self.reward_weights, dict):
            raise ConfigError(f"recipe reward_weights={self.reward_weights!r} must be a mapping of reward: weight")
        check_weights(self.reward_weights)
        if self.quantize not in (None, "4bit", "8bit"):
            raise ConfigError(f"recipe quantize={self.quantize!r} is not valid: use 4bit, 8bit or null")
        if self.sharding not in (None, *SHARDINGS):
            raise ConfigError(f"recipe sharding={self.sharding!r} is not valid: use {', '.join(SHARDINGS)} or null")
        self._check_numbers()
        self._check_warmup()
        self._check_sharding()
        if self.global_batch_size % self.per_device_train_batch_size:
            raise ConfigError(
                f"recipe global_batch_size={self.global_batch_size} must be 0 or a multiple of "
                f"per_device_train_batch_size={self.per_device_train_batch_size}"
            )
        keeps_best = self.method == "sft" or self.generation_eval_samples > 0  # GRPO, RGFN: by the held-out score
        if keeps_best and self.save_steps % self.eval_steps:
            raise ConfigError(
                "recipe save_steps must be a multiple of eval_steps: the run keeps the checkpoint with the best "
                f"evaluation (got save_steps={self.save_steps}, eval_steps={self.eval_steps})"
            )
        if self.method != "sft" and self.generation_eval_samples > 0 and self.save_steps != self.eval_steps:
            raise ConfigError(
                f"recipe save_steps={self.save_steps} must equal eval_steps={self.eval_steps} for {self.method} with "
                "the held-out evaluation: a best score at a step with no checkpoint would be reported for weights "
                "that were not kept, and decide the pointer (or set generation_eval_samples=0)"
            )
        self._check_selection_and_tracking()
        self._check_open()
        if self.method == "grpo":
            self._check_grpo()
        if self.method == "gfn":
            self._check_gfn()

    def _check_numbers(self) -> None:
        """Every numeric knob a number of its type, finite and in its range (:data:`NUMBER_RULES`), before anything
        loads: ``learning_rate: .inf`` or ``lora_dropout: .nan`` would otherwise train, crash or diverge later."""
        for f in dataclasses.fields(self):
            if f.name not in NUMBER_RULES:
                continue
            value, (rule, holds) = getattr(self, f.name), NUMBER_RULES[f.name]
            if value is None and "None" in str(f.type):
                continue
            if isinstance(value, str) and "float" in str(f.type):  # a quoted '2e-5' is a string
                value = _coerce(f.name, value, 0.0)
                setattr(self, f.name, value)
            kind = "an integer" if str(f.type).startswith("int") else "a number"
            if isinstance(value, bool) or not isinstance(value, int if kind == "an integer" else (int, float)):
                raise ConfigError(f"recipe {f.name}={value!r} must be {kind} {rule}")
            if not math.isfinite(value):
                raise ConfigError(f"recipe {f.name}={value!r} is not a finite number: {f.name} must be {rule}")
            if not holds(value):
                raise ConfigError(f"recipe {f.name}={value!r} is out of range: {f.name} must be {rule}")

    def _check_warmup(self) -> None:
        """A warm-up the schedule would ignore, refused: transformers builds ``constant``, ``reduce_lr_on_plateau``
        and ``greedy`` without one, so a ``warmup_ratio`` beside them trains exactly as without it, silently."""
        if self.warmup_ratio > 0 and self.lr_scheduler_type in WITHOUT_WARMUP:
            instead = "lr_scheduler_type=constant_with_warmup, or " if self.lr_scheduler_type == "constant" else ""
            raise ConfigError(
                f"recipe lr_scheduler_type={self.lr_scheduler_type} has no warm-up, so warmup_ratio="
                f"{self.warmup_ratio} would do nothing: set {instead}warmup_ratio=0"
            )

    def _check_sharding(self) -> None:
        """What FSDP2 cannot shard, refused before any model loads, with the data-parallel way named."""
        if not self.sharding:
            if not self.reshard_after_forward or self.cpu_offload:
                raise ConfigError("recipe reshard_after_forward and cpu_offload apply to sharding=fsdp2 only")
            return
        if self.quantize:
            raise ConfigError(
                f"recipe sharding={self.sharding} shards 16-bit weights; a {self.quantize} base is not sharded: set "
                "quantize=null, or sharding=null to train it data-parallel (a whole quantized copy per GPU)"
            )
        if "8bit" in self.optim:
            raise ConfigError(
                f"recipe optim={self.optim} keeps bitsandbytes' own state, which {self.sharding} does not shard: "
                "use optim=adamw_torch with sharding, or sharding=null"
            )
        if self.use_vllm:
            raise ConfigError(
                f"recipe use_vllm=true with sharding={self.sharding}: vLLM's colocated rollouts hold a whole model "
                "per GPU and have not been run sharded: set use_vllm=false (rollouts by the sharded policy itself)"
            )

    def _check_selection_and_tracking(self) -> None:
        """The generation evaluation, the metric that picks the best checkpoint, the trackers."""
        gen = self.generation_eval_samples
        if self.metric_for_best_model not in ("eval_loss", *GENERATION_METRICS):
            raise ConfigError(
                f"recipe metric_for_best_model={self.metric_for_best_model!r} is not valid: use eval_loss or one of "
                f"{', '.join(GENERATION_METRICS)}"
            )
        if self.metric_for_best_model != "eval_loss" and not (gen and self.generation_eval_steps <= self.eval_steps):
            raise ConfigError(
                f"recipe metric_for_best_model={self.metric_for_best_model} needs the generation evaluation at every "
                "evaluation: set generation_eval_samples > 0 and generation_eval_steps to 0 (or at most eval_steps)"
            )
        if self.method != "sft" and gen and self.metric_for_best_model == "eval_loss":
            raise ConfigError(
                f"recipe metric_for_best_model=eval_loss: method {self.method} has no eval loss; its held-out "
                f"evaluation keeps the checkpoint by one of {', '.join(GENERATION_METRICS)} "
                "(eval_gen_first_object_iou, say), or set generation_eval_samples=0 to turn it off"
            )
        if not isinstance(self.report_to, list) or set(self.report_to) - set(TRACKERS):
            raise ConfigError(
                f"recipe report_to={self.report_to!r} is not valid: a list of {', '.join(TRACKERS)}, or [] for none"
            )
        missing = [name for name in self.report_to if importlib.util.find_spec(TRACKERS[name]) is None]
        if missing:
            raise ConfigError(
                f"recipe report_to names {', '.join(missing)}, which is not installed here: install it in the image "
                "or remove it from report_to"
            )

    def _check_open(self) -> None:
        """``finetune``, ``vision_learning_rate``, ``group_by_length``, ``packing``, ``fused_lm_head``; ``peft:`` and
        ``trainer:`` by their fields."""
        from vcot.train import options

        if self.finetune not in FINETUNES:
            raise ConfigError(f"recipe finetune={self.finetune!r} is not valid: use {' or '.join(FINETUNES)}")
        if self.finetune == "full" and (self.quantize or self.merge_adapter or self.method != "sft"):
            raise ConfigError(
                "recipe finetune=full trains the weights themselves: it needs method sft, quantize=null and "
                "merge_adapter=false (the output's model/ is already a standalone model)"
            )
        if self.group_by_length and self.method != "sft":
            raise ConfigError("recipe group_by_length is SFT-only (GRPO and RGFN sample prompts, not tokenized rows)")
        if self.packing and self.method != "sft":
            raise ConfigError("recipe packing is SFT-only (GRPO and RGFN sample prompts, not tokenized rows): set "
                              "packing=0")  # fmt: skip
        if not self.fused_lm_head and self.method != "sft":
            raise ConfigError("recipe fused_lm_head is SFT's (TRL's GRPO always scores through its own fused head; "
                              "RGFN scores sampled rationales): leave it true")  # fmt: skip
        for name in ("peft", "trainer"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"recipe {name} must be a mapping of field: value (got {getattr(self, name)!r})")
        options.check_peft(self)
        options.check_trainer(self)
        if self.method == "sft":  # GRPO and RGFN may continue an adapter, which decides what trains (TrainConfig)
            options.check_vision_learning_rate(self)

    @property
    def optimizer_state_bytes(self) -> int:
        """AdamW's two moments per fp32 trainable parameter: a byte each with an 8-bit optimizer, four otherwise.

        >>> Recipe(optim="adamw_8bit").optimizer_state_bytes, Recipe(optim="adamw_torch").optimizer_state_bytes
        (2, 8)
        """
        return 2 if "8bit" in self.optim else 8

    def scratch_bytes(self, trainable: int, total: int) -> int:
        """The most local disk (``TMPDIR``) a run of this recipe writes, for a model of ``total`` parameters of
        which ``trainable`` train: the checkpoints on disk at once (``save_total_limit``, the best one, the one
        being written), each the trainable weights in fp32 and their optimizer state (2 bytes a parameter for
        8-bit AdamW, 8 for 32-bit); the adapter saved at the end; with ``merge_adapter`` the merged 16-bit model.
        The training rows' local copy comes on top (its size is the data's: train adds it).

        >>> Recipe(save_total_limit=2, optim="adamw_torch", merge_adapter=True).scratch_bytes(trainable=10, total=100)
        720
        """
        checkpoints = (self.save_total_limit + 2) * trainable * (4 + self.optimizer_state_bytes)
        return checkpoints + trainable * 4 + (2 * total if self.merge_adapter else 0)

    def _check_grpo(self) -> None:
        """What TRL would refuse later (or silently ignore), refused before any model is loaded."""
        per_step = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if not self.global_batch_size and per_step % self.num_generations:  # else the accumulation is derived
            raise ConfigError(
                "recipe per_device_train_batch_size x gradient_accumulation_steps must be a multiple of "
                f"num_generations={self.num_generations}: each step generates whole groups"
            )
        if self.global_batch_size % self.num_generations:
            raise ConfigError(
                f"recipe global_batch_size={self.global_batch_size} must be a multiple of "
                f"num_generations={self.num_generations}: each step generates whole groups"
            )
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"recipe loss_type={self.loss_type!r} is not valid: use one of {', '.join(LOSS_TYPES)}")
        if self.records_without_objects not in WITHOUT_OBJECTS:
            raise ConfigError(
                f"recipe records_without_objects={self.records_without_objects!r} is not valid: "
                f"use {' or '.join(WITHOUT_OBJECTS)}"
            )
        if self.neftune_noise_alpha is not None or self.early_stopping_patience > 0:
            raise ConfigError(
                "recipe neftune_noise_alpha and early_stopping_patience are SFT-only (GRPO has no eval_loss): "
                "set neftune_noise_alpha=null and early_stopping_patience=0 for method grpo"
            )
        cuts = sampling_cuts(self.top_p, self.trainer)
        if self.use_vllm and cuts and self.trainer.get("vllm_importance_sampling_correction", True):
            raise ConfigError(  # TRL issue 6789
                f"recipe {', '.join(cuts)} with use_vllm=true: vLLM reports a sampled token's log-probability within "
                "its cut and TRL's trainer over the whole vocabulary, so TRL's importance-sampling correction "
                "weighs every completion wrongly: sample without a cut (top_p=1.0, no trainer.top_k or min_p), or "
                "use_vllm=false (rollouts by generate), or trainer.vllm_importance_sampling_correction=false"
            )

    def _check_gfn(self) -> None:
        """RGFN's knobs, refused before any model is loaded."""
        if self.rat_min_len > self.rat_max_len:
            raise ConfigError("recipe rat_min_len and rat_max_len need rat_min_len <= rat_max_len")
        if self.neftune_noise_alpha is not None or self.early_stopping_patience > 0:
            raise ConfigError(
                "recipe neftune_noise_alpha and early_stopping_patience are SFT-only (RGFN has no eval_loss): "
                "set neftune_noise_alpha=null and early_stopping_patience=0 for method gfn"
            )

    def accumulation_for(self, world_size: int) -> int:
        """The gradient accumulation steps on ``world_size`` ranks: the recipe's, or derived to keep
        ``global_batch_size``.

        >>> Recipe(per_device_train_batch_size=4, global_batch_size=16).accumulation_for(2)
        2
        """
        if not self.global_batch_size:
            return self.gradient_accumulation_steps
        per_step = self.per_device_train_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"recipe global_batch_size={self.global_batch_size} is not a multiple of "
                f"per_device_train_batch_size x world size = {per_step}: change one of them"
            )
        return self.global_batch_size // per_step

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def recipe_names() -> list[str]:
    """The shipped presets."""
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def _read_recipe_file(name_or_path: str) -> dict[str, Any]:
    preset = RECIPES_DIR / f"{name_or_path}.yaml"
    if preset.exists():
        text = preset.read_text(encoding="utf-8")
    elif storage.is_s3(name_or_path) or storage.local_path(name_or_path).exists():
        text = storage.read_text(name_or_path)
    else:
        raise ConfigError(
            f"recipe {name_or_path!r} is neither a preset ({', '.join(recipe_names())}) nor an existing file"
        )
    values = load_yaml(text, f"recipe {name_or_path!r}") or {}
    if not isinstance(values, dict):
        raise ConfigError(f"recipe {name_or_path!r} must be a YAML mapping of knob: value")
    return values


def _split_overrides(text: str) -> list[str]:
    """Split ``a=1,b=[x, y];c=2`` at commas/semicolons outside brackets.

    >>> _split_overrides("a=1,b=[x, y];c=2")
    ['a=1', 'b=[x, y]', 'c=2']
    """
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char in ",;" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def parse_overrides(text: str) -> dict[str, Any]:
    """``key=value`` pairs with YAML values (a key given again overrides, as a repeated flag does: a script may append
    to a base string); a value's YAML refuses a key twice in one mapping (``reward_weights={bbox: 1, bbox: 0}``).

    >>> parse_overrides("lora_r=8, quantize=null, lora_target_modules=[q_proj, v_proj]")
    {'lora_r': 8, 'quantize': None, 'lora_target_modules': ['q_proj', 'v_proj']}
    >>> parse_overrides("peft.use_dora=true,trainer.label_smoothing_factor=0.1")
    {'peft': {'use_dora': True}, 'trainer': {'label_smoothing_factor': 0.1}}
    """
    values: dict[str, Any] = {}
    for part in _split_overrides(text):
        key, sep, raw = part.partition("=")
        if not sep or not re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?", key.strip()):
            raise ConfigError(f"recipe override {part!r} is not key=value")
        key = key.strip()
        value = load_yaml(raw, f"recipe override {part!r}") if raw.strip() else None
        section, dot, name = key.partition(".")
        if dot and section not in SECTIONS:
            raise ConfigError(f"recipe override {part!r}: only {' and '.join(SECTIONS)} take section.field=value")
        if dot:
            values.setdefault(section, {})[name] = value
        else:
            values[section] = value
    return values


def _coerce(name: str, value: Any, default: Any) -> Any:
    """A quoted ``'1e-4'`` is a string and ``2`` an int: bring values to the field's type."""
    if value is None or default is None:
        return value
    try:
        if isinstance(default, bool) != isinstance(value, bool):  # true is no number, 1 no boolean
            raise ValueError
        if isinstance(default, bool):
            return value
        if isinstance(default, float):
            return float(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"recipe {name}={value!r} is not a valid {type(default).__name__}") from None
    return value


def load_recipe(name_or_path: str = DEFAULT_RECIPE, overrides: str | dict[str, Any] = "") -> Recipe:
    """Defaults, then the preset/file, then the overrides."""
    values = _read_recipe_file(name_or_path)
    overrides = parse_overrides(overrides) if isinstance(overrides, str) else overrides
    if values.get("global_batch_size") and "gradient_accumulation_steps" in overrides and "global_batch_size" not in overrides:
        raise ConfigError(
            f"gradient_accumulation_steps would change nothing: recipe {name_or_path} sets global_batch_size="
            f"{values['global_batch_size']}, from which the accumulation is derived on any GPU count; set "
            "global_batch_size=N (per_device_train_batch_size x accumulation x GPUs) instead, or also "
            "global_batch_size=0 to use gradient_accumulation_steps as given"
        )
    for key, value in overrides.items():
        if key in SECTIONS and isinstance(value, dict) and isinstance(values.get(key), dict):
            value = {**values[key], **value}  # --set trainer.x=1 adds to the file's trainer: section
        values[key] = value
    defaults = Recipe()
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown recipe keys {unknown}: valid keys are {', '.join(sorted(known))}")
    return Recipe(**{k: _coerce(k, v, getattr(defaults, k)) for k, v in values.items()})


def lora_target_regex(modules: list[str], *, include_vision: bool) -> str:
    """The PEFT ``target_modules`` pattern: the named projections, in the language model only unless asked.

    The names q/k/v/o/gate/up/down_proj also occur in Qwen2.5-VL's vision tower (``visual.blocks.N.mlp``).

    >>> pattern = lora_target_regex(["q_proj", "down_proj"], include_vision=False)
    >>> [bool(re.fullmatch(pattern, n)) for n in ("model.language_model.layers.0.self_attn.q_proj",
    ...                                           "model.visual.blocks.0.mlp.down_proj")]
    [True, False]
    """
    names = "|".join(re.escape(m) for m in modules)
    return rf".*\.(?:{names})" if include_vision else rf"(?!.*\bvisual\b).*\.(?:{names})"
