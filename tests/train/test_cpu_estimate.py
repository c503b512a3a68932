"""A GPU recipe started on a CPU says up front what it is about to do and roughly how long it will take, and the
model's loading reports its progress (the sync from storage in files and bytes, the weights tensor by tensor).

The 7B case is judged from a 7B-shaped ``config.json`` alone (its parameters counted on torch's meta device):
no 7B is ever loaded here. The whole chain runs the 7B recipe on the tiny model, from an ``s3://`` copy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import LogMode
from vcot.io import storage
from vcot.log import configure_logging
from vcot.models.loading import parameter_count
from vcot.models.published import published_config
from vcot.train.estimate import LARGE_ON_CPU, Workload, announce_cpu_run, seconds_per_token, sft_workload
from vcot.train.plan import ModelShape
from vcot.train.recipe import load_recipe

pytestmark = pytest.mark.integration
SEVEN_B_PARAMETERS = ModelShape.from_config(published_config("qwen2.5-vl-7b")).parameters()


def qwen25_vl_7b_config(folder: Path) -> Path:
    """Qwen2.5-VL-7B-Instruct's published config.json and nothing else."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(published_config("qwen2.5-vl-7b")))
    return folder


def test_the_7b_recipe_on_a_cpu_warns_with_a_rough_estimate_in_days(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_logging("json")
    model = qwen25_vl_7b_config(tmp_path / "qwen2.5-vl-7b")
    assert parameter_count(str(model)) == SEVEN_B_PARAMETERS  # the hub model's count, from its config alone
    recipe = load_recipe("qwen2.5-vl-7b-qlora", "")
    stats = {"train": {"rows": 20_000, "mean_length": 1_000.0}}  # a first week's mixture
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    fields = announce_cpu_run(str(model), recipe, "qwen2.5-vl-7b-qlora", sft_workload(recipe, stats))
    assert fields is not None and fields["parameters"] > LARGE_ON_CPU
    [line] = LogMode.lines(capsys.readouterr().err, "cpu_run")
    assert line["level"] == "warning" and "GPU" in line["hint"] and "tiny-cpu" in line["hint"]
    assert line["steps"] == 2 * 1250 and line["samples_per_step"] == 16  # two epochs of 20,000 rows, batch 16
    days = 2500 * 16 * 1000 * seconds_per_token(SEVEN_B_PARAMETERS, 2) / 86400
    assert line["estimate_s"] == pytest.approx(days * 86400, rel=1e-6) and 90 < days < 100
    message = r"8\.3B parameters, 4bit weights\) on a CPU .* rough estimate \d+\.\d (days|years)"
    assert re.search(message, line["message"])
    assert "rough" in line["basis"] and "docs/train.md" in line["basis"]


def test_the_estimate_matches_the_tiny_models_measured_speed(capsys: pytest.CaptureFixture[str]) -> None:
    """Calibration: make local-train's model (1.3M) trains ~5,500 tokens/s on one thread (docs/bench-train.md), a
    66M one ~580 tokens/s on two (NOTES); the estimate must stay within 25% of both."""
    configure_logging("json")
    assert 1 / seconds_per_token(1_300_000, 1) == pytest.approx(5_500, rel=0.25)
    assert 1 / seconds_per_token(66_000_000, 2) == pytest.approx(580, rel=0.25)
    recipe = load_recipe("tiny-cpu", "")
    fields = announce_cpu_run("tiny", recipe, "tiny-cpu", Workload(2550, 8, 145.0), parameters=1_254_336)
    assert fields is not None and 400 < fields["estimate_s"] < 700  # measured: 471-536 s of training
    [line] = LogMode.lines(capsys.readouterr().err, "cpu_run")
    assert line["level"] == "info"  # a tiny model on a CPU is what tiny-cpu is for: a note, not a warning


def test_the_estimate_is_advice_never_the_reason_a_run_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json")
    (tmp_path / "config.json").write_text('{"model_type": "not_a_model_type"}')
    assert announce_cpu_run(str(tmp_path), load_recipe("tiny-cpu", ""), "tiny-cpu", Workload(1, 1, 1.0)) is None
    [line] = LogMode.lines(capsys.readouterr().err, "cpu_run")
    assert line["estimate"] is None and "could not count its parameters" in line["reason"]


def test_a_gpu_recipe_on_a_cpu_says_so_before_loading_and_loading_reports_its_progress(
    log_mode: LogMode, tokenized_data: str, tiny_model_dir: Path, real_s3: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobs.train import main

    monkeypatch.setenv("VCOT_MODEL_CACHE", str(tmp_path / "cache"))  # a fresh cache: the weights are fetched
    model = f"{real_s3}/models/tiny"
    storage.upload_dir(tiny_model_dir, model)
    weights = (tiny_model_dir / "model.safetensors").stat().st_size
    small = "max_steps=1,save_steps=1,eval_steps=1,per_device_train_batch_size=2,global_batch_size=2,"
    small += "generation_eval_samples=0,dataloader_num_workers=0"
    argv = ["--data", tokenized_data, "--model", model, "--output", f"{real_s3}/run", "--recipe",
            "qwen2.5-vl-7b-qlora", "--set", small, "--threads", "1"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    if log_mode.fmt == "console":
        position = 0
        for text in ("cpu_run", "sync_progress:", "load_model", "load_weights_progress:", "train_progress:"):
            position = err.index(text, position)  # in this order; the weights' sync after cpu_run
        assert re.search(r"sync_progress: 100%.*\d+(\.\d+)?[kM]?B/s\]", err)
        assert re.search(r"load_weights_progress: 100%\|.*\| (\d+)/\1 \[.*tensor/s\]", err)
        return
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    names = [event["event"] for event in events]
    # config and tokenizer first (counting the parameters needs no weights), then the weights
    first_weights_sync = next(i for i, e in enumerate(events) if e["event"] == "sync" and e["bytes"] >= weights)
    assert names.index("cpu_run") < first_weights_sync < names.index("load_model"), names
    sync = events[first_weights_sync]
    assert sync["source"] == model and sync["bytes"] >= weights and sync["files"] >= 1
    fetched = LogMode.lines(err, "sync_progress")
    assert fetched[-1]["done"] is True and fetched[-1]["step"] == fetched[-1]["total"] == sync["bytes"]
    assert all(line["eta_s"] is not None for line in fetched)
    [loaded] = LogMode.lines(err, "load_model")
    assert loaded["weight_files"] == 1 and loaded["weights_gib"] == round(weights / 2**30, 3)
    tensors = LogMode.lines(err, "load_weights_progress")
    assert tensors[-1]["done"] is True and tensors[-1]["step"] == tensors[-1]["total"] > 10
    assert names.index("load_model") < names.index("load_weights_progress") < names.index("train_progress")
