"""Checkpoints in storage (vcot.train.checkpoints): what a restart downloads, and which run they belong to."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from vcot.train.checkpoints import SaveOnSigterm, mark_complete, restore_checkpoints, settings_change


def _checkpoint(remote: Path, step: int, state: dict) -> None:
    folder = remote / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps(state))
    mark_complete(str(folder))


def test_the_best_checkpoint_is_named_where_this_node_downloaded_it(tmp_path: Path) -> None:
    """Saved by two ranks, whose state names node 0's folder; resumed by one process, the Trainer would drop a best
    checkpoint it cannot find, and a run resumed at its last step would commit the last one instead."""
    remote, local = tmp_path / "remote", tmp_path / "node" / "trainer"
    saved = {"best_global_step": 2, "best_model_checkpoint": "/scratch/abc-node0/trainer/checkpoint-2"}
    _checkpoint(remote, 2, saved)
    _checkpoint(remote, 6, {**saved, "global_step": 6})
    _checkpoint(remote, 8, {"best_global_step": None, "best_model_checkpoint": None})  # none chosen: left so
    newest = restore_checkpoints(str(remote), local)
    assert newest == local / "checkpoint-8"
    state = json.loads((local / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(local / "checkpoint-2") and state["global_step"] == 6
    assert json.loads((local / "checkpoint-8" / "trainer_state.json").read_text())["best_model_checkpoint"] is None


def test_settings_are_pinned_by_the_first_start_and_compared_on_a_resume(tmp_path: Path) -> None:
    remote = tmp_path / "checkpoints"
    first = {"learning_rate": 2e-3, "lora_target_modules": ["q_proj"], "max_steps": 10, "data": "s3://b/d"}
    assert settings_change(str(remote), first) is None  # no checkpoint: pinned, nothing to compare
    assert settings_change(str(remote), {**first, "learning_rate": 1.0}) is None  # still none: pinned again
    _checkpoint(remote, 2, {})
    assert settings_change(str(remote), {**first, "learning_rate": 1.0}) is None  # the second start's own
    assert settings_change(str(remote), {**first, "learning_rate": 1.0, "max_steps": 20}) is None  # longer: free
    slice_ = settings_change(str(remote), {**first, "learning_rate": 1.0, "generation_eval_samples": 64})
    assert slice_ == "generation_eval_samples: None -> 64"  # the scores so far, and an RL run's start, are on the old one
    patience = settings_change(str(remote), {**first, "learning_rate": 1.0, "early_stopping_patience": 5})
    assert patience == "early_stopping_patience: None -> 5"  # restored with the checkpoint: a new one would be ignored
    changed = settings_change(str(remote), {**first, "lora_target_modules": ("q_proj", "v_proj"), "data": "s3://b/e"})
    assert changed == ("data: 's3://b/d' -> 's3://b/e'; learning_rate: 1.0 -> 0.002; "
                       "lora_target_modules: ['q_proj'] -> ['q_proj', 'v_proj']")


def test_a_run_pinned_before_the_fused_lm_head_knob_resumes_after_the_upgrade(tmp_path: Path) -> None:
    """``fused_lm_head`` changes how the loss is computed, not what it is: a run whose pinned settings predate the
    knob (no such key) resumes; a change to what it trains is still refused."""
    remote = str(tmp_path / "checkpoints")
    assert settings_change(remote, {"learning_rate": 1e-4, "lora_r": 8}) is None  # pinned by the older code
    mark_complete(f"{remote}/checkpoint-2")
    assert settings_change(remote, {"learning_rate": 1e-4, "lora_r": 8, "fused_lm_head": True}) is None
    assert settings_change(remote, {"learning_rate": 1e-4, "lora_r": 16, "fused_lm_head": False}) == "lora_r: 8 -> 16"


def test_a_sigterm_stop_ignores_more_sigterms_and_a_run_without_one_restores_its_handler() -> None:
    # Under torchrun the ranks left get SIGTERM once one has exited: it must not cut their own stop's report short.
    before = signal.getsignal(signal.SIGTERM)
    try:
        quiet = SaveOnSigterm()
        quiet.install()
        quiet.uninstall()
        assert signal.getsignal(signal.SIGTERM) == before
        stopped = SaveOnSigterm()
        stopped.install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopped.received
        stopped.uninstall()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)
