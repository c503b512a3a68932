"""The RGFN component (k8s/components/rgfn) turned on in the gpu overlay, as the overlay's comment says to: the chain
order with RGFN after train, tokenize writing the three-turn layout, evaluate scoring the RGFN adapter with BiN,
GPU placement and hardening, strict schema validation, and both command lines parsed by the stages themselves."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.k8s.test_k8s_manifests as manifest_checks  # a module, so pytest does not collect its tests twice
from tests.k8s.test_k8s_manifests import by_kind, chain_jobs, container_env, expand, render

REPO_ROOT = Path(__file__).resolve().parents[2]
OFF, ON = "  # - ../../components/rgfn\n", "  - ../../components/rgfn\n"


@pytest.fixture(scope="module")
def gpu_rgfn() -> Iterator[list[dict[str, Any]]]:
    """The gpu overlay with its commented-out rgfn line turned on (a copy under the git-ignored k8s/runs/)."""
    folder = REPO_ROOT / "k8s" / "runs" / f"test-rgfn-{uuid.uuid4().hex[:8]}"  # same depth: ../../ paths hold
    shutil.copytree(REPO_ROOT / "k8s" / "overlays" / "gpu", folder)
    try:
        text = (folder / "kustomization.yaml").read_text()
        assert OFF in text, "k8s/overlays/gpu/kustomization.yaml must show how to turn RGFN on"
        (folder / "kustomization.yaml").write_text(text.replace(OFF, ON))
        yield render(folder)
    finally:
        shutil.rmtree(folder)


def _container(docs: list[dict[str, Any]], job: str) -> dict[str, Any]:
    return by_kind(docs, "Job")[job]["spec"]["template"]["spec"]["containers"][0]


def test_rgfn_runs_after_train_on_the_three_turn_layout_and_evaluate_uses_bin(gpu_rgfn: list[dict[str, Any]]) -> None:
    from vcot.config import parse_config
    from vcot.evaluate.config import EvaluateConfig
    from vcot.tokenize import TokenizeConfig
    from vcot.train import TrainConfig
    from vcot.train.recipe import load_recipe

    stages = [job["metadata"]["labels"]["app.kubernetes.io/component"] for job in chain_jobs(gpu_rgfn)]
    assert stages == ["convert", "distill", "tokenize", "train", "rgfn", "evaluate"]
    (config_map,) = by_kind(gpu_rgfn, "ConfigMap").values()

    def parsed(cls: type, job: str) -> Any:
        template = by_kind(gpu_rgfn, "Job")[job]["spec"]["template"]
        env = container_env(template, config_map["data"], {"vcot-s3": {}, "vcot-teacher": {}}, namespace="vcot")
        return parse_config(cls, [expand(arg, env) for arg in _container(gpu_rgfn, job)["args"]], environ={})

    assert parsed(TokenizeConfig, "vcot-tokenize").layout == "rationale_turn"
    rgfn = parsed(TrainConfig, "vcot-rgfn")
    assert load_recipe(rgfn.recipe, rgfn.set).method == "gfn"
    assert rgfn.data.endswith("/default/distilled") and rgfn.init_adapter.endswith("/default/train/adapter")
    # The pointer follows RGFN only when its held-out answers are no worse than its SFT start (vcot.train.pointer).
    watched = load_recipe(rgfn.recipe, rgfn.set).generation_eval_samples
    assert not rgfn.force_pointer and (not rgfn.update_pointer or watched)
    evaluate = parsed(EvaluateConfig, "vcot-evaluate")
    assert evaluate.adapter.endswith("/default/rgfn/adapter") and evaluate.bin == 5


def test_rgfn_pod_is_placed_on_a_gpu_and_hardened(gpu_rgfn: list[dict[str, Any]]) -> None:
    pod = by_kind(gpu_rgfn, "Job")["vcot-rgfn"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1" and pod["nodeSelector"]
    assert pod["terminationGracePeriodSeconds"] >= 120, "time to save a checkpoint on SIGTERM"
    manifest_checks.test_every_pod_is_hardened_and_bounded({"gpu+rgfn": gpu_rgfn}, "gpu+rgfn")
    manifest_checks.test_every_variable_in_args_is_defined({"gpu+rgfn": gpu_rgfn}, "gpu+rgfn")


def test_gpu_overlay_with_rgfn_validates_strictly(gpu_rgfn: list[dict[str, Any]], tmp_path: Path) -> None:
    import yaml

    rendered = tmp_path / "gpu-rgfn.yaml"
    rendered.write_text(yaml.safe_dump_all(gpu_rgfn))
    validate = Path(sys.executable).parent / "kubernetes-validate"
    assert validate.exists(), "kubernetes-validate is a test dependency (pip install -e '.[test]')"
    out = subprocess.run(
        [str(validate), "--strict", "--quiet", "--kubernetes-version", "1.33", str(rendered)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
