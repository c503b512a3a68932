"""What a training run will cost on a CPU, said in one line before the model loads.

A GPU recipe started on a laptop (the seed's ``qwen2.5-vl-7b-qlora`` on a 7B model) used to go quiet for minutes
while it loaded and then take months: the run now says up front what it is about to do and, roughly, how long it
will take at this model size, so the user can stop it and pick a GPU or the tiny model.

The estimate is rough on purpose and says so: training costs about 6 x parameters FLOPs per token (forward and
backward), run at :data:`FLOPS_PER_THREAD` per torch thread, plus :data:`OVERHEAD_S_PER_TOKEN` of per-token
overhead that dominates tiny models. Both were fitted to the tiny models' measured CPU speed (docs/train.md,
"A run on a CPU"): the 1.3M-parameter local model trains 5,500 tokens/s on one thread, a 66M one ~580 tokens/s on
two. Longer sequences, 4-bit weights (dequantized at every matmul) and generation (GRPO, RGFN) make a real run
slower still, so the figure is a floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vcot.log import get_logger
from vcot.train import distributed
from vcot.train.recipe import Recipe

log = get_logger(__name__)

FLOPS_PER_THREAD = 1.2e11
"""Training FLOP/s per torch thread on the measured 2-core CPU (fitted, see the module docstring)."""
OVERHEAD_S_PER_TOKEN = 1.2e-4
"""Seconds per trained token that do not grow with the model (Python, the collator, small kernels)."""
LARGE_ON_CPU = 100_000_000
"""Parameters from which a CPU run is a warning, not a note: past every model the tiny-model measurements cover."""


@dataclass(frozen=True)
class Workload:
    """What a run goes through: ``steps`` optimizer steps of ``samples_per_step`` samples of about
    ``tokens_per_sample`` tokens (SFT: the rows' mean length; GRPO and RGFN: their generation budget)."""

    steps: int
    samples_per_step: int
    tokens_per_sample: float

    @property
    def tokens(self) -> float:
        return self.steps * self.samples_per_step * self.tokens_per_sample


def steps_for(recipe: Recipe, samples: int, global_batch: int) -> int:
    """The optimizer steps of ``samples`` training samples per epoch (``max_steps`` when the recipe caps it).

    >>> steps_for(Recipe(num_train_epochs=2, max_steps=-1), samples=100, global_batch=16)
    14
    >>> steps_for(Recipe(max_steps=5), samples=100, global_batch=16)
    5
    """
    if recipe.max_steps > 0:
        return recipe.max_steps
    return max(1, math.ceil(recipe.num_train_epochs * math.ceil(samples / max(global_batch, 1))))


def global_batch(recipe: Recipe) -> int:
    """Samples per optimizer step on this world (as the trainer's arguments will have it)."""
    world = distributed.world_size()
    return recipe.per_device_train_batch_size * recipe.accumulation_for(world) * world


def sft_workload(recipe: Recipe, stats: dict[str, Any]) -> Workload:
    """SFT on a tokenize output, from its manifest's ``stats`` (train rows and their mean length)."""
    train = stats.get("train") or {}
    batch = global_batch(recipe)
    steps = steps_for(recipe, int(train.get("rows") or 0), batch)
    return Workload(steps, batch, float(train.get("mean_length") or 0.0))


def grpo_workload(recipe: Recipe, prompts: int) -> Workload:
    """GRPO: every prompt gives ``num_generations`` completions (TRL counts completions in the batch), each up to
    ``max_completion_length`` tokens sampled and then trained on."""
    batch = global_batch(recipe)
    return Workload(steps_for(recipe, prompts * recipe.num_generations, batch), batch, recipe.max_completion_length)


def rgfn_workload(recipe: Recipe, prompts: int) -> Workload:
    """RGFN: per prompt ``explore_nums`` sampled rationales and the reference, up to ``rat_max_len`` tokens each, and
    every ``reward_every`` tokens a forward pass of the SFT model over the trajectory for its reward (a forward costs
    a third of a trained token)."""
    batch = global_batch(recipe)
    per_trajectory = recipe.rat_max_len * (1 + recipe.rat_max_len / recipe.reward_every / 3)
    return Workload(steps_for(recipe, prompts, batch), batch, (recipe.explore_nums + 1) * per_trajectory)


def seconds_per_token(parameters: int, threads: int) -> float:
    """Training seconds per token at ``parameters`` on ``threads`` CPU threads (rough; the module docstring).

    >>> round(1 / seconds_per_token(1_300_000, 1))  # the local tiny model: 5,500 tokens/s measured
    5405
    >>> round(seconds_per_token(8_292_166_656, 2), 3)  # Qwen2.5-VL-7B on 2 cores: ~0.2 s per token
    0.207
    """
    return 6 * parameters / (FLOPS_PER_THREAD * max(threads, 1)) + OVERHEAD_S_PER_TOKEN


def duration(seconds: float) -> str:
    """
    >>> duration(0.18), duration(42), duration(600), duration(7200), duration(86400 * 3), duration(86400 * 400)
    ('0.2 s', '42 s', '10 min', '2.0 h', '3.0 days', '1.1 years')
    """
    for unit, size, digits in (("years", 365 * 86400, 1), ("days", 86400, 1), ("h", 3600, 1), ("min", 60, 0)):
        if seconds >= (size if unit != "min" else 120):
            return f"{seconds / size:.{digits}f} {unit}" if digits else f"{round(seconds / size)} {unit}"
    return f"{seconds:.1f} s" if seconds < 10 else f"{round(seconds)} s"


def human_count(value: float) -> str:
    """
    >>> human_count(8_292_166_656), human_count(1_300_000), human_count(950)
    ('8.3B', '1.3M', '950')
    """
    for suffix, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{suffix}"
    return f"{value:.0f}"


def announce_cpu_run(
    model_uri: str, recipe: Recipe, recipe_name: str, workload: Workload, *, parameters: int | None = None
) -> dict[str, Any] | None:
    """On a CPU, log what the run is about to do and roughly how long it will take (a warning from
    :data:`LARGE_ON_CPU` parameters); returns the logged fields, or ``None`` on a GPU (nothing logged)."""
    import torch

    if torch.cuda.is_available() or not distributed.is_main():
        return None
    from vcot.models.loading import parameter_count

    if parameters is None:
        try:
            parameters = parameter_count(model_uri)
        except Exception as exc:  # noqa: BLE001 - the estimate is advice, never the reason a run fails
            log.info("cpu_run", model=model_uri, recipe=recipe_name, estimate=None,
                     reason=f"could not count its parameters: {str(exc).splitlines()[0][:200]}")  # fmt: skip
            return None
    threads = torch.get_num_threads()
    per_token = seconds_per_token(parameters, threads)
    estimate = workload.tokens * per_token
    weights = f"{recipe.quantize} " if recipe.quantize else "fp32 "
    fields = {
        "message": (
            f"about to load {model_uri} ({human_count(parameters)} parameters, {weights}weights) on a CPU and train it "
            f"for {workload.steps} steps of {workload.samples_per_step} samples (recipe {recipe_name}, method "
            f"{recipe.method}): rough estimate {duration(estimate)} on {threads} thread(s), "
            f"~{duration(per_token * 1000)} per 1,000 tokens"
        ),
        "parameters": parameters,
        "threads": threads,
        "steps": workload.steps,
        "samples_per_step": workload.samples_per_step,
        "tokens_per_sample": round(workload.tokens_per_sample, 1),
        "estimate_s": round(estimate),
        "basis": "rough: 6 x parameters FLOPs per token at the tiny models' measured CPU speed (docs/train.md)",
    }
    if parameters >= LARGE_ON_CPU:
        log.warning(
            "cpu_run", **fields,
            hint="a GPU recipe: run it on a GPU (docs/k8s.md), or try the mechanics with the tiny model and "
            "--recipe tiny-cpu (make local-train)",
        )  # fmt: skip
    else:
        log.info("cpu_run", **fields)
    return fields
