"""Helpers the train tests share."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_until_killed(argv: list[str], kill_at_step: int) -> tuple[int, str]:
    """Start vcot-train in a subprocess, SIGTERM it once it logged ``kill_at_step``; returns (code, stderr)."""
    env = {**os.environ, "VCOT_LOG_FORMAT": "json"}
    process = subprocess.Popen(
        [sys.executable, "-m", "jobs.train", *argv],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    assert process.stderr is not None
    for line in process.stderr:
        lines.append(line)
        if line.startswith("{") and '"train_log"' in line and json.loads(line).get("step", 0) >= kill_at_step:
            process.send_signal(signal.SIGTERM)
            break
    try:
        _, rest = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("vcot-train did not stop within 120 s of SIGTERM:\n" + "".join(lines)[-3000:]) from None
    return process.returncode, "".join(lines) + rest


def assert_train_progress(err: str, fmt: str, total: int) -> None:
    """What a training run of ``total`` optimizer steps wrote about its progress (SFT, GRPO and RGFN alike): a bar of
    steps with the rate and the time left on a console, ``train_progress`` lines in JSON; ``train_log`` lines carry
    ``step``, ``total`` and ``eta_s`` in both. Never transformers' own bar or its printed log dicts."""
    import re

    from tests.conftest import LogMode

    assert "{'loss'" not in err and "{'train_runtime'" not in err, "transformers' own printer or bar is back"
    if fmt == "console":
        bars = LogMode.bars(err, "train_progress")
        done = rf"{total}/{total} \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(step/s|s/step)\]"
        assert bars and re.search(done, bars[-1]), bars[-3:]
        assert re.search(rf"train_log .*eta_s=[\d.]+ .*total={total}", err), err[-2000:]
        return
    lines = LogMode.lines(err, "train_progress")
    assert [line["step"] for line in lines if not line.get("done")] == list(range(1, total + 1)), lines
    assert all(line["total"] == total and line["unit"] == "step" for line in lines)
    assert lines[-1]["eta_s"] == 0 and all(isinstance(line["eta_s"], float) for line in lines)
    logs = [line for line in LogMode.lines(err, "train_log") if "loss" in line]
    assert logs and all(line["total"] == total and line["eta_s"] is not None for line in logs)


def rgfn_trainer(config: Any, output_dir: Path, rows: list[dict[str, Any]] | None = None, **arguments: Any) -> Any:
    """An ``RGFNTrainer`` built as ``vcot.train.rgfn.rgfn`` builds it (the continued adapter, its frozen reference),
    on ``rows`` (default: the train records of ``config.data``), with ``arguments`` for ``TrainingArguments``."""
    from transformers import TrainingArguments

    from vcot.models.adapters import reference_adapter
    from vcot.train.common import load_policy
    from vcot.train.recipe import load_recipe
    from vcot.train.rgfn import Records, RGFNTrainer, collate, read_records, rgfn_format

    recipe, fmt = load_recipe(config.recipe, config.set), rgfn_format(config)
    model, processor = load_policy(config.model, recipe, fmt, init_adapter=config.init_adapter)
    reference_adapter(model)
    rows = rows if rows is not None else read_records(config.data)[0]
    args = TrainingArguments(output_dir=str(output_dir), use_cpu=True, report_to=[], disable_tqdm=True,
                             remove_unused_columns=False, **arguments)  # the collator hands records on whole
    return RGFNTrainer(model=model, args=args, train_dataset=Records(rows), data_collator=collate,
                       processing_class=processor, recipe=recipe, fmt=fmt)  # fmt: skip


WATCH = "generation_eval_samples=4,generation_eval_max_new_tokens=48"
"""GRPO/RGFN test runs' held-out evaluation: a 4-record slice (add eval_steps equal to save_steps)."""
UNWATCHED = "generation_eval_samples=0,metric_for_best_model=eval_loss"
"""GRPO/RGFN test runs that do not exercise the held-out evaluation (and never move a pointer)."""
