"""The open end of a recipe: what the fixed knobs do not cover, passed through to the libraries and checked.

- ``trainer:``: any field of ``transformers.TrainingArguments`` (SFT, RGFN) or TRL's ``GRPOConfig`` (GRPO), applied
  last; a name that is not a field is a one-line :class:`ConfigError` naming the closest one;
- ``peft:``: any field of PEFT's ``LoraConfig`` (``use_dora``, ``use_rslora``, ``target_modules``, ...), the same way;
- ``finetune: full``: no adapter, the weights themselves (the vision tower stays frozen unless ``tune_vision``);
- ``vision_learning_rate``: the vision tower and merger in optimizer param groups of their own.

A key the recipe has a knob for (``learning_rate``, ``lora_r``) or that vcot's machinery relies on (``output_dir``)
is refused with where to set it instead: one place per setting. This module imports no other train module (the
recipe checks itself with it).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any

from vcot.errors import ConfigError, VcotError
from vcot.grounding.families import is_vision
from vcot.log import get_logger

log = get_logger(__name__)

RECIPE_ALIASES = {
    "warmup_steps": "warmup_ratio",
    "warmup_ratio": "warmup_ratio",
    "activation_checkpointing": "gradient_checkpointing",
    "activation_checkpointing_kwargs": "gradient_checkpointing",
    "gradient_checkpointing_kwargs": "gradient_checkpointing",
    "train_sampling_strategy": "group_by_length",
    "r": "lora_r",
    "task_type": "(vcot trains causal LMs: CAUSAL_LM)",
}
"""Library names whose setting is a recipe knob under another name."""
RESERVED = {
    "output_dir": "vcot writes checkpoints to a scratch folder synced to OUTPUT/checkpoints",
    "logging_dir": "TensorBoard events go to OUTPUT/tensorboard",
    "remove_unused_columns": "the collator needs every column",
    "label_names": "vcot's batches carry labels",
    "save_on_each_node": "each node reloads its own checkpoints",
    "use_cpu": "vcot picks the device",
    "bf16": "vcot picks the precision for the machine",
    "fp16": "vcot picks the precision for the machine",
    "restore_callback_states_from_checkpoint": "a resume restores early stopping's state",
    "include_num_input_tokens_seen": "vcot counts tokens for the run's throughput",
    "length_column_name": "vcot's rows carry their length",
}
"""Library fields vcot's machinery sets itself, and why."""


def init_fields(cls: type) -> list[str]:
    """The names a dataclass config takes (``TrainingArguments``, ``GRPOConfig``, ``LoraConfig``)."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def check_section(section: str, values: dict[str, Any], cls: type, recipe: Any) -> None:
    """Refuse, in one line, a ``section`` key that ``cls`` does not take, or that the recipe sets elsewhere."""
    fields = init_fields(cls)
    knobs = {f.name for f in dataclasses.fields(recipe)} - {"peft", "trainer"}
    for key in values:
        own = RECIPE_ALIASES.get(key) or (key if key in knobs else None)
        if own is not None:
            where = own if own.startswith("(") else f"the recipe's top-level {own}"
            raise ConfigError(f"recipe {section}.{key}: set {where} instead, not {section}.{key}")
        if key in RESERVED:
            raise ConfigError(f"recipe {section}.{key} cannot be set: {RESERVED[key]}")
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
            hint = f"did you mean {section}.{close[0]}?" if close else f"see the fields of {cls.__name__}"
            raise ConfigError(f"recipe {section}.{key} is not a field of {cls.__name__}: {hint}")
        if not is_finite(values[key]):
            raise ConfigError(
                f"recipe {section}.{key}={values[key]!r} holds a number that is not finite: give a finite one"
            )


def is_finite(value: Any) -> bool:
    """No ``nan`` or ``inf`` anywhere in ``value`` (a number, or a list or mapping of them).

    >>> is_finite({"min_lr": 1e-6, "betas": [0.9, float("nan")]}), is_finite("cosine")
    (False, True)
    """
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(is_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(is_finite(v) for v in value)
    return True


def trainer_class(method: str) -> type:
    """The config class a method's ``trainer:`` values go to."""
    if method == "grpo":
        from trl import GRPOConfig

        return GRPOConfig
    from transformers import TrainingArguments

    return TrainingArguments


def check_trainer(recipe: Any) -> None:
    """``trainer:`` against its method's config class (imported only when the section is used)."""
    if recipe.trainer:
        check_section("trainer", recipe.trainer, trainer_class(recipe.method), recipe)


def check_peft(recipe: Any) -> None:
    """``peft:`` against ``LoraConfig`` (imported only when the section is used)."""
    if recipe.peft:
        if recipe.finetune == "full":
            raise ConfigError("recipe peft: configures adapters, and finetune=full trains without one: drop one")
        from peft import LoraConfig

        check_section("peft", recipe.peft, LoraConfig, recipe)


def with_trainer(arguments: dict[str, Any], recipe: Any) -> dict[str, Any]:
    """A method's trainer arguments with the recipe's ``trainer:`` values applied last."""
    if recipe.trainer:
        log.info("trainer_passthrough", **recipe.trainer)
    return {**arguments, **recipe.trainer}


def build_arguments(cls: type, arguments: dict[str, Any], recipe: Any) -> Any:
    """``cls`` (``TrainingArguments``, ``GRPOConfig``) from a method's arguments with ``trainer:`` applied last.
    Each method builds it before its model loads: a value the library refuses (``lr_scheduler_type: cosin``, a
    ``trainer:`` value of the wrong kind) is the recipe's mistake, one line and exit 2, not a crash after loading."""
    try:
        return cls(**with_trainer(arguments, recipe))
    except (TypeError, ValueError) as exc:
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"recipe refused by {cls.__name__}: {problem}: fix the recipe or its trainer: section"
        ) from None


def prepare_full(model: Any, recipe: Any) -> Any:
    """``finetune: full``: every weight trains except the vision tower's own (unless ``tune_vision``); the merger
    that feeds the language model trains either way."""
    for name, param in model.named_parameters():
        param.requires_grad = recipe.tune_vision or not is_vision(name) or "merger" in name
    return model


NO_VISION_TRAINS = (
    "recipe vision_learning_rate is set but no vision parameter trains: add merger to modules_to_save, "
    "set tune_vision=true, or use finetune=full"
)
LANGUAGE_ONLY = ("lm_head", "embed_tokens")
"""``modules_to_save`` names that match no vision module (PEFT matches a name's end: ``mlp`` or ``norm`` would)."""


def check_vision_learning_rate(recipe: Any) -> None:
    """Refuse, before any model loads, a ``vision_learning_rate`` for a new model of ``recipe`` in which no vision
    parameter can train: a LoRA on the language model only, and nothing of the vision tower trained in full.

    Only what the recipe decides is refused here; raw ``peft:`` targets, ``modules_to_save`` names that may match
    vision modules, or a continued adapter are left to :func:`use_vision_learning_rate`, on the loaded model.
    """
    if recipe.vision_learning_rate is None or recipe.finetune == "full" or recipe.tune_vision:
        return
    undecided = {"target_modules", "target_parameters"} & set(recipe.peft)
    if not undecided and set(recipe.modules_to_save or []) <= set(LANGUAGE_ONLY):
        raise ConfigError(NO_VISION_TRAINS)


def use_vision_learning_rate(trainer: Any, recipe: Any) -> None:
    """``vision_learning_rate``: the trainable vision parameters get their own optimizer param groups at that
    rate (weight decay as the Trainer applies it); the scheduler scales each group from its own rate.

    Set through the Trainer's ``optimizer_cls_and_kwargs``: the optimizer the recipe names (``optim``), with
    these groups as its ``params``.
    """
    if recipe.vision_learning_rate is None:
        return
    from transformers import Trainer

    model = trainer.model
    decay = set(trainer.get_decay_parameter_names(model))
    groups: dict[tuple[bool, bool], list[Any]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((is_vision(name), name in decay), []).append(param)
    if not any(vision for vision, _ in groups):
        raise VcotError(NO_VISION_TRAINS)
    params = [
        {"params": found, "weight_decay": trainer.args.weight_decay if decays else 0.0,
         **({"lr": recipe.vision_learning_rate} if vision else {})}
        for (vision, decays), found in sorted(groups.items())
    ]  # fmt: skip
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(trainer.args, model)
    trainer.optimizer_cls_and_kwargs = (optimizer_cls, {**kwargs, "params": params})
    vision = sum(p.numel() for (is_v, _), found in groups.items() if is_v for p in found)
    log.info("vision_learning_rate", lr=recipe.vision_learning_rate, vision_parameters=vision)
