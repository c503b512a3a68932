"""A diverging run (SFT, a full fine-tune, GRPO, RGFN) stops at the step its weights stop being finite, with one line
and exit 2; it commits nothing and never moves the newest-model pointer."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from jobs.train import main
from tests.train.train_helpers import WATCH
from vcot.io import manifest, storage
from vcot.train.checkpoints import complete_checkpoints
from vcot.train.divergence import TrainingDiverged, diverged_crash, nonfinite_tensors

PRODUCTION = {"run": "s3://b/runs/prod", "base_model": "s3://b/models/tiny", "adapter": "s3://b/runs/prod/adapter"}
# The run: learning_rate 1e8; a checkpoint every 2 steps, so one is saved before the weights break.
SFT_SET = "learning_rate=1e8,max_steps=6,logging_steps=1,eval_steps=2,save_steps=2,generation_eval_samples=0"
# GRPO and RGFN from a new LoRA: at 1e8 with some weight decay the weights overflow within a few steps.
RL_SET = (
    "learning_rate=1e8,weight_decay=0.1,max_steps=8,save_steps=1,eval_steps=1,per_device_train_batch_size=8,"
    f"{WATCH}"
)


def diverge(argv: list[str], runs: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run vcot-train with a production pointer beside the output; returns (step it diverged at, error line)."""
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "latest.json").write_text(json.dumps(PRODUCTION))
    output = str(runs / "diverged")
    assert main([*argv, "--output", output, "--update-pointer", "--threads", "1"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vcot-train: error:")]
    assert len(lines) == 1 and "training diverged at step " in lines[0], lines
    step = int(lines[0].split("training diverged at step ")[1].split(":")[0])
    assert "nothing was committed" in lines[0] and "--overwrite" in lines[0]
    assert not manifest.is_committed(output)
    assert not storage.exists(storage.join(output, "adapter", "adapter_model.safetensors"))
    assert json.loads((runs / "latest.json").read_text()) == PRODUCTION
    saved = complete_checkpoints(storage.join(output, "checkpoints"))
    assert all(saved_step < step for saved_step in saved), f"a checkpoint of broken weights was kept: {saved}"
    return step, lines[0]


@pytest.mark.parametrize("extra", ["", ",finetune=full"], ids=["lora", "full"])
def test_diverging_sft_run_stops_and_commits_nothing(
    extra: str, tokenized_data: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--data", tokenized_data, "--model", str(tiny_model_dir), "--recipe", "tiny-cpu", "--set", SFT_SET + extra]
    step, line = diverge(argv, tmp_path / "runs", capsys)
    assert 1 < step <= 6 and "learning_rate (it is 1e+08)" in line
    saved = complete_checkpoints(str(tmp_path / "runs" / "diverged" / "checkpoints"))
    assert 2 in saved  # the healthy checkpoint before the divergence stays (a rerun could resume from it)


@pytest.mark.integration
@pytest.mark.parametrize("recipe", ["tiny-cpu-grpo", "tiny-cpu-rgfn"])
def test_diverging_grpo_and_rgfn_runs_stop_and_commit_nothing(
    recipe: str, record_data: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--data", record_data, "--model", str(tiny_model_dir), "--recipe", recipe, "--set", RL_SET]
    step, _ = diverge(argv, tmp_path / "runs", capsys)
    assert 1 <= step < 8


def test_nonfinite_tensors_counts_only_trainable_weights() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    assert nonfinite_tensors(model) == (0, 4)
    with torch.no_grad():
        model[0].weight[0, 0] = math.nan
        model[1].bias[1] = math.inf
    assert nonfinite_tensors(model) == (2, 4)
    model[1].bias.requires_grad = False  # frozen (a quantized base's weights): not the run's to break
    assert nonfinite_tensors(model) == (1, 3)


def test_a_crash_is_blamed_on_divergence_only_after_an_update_broke_the_weights() -> None:
    model = torch.nn.Linear(3, 3)
    with torch.no_grad():
        model.weight[0, 0] = math.nan  # before any update: as loaded (a sharded rank's weights not yet received)

    def trainer_at(step: int) -> SimpleNamespace:
        state, args = SimpleNamespace(global_step=step), SimpleNamespace(learning_rate=1.0)
        return SimpleNamespace(model=model, state=state, args=args)

    assert diverged_crash(RuntimeError("boom"), trainer_at(0)) is None
    assert isinstance(diverged_crash(RuntimeError("boom"), trainer_at(3)), TrainingDiverged)
