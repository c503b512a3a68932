"""Tracking: TensorBoard events reach storage at every log step (not only at checkpoints); report_to's trackers."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vcot.errors import ConfigError
from vcot.io import storage
from vcot.train.checkpoints import complete_checkpoints
from vcot.train.recipe import load_recipe

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_event_files_are_on_storage_after_a_log_step_before_any_checkpoint(
    tokenized_data: str, tiny_model_dir: Path, real_s3: str, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output = storage.join(real_s3, "run")
    run_set = "max_steps=200,logging_steps=1,eval_steps=100,save_steps=100"  # the first checkpoint: step 100
    argv = ["--data", tokenized_data, "--model", str(tiny_model_dir), "--output", output, "--recipe", "tiny-cpu"]
    process = subprocess.Popen(
        [sys.executable, "-m", "jobs.train", *argv, "--set", run_set],
        cwd=REPO_ROOT,
        env={**os.environ, "VCOT_LOG_FORMAT": "json"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        for line in process.stderr:  # the train_log line of a step is written after its events were uploaded
            lines.append(line)
            if line.startswith("{") and '"train_log"' in line and json.loads(line).get("step", 0) >= 2:
                break
        else:
            raise AssertionError("vcot-train ended before step 2:\n" + "".join(lines)[-3000:])
        assert complete_checkpoints(storage.join(output, "checkpoints")) == {}  # no checkpoint yet
        storage.download_prefix(storage.join(output, "tensorboard"), tmp_path / "tensorboard")
    finally:
        process.kill()
        process.communicate()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")][:2] == [1, 2]


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_tracker_is_never_required_and_one_asked_for_must_be_installed(tracker: str) -> None:
    assert load_recipe("tiny-cpu").report_to == ["tensorboard"]  # the default needs nothing beyond torch
    if importlib.util.find_spec(tracker) is None:
        with pytest.raises(ConfigError, match=f"report_to names {tracker}, which is not installed"):
            load_recipe("tiny-cpu", f"report_to=[tensorboard, {tracker}]")
    else:  # installed: it is passed to the trainer, which reads the tracker's own environment variables
        assert load_recipe("tiny-cpu", f"report_to=[{tracker}]").report_to == [tracker]


def test_report_to_takes_known_trackers_only() -> None:
    with pytest.raises(ConfigError, match="report_to"):
        load_recipe("tiny-cpu", "report_to=[tensorbord]")
    with pytest.raises(ConfigError, match="report_to"):
        load_recipe("tiny-cpu", "report_to=tensorboard")  # a list, as in the recipes
    assert load_recipe("tiny-cpu", "report_to=[]").report_to == []
