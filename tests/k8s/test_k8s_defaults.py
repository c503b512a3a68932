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
from vcot.train.recipe import LORA_TARGETS, Recipe, load_recipe

REPO_ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ["k8s/base", "k8s/overlays/gpu", "k8s/overlays/cpu-dev"]
COMPONENTS = ["grpo", "rgfn"]

# Qwen2.5-VL-7B-Instruct (its config.json): the language model's shapes, and all parameters (vision included).
QWEN25_VL_7B = {"hidden": 3584, "intermediate": 18944, "layers": 28, "kv_dim": 4 * 128, "parameters": 8_292_166_656}
ROWS_ALLOWANCE = 500_000_000 * 8
"""The training rows' local copy of a large run (500 M tokens, 8 bytes a token: ids and labels as int32)."""


def lora_parameters(recipe: Recipe, model: dict[str, int]) -> int:
    """Trainable parameters of the recipe's LoRA on the language model's projections (rank x (in + out) each)."""
    hidden, intermediate, kv = model["hidden"], model["intermediate"], model["kv_dim"]
    sizes = {
        "q_proj": hidden + hidden, "o_proj": hidden + hidden, "k_proj": hidden + kv, "v_proj": hidden + kv,
        "gate_proj": hidden + intermediate, "up_proj": hidden + intermediate, "down_proj": intermediate + hidden,
    }  # fmt: skip
    assert set(recipe.lora_target_modules) <= set(LORA_TARGETS) and not recipe.modules_to_save and not recipe.tune_vision
    return model["layers"] * recipe.lora_r * sum(sizes[name] for name in recipe.lora_target_modules)


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
        if container.get("command") != ["vcot-train"] or rendering == "k8s/overlays/cpu-dev":
            continue  # cpu-dev trains the tiny model: its scratch is small
        recipe_name = next(expand(a, config_map) for a in container["args"] if a.startswith("--recipe="))
        recipe = load_recipe(recipe_name.split("=", 1)[1], "merge_adapter=true")  # the recipe's largest output
        needed = recipe.scratch_bytes(lora_parameters(recipe, QWEN25_VL_7B), QWEN25_VL_7B["parameters"])
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        (tmp,) = [v for v in template["spec"]["volumes"] if mounts.get(v["name"]) == "/tmp"]
        assert quantity(tmp["emptyDir"]["sizeLimit"]) >= needed + ROWS_ALLOWANCE, (name, needed / 2**30)
        checked.append(name)
    assert checked or rendering == "k8s/overlays/cpu-dev"
