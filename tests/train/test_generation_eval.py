"""SFT's generation evaluation: the best checkpoint and early stopping by a grounding metric, on a planted metric
sequence (a real Trainer on a toy model) and end to end on the tiny model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import EarlyStoppingCallback, Trainer

from vcot.errors import ConfigError
from vcot.train import TrainConfig, train
from vcot.train.common import RunFolders
from vcot.train.generation_eval import GenerationEval
from vcot.train.recipe import load_recipe
from vcot.train.sft import sft_arguments

# eval_loss falls at every evaluation (steps 2, 4, 6, 8); the planted IoU is best at step 4.
PLANTED_IOU = [0.1, 0.6, 0.3, 0.2, 0.25, 0.2]


class Toy(nn.Module):
    """One weight learning y = 2x: its eval loss falls step after step."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": ((self.w * x - labels) ** 2).mean()}


def _rows(count: int) -> list[dict[str, torch.Tensor]]:
    return [{"x": torch.tensor([1.0 + i % 3]), "labels": torch.tensor([2.0 + 2 * (i % 3)])} for i in range(count)]


def _planted(values: list[float]) -> Any:
    sequence: Iterator[float] = iter(values)
    return lambda model: {"eval_gen_first_object_iou": next(sequence), "eval_gen_acc_at_50": 0.0}


def _toy_trainer(tmp_path: Path, settings: str) -> Trainer:
    recipe = load_recipe("tiny-cpu", settings)
    args = sft_arguments(recipe, RunFolders(tmp_path, str(tmp_path / "out")), has_eval=True)
    return Trainer(model=Toy(), args=args, train_dataset=_rows(16), eval_dataset=_rows(6))


SELECT_BY_IOU = (
    "metric_for_best_model=eval_gen_first_object_iou,generation_eval_samples=4,generation_eval_steps=0,eval_steps=2,"
    "save_steps=2,logging_steps=1,per_device_train_batch_size=2,learning_rate=0.05,warmup_ratio=0,"
    "lr_scheduler_type=constant,save_total_limit=1,optim=adamw_torch"
)


def test_the_best_checkpoint_is_the_one_the_generation_metric_prefers(tmp_path: Path) -> None:
    trainer = _toy_trainer(tmp_path, SELECT_BY_IOU + ",max_steps=8,early_stopping_patience=0")
    trainer.add_callback(GenerationEval(_planted(PLANTED_IOU), trainer.log))
    trainer.train()
    evaluations = [e for e in trainer.state.log_history if "eval_loss" in e]
    losses = {e["step"]: e["eval_loss"] for e in evaluations}
    assert min(losses, key=losses.get) == 8  # what eval_loss would have kept
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-4")
    assert trainer.state.best_metric == 0.6
    logged = {e["step"]: e["eval_gen_first_object_iou"] for e in trainer.state.log_history if "eval_gen_first_object_iou" in e}
    assert logged == {2: 0.1, 4: 0.6, 6: 0.3, 8: 0.2}


def test_early_stopping_follows_the_generation_metric(tmp_path: Path) -> None:
    trainer = _toy_trainer(tmp_path, SELECT_BY_IOU + ",max_steps=40,early_stopping_patience=2")
    trainer.add_callback(GenerationEval(_planted(PLANTED_IOU), trainer.log))  # before early stopping reads the metrics
    trainer.add_callback(EarlyStoppingCallback(2, 0.0))
    trainer.train()
    assert trainer.state.global_step == 8  # best at 4; steps 6 and 8 do not beat it (eval_loss still falls)


def test_generation_eval_runs_only_at_its_steps(tmp_path: Path) -> None:
    trainer = _toy_trainer(tmp_path, SELECT_BY_IOU.replace("eval_gen_first_object_iou", "eval_loss") + ",max_steps=8")
    trainer.add_callback(GenerationEval(_planted(PLANTED_IOU), trainer.log, every=4))
    trainer.train()
    logged = [e["step"] for e in trainer.state.log_history if "eval_gen_first_object_iou" in e]
    assert logged == [4, 8]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("metric_for_best_model=eval_iou", "metric_for_best_model='eval_iou' is not valid"),
        ("metric_for_best_model=eval_gen_acc_at_50", "needs the generation evaluation at every evaluation"),
        ("metric_for_best_model=eval_gen_acc_at_50,generation_eval_steps=500", "needs the generation evaluation"),
        ("generation_eval_samples=-1", "must be >= 0"),
    ],
)
def test_bad_selection_settings_are_refused_with_a_hint(overrides: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_recipe("tiny-cpu", overrides)
    with pytest.raises(ConfigError, match="has no eval loss"):  # GRPO and RGFN keep a checkpoint by its answers
        load_recipe("tiny-cpu-grpo", "generation_eval_samples=4,metric_for_best_model=eval_loss")
    with pytest.raises(ConfigError, match="save_steps must be a multiple of eval_steps"):
        load_recipe("tiny-cpu-rgfn", "save_steps=3,eval_steps=2")


@pytest.mark.integration
def test_tiny_model_logs_generation_metrics_and_keeps_the_best_by_one(
    tokenized_data: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    settings = (
        "max_steps=20,eval_steps=2,save_steps=2,logging_steps=1,generation_eval_samples=4,generation_eval_steps=0,"
        "generation_eval_max_new_tokens=24,metric_for_best_model=eval_gen_first_object_iou,early_stopping_patience=1"
    )
    output = tmp_path / "run"
    config = TrainConfig(data=tokenized_data, model=str(tiny_model_dir), output=str(output), recipe="tiny-cpu", set=settings)
    committed = train(config)
    assert committed is not None
    # A model this young draws no box: no IoU improvement at step 4, and patience 1 stops the run there (early
    # stopping sees the generation metric: the callback runs before it).
    assert committed["stats"]["global_step"] == 4
    metrics = json.loads((output / "metrics.json").read_text())
    logged = [e for e in metrics["log_history"] if "eval_gen_first_object_iou" in e]
    assert [e["step"] for e in logged] == [2, 4]  # the final evaluation is the kept checkpoint's, not run again
    for entry in logged:
        for name in ("box_detection_rate", "mean_iou", "first_object_iou", "acc_at_50", "answer_accuracy"):
            assert 0.0 <= entry[f"eval_gen_{name}"] <= 1.0
    best = metrics["best_metric"]
    assert best["name"] == "eval_gen_first_object_iou" and best["step"] in (2, 4)
    assert best["value"] == max(e["eval_gen_first_object_iou"] for e in logged)
    assert metrics["eval"]["eval_gen_first_object_iou"] == best["value"]  # the final evaluation: the best's
    assert committed["stats"]["best_metric"] == best
    events = EventAccumulator(str(output / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("eval/gen_first_object_iou")] == [2, 4]
    # The processor saved with the adapter pads as trained, not as generation left it.
    def padding_side(folder: Path) -> str | None:
        return json.loads((folder / "tokenizer_config.json").read_text()).get("padding_side")

    assert padding_side(output / "adapter") == padding_side(tiny_model_dir)
