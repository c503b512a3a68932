"""The GRPO component (k8s/components/grpo) turned on in the gpu overlay, as the overlay's comment says to.

The shipped overlays leave it off, so `make k8s-validate` renders it here: the chain order with GRPO after train,
its GPU placement and pod hardening, evaluate scoring the GRPO adapter, strict schema validation, and the Job's
command line parsed by vcot-train itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

import tests.k8s.test_k8s_manifests as manifest_checks  # a module, so pytest does not collect its tests twice
from tests.k8s.k8s_helpers import FakeCluster
from tests.k8s.test_k8s_manifests import by_kind, chain_jobs, container_env, expand, render
from vcot.cluster.chain import ChainConfig, follow_chain

REPO_ROOT = Path(__file__).resolve().parents[2]
OFF, ON = "  # - ../../components/grpo\n", "  - ../../components/grpo\n"
K8S_VERSIONS = ("1.30", "1.33")  # the oldest and newest make k8s-validate checks


@pytest.fixture(scope="module")
def gpu_grpo() -> Iterator[list[dict[str, Any]]]:
    """The gpu overlay with its commented-out grpo line turned on (a copy under the git-ignored k8s/runs/)."""
    folder = REPO_ROOT / "k8s" / "runs" / f"test-grpo-{uuid.uuid4().hex[:8]}"  # same depth: ../../ paths hold
    shutil.copytree(REPO_ROOT / "k8s" / "overlays" / "gpu", folder)
    try:
        text = (folder / "kustomization.yaml").read_text()
        assert OFF in text, "k8s/overlays/gpu/kustomization.yaml must show how to turn GRPO on"
        (folder / "kustomization.yaml").write_text(text.replace(OFF, ON))
        yield render(folder)
    finally:
        shutil.rmtree(folder)


def test_grpo_runs_after_train_and_evaluate_scores_its_adapter(gpu_grpo: list[dict[str, Any]]) -> None:
    jobs = chain_jobs(gpu_grpo)
    stages = [job["metadata"]["labels"]["app.kubernetes.io/component"] for job in jobs]
    assert stages == ["convert", "distill", "tokenize", "train", "grpo", "evaluate"]
    assert [bool(job["spec"].get("suspend")) for job in jobs] == [False] + [True] * 5
    grpo = by_kind(gpu_grpo, "Job")["vcot-grpo"]
    container = grpo["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["vcot-train"]
    assert "--init-adapter=$(RUN_ROOT)/$(TRAIN_RUN)/train/adapter" in container["args"]
    assert "--pointer=$(RUN_ROOT)/latest.json" in container["args"], "the re-evaluation follows the newest model"
    evaluate = by_kind(gpu_grpo, "Job")["vcot-evaluate"]["spec"]["template"]["spec"]["containers"][0]
    assert "--adapter=$(RUN_ROOT)/$(GRPO_RUN)/grpo/adapter" in evaluate["args"]
    assert {"name": "GRPO_RUN", "value": "$(RUN_ID)"} in evaluate["env"]
    # The chain controller releases them one at a time, GRPO after train.
    released = [client.V1Job.from_dict(job) for job in jobs]
    for job in released:
        job.metadata.annotations = job.metadata.annotations or {}
    cluster = FakeCluster(released)
    assert follow_chain(ChainConfig(run="default", namespace="ns", poll_seconds=1), cluster, cluster, sleep=cluster.advance) == 0
    assert cluster.resumed == [job["metadata"]["name"] for job in jobs[1:]]


def test_grpo_pod_is_placed_on_a_gpu_and_hardened(gpu_grpo: list[dict[str, Any]]) -> None:
    spec = by_kind(gpu_grpo, "Job")["vcot-grpo"]["spec"]
    pod = spec["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1" and pod["nodeSelector"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["containers"][0]["image"].startswith("ghcr.io/vcot/vcot-gpu:")
    assert pod["terminationGracePeriodSeconds"] >= 120, "time to save a checkpoint on SIGTERM"
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in spec[
        "podFailurePolicy"
    ]["rules"]
    assert spec["template"]["metadata"]["labels"]["vcot.dev/run"] == "default"
    manifest_checks.test_every_pod_is_hardened_and_bounded({"gpu+grpo": gpu_grpo}, "gpu+grpo")
    manifest_checks.test_every_variable_in_args_is_defined({"gpu+grpo": gpu_grpo}, "gpu+grpo")


def test_grpo_job_command_line_is_what_vcot_train_takes(gpu_grpo: list[dict[str, Any]]) -> None:
    from vcot.config import parse_config
    from vcot.train import TrainConfig
    from vcot.train.recipe import load_recipe

    (config_map,) = by_kind(gpu_grpo, "ConfigMap").values()
    template = by_kind(gpu_grpo, "Job")["vcot-grpo"]["spec"]["template"]
    env = container_env(template, config_map["data"], {"vcot-s3": {}}, namespace="vcot")
    config = parse_config(TrainConfig, [expand(arg, env) for arg in template["spec"]["containers"][0]["args"]], environ=env)
    assert load_recipe(config.recipe, config.set).method == "grpo"
    assert config.data.endswith("/default/distilled") and config.init_adapter.endswith("/default/train/adapter")
    assert config.update_pointer, "the overlay's own run moves the pointer to its GRPO adapter"
    # ... only when the GRPO adapter scores at least its SFT start on held-out answers (vcot.train.pointer): the
    # recipe watches them and nothing forces the move, so the CronJob re-evaluation keeps scoring the better model.
    assert not config.force_pointer and load_recipe(config.recipe, config.set).generation_eval_samples > 0


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_gpu_overlay_with_grpo_validates_strictly(gpu_grpo: list[dict[str, Any]], version: str, tmp_path: Path) -> None:
    import yaml

    rendered = tmp_path / "gpu-grpo.yaml"
    rendered.write_text(yaml.safe_dump_all(gpu_grpo))
    validate = Path(sys.executable).parent / "kubernetes-validate"
    assert validate.exists(), "kubernetes-validate is a test dependency (pip install -e '.[test]')"
    out = subprocess.run(
        [str(validate), "--strict", "--quiet", "--kubernetes-version", version, str(rendered)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_components_that_place_gpu_stages_include_grpo() -> None:
    """Spot and Kueue must treat the GRPO Job as they treat train: a GPU stage."""
    for path in ("k8s/overlays/gpu/placement/kustomization.yaml", "k8s/components/spot/kustomization.yaml",
                 "k8s/components/kueue/kustomization.yaml"):  # fmt: skip
        targets = re.findall(r"name: (vcot-\([a-z|]+\))", (REPO_ROOT / path).read_text())
        assert targets and all("grpo" in target for target in targets), (path, targets)
