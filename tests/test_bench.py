"""Every benchmark script runs, at its smallest sizes: a benchmark nobody runs rots unseen (an import that moved).

Each script in ``bench/`` needs an entry in ``SMOKE``: its smallest flags and the part of its result that must be
there when it finishes. The numbers are not judged here; they mean nothing at these sizes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import built_vllm_venv

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH = REPO_ROOT / "bench"

SMOKE: dict[str, tuple[list[str], str]] = {
    "convert_bench.py": (["--records", "40", "--modes", "raw,raw-chunks,convert@1"], "rows"),
    "distill_bench.py": (["--samples", "4", "--concurrency", "2", "--latency", "0.01"], "first"),
    "evaluate_bench.py": ([
        "--samples", "2", "--batch-size", "2", "--max-new-tokens", "4", "--train-steps", "1", "--repeats", "1",
        "--threads", "1", "--output", "{output}",
    ], "penalty"),  # fmt: skip
    "grpo_bench.py": (
        ["--size", "test", "--records", "8", "--sft-steps", "1", "--steps", "2", "--betas", "0.04", "--output", "{output}"],
        "runs",
    ),
    "grpo_signal.py": (
        ["--prepare", "24", "--size", "test", "--model", "tiny", "--data", "records", "--split", "train", "--records",
         "2", "--samples", "2", "--max-new-tokens", "8", "--threads", "1", "--output", "{output}"],
        "first_object_iou",
    ),  # fmt: skip
    "gpu_pipeline_summary.py": (["run", "--json", "{output}"], "train"),  # no run: every row says so
    "train_data_bench.py": (["--rows", "200", "--tokens", "16", "--reads", "20", "--output", "{output}"], "runs"),
    "grounding_probe.py": (
        ["--size", "test", "--records", "4", "--val", "2", "--epochs", "1", "--eval-every", "1", "--output", "{output}"],
        "constant_box",
    ),
    "rl_bench.py": (
        ["--prepare", "16", "--size", "test", "--model", "tiny", "--run", "run", "--rgfn-run", "rgfn", "--output", "out",
         "--seeds", "1", "--bin", "2", "--max-new-tokens", "16", "--json", "{output}", "--logs", "logs", "--ood", "4",
         "--set", "max_steps=2,save_steps=2,eval_steps=2,per_device_train_batch_size=8,generation_eval_samples=2,"
                  "generation_eval_max_new_tokens=16"],
        "seeds",
    ),  # fmt: skip
    "packing_bench.py": (
        ["--records", "40", "--steps", "2", "--batch", "2", "--repeats", "1", "--pack-rows", "1", "--output", "{output}"],
        "best",
    ),
    "plan_bench.py": (
        ["--cases", "tiny-cpu@tiny,qwen2.5-vl-7b-qlora@tiny", "--batches", "1", "--image-side", "112",
         "--output", "{output}"],
        "runs",
    ),
    "served_bench.py": (
        ["--records", "2", "--generations", "2", "--max-tokens", "4", "--repeats", "1", "--evaluate-records", "2",
         "--evaluate-tokens", "4", "--concurrency", "2", "--output", "{output}"],
        "evaluation",
    ),
    "sft_baseline_bench.py": (
        ["--model", "tiny", "--recipe", "tiny-cpu", "--records", "12", "--batch", "4", "--max-side", "112",
         "--warmup-steps", "1", "--output", "{output}"],
        "same_tokens",
    ),  # fmt: skip
    "structured_bench.py": (["--records", "2", "--tokens", "4", "--repeats", "1", "--output", "{output}"], "best"),
    "sharding_bench.py": (["--model", "tiny", "--steps", "4", "--repeats", "1", "--output", "{output}"], "best"),
    "train_bench.py": (
        ["--records", "4", "--steps", "1", "--repeats", "1", "--warmup-steps", "0", "--output", "{output}"],
        "modes",
    ),
}


def _result(script: str, stdout: str, output: Path) -> dict[str, Any]:
    """What the script reports at the end (its table's last row, or its JSON result)."""
    if script == "convert_bench.py":
        return {"rows": [line for line in stdout.splitlines() if line.startswith("| convert@1 |")]}
    if script == "distill_bench.py":
        return json.loads(stdout[stdout.index("{") :])
    return json.loads(output.read_text())


def test_every_benchmark_has_a_smoke_run() -> None:
    assert sorted(path.name for path in BENCH.glob("*.py")) == sorted(SMOKE)


def run_smallest(script: str, flags: list[str], tmp_path: Path, python: str = sys.executable) -> dict[str, Any]:
    """Run ``script`` with ``flags`` (``{output}``: its JSON result) as a user runs it; what it reports."""
    output = tmp_path / "results.json"
    args = [flag.format(output=output) for flag in flags]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [python, str(BENCH / script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=570,  # rl_bench's smallest run takes ~4.5 min on 2 busy cores: the limit says so before pytest's 600 s
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return _result(script, result.stdout, output)


@pytest.mark.integration
@pytest.mark.parametrize("script", sorted(SMOKE))
def test_benchmark_runs_at_its_smallest_sizes(script: str, tmp_path: Path) -> None:
    if script in ("served_bench.py", "structured_bench.py"):
        built_vllm_venv()
    flags, key = SMOKE[script]
    assert run_smallest(script, flags, tmp_path)[key]


@pytest.mark.integration
def test_grpo_benchmark_times_colocated_vllm_rollouts(tmp_path: Path) -> None:
    """``make bench-grpo-vllm``'s path, in vLLM's venv: the engine is TRL's colocated vLLM, and it sampled."""
    venv = built_vllm_venv()
    flags = ["--size", "local", "--records", "8", "--sft-steps", "1", "--steps", "1", "--betas", "0", "--rollouts",
             "vllm", "--output", "{output}"]  # fmt: skip  (local: vLLM's CPU attention needs heads of 32)
    (run,) = run_smallest("grpo_bench.py", flags, tmp_path, python=str(venv / "bin" / "python"))["runs"]
    assert run["rollouts"] == "vllm" and run["vllm_logp_gap_mean_max"] < 0.02, run  # vLLM sampled the trained policy
    assert run["phases_s"]["rollout.sync"] > 0 and run["phases_s"]["rollout.generate"] > 0, run
