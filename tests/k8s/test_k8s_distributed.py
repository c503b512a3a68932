"""The distributed training components (k8s/components/multi-gpu, multi-node) on the gpu overlay, as its comment
says to turn them on: GPUs per pod and pods from run.env, torchrun's command, and for multi-node the Indexed Job,
the headless Service's selector, the pods' subdomain and the rendezvous address agreeing (also under a run's
names), the chain (suspended) and preemption handling kept, strict schemas and the pod hardening rules."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import tests.k8s.test_k8s_manifests as manifest_checks  # a module, so pytest does not collect its tests twice
from tests.k8s.test_k8s_manifests import by_kind, expand, listed_components, overlay_copy, render, selects
from tests.train.test_distributed import RESTARTABLE
from vcot.cluster import runs

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_VERSIONS = ("1.30", "1.33")
SETTINGS = {"GPUS_PER_NODE": "8", "TRAIN_NODES": "3"}


def gpu_overlay_with(component: str, *, run_id: str = "", also: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The gpu overlay with ``component``'s commented-out line turned on (and the ``also`` ones), SETTINGS in its
    settings/run.env (a copy under the git-ignored k8s/runs/); with ``run_id``, rendered as `make k8s-run` names a
    run."""
    text = (REPO_ROOT / "k8s" / "overlays" / "gpu" / "kustomization.yaml").read_text()
    for name in (component, *also):
        off = f"  # - ../../components/{name}\n"
        assert off in text, f"k8s/overlays/gpu/kustomization.yaml must show how to turn {name} on"
    shipped = listed_components("k8s/overlays/gpu")
    chosen = [f"../../components/{name}" for name in (*also, component)]
    with overlay_copy("k8s/overlays/gpu", components=[shipped[0], *chosen, *shipped[1:]], settings=SETTINGS) as folder:
        if not run_id:
            return render(folder)
        run_folder = runs.write_run(run_id, folder, REPO_ROOT / "k8s" / "runs")
        try:
            return render(run_folder)
        finally:
            shutil.rmtree(run_folder)


@pytest.fixture(scope="module")
def multi_gpu() -> list[dict[str, Any]]:
    return gpu_overlay_with("multi-gpu")


@pytest.fixture(scope="module")
def multi_node() -> list[dict[str, Any]]:
    return gpu_overlay_with("multi-node")


def train_container(docs: list[dict[str, Any]], job: str = "vcot-train") -> dict[str, Any]:
    return by_kind(docs, "Job")[job]["spec"]["template"]["spec"]["containers"][0]


def env_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    (config_map,) = by_kind(docs, "ConfigMap").values()
    return dict(config_map["data"])


def test_the_gpu_overlay_requests_gpus_per_node_for_train_and_one_for_evaluate() -> None:
    docs = render(REPO_ROOT / "k8s" / "overlays" / "gpu")
    assert env_of(docs)["GPUS_PER_NODE"] == "1"
    assert train_container(docs)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert train_container(docs)["command"] == ["vcot-train"]  # no torchrun unless a component asks


def test_multi_gpu_runs_torchrun_with_one_process_per_requested_gpu(multi_gpu: list[dict[str, Any]]) -> None:
    container = train_container(multi_gpu)
    env = env_of(multi_gpu)
    command = [expand(part, env) for part in container["command"]]
    assert command[0] == "vcot-torchrun" and "--standalone" in command and command[-2:] == ["--no-python", "vcot-train"]
    assert "--nproc-per-node=8" in command
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "8"
    assert train_container(multi_gpu, "vcot-evaluate")["resources"]["limits"]["nvidia.com/gpu"] == "1"
    timeout = int(next(part for part in command if part.startswith("--shutdown-timeout=")).split("=")[1])
    pod = by_kind(multi_gpu, "Job")["vcot-train"]["spec"]["template"]["spec"]
    assert timeout < pod["terminationGracePeriodSeconds"], "torchrun must not kill the ranks before the checkpoint"


def rendezvous(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The train Job, its headless Service, and the rendezvous endpoint as a pod of the Job expands it."""
    job = next(doc for name, doc in by_kind(docs, "Job").items() if name.startswith("vcot-train"))
    container = job["spec"]["template"]["spec"]["containers"][0]
    (job_name_env,) = [env for env in container["env"] if env["name"] == "JOB_NAME"]
    assert job_name_env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/job-name']"
    pod_env = {**env_of(docs), "JOB_NAME": job["metadata"]["name"], "RUN_ID": "default"}  # the Job controller's label
    (endpoint,) = [expand(p, pod_env) for p in container["command"] if p.startswith("--rdzv-endpoint=")]
    services = [doc for doc in by_kind(docs, "Service").values() if doc["spec"].get("clusterIP") == "None"]
    (service,) = services
    return job, service, endpoint.split("=", 1)[1]


@pytest.mark.parametrize("run_id", ["", "t-exp2"])
def test_indexed_job_headless_service_and_rendezvous_agree(multi_node: list[dict[str, Any]], run_id: str) -> None:
    docs = gpu_overlay_with("multi-node", run_id=run_id) if run_id else multi_node
    job, service, endpoint = rendezvous(docs)
    spec, pod = job["spec"], job["spec"]["template"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 3
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]  # pods get <job>-<index>.<service>
    assert selects({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"])
    assert endpoint == f"{job['metadata']['name']}-0.{service['metadata']['name']}:29400"  # index 0's stable name
    assert service["spec"]["publishNotReadyAddresses"] is True  # resolvable before the pods are ready
    command = [expand(part, env_of(docs)) for part in pod["spec"]["containers"][0]["command"]]
    assert {"--nnodes=3", "--nproc-per-node=8", "--rdzv-backend=c10d"} <= set(command)
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    if run_id:
        assert job["metadata"]["name"] == f"vcot-train-{run_id}"


def test_multi_node_keeps_the_chain_and_preemption_handling(multi_node: list[dict[str, Any]]) -> None:
    spec = by_kind(multi_node, "Job")["vcot-train"]["spec"]
    assert spec["suspend"] is True  # released by the chain controller once tokenize completed
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in spec[
        "podFailurePolicy"
    ]["rules"]
    peers = by_kind(multi_node, "NetworkPolicy")["vcot-train-peers"]
    labels = spec["template"]["metadata"]["labels"]
    assert selects(peers["spec"]["podSelector"], labels)
    assert selects(peers["spec"]["ingress"][0]["from"][0]["podSelector"], labels)


@pytest.mark.parametrize("component", ["multi-gpu", "multi-node"])
def test_components_pass_the_manifest_rules(
    component: str, multi_gpu: list[dict[str, Any]], multi_node: list[dict[str, Any]]
) -> None:
    docs = {"multi-gpu": multi_gpu, "multi-node": multi_node}[component]
    manifest_checks.test_every_pod_is_hardened_and_bounded({component: docs}, component)
    manifest_checks.test_every_variable_in_args_is_defined({component: docs}, component)
    manifest_checks.test_selectors_match_the_pods_they_are_meant_for({component: docs}, component)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("component", ["multi-gpu", "multi-node"])
def test_components_validate_strictly(
    component: str, version: str, multi_gpu: list[dict[str, Any]], multi_node: list[dict[str, Any]], tmp_path: Path
) -> None:
    import yaml

    rendered = tmp_path / f"{component}.yaml"
    rendered.write_text(yaml.safe_dump_all({"multi-gpu": multi_gpu, "multi-node": multi_node}[component]))
    validate = Path(sys.executable).parent / "kubernetes-validate"
    out = subprocess.run(
        [str(validate), "--strict", "--quiet", "--kubernetes-version", version, str(rendered)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("method", ["grpo", "rgfn"])
@pytest.mark.parametrize("component", ["multi-gpu", "multi-node"])
def test_every_gpu_a_pod_requests_has_a_process(component: str, method: str) -> None:
    """A pod that requests N GPUs runs N processes (torchrun --nproc-per-node=N), else N-1 GPUs sit idle all run.
    GRPO and RGFN run data-parallel under torchrun in one pod, GPUS_PER_NODE processes, also beside a multi-node train
    (their Jobs stay one pod: not Indexed, no rendezvous across pods); docs/k8s.md."""
    docs = gpu_overlay_with(component, also=(method,))
    env = env_of(docs)
    for name, job in by_kind(docs, "Job").items():
        container = job["spec"]["template"]["spec"]["containers"][0]
        gpus = int(container["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
        command = [expand(part, env) for part in container["command"]]
        processes = next((int(p.split("=")[1]) for p in command if p.startswith("--nproc-per-node=")), 1)
        assert gpus in (0, processes), (name, gpus, command)
    job = by_kind(docs, "Job")[f"vcot-{method}"]
    command = [expand(part, env) for part in job["spec"]["template"]["spec"]["containers"][0]["command"]]
    assert command[0] == "vcot-torchrun" and "--standalone" in command and command[-2:] == ["--no-python", "vcot-train"]
    assert f"--nproc-per-node={SETTINGS['GPUS_PER_NODE']}" in command
    assert "completionMode" not in job["spec"] and job["spec"].get("parallelism", 1) == 1
    timeout = int(next(part for part in command if part.startswith("--shutdown-timeout=")).split("=")[1])
    assert timeout < job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert train_container(docs)["resources"]["limits"]["nvidia.com/gpu"] == SETTINGS["GPUS_PER_NODE"]
    manifest_checks.test_every_pod_is_hardened_and_bounded({component: docs}, component)
    manifest_checks.test_every_variable_in_args_is_defined({component: docs}, component)


def test_without_a_distributed_component_grpo_runs_one_process_on_one_gpu() -> None:
    shipped = listed_components("k8s/overlays/gpu")
    with overlay_copy("k8s/overlays/gpu", components=[shipped[0], "../../components/grpo", *shipped[1:]]) as folder:
        docs = render(folder)  # the shipped settings: GPUS_PER_NODE=1
    grpo = train_container(docs, "vcot-grpo")
    assert grpo["command"] == ["vcot-train"] and grpo["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_each_runs_headless_service_selects_its_own_train_pods_only(multi_node: list[dict[str, Any]]) -> None:
    """Two runs' train Jobs live in one namespace: a Service selecting every run's train pods would publish the other
    run's pods under this run's rendezvous name (and the other way round), mixing two trainings' ranks."""
    other = gpu_overlay_with("multi-node", run_id="t-exp2")
    _, service, _ = rendezvous(multi_node)
    job, run_service, _ = rendezvous(other)
    pods = {"default": by_kind(multi_node, "Job")["vcot-train"]["spec"]["template"]["metadata"]["labels"],
            "t-exp2": job["spec"]["template"]["metadata"]["labels"]}
    assert pods["default"]["vcot.dev/run"] == "default" and pods["t-exp2"]["vcot.dev/run"] == "t-exp2"
    for run, selector in (("default", service["spec"]["selector"]), ("t-exp2", run_service["spec"]["selector"])):
        assert [name for name, labels in pods.items() if selects({"matchLabels": selector}, labels)] == [run]


def test_multi_node_restarts_every_rank_together_and_a_restart_cannot_hang(multi_node: list[dict[str, Any]]) -> None:
    """torchrun's restarts, as tests/train/test_distributed.py runs them (a rank killed on one node: every rank
    restarts and resumes together), with the setting without which a restart could wait forever."""
    container = train_container(multi_node)
    assert "--max-restarts=3" in container["command"]
    name, value = RESTARTABLE
    assert {"name": name, "value": value} in container["env"]
