"""Generation evaluation: checkpoints chosen by what the model answers, not by a loss alone (SFT, GRPO, RGFN).

At an evaluation (every one, or those that pass a multiple of ``generation_eval_steps``), the model answers the first
``generation_eval_samples`` usable val records greedily, and the answers are scored exactly as the evaluate
stage scores them (``vcot.models.generation``, boxes read back through ``ModelFormat.read`` by ``vcot.scoring.response``,
``vcot.scoring.metrics.summarize``). The rate metrics join the evaluation's metrics as ``eval_gen_<metric>``
(``eval_gen_first_object_iou``, ``eval_gen_acc_at_50``, ...): logged to the trainer's log history and
TensorBoard like ``eval_loss``, and seen by ``metric_for_best_model`` and early stopping, which read the same
metrics dict after this callback ran (it must be added before ``EarlyStoppingCallback``).

GRPO and RGFN have no held-out loss: :func:`watch_held_out` makes this evaluation their only one, run at the start
too (``eval_on_start``: the score of the adapter they continue, which :mod:`vcot.train.pointer` compares the run's
best checkpoint with before publishing it) and every ``eval_steps`` (:func:`held_out_arguments`).

Under torchrun rank 0 generates with the unwrapped model and broadcasts the metrics, so every rank takes the
same best-checkpoint and early-stopping decisions. A sharded model (``sharding: fsdp2``) is whole on no rank: every
rank answers the same slice in lockstep (each forward pass gathers the layers from all of them) and rank 0's
metrics are broadcast, in the time rank 0 alone takes in a data-parallel run.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from transformers import TrainerCallback

from vcot.errors import VcotError
from vcot.grounding.model_format import ModelFormat
from vcot.grounding.records import grounding_problem
from vcot.io import manifest
from vcot.log import get_logger
from vcot.models.generation import GenerationSettings, Skipped, generate_responses
from vcot.scoring.metrics import RATE_METRICS, SampleScore, summarize
from vcot.scoring.response import score_response
from vcot.train import distributed
from vcot.train.recipe import Recipe

log = get_logger(__name__)

PREFIX = "eval_gen_"


def val_slice(record_outputs: Sequence[str], samples: int) -> list[dict[str, Any]]:
    """The first ``samples`` val records usable as grounded examples (as tokenize selects them), taken in turn from
    each record output: the same slice at every evaluation and on every restart."""

    def usable(uri: str) -> Iterator[dict[str, Any]]:
        records = manifest.committed_records(uri, ("val/",), expect_stage=manifest.RECORD_STAGES)
        return (record for record in records if grounding_problem(record) is None)

    streams = [usable(uri) for uri in record_outputs]
    interleaved = (r for group in itertools.zip_longest(*streams) for r in group if r is not None)
    return list(itertools.islice(interleaved, samples))


def generation_metrics(
    model: Any, processor: Any, records: Sequence[dict[str, Any]], settings: GenerationSettings
) -> dict[str, float]:
    """Greedy answers to ``records``, scored as evaluate scores them: ``{eval_gen_<metric>: value}``.

    A record that got no answer (unreadable image) scores as an answer without boxes."""
    tokenizer = processor.tokenizer
    padding_side, was_training = tokenizer.padding_side, model.training
    model.eval()
    try:
        responses, _ = generate_responses(model, processor, records, settings)
    finally:
        tokenizer.padding_side = padding_side  # generation pads left; the processor is saved with the adapter
        model.train(was_training)
    scores: list[SampleScore] = [
        score_response(record, "" if isinstance(response, Skipped) else response, settings.fmt)[1]
        for record, response in zip(records, responses, strict=True)
    ]
    summary = summarize(scores)
    return {f"{PREFIX}{name}": float(summary[name]) for name in (*RATE_METRICS, "constant_box_iou")}


class GenerationEval(TrainerCallback):
    """Add the generation metrics to an evaluation's metrics (in place) and log them.

    ``measure(model)`` returns the metrics; ``log_metrics`` is the trainer's ``log`` (history, TensorBoard,
    trackers); ``every``: at the evaluations that pass a multiple of ``every`` steps (0: at every evaluation);
    ``every_rank``: every rank measures (a sharded model), not rank 0 alone.
    """

    def __init__(
        self,
        measure: Callable[[Any], dict[str, float]],
        log_metrics: Callable[[dict[str, float]], None],
        every: int = 0,
        every_rank: bool = False,
    ) -> None:
        self.measure = measure
        self.log_metrics = log_metrics
        self.every = every
        self.every_rank = every_rank

    def due(self, step: int, eval_steps: int) -> bool:
        """Whether the evaluation at ``step`` generates: a multiple of ``every`` lies since the previous evaluation
        (from the step alone, so a resumed run generates where an uninterrupted one does).

        >>> [step for step in (2, 4, 6, 8, 10) if GenerationEval(dict, print, every=5).due(step, 2)]
        [6, 10]
        """
        return not self.every or step == 0 or step // self.every != max(step - eval_steps, 0) // self.every

    def on_evaluate(
        self,
        args: Any,
        state: Any,
        control: Any,
        metrics: dict[str, float] | None = None,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        if metrics is None or not self.due(state.global_step, int(args.eval_steps)):
            return
        values = self.measure(model) if state.is_world_process_zero or self.every_rank else None
        values = distributed.from_main(values)
        metrics.update(values)
        self.log_metrics(dict(values))  # the trainer adds the epoch to what it logs
        if state.is_world_process_zero:
            log.info("generation_eval", step=state.global_step, **{k: round(v, 4) for k, v in values.items()})


def record_outputs_of(tokenized: str) -> list[str]:
    """The record outputs (convert, distill) a tokenize output was made from: where its val records are."""
    inputs = manifest.read_manifest(tokenized).get("inputs", [])
    return [i["uri"] for i in inputs if i.get("stage") in manifest.RECORD_STAGES]


@dataclass(frozen=True)
class HeldOut:
    """The val slice a run is scored on, the model format its answers are read in, and ``measure_in(model, fmt) ->
    {eval_gen_<metric>: value}`` on it, the model asked in ``fmt`` (another model's layout: the pointed adapter)."""

    records: list[dict[str, Any]]
    fmt: ModelFormat
    measure_in: Callable[[Any, ModelFormat], dict[str, float]]

    def measure(self, model: Any) -> dict[str, float]:
        """The run's own measurement: ``model`` asked in the run's format."""
        return self.measure_in(model, self.fmt)


def held_out(processor: Any, fmt: ModelFormat, recipe: Recipe, record_outputs: Sequence[str]) -> HeldOut:
    """The first ``generation_eval_samples`` usable val records of ``record_outputs``, answered greedily with the
    box-aware 1.2 repetition penalty (it leaves coordinates alone)."""
    records = val_slice(record_outputs, recipe.generation_eval_samples)
    if not records:
        raise VcotError(
            f"generation_eval_samples={recipe.generation_eval_samples} but {', '.join(record_outputs)} have no "
            "usable val records: set generation_eval_samples=0"
        )
    settings = GenerationSettings(
        fmt=fmt,
        max_new_tokens=recipe.generation_eval_max_new_tokens,
        batch_size=recipe.per_device_eval_batch_size,
        box_aware_penalty=True,
    )
    log.info("generation_eval_slice", samples=len(records), every=recipe.generation_eval_steps or "every evaluation")

    def measure_in(model: Any, other: ModelFormat) -> dict[str, float]:
        return generation_metrics(model, processor, records, replace(settings, fmt=other))

    return HeldOut(records, fmt, measure_in)


def generation_eval(
    trainer: Any, processor: Any, fmt: ModelFormat, recipe: Recipe, record_outputs: Sequence[str]
) -> GenerationEval:
    """The callback for a trainer: :func:`held_out` measured at its evaluations."""
    measure = held_out(processor, fmt, recipe, record_outputs).measure
    return GenerationEval(measure, trainer.log, recipe.generation_eval_steps, every_rank=bool(recipe.sharding))


def held_out_arguments(recipe: Recipe) -> dict[str, Any]:
    """GRPO's and RGFN's evaluation arguments: off, or the generation evaluation at the start and every
    ``eval_steps``, the checkpoint kept by ``metric_for_best_model`` (higher is better)."""
    if not recipe.generation_eval_samples:
        return {"eval_strategy": "no"}
    return {
        "eval_strategy": "steps",
        "eval_steps": recipe.eval_steps,
        "eval_on_start": True,  # the continued adapter's own score: what the run is compared with
        "load_best_model_at_end": True,
        "metric_for_best_model": recipe.metric_for_best_model,
        "greater_is_better": True,
    }


def watch_held_out(trainer: Any, slice_: HeldOut, recipe: Recipe) -> None:
    """Make the held-out slice's measurement the trainer's whole evaluation (GRPO, RGFN: their own evaluation loop
    would score a loss that means nothing on held-out prompts)."""
    trainer.add_callback(GenerationEval(slice_.measure, trainer.log, recipe.generation_eval_steps,
                                        every_rank=bool(recipe.sharding)))  # fmt: skip

    def evaluate(eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict:
        metrics: dict[str, float] = {}
        trainer.control = trainer.callback_handler.on_evaluate(trainer.args, trainer.state, trainer.control, metrics)
        return metrics

    trainer.evaluate = evaluate


def held_out_start(log_history: Sequence[dict[str, Any]], metric: str) -> float | None:
    """``metric`` at the start (step 0), from a run's log history (``None``: not evaluated).

    >>> held_out_start([{"step": 0, "eval_gen_iou": 0.5}, {"step": 20, "eval_gen_iou": 0.6}], "eval_gen_iou")
    0.5
    """
    return next((entry[metric] for entry in log_history
                 if entry.get("step", 0) == 0 and isinstance(entry.get(metric), float)), None)  # fmt: skip
