"""The 72B example (k8s/overlays/gpu-72b): Qwen2.5-VL-72B's bf16 LoRA sharded with FSDP2 over 2 nodes x 8 GPUs.
What it renders must be what the recipe, the memory plan and the sharded loading need: 16 ranks that keep the
recipe's global batch, a plan that fits 80 GB GPUs, host memory for rank 0's whole copy, room for the model's files,
and an evaluation that fits one GPU. (The generic rules, hardening, selectors, schemas: test_k8s_manifests.)"""

from __future__ import annotations

from typing import Any

import pytest

from tests.k8s.test_k8s_defaults import evaluate_configs
from tests.k8s.test_k8s_distributed import env_of, train_container
from tests.k8s.test_k8s_manifests import by_kind, expand, quantity, render
from vcot.models.published import published_config
from vcot.train.plan import GIB, ModelShape, plan, weight_bytes
from vcot.train.recipe import load_recipe

OVERLAY = "k8s/overlays/gpu-72b"
GPU_MEMORY_GIB = 80
SHAPE = ModelShape.from_config(published_config("qwen2.5-vl-72b"))
BF16_BYTES = SHAPE.parameters() * 2


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render(OVERLAY)


def env_value(container: dict[str, Any], name: str) -> str:
    (value,) = [entry["value"] for entry in container["env"] if entry["name"] == name]
    return value


def volume_limit(job: dict[str, Any], name: str) -> float:
    (volume,) = [v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == name]
    return quantity(volume["emptyDir"]["sizeLimit"])


def test_16_ranks_on_2_nodes_train_the_72b_recipe_sharded_and_fit_80_gb(docs: list[dict[str, Any]]) -> None:
    env, job = env_of(docs), by_kind(docs, "Job")["vcot-train"]
    spec, container = job["spec"], train_container(docs)
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    command = [expand(part, env) for part in container["command"]]
    assert command[0] == "vcot-torchrun" and command[-1] == "vcot-train"  # exit 2 survives the launcher
    assert {"--nnodes=2", "--nproc-per-node=8", "--max-restarts=3"} <= set(command)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert "72B" in env["BASE_MODEL"] and env["TRAIN_RECIPE"] == "qwen2.5-vl-72b-lora"

    recipe = load_recipe(env["TRAIN_RECIPE"], env_value(container, "VCOT_SET"))
    world = 2 * 8
    assert recipe.sharding == "fsdp2" and recipe.quantize is None
    assert recipe.accumulation_for(world) * recipe.per_device_train_batch_size * world == recipe.global_batch_size
    assert plan(SHAPE, recipe, gpus=world, gpu_memory_gib=GPU_MEMORY_GIB).fits


def test_a_train_pod_holds_rank_0s_whole_copy_and_the_models_files(docs: list[dict[str, Any]]) -> None:
    job, container = by_kind(docs, "Job")["vcot-train"], train_container(docs)
    memory = quantity(container["resources"]["limits"]["memory"])
    assert memory >= BF16_BYTES + 8 * 4 * GIB, memory / GIB  # rank 0's copy and 8 processes' own (~4 GiB each)
    assert volume_limit(job, "cache") >= BF16_BYTES
    assert job["spec"]["backoffLimit"] >= 2 * 3  # a lost index 0 fails both pods: three such losses


@pytest.mark.parametrize("name", ["vcot-evaluate", "vcot-reevaluate"])
def test_the_72b_is_evaluated_in_4_bits_on_one_gpu(docs: list[dict[str, Any]], name: str) -> None:
    if name == "vcot-reevaluate":
        job = by_kind(docs, "CronJob")[name]["spec"]["jobTemplate"]
    else:
        job = by_kind(docs, "Job")[name]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert dict(evaluate_configs(docs))[name].quantize == "4bit"  # as vcot-evaluate parses its args and environment
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    four_bit = weight_bytes(SHAPE, load_recipe("qwen2.5-vl-7b-qlora"), 2, 1)  # NF4 linear layers, 16-bit rest
    assert four_bit < 0.6 * GPU_MEMORY_GIB * GIB, four_bit / GIB  # room for the activations of a batch
    assert volume_limit(job, "cache") >= BF16_BYTES
