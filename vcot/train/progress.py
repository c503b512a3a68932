"""A run's progress and metrics as it trains, the same for SFT, GRPO and RGFN (one trainer callback).

Console mode: a bar of optimizer steps with the rate and the time left (:class:`vcot.progress.Progress`), and one
for each evaluation pass; JSON mode: ``train_progress`` lines (``step``, ``total``, ``eta_s``) every
``VCOT_PROGRESS_SECONDS``. In both, every trainer log is one ``train_log`` line carrying the same ``step``,
``total`` and ``eta_s`` beside the metrics. This replaces transformers' own bar (which also printed each log as a
dict) and its printer.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from vcot.log import get_logger
from vcot.progress import Progress

log = get_logger(__name__)


class TrainProgress(TrainerCallback):
    """Rank 0 reports; the ETA counts this session's steps only (a resumed run's restored steps are not timed)."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.evaluation: Progress | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.progress = Progress("train_progress", state.max_steps, unit="step", initial=state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.set(state.global_step)

    def on_prediction_step(
        self, args: Any, state: Any, control: Any, eval_dataloader: Any = None, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        if self.evaluation is None:
            total = len(eval_dataloader) if hasattr(eval_dataloader, "__len__") else None
            self.evaluation = Progress("train_eval_progress", total, unit="batch", at_step=state.global_step)
        self.evaluation.update()

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.evaluation is not None:
            self.evaluation.close()
            self.evaluation = None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            eta = self.progress.eta_s() if self.progress is not None else None
            log.info(
                "train_log",
                step=state.global_step,
                total=state.max_steps,
                eta_s=eta,
                **{k: round(v, 6) if isinstance(v, float) else v for k, v in logs.items()},
            )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for progress in (self.evaluation, self.progress):
            if progress is not None:
                progress.close()
        self.progress = self.evaluation = None
