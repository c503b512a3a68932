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

from tests.test_k8s_manifests import by_kind, container_env, expand, pod_templates, render
from vcot.config import parse_config
from vcot.evaluate.config import EvaluateConfig
from vcot.penalty import BOX_AWARE, REPETITION_PENALTY

REPO_ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ["k8s/base", "k8s/overlays/gpu", "k8s/overlays/cpu-dev"]
COMPONENTS = ["grpo", "rgfn"]


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
