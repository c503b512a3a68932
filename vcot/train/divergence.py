"""A diverging run stops at once and commits nothing: its loss or its weights are no longer finite numbers.

:class:`StopOnDivergence` is a trainer callback (SFT, GRPO, RGFN, a full fine-tune: every method trains through a
``Trainer``) that raises :class:`TrainingDiverged` when

- the trainable weights hold a ``nan`` or ``inf`` after an optimizer step (checked at every step, before the step's
  log, evaluation and checkpoint, so no checkpoint of broken weights is saved or synced), and again at the end of
  training (after the best checkpoint is loaded back);
- a logged ``loss`` or ``eval_loss`` is not finite, or the logged ``grad_norm`` (except with fp16, where the loss
  scaler skips the steps whose gradients overflowed: that is its normal work, and the weights check still holds).

:func:`diverged_crash` turns a crash inside the training loop into the same error when the weights it left are not
finite, or when sampling found non-finite probabilities (GRPO's and RGFN's rollouts: the weights may still be
finite but so large that the logits overflow).

A run with the same settings would diverge again, so the error is a :class:`~vcot.errors.ConfigError` (exit 2):
the Job fails at once instead of retrying the pod, and the pointer is never moved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback

from vcot.errors import ConfigError
from vcot.log import get_logger
from vcot.train import distributed
from vcot.train.sharding import local_part

log = get_logger(__name__)

WATCHED_LOGS = ("loss", "eval_loss", "grad_norm")
"""The logged values that must stay finite."""
NONFINITE_SAMPLING = "probability tensor contains either `inf`, `nan` or element < 0"
"""torch's error when sampling from logits that overflowed (``torch.multinomial``)."""


class TrainingDiverged(ConfigError):
    """The loss or the weights became non-finite: nothing is committed, and the same settings would diverge again."""


def nonfinite_tensors(model: Any) -> tuple[int, int]:
    """``(non-finite, all)`` trainable tensors of ``model``; one fused max-norm (no copy of any weight) when all
    are finite."""
    import torch
    from torch.nn.utils import get_total_norm

    # A sharded run's parameters are DTensors: each rank checks the shard it holds (StopOnDivergence agrees over
    # the ranks), with no collective of its own that one rank could reach without the others.
    params = [local_part(p).detach() for p in model.parameters() if p.requires_grad]
    if not params or bool(torch.isfinite(get_total_norm(params, norm_type=math.inf))):
        return 0, len(params)
    bad = sum(not bool(torch.isfinite(get_total_norm([p], norm_type=math.inf))) for p in params)
    return bad, len(params)


def diverged(step: int, what: str, learning_rate: float) -> TrainingDiverged:
    """The one-line error: where, what, and what to change."""
    return TrainingDiverged(
        f"training diverged at step {step}: {what}; nothing was committed and the pointer was not moved. Lower "
        f"learning_rate (it is {learning_rate:g}) or max_grad_norm, or check the data, then rerun with --overwrite "
        "(without it the run resumes from this run's checkpoints, saved before the divergence)"
    )


def nonfinite_logs(logs: Mapping[str, Any], *, fp16: bool) -> dict[str, float]:
    """The watched values of one log that are not finite numbers.

    >>> nonfinite_logs({"loss": float("nan"), "grad_norm": 2.0, "learning_rate": 1e-4}, fp16=False)
    {'loss': nan}
    >>> nonfinite_logs({"loss": 1.5, "grad_norm": float("inf")}, fp16=True)
    {}
    """
    watched = [key for key in WATCHED_LOGS if not (fp16 and key == "grad_norm")]
    return {
        key: logs[key]
        for key in watched
        if isinstance(logs.get(key), (int, float)) and not math.isfinite(logs[key])
    }


class StopOnDivergence(TrainerCallback):
    """Raise :class:`TrainingDiverged` as soon as the weights or a logged loss are not finite (module docstring).

    Add it before the callbacks that save or sync checkpoints: it runs first at each step, so a broken step is never
    saved. Under torchrun the ranks agree on the weights check, so all of them stop at the same step.
    """

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._check_weights(args, state, model)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._check_weights(args, state, model)  # what is committed: the best checkpoint loaded back, or the last

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        bad = nonfinite_logs(logs or {}, fp16=bool(args.fp16))
        if bad:  # logged values are gathered over the ranks: every rank sees the same ones
            what = ", ".join(f"{key} is {value}" for key, value in bad.items())
            raise diverged(state.global_step, what, args.learning_rate)

    def _check_weights(self, args: Any, state: Any, model: Any) -> None:
        if model is None:
            return
        bad, total = nonfinite_tensors(model)
        if distributed.any_rank(bad > 0, args.device):
            what = f"{bad} of {total} trainable tensors hold nan or inf" if bad else "the weights are not finite"
            raise diverged(state.global_step, what + " after the update", args.learning_rate)


def diverged_crash(exc: BaseException, trainer: Any) -> TrainingDiverged | None:
    """The divergence behind a crash in the training loop, or ``None`` when it was something else (a bug)."""
    step, rate = trainer.state.global_step, trainer.args.learning_rate
    if NONFINITE_SAMPLING in str(exc):
        return diverged(step + 1, "sampling met non-finite probabilities (the logits overflowed)", rate)
    if step == 0:  # no update yet: the weights are as loaded (a sharded rank's may not even be written yet)
        return None
    bad, total = nonfinite_tensors(trainer.model)
    if bad:
        return diverged(step, f"{bad} of {total} trainable tensors hold nan or inf", rate)
    return None
