"""Every large recipe, unchanged, on a true-width slice of its model (issue 29): the real widths, heads,
vocabulary, vision tower and processor, only the depth cut (:mod:`vcot.dev.model_slice`), on the CPU.

Only what makes a run short differs from the shipped recipe: steps, lengths, batch sizes, evaluation cadence and
the data loader's workers. The quantization, optimizer, LoRA targets, gradient checkpointing, learning rates and
every method knob are the recipe's. What a tiny model cannot show is checked here: NF4 with double quantization on
every linear layer but the output one, 8-bit AdamW's states, LoRA's trainable count from the shape's formula, finite
losses for 2 optimizer steps; for one QLoRA recipe per family the adapter loaded with plain peft, the merge for
export and evaluate answering.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.train.conftest import write_record_output
from tests.train.test_distributed import events
from vcot.dev.model_slice import cached_slice
from vcot.io import shards
from vcot.models.published import published_config
from vcot.train.plan import ModelShape, recipe_lora_parameters
from vcot.train.recipe import load_recipe, recipe_names

# A QLoRA slice's test (slice built, 2 steps, merge, evaluate) takes 4-7 minutes on 2 cores, past pytest's 600 s
# when the machine is loaded (seen in a CI run beside an image build): these get 20 minutes each.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

REPO_ROOT = Path(__file__).resolve().parents[2]
STEPS = 2
SHORT = (
    f"max_steps={STEPS},logging_steps=1,dataloader_num_workers=0,report_to=[],per_device_train_batch_size={{batch}},"
    f"gradient_accumulation_steps=1,global_batch_size=0,eval_steps={STEPS},save_steps={STEPS},generation_eval_samples=0"
)
"""What makes a run short (the rest is the recipe's): two optimizer steps, the second after a first update, and
an evaluation; each step of an 8B slice takes ~35 s on one core (its 152k x 4096 output layer)."""
SFT_SHORT = SHORT.format(batch=1) + ",per_device_eval_batch_size=2"
GRPO_SHORT = SHORT.format(batch=2) + ",num_generations=2,max_completion_length=12,metric_for_best_model=eval_loss"
RGFN_SHORT = (SHORT.format(batch=1) + ",explore_nums=2,explore_min_bs=2,rat_min_len=4,rat_max_len=12,reward_every=4,"
              "metric_for_best_model=eval_loss")  # fmt: skip

MODEL_OF = {
    "qwen2.5-vl-3b-qlora": "qwen2.5-vl-3b",
    "qwen2.5-vl-7b-qlora": "qwen2.5-vl-7b",
    "qwen2.5-vl-7b-grpo": "qwen2.5-vl-7b",
    "qwen2.5-vl-7b-rgfn": "qwen2.5-vl-7b",
    "qwen3-vl-8b-qlora": "qwen3-vl-8b",
    "qwen3-vl-8b-grpo": "qwen3-vl-8b",
    "qwen2.5-vl-32b-lora": "qwen2.5-vl-32b",
    "qwen2.5-vl-72b-lora": "qwen2.5-vl-72b",
}
"""Every shipped non-tiny recipe and the published model it was written for."""
EXPORTED = ("qwen2.5-vl-7b-qlora", "qwen3-vl-8b-qlora")
"""The QLoRA recipes also merged for export, evaluated and loaded with plain peft here: one per family (CI's
time; the 3B's differs from the 7B's in widths only)."""
SFT_OF = {"qwen2.5-vl-7b-grpo": "qwen2.5-vl-7b-qlora", "qwen3-vl-8b-grpo": "qwen3-vl-8b-qlora"}
"""GRPO recipes continue their family's SFT adapter, as documented."""


def test_every_large_recipe_is_covered_here() -> None:
    assert sorted(MODEL_OF) == [name for name in recipe_names() if not name.startswith("tiny-")]


def slice_for(recipe_name: str) -> Path:
    """The slice of ``recipe_name``'s model, kept between runs in the slice cache (``VCOT_SLICE_CACHE``)."""
    return cached_slice(MODEL_OF[recipe_name])


@functools.cache
def records(root: str) -> str:
    return write_record_output(str(Path(root) / "records"), 10, seed=0)


def log_losses(run: Path, key: str = "loss") -> list[float]:
    history = json.loads((run / "metrics.json").read_text())["log_history"]
    return [entry[key] for entry in history if key in entry and "eval_loss" not in entry]


def adapter_parameters(run: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(run / "adapter" / "adapter_model.safetensors"), "pt") as weights:
        shapes = [weights.get_slice(key).get_shape() for key in weights.keys()]
    return sum(rows * columns for rows, columns in shapes)


def assert_8bit_adamw(run: Path) -> None:
    """Every LoRA matrix's optimizer state is bitsandbytes' 8-bit one (not the 32-bit fallback)."""
    state = torch.load(next((run / "checkpoints").glob("checkpoint-*")) / "optimizer.pt", weights_only=False)["state"]
    assert state and all("__bnb_optimizer_quant_state__" in entry for entry in state.values())
    quantized = next(iter(state.values()))["__bnb_optimizer_quant_state__"]
    assert quantized["state1"].dtype == torch.uint8 and quantized["state2"].dtype == torch.uint8


def assert_ran(run: Path, recipe_name: str, model: Path) -> None:
    """``STEPS`` optimizer steps with finite losses, LoRA's count from the formula, the recipe's optimizer."""
    losses = log_losses(run)
    assert len(losses) == STEPS and all(math.isfinite(loss) for loss in losses), losses
    shape = ModelShape.from_config(json.loads((model / "config.json").read_text()))
    assert adapter_parameters(run) == recipe_lora_parameters(shape, load_recipe(recipe_name))
    if load_recipe(recipe_name).optim == "adamw_8bit":
        assert_8bit_adamw(run)


def job(stage: str, *args: str) -> list[str]:
    """``vcot-<stage> ARGS`` as a user runs it, in its own process: each run's memory is returned when it ends
    (a 7B slice's step holds several GiB; one process running them all in turn would not fit this machine). Its
    torch threads are torch's default, which ``make test`` sets to this worker's share of the cores. Returns its
    log lines (JSON)."""
    env = {**os.environ, "VCOT_LOG_FORMAT": "json", "VCOT_LOG_LEVEL": "INFO"}  # the events read below
    done = subprocess.run([sys.executable, "-m", f"jobs.{stage}", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=900, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stderr.splitlines()


def logged(lines: list[str], name: str) -> dict[str, Any]:
    """The last ``name`` event of a job's log lines."""
    return events(lines, name)[-1]


@functools.cache
def sft_run(recipe_name: str, root: str) -> tuple[Path, dict[str, Any]]:
    """The SFT run of ``recipe_name`` on its slice, and what its model loading said it quantized."""
    model = slice_for(recipe_name)
    tokens, run = f"{root}/{recipe_name}/tokens", Path(root) / recipe_name / "run"
    job("tokenize", "--input", records(root), "--output", tokens, "--model", str(model))
    lines = job("train", "--data", tokens, "--model", str(model), "--output", str(run), "--recipe", recipe_name,
                "--set", SFT_SHORT)  # fmt: skip
    return run, logged(lines, "quantized")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """This module's folder: runs and exports, about 4 GB at its peak, removed at the end."""
    folder = tmp_path_factory.mktemp("real-shapes")
    yield str(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("recipe_name", ["qwen2.5-vl-7b-qlora", "qwen2.5-vl-3b-qlora", "qwen3-vl-8b-qlora"])
def test_qlora_recipe_trains_loads_merges_and_answers_on_its_slice(recipe_name: str, root: str) -> None:
    model = slice_for(recipe_name)
    run, quantized = sft_run(recipe_name, root)
    assert_ran(run, recipe_name, model)
    assert load_recipe(recipe_name).quantize == "4bit" and load_recipe(recipe_name).gradient_checkpointing

    # NF4 with double quantization on every linear layer but the output one, as the run's loading logged it.
    shape = ModelShape.from_config(json.loads((model / "config.json").read_text()))
    assert {key: quantized.get(key) for key in ("layers_4bit", "layers_8bit", "quant_types", "double_quant")} == {
        "layers_4bit": shape.quantized_modules(), "layers_8bit": 0, "quant_types": ["nf4"], "double_quant": True}
    if recipe_name not in EXPORTED:
        return  # the merge and evaluate of its family run on the 7B's slice: the same code at other widths

    # The merge for export: the 16-bit base plus B @ A x alpha / r, weight for weight.
    merged = Path(root) / recipe_name / "merged"
    job("export", "--run", str(run), "--output", str(merged))
    assert_merged(model, run / "adapter", merged)
    shutil.rmtree(merged)  # a whole 16-bit model (3-4 GB); the adapter and run stay for the GRPO tests

    # evaluate answers a batch with the adapter loaded by plain peft on the 4-bit base, as the recipe trained it.
    scored = Path(root) / recipe_name / "eval"
    lines = job("evaluate", "--data", records(root), "--model", str(model), "--adapter", str(run / "adapter"),
                "--output", str(scored), "--max-samples", "2", "--batch-size", "2", "--max-new-tokens", "8",
                "--quantize", "4bit")  # fmt: skip
    assert logged(lines, "adapter_loaded")["lora_parameters"] == adapter_parameters(run)
    assert logged(lines, "quantized")["layers_4bit"] == shape.quantized_modules()
    predictions = list(shards.read_jsonl(str(next(scored.glob("predictions/*.jsonl.gz")))))
    assert len(predictions) == 2 and all(isinstance(row["prediction"], str) for row in predictions), predictions[:1]


def assert_merged(model: Path, adapter: Path, merged: Path) -> None:
    """One targeted weight of the merged model is the base's plus the adapter's scaled product (to bf16 rounding)."""
    from safetensors import safe_open

    config = json.loads((adapter / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    read = lambda folder, suffix: _tensor(folder, suffix, safe_open)  # noqa: E731
    a, b = read(adapter, "layers.1.mlp.down_proj.lora_A.weight"), read(adapter, "layers.1.mlp.down_proj.lora_B.weight")
    base = read(model, "layers.1.mlp.down_proj.weight").float()
    expected = base + scale * (b.float() @ a.float())
    got = read(merged, "layers.1.mlp.down_proj.weight").float()
    assert got.dtype == torch.float32 and got.shape == base.shape
    assert (b.abs().sum() > 0) and not torch.equal(got, base)  # the adapter moved and the merge applied it
    assert torch.allclose(got, expected, atol=2e-2, rtol=1e-2)


def _tensor(folder: Path, suffix: str, safe_open: Any) -> torch.Tensor:
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as weights:
            for key in weights.keys():
                if key.endswith(suffix) and "visual" not in key:
                    return weights.get_tensor(key)
    raise AssertionError(f"no tensor ending in {suffix} in {folder}")


@pytest.mark.parametrize("recipe_name", ["qwen2.5-vl-7b-grpo", "qwen3-vl-8b-grpo"])
def test_grpo_recipe_continues_the_sft_adapter_on_its_slice(recipe_name: str, root: str) -> None:
    model = slice_for(recipe_name)
    sft, _ = sft_run(SFT_OF[recipe_name], root)
    run = Path(root) / recipe_name / "run"
    assert load_recipe(recipe_name).quantize is None  # bf16 policy on a GPU (fp32 on this CPU)
    lines = job("train", "--data", records(root), "--model", str(model), "--output", str(run), "--recipe",
                recipe_name, "--set", GRPO_SHORT, "--init-adapter", str(sft / "adapter"))  # fmt: skip
    assert_ran(run, recipe_name, model)
    assert logged(lines, "adapter_loaded")["lora_parameters"] == adapter_parameters(sft)  # the SFT adapter, whole


def test_rgfn_recipe_trains_on_its_slice(root: str) -> None:
    model = slice_for("qwen2.5-vl-7b-rgfn")
    run = Path(root) / "rgfn" / "run"
    job("train", "--data", records(root), "--model", str(model), "--output", str(run), "--recipe", "qwen2.5-vl-7b-rgfn",
        "--set", RGFN_SHORT)  # fmt: skip
    assert_ran(run, "qwen2.5-vl-7b-rgfn", model)
    grad_norms = log_losses(run, "grad_norm")
    assert grad_norms and all(math.isfinite(norm) and norm > 0 for norm in grad_norms)


@pytest.mark.parametrize("recipe_name", ["qwen2.5-vl-32b-lora", "qwen2.5-vl-72b-lora"])
def test_sharded_recipes_are_accepted_and_their_4bit_form_refused(recipe_name: str, tmp_path: Path) -> None:
    """The 32B and 72B recipes shard (tests/train/test_sharding.py runs sharded training); sharding a 4-bit base is
    refused before any model loads, naming the data-parallel way."""
    from vcot.errors import ConfigError
    from vcot.train import TrainConfig

    recipe = load_recipe(recipe_name)
    assert recipe.sharding == "fsdp2" and recipe.gpus > 1 and recipe.quantize is None
    folders = {"data": str(tmp_path / "d"), "model": str(tmp_path / "m"), "output": str(tmp_path / "o")}
    TrainConfig(**folders, recipe=recipe_name)
    with pytest.raises(ConfigError, match="a 4bit base is not sharded: set quantize=null, or sharding=null"):
        TrainConfig(**folders, recipe=recipe_name, set="quantize=4bit")


@pytest.mark.parametrize("name", sorted(set(MODEL_OF.values())))
def test_the_shape_counts_every_parameter_of_the_published_model(name: str, tmp_path: Path) -> None:
    """The plan's parameter counts, exact against transformers' own model of the full published configuration
    (on the meta device: nothing allocated)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    (tmp_path / "config.json").write_text(json.dumps(published_config(name)))
    with torch.device("meta"):
        full = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(tmp_path))
    shape = ModelShape.from_config(published_config(name))
    assert sum(p.numel() for p in full.parameters()) == shape.parameters()
    linear = [m for n, m in full.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]
    assert len(linear) == shape.quantized_modules()
    assert sum(m.weight.numel() for m in linear) == shape.quantized_parameters()  # what NF4 packs
