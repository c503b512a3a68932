"""The demo's Kustomize component (k8s/components/demo), added to the gpu overlay as a user would: it passes the
rules every overlay passes (tests/k8s/test_k8s_manifests.py), strict schemas 1.30-1.33, sits on the GPU pool, is
reachable through its Service and NetworkPolicy, and its command and flags are ``vcot-demo``'s. Off by default."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib

import tests.k8s.test_k8s_manifests as rules
from tests.k8s.test_k8s_manifests import REPO_ROOT, by_kind, expand, pod_templates, render, selects
from vcot.config import parse_config
from vcot.demo.config import DemoConfig

VARIANT = "gpu+demo"


def overlay_with_demo(folder: Path, overlay_name: str = "gpu") -> Path:
    """A copy of k8s/overlays/<overlay_name> with the demo component added last: what docs/demo.md tells users to do."""
    overlay = folder / f"{overlay_name}-demo"
    shutil.copytree(REPO_ROOT / "k8s/overlays" / overlay_name, overlay)
    k8s = os.path.relpath(REPO_ROOT / "k8s", overlay)
    text = (overlay / "kustomization.yaml").read_text().replace("../../", f"{k8s}/")
    last = text.rstrip().splitlines()[-1].lstrip()
    assert last.startswith(("- ", "# - ")), "the gpu overlay should end with its components"
    (overlay / "kustomization.yaml").write_text(text.rstrip() + f"\n  - {k8s}/components/demo\n")
    return overlay


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render(overlay_with_demo(tmp_path_factory.mktemp("k8s")))


def test_the_demo_passes_every_overlay_rule(docs: list[dict[str, Any]]) -> None:
    rendered = {VARIANT: docs}
    rules.test_every_pod_is_hardened_and_bounded(rendered, VARIANT)
    rules.test_every_variable_in_args_is_defined(rendered, VARIANT)
    rules.test_selectors_match_the_pods_they_are_meant_for(rendered, VARIANT)
    rules.test_chain_order_suspension_and_failure_policy(rendered, VARIANT)  # the pipeline is unchanged


def test_the_demo_is_off_by_default() -> None:
    for overlay in rules.OVERLAYS:
        assert "vcot-demo" not in by_kind(render(overlay), "Deployment"), overlay


def test_the_demo_serves_a_trained_adapter_on_the_gpu_pool(docs: list[dict[str, Any]]) -> None:
    deployment = by_kind(docs, "Deployment")["vcot-demo"]
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1" and spec["nodeSelector"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert container["image"].startswith("ghcr.io/vcot/vcot-gpu:") and deployment["metadata"]["namespace"] == "vcot"
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two pods wanting one GPU
    # The command is the console script and its flags parse as DemoConfig, with the ConfigMap's values.
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[container["command"][0]] == "jobs.demo:main"
    (config_map,) = by_kind(docs, "ConfigMap").values()
    config = parse_config(DemoConfig, [expand(arg, config_map["data"]) for arg in container["args"]])
    assert config.adapter == f"{config_map['data']['RUN_ROOT']}/default/train/adapter"  # where the chain's train writes
    train_args = by_kind(docs, "Job")["vcot-train"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--output=$(RUN_ROOT)/$(RUN_ID)/train" in train_args
    assert config.model == config_map["data"]["BASE_MODEL"] and config.host == "0.0.0.0"
    probes = [container[name] for name in ("startupProbe", "readinessProbe", "livenessProbe")]
    assert {probe["httpGet"]["port"] for probe in probes} == {"http"}
    assert container["ports"] == [{"name": "http", "containerPort": config.port}]


def test_the_page_is_reachable_through_its_service_and_network_policy(docs: list[dict[str, Any]]) -> None:
    labels = by_kind(docs, "Deployment")["vcot-demo"]["spec"]["template"]["metadata"]["labels"]
    service = by_kind(docs, "Service")["vcot-demo"]["spec"]
    assert selects({"matchLabels": service["selector"]}, labels) and service["ports"][0]["targetPort"] == "http"
    policies = by_kind(docs, "NetworkPolicy")
    assert selects(policies["vcot-deny-ingress"]["spec"]["podSelector"], labels)  # denied by the base...
    allow = policies["vcot-demo-ingress"]["spec"]
    assert selects(allow["podSelector"], labels)  # ...but for its page port, from a labelled client of its namespace
    assert allow["ingress"] == [{"from": [{"podSelector": {"matchLabels": {rules.DEMO_CLIENT_LABEL: "true"}}}],
                                 "ports": [{"port": 7860, "protocol": "TCP"}]}]
    clients = [name for name, pod in pod_templates(docs) if rules.DEMO_CLIENT_LABEL in pod["metadata"]["labels"]]
    assert clients == [], "no pod of the pipeline is a client of the demo"
    assert f"{rules.DEMO_CLIENT_LABEL}=true" in (REPO_ROOT / "docs" / "demo.md").read_text()
    opened = [name for name, pod in pod_templates(docs) if selects(allow["podSelector"], pod["metadata"]["labels"])]
    assert opened == ["vcot-demo"], "only the demo pod accepts connections"


@pytest.mark.integration
def test_the_demo_validates_against_strict_schemas(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    validator = Path(sys.executable).parent / "kubernetes-validate"
    rendered = tmp_path / "gpu-demo.yaml"
    rendered.write_text(subprocess.run(["kubectl", "kustomize", str(overlay_with_demo(tmp_path))], check=True,
                                       capture_output=True, text=True).stdout)
    for version in ("1.30", "1.31", "1.32", "1.33"):
        result = subprocess.run([str(validator), "--strict", "--quiet", "--kubernetes-version", version, str(rendered)],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, (version, result.stdout + result.stderr)


def test_on_the_cpu_dev_overlay_the_demo_runs_on_cpu(tmp_path: Path) -> None:
    """A laptop cluster has no GPU: there the demo serves the tiny model on CPU, sized like the dev pods, from the
    locally loaded cpu-train image (which carries the demo extra), never pulled."""
    docs = render(overlay_with_demo(tmp_path, "cpu-dev"))
    rendered = {"k8s/overlays/cpu-dev": docs}
    rules.test_every_pod_is_hardened_and_bounded(rendered, "k8s/overlays/cpu-dev")
    rules.test_selectors_match_the_pods_they_are_meant_for(rendered, "k8s/overlays/cpu-dev")
    rules.test_dev_pods_fit_a_laptop_node_and_never_pull_local_images(rendered)
    spec = by_kind(docs, "Deployment")["vcot-demo"]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    for bound in ("requests", "limits"):
        assert "nvidia.com/gpu" not in container["resources"][bound], container["resources"]
    assert "nodeSelector" not in spec and not spec.get("tolerations")
    assert container["image"].startswith("localhost/vcot-cpu-train:")
    env = {entry["name"]: entry.get("value") for entry in container.get("env", [])}
    assert env["VCOT_THREADS"] == container["resources"]["limits"]["cpu"]  # torch would take the node's cores
    stage = (REPO_ROOT / "Dockerfile").read_text().split("AS cpu-train", 1)[1].split("\nFROM ", 1)[0]
    assert "['demo']" in stage, "the cpu-train image must carry gradio for vcot-demo"
