"""The manifests build with the oldest kustomize we support, kubectl 1.27's (kustomize v5.0.1; kubectl 1.28-1.30
embed v5.0.4), and give exactly what the newest builds (docs/k8s.md "Versions").

Kustomize 5.0 builds a kustomization's components before its own configMapGenerator (later versions the other way
round): a component reading the ConfigMap vcot-run (shard-count, gpu-count, multi-node) then finds none (the build
fails) or the base's values where an overlay merged its own (the build succeeds with the wrong shard, GPU or node
counts). Comparing whole renders catches both. The pinned kubectl binaries sit beside ``kubectl`` in the Google Cloud
SDK's bin folder; ``VCOT_OLD_KUBECTL`` names another one (a kubectl 1.27-1.30, or a standalone kustomize v5.0).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.test_k8s_manifests import REPO_ROOT, by_kind, listed_components, overlay_copy, render
from vcot.cluster import runs

MINIMUM = "1.27"
"""The oldest kubectl whose kustomize builds every overlay (docs/k8s.md states it)."""
SETTINGS = {"CONVERT_SHARDS": "3", "DISTILL_SHARDS": "5", "GPUS_PER_NODE": "4", "TRAIN_NODES": "2"}
"""Values an overlay sets for the components to read: none of them the base's."""
OPTIONAL = ["grpo", "rgfn", "multi-gpu", "multi-node", "spot", "kueue", "kueue-topology", "demo", "vllm", "vllm-teacher"]


def old_kubectl() -> str:
    """kubectl MINIMUM (or ``VCOT_OLD_KUBECTL``): a binary whose kustomize is v5.0."""
    named = os.environ.get("VCOT_OLD_KUBECTL")
    kubectl = shutil.which("kubectl")
    pinned = Path(os.path.realpath(kubectl)).parent / f"kubectl.{MINIMUM}" if kubectl else None
    binary = named or (str(pinned) if pinned and pinned.exists() else None)
    assert binary, (
        f"no kubectl {MINIMUM} beside {kubectl} (the Google Cloud SDK's kubectl.{MINIMUM}): "
        "set VCOT_OLD_KUBECTL to a kubectl 1.27-1.30 or a kustomize v5.0 binary"
    )
    return binary


def kustomize_version(binary: str) -> str:
    out = subprocess.run([binary, "version", "--client"] if "kubectl" in Path(binary).name else [binary, "version"],
                         capture_output=True, text=True, check=False)
    found = re.search(r"(?:Kustomize Version: |kustomize/)?v(\d+\.\d+\.\d+)", out.stdout.split("Kustomize")[-1])
    assert found, out.stdout + out.stderr
    return found.group(1)


def by_name(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


@pytest.fixture(scope="module")
def kubectl_old() -> str:
    binary = old_kubectl()
    assert kustomize_version(binary).startswith("5.0."), "the test is meant for kustomize v5.0"
    return binary


def variants() -> Iterator[tuple[str, list[str]]]:
    """Every overlay as shipped, and with each optional component added where its docs say (before the always-on
    readers of vcot-run, gpu-count and shard-count)."""
    for overlay in ("k8s/overlays/gpu", "k8s/overlays/cpu-dev"):
        shipped = listed_components(overlay)
        yield overlay, shipped
        for name in OPTIONAL:
            if overlay.endswith("cpu-dev") and name not in ("demo", "spot"):
                continue
            component = f"../../components/{name}"
            readers = [i for i, entry in enumerate(shipped) if entry.endswith(("gpu-count", "shard-count"))]
            at = readers[0] if readers else len(shipped)
            yield overlay, [*shipped[:at], component, *shipped[at:]]
    # Kubeflow Trainer: always last (it turns the placed training Jobs into TrainJobs), alone and with what it changes.
    shipped = listed_components("k8s/overlays/gpu")
    at = shipped.index("../../components/gpu-count")
    for extra in ([], ["grpo", "multi-node", "kueue"], ["rgfn", "spot"]):
        added = [f"../../components/{name}" for name in extra]
        yield "k8s/overlays/gpu", [*shipped[:at], *added, *shipped[at:], "../../components/kubeflow-trainer"]


@pytest.mark.parametrize(("overlay", "components"), list(variants()), ids=lambda v: v if isinstance(v, str) else
                         "+".join(Path(c).name for c in v if "components/" in c) or "shipped")
def test_every_overlay_and_component_builds_the_same_with_kustomize_5_0(
    kubectl_old: str, overlay: str, components: list[str]
) -> None:
    with overlay_copy(overlay, components=components, settings=SETTINGS) as folder:
        old, new = render(folder, kubectl_old), render(folder)
    assert by_name(old) == by_name(new)
    # ...and what they agree on is the overlay's settings, not the base's
    (config_map,) = by_kind(new, "ConfigMap").values()
    assert {key: config_map["data"][key] for key in SETTINGS} == SETTINGS
    convert = by_kind(new, "Job")["vcot-convert"]["spec"]
    assert convert["completions"] == convert["parallelism"] == 3


def test_the_base_and_a_run_build_the_same_with_kustomize_5_0(kubectl_old: str, tmp_path: Path) -> None:
    assert by_name(render("k8s/base", kubectl_old)) == by_name(render("k8s/base"))
    with overlay_copy("k8s/overlays/gpu", components=[*listed_components("k8s/overlays/gpu"),
                                                      "../../components/multi-node"]) as overlay:
        folder = runs.write_run("t-old", overlay, REPO_ROOT / "k8s" / "runs", stages="train,evaluate", sources="r1",
                                settings=["TRAIN_RECIPE=s3://b/lr2.yaml"])
        try:
            old, new = render(folder, kubectl_old), render(folder)
        finally:
            shutil.rmtree(folder)
    assert by_name(old) == by_name(new)
    assert {name for kind, name in by_name(new) if kind == "Job"} == {"vcot-train-t-old", "vcot-evaluate-t-old",
                                                                       "vcot-chain-t-old"}


def test_the_docs_state_the_minimum_kubectl() -> None:
    text = (REPO_ROOT / "docs" / "k8s.md").read_text()
    assert f"kubectl {MINIMUM}" in text and "kustomize v5.0" in text


def test_a_run_of_the_trainer_overlay_builds_the_same_with_kustomize_5_0(kubectl_old: str) -> None:
    shipped = listed_components("k8s/overlays/gpu")
    with overlay_copy("k8s/overlays/gpu", components=[*shipped, "../../components/kubeflow-trainer"]) as overlay:
        folder = runs.write_run("t-old-kt", overlay, REPO_ROOT / "k8s" / "runs", stages="train,evaluate", sources="r1")
        try:
            old, new = render(folder, kubectl_old), render(folder)
        finally:
            shutil.rmtree(folder)
    assert by_name(old) == by_name(new)
    train = by_name(new)[("TrainJob", "vcot-train-t-old-kt")]
    assert train["spec"]["runtimeRef"]["name"] == "vcot-torch-t-old-kt"
    assert {"name": "TOKENIZED_RUN", "value": "r1"} in train["spec"]["trainer"]["env"]
