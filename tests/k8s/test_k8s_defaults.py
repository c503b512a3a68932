"""First-day defaults of the rendered manifests: evaluate decodes with the same (box-aware) repetition penalty on
the cluster as everywhere else, and the train pod's scratch volume holds what the shipped recipe writes there.

Rendered with real ``kubectl kustomize``: the shipped overlays, and the gpu overlay with the GRPO and RGFN
components turned on (they patch the evaluate Job). Each vcot-evaluate container's command line and environment
(ConfigMap, env) are parsed by vcot-evaluate's own config parser, as the pod would.
"""

from __future__ import annotations

import shutil
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.test_k8s_manifests import by_kind, container_env, expand, pod_templates, quantity, render
from vcot.config import parse_config
from vcot.evaluate.config import EvaluateConfig
from vcot.models.penalty import BOX_AWARE, REPETITION_PENALTY
from vcot.models.published import published_config
from vcot.train.plan import ModelShape, recipe_lora_parameters
from vcot.train.recipe import load_recipe

REPO_ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ["k8s/base", "k8s/overlays/gpu", "k8s/overlays/cpu-dev", "k8s/overlays/gpu-72b"]
COMPONENTS = ["grpo", "rgfn"]

SEVEN_B = ModelShape.from_config(published_config("qwen2.5-vl-7b"))
"""Qwen2.5-VL-7B-Instruct's shape, from its published configuration."""
ROWS_ALLOWANCE = 500_000_000 * 8
"""The training rows' local copy of a large run (500 M tokens, 8 bytes a token: ids and labels as int32)."""


def overlay_model(config_map: dict[str, str]) -> ModelShape:
    """The shape of the published model an overlay's ``BASE_MODEL`` names (its folder is named like the checkpoint)."""
    from vcot.models.published import provenance, published_names

    model = config_map["BASE_MODEL"].rstrip("/").rsplit("/", 1)[-1]
    (name,) = [n for n in published_names() if provenance(n)["checkpoint"].endswith("/" + model)]
    return ModelShape.from_config(published_config(name))


def pod_recipe(container: dict[str, Any], config_map: dict[str, str], extra: str = "") -> Any:
    """The recipe a train container runs: its ``--recipe`` with the ``VCOT_SET`` of its env, then ``extra``."""
    flag = next(expand(a, config_map) for a in container["args"] if a.startswith("--recipe="))
    overrides = [e["value"] for e in container.get("env", []) if e["name"] == "VCOT_SET" and "value" in e]
    return load_recipe(flag.split("=", 1)[1], ",".join(filter(None, [*overrides, extra])))


def render_with_component(component: str) -> list[dict[str, Any]]:
    """The gpu overlay with its commented-out ``component`` line turned on (a copy under git-ignored k8s/runs/)."""
    folder = REPO_ROOT / "k8s" / "runs" / f"test-{component}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(REPO_ROOT / "k8s" / "overlays" / "gpu", folder)
    try:
        text = (folder / "kustomization.yaml").read_text()
        off = f"  # - ../../components/{component}\n"
        assert off in text, f"k8s/overlays/gpu/kustomization.yaml must show how to turn {component} on"
        (folder / "kustomization.yaml").write_text(text.replace(off, off.replace("# ", "")))
        return render(folder)
    finally:
        shutil.rmtree(folder)


@pytest.fixture(scope="module")
def renderings() -> dict[str, list[dict[str, Any]]]:
    found = {overlay: render(overlay) for overlay in OVERLAYS}
    found.update({f"gpu+{component}": render_with_component(component) for component in COMPONENTS})
    return found


def evaluate_configs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, EvaluateConfig]]:
    """Every vcot-evaluate container's config, parsed from its expanded args and its environment."""
    (config_map,) = [doc["data"] for doc in by_kind(docs, "ConfigMap").values() if "RUN_ROOT" in doc["data"]]
    secrets: defaultdict[str, defaultdict[str, str]] = defaultdict(lambda: defaultdict(str))
    for name, template in pod_templates(docs):
        container = template["spec"]["containers"][0]
        if container.get("command") != ["vcot-evaluate"]:
            continue
        env = container_env(template, config_map, secrets, "ns")
        args = [expand(arg, env) for arg in container.get("args", [])]
        yield name, parse_config(EvaluateConfig, args, environ=env)


@pytest.mark.parametrize("rendering", [*OVERLAYS, *(f"gpu+{c}" for c in COMPONENTS)])
def test_cluster_evaluation_decodes_with_the_box_aware_penalty(
    renderings: dict[str, list[dict[str, Any]]], rendering: str
) -> None:
    configs = dict(evaluate_configs(renderings[rendering]))
    assert {"vcot-evaluate", "vcot-reevaluate"} <= set(configs), sorted(configs)
    for name, config in configs.items():
        assert config.repetition_penalty == REPETITION_PENALTY, name
        assert config.box_aware_penalty is BOX_AWARE is True, f"{name} ({rendering}) decodes with the plain penalty"


@pytest.mark.parametrize("rendering", [*OVERLAYS, *(f"gpu+{c}" for c in COMPONENTS)])
def test_train_scratch_holds_the_recipes_checkpoints_and_a_merged_model(
    renderings: dict[str, list[dict[str, Any]]], rendering: str
) -> None:
    docs = renderings[rendering]
    (config_map,) = [doc["data"] for doc in by_kind(docs, "ConfigMap").values() if "RUN_ROOT" in doc["data"]]
    checked = []
    for name, template in pod_templates(docs):
        container = template["spec"]["containers"][0]
        if container.get("command", [""])[-1] != "vcot-train" or rendering == "k8s/overlays/cpu-dev":
            continue  # cpu-dev trains the tiny model: its scratch is small
        recipe = pod_recipe(container, config_map, "merge_adapter=true")  # the recipe's largest output
        shape = overlay_model(config_map)
        needed = recipe.scratch_bytes(recipe_lora_parameters(shape, recipe), shape.parameters())
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        (tmp,) = [v for v in template["spec"]["volumes"] if mounts.get(v["name"]) == "/tmp"]
        assert quantity(tmp["emptyDir"]["sizeLimit"]) >= needed + ROWS_ALLOWANCE, (name, needed / 2**30)
        checked.append(name)
    assert checked or rendering == "k8s/overlays/cpu-dev"


@pytest.mark.parametrize("rendering", ["k8s/overlays/gpu", "k8s/overlays/gpu-72b", *(f"gpu+{c}" for c in COMPONENTS)])
def test_gpu_train_pods_agree_with_the_memory_plan_of_their_recipe(
    renderings: dict[str, list[dict[str, Any]]], rendering: str
) -> None:
    """Each GPU training pod (SFT, GRPO, RGFN) runs a recipe whose plan fits the GPUs it was planned for, for the
    model the overlay names; it requests at least one GPU (as many as a sharded recipe needs) and host memory for
    that model's 16-bit weights (what loading stages before they reach the GPU). The overlay cannot say its GPUs'
    memory: the recipe's planned gpu_memory_gib is the GPU pool to pick (docs/k8s.md)."""
    from vcot.train.plan import GIB, plan

    docs = renderings[rendering]
    (config_map,) = [doc["data"] for doc in by_kind(docs, "ConfigMap").values() if "RUN_ROOT" in doc["data"]]
    shape = overlay_model(config_map)
    world = int(config_map["GPUS_PER_NODE"]) * int(config_map.get("TRAIN_NODES", "1"))
    checked = []
    for pod, template in pod_templates(docs):
        container = template["spec"]["containers"][0]
        if container.get("command", [""])[-1] != "vcot-train":  # alone or under torchrun
            continue
        recipe = pod_recipe(container, config_map)
        gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
        assert gpus >= 1 and (recipe.sharding is None or gpus * int(config_map.get("TRAIN_NODES", "1")) >= recipe.gpus)
        planned = plan(shape, recipe, gpus=world if recipe.method == "sft" else 1)
        assert planned.fits, (pod, recipe, planned.to_dict())
        weights = shape.parameters() * 2
        assert quantity(container["resources"]["limits"]["memory"]) >= weights, (pod, weights / GIB)
        checked.append(pod)
    assert checked
