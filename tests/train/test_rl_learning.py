"""GRPO and RGFN learn in the direction they should, through vcot's own code, and a planted sign error is caught.

Each test trains the tiny model a few steps on a task whose direction is known and measures the result
independently of the training loss; then it plants the sign error a bug would make (GRPO's reward negated, RGFN's
loss negated) and requires the same measurement to say so. A test that passed both ways would prove nothing.
(RGFN's reward is measured by the same code the loss uses, so a negated RGFN reward is not what this one catches.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.train.conftest import write_record_output
from tests.train.train_helpers import rgfn_trainer
from vcot.scoring import gfn, rewards
from vcot.train import TrainConfig, train

# GRPO on the answer reward alone, on records whose square is always red: the short SFT adapter (trained on four
# colours) names the right one in ~15% of its answers, so groups differ, and saying "red" more often is a gradient the
# policy can follow from its output distribution alone: a known direction. 2 prompts x 8 completions a step, with no
# nucleus cut (the recipe's top_p could cut the rare right answer out of every sample).
GRPO_SET = (
    "max_steps=16,save_steps=16,learning_rate=3e-4,per_device_train_batch_size=16,num_generations=8,top_p=1.0,"
    "reward_weights={accuracy: 1.0},generation_eval_samples=0,metric_for_best_model=eval_loss,beta=0.0,"
    "logging_steps=1,trainer={scale_rewards: group}"
)


def answer_curve(record_data: str, model: Path, adapter: str, output: Path) -> list[float]:
    config = TrainConfig(data=record_data, model=str(model), output=str(output), recipe="tiny-cpu-grpo", set=GRPO_SET,
                         init_adapter=adapter, threads=1)  # fmt: skip
    assert train(config)
    history = json.loads((output / "metrics.json").read_text())["log_history"]
    return [entry["rewards/accuracy_reward/mean"] for entry in history if "rewards/accuracy_reward/mean" in entry]


def rises(curve: list[float], by: float = 0.1, window: int = 4) -> bool:
    return sum(curve[-window:]) / window > sum(curve[:window]) / window + by


@pytest.mark.integration
def test_grpo_raises_its_reward_and_a_negated_reward_is_caught(
    tiny_model_dir: Path, sft_adapter: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_data = write_record_output(str(tmp_path / "red"), 32, colors=("red",))
    curve = answer_curve(record_data, tiny_model_dir, sft_adapter, tmp_path / "right")
    assert rises(curve), f"GRPO did not raise the answer reward: {[round(v, 3) for v in curve]}"

    real = rewards.accuracy_reward

    def negated(completions: Any, **columns: Any) -> list[float | None]:
        return [None if v is None else -v for v in real(completions, **columns)]

    negated.__name__ = "accuracy_reward"  # TRL logs it under the same name
    monkeypatch.setitem(rewards.REWARDS, "accuracy", negated)
    planted = [-v for v in answer_curve(record_data, tiny_model_dir, sft_adapter, tmp_path / "planted")]
    assert not rises(planted), f"a negated reward went unnoticed: the answers still improved {planted}"


def balance_loss(trainer: Any, prompt: Any, rationales: list[list[int]], subtb: Callable[..., torch.Tensor]) -> float:
    """The sub-trajectory balance loss of fixed rationales under the trainer's current policy (no filter)."""
    model = trainer.model
    with torch.no_grad():
        log_r = trainer.log_rewards(model, prompt, rationales, temperature=1.0)
        log_pf, log_pt = trainer.policy_terms(model, prompt, rationales)
        lengths = torch.tensor([len(z) for z in rationales])
        return float(subtb(log_pf, log_pt, log_r.to(log_pf.dtype), lengths, 1.0))


def rgfn_loss_before_after(trainer: Any, subtb: Callable[..., torch.Tensor]) -> tuple[float, float]:
    """Train on one record whose samples are fixed (the toy), and measure the real loss before and after."""
    record = trainer.train_dataset.rows[0]
    prompt = trainer.prompt(record)
    torch.manual_seed(0)
    samples = trainer.sample(trainer.model, prompt)
    trainer.sample = lambda model, prompt: [list(z) for z in samples]  # the same rationales at every step
    rationales = [prompt.reference, *samples]
    before = balance_loss(trainer, prompt, rationales, subtb)
    trainer.train()
    return before, balance_loss(trainer, prompt, rationales, subtb)


@pytest.mark.integration
def test_rgfn_lowers_its_loss_on_a_fixed_toy_and_a_flipped_loss_is_caught(
    record_data: str, tiny_model_dir: Path, analyzer_adapter: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def trainer_for(name: str) -> Any:
        config = TrainConfig(data=record_data, model=str(tiny_model_dir), output=str(tmp_path / name),
                             recipe="tiny-cpu-rgfn", init_adapter=analyzer_adapter, threads=1,
                             set="explore_nums=3,explore_min_bs=3,reward_tolerance_start=100,reward_tolerance_end=100")
        from vcot.train.rgfn import read_records

        rows = read_records(record_data)[0][:1]
        return rgfn_trainer(config, tmp_path / name, rows, max_steps=6, learning_rate=1e-3,
                            lr_scheduler_type="constant", save_strategy="no", logging_steps=1)  # fmt: skip

    real = gfn.subtb_loss
    before, after = rgfn_loss_before_after(trainer_for("right"), real)
    assert after < 0.9 * before, f"RGFN did not lower its loss on a fixed toy: {before:.3f} -> {after:.3f}"

    monkeypatch.setattr(gfn, "subtb_loss", lambda *args: -real(*args))  # the planted sign error
    before, after = rgfn_loss_before_after(trainer_for("planted"), real)
    assert after > before, f"a flipped loss went unnoticed: {before:.3f} -> {after:.3f}"
