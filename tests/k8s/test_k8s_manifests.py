"""The rendered Kubernetes manifests: pod hardening, chain order, GPU placement, and a local run.

Every overlay is rendered with ``kubectl kustomize`` (no API server needed). The local run takes the
rendered Jobs of ``k8s/overlays/cpu-dev`` in chain order and runs each container's command and args
with the environment Kubernetes would give it (ConfigMap values, Secret values from a local env file,
downward-API fields, ``$(VAR)`` expansion, ``JOB_COMPLETION_INDEX`` per index) against the real local
S3 server: it proves that the manifests' commands, flags and variable names match the entrypoints.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml
from kubernetes import client

from tests.k8s.k8s_helpers import FakeCluster
from vcot.cluster import runs
from vcot.cluster.chain import ChainConfig, follow_chain

REPO_ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ["k8s/base", "k8s/overlays/gpu", "k8s/overlays/cpu-dev", "k8s/overlays/gpu-72b"]
STAGE_ORDER = ["convert", "distill", "tokenize", "train", "evaluate"]
GPU_STAGES = {"vcot-train", "vcot-evaluate", "vcot-reevaluate"}
DEMO_CLIENT_LABEL = "vcot.dev/demo-client"
"""The label of the pods the demo's NetworkPolicy admits (k8s/components/demo): the user's, never the pipeline's."""
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
"""Set by the Job controller on every pod of a Job (Kubernetes 1.27+): the run id of sharded stages."""
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def render(overlay: str | Path, kubectl: str | None = None) -> list[dict[str, Any]]:
    """``kubectl kustomize overlay`` parsed; ``kubectl``: another binary than the one on PATH (an older version)."""
    kubectl = kubectl or shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize) is needed to render the manifests: install it (NOTES: it is on every machine)"
    out = subprocess.run([kubectl, "kustomize", str(overlay)], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def listed_components(overlay: str | Path) -> list[str]:
    """The components an overlay turns on, in order, as written in its kustomization.yaml."""
    return runs._listed((REPO_ROOT / overlay / "kustomization.yaml").read_text(), ["components"])


@contextmanager
def overlay_copy(
    overlay: str | Path, *, components: Sequence[str] | None = None, settings: dict[str, str] | None = None
) -> Iterator[Path]:
    """A copy of ``overlay`` under the git-ignored k8s/runs/ (same depth: its ``../../`` paths hold) with its
    ``components:`` list replaced by ``components`` (in that order) and ``settings`` set in its settings/run.env:
    an overlay as a user edits it."""
    folder = REPO_ROOT / "k8s" / "runs" / f"test-{Path(overlay).name}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(REPO_ROOT / overlay, folder)
    try:
        if components is not None:
            text = (folder / "kustomization.yaml").read_text()
            head, found, _ = text.partition("\ncomponents:\n")
            assert found, f"{overlay}/kustomization.yaml should end with its components"
            (folder / "kustomization.yaml").write_text(head + found + "".join(f"  - {c}\n" for c in components))
        if settings:
            env_file = folder / runs.SETTINGS if (folder / runs.SETTINGS).exists() else folder / "run.env"
            kept = [line for line in env_file.read_text().splitlines() if line.split("=", 1)[0] not in settings]
            env_file.write_text("".join(f"{line}\n" for line in kept + [f"{k}={v}" for k, v in settings.items()]))
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def pod_templates(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, pod template) of every workload: Jobs, the CronJob's job template, Deployments."""
    for doc in docs:
        if doc["kind"] in ("Job", "Deployment"):
            yield doc["metadata"]["name"], doc["spec"]["template"]
        elif doc["kind"] == "CronJob":
            yield doc["metadata"]["name"], doc["spec"]["jobTemplate"]["spec"]["template"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (``matchLabels`` and ``matchExpressions``) selects an object with ``labels``.

    >>> selects({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "DoesNotExist"}]}, {"a": "1"})
    True
    """
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator] is False:
            return False
    return True


def chain_jobs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stage Jobs in chain order (label vcot.dev/step)."""
    steps = [doc for doc in by_kind(docs, "Job").values() if "vcot.dev/step" in doc["metadata"]["labels"]]
    return sorted(steps, key=lambda doc: int(doc["metadata"]["labels"]["vcot.dev/step"]))


# --------------------------------------------------------------------------------------------------
# Static checks of every overlay
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_hardened_and_bounded(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    templates = list(pod_templates(rendered[overlay]))
    assert len(templates) >= 7
    for name, template in templates:
        spec = template["spec"]
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True, name
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        mounts_for_writes = {"/tmp"}
        for container in spec["containers"] + spec.get("initContainers", []):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), (name, bound)
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), (name, image)
            mounted = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
            assert mounts_for_writes <= mounted, (name, "read-only root: /tmp must be an emptyDir")
        if name.startswith("vcot-") and name != "vcot-chain":
            assert spec["automountServiceAccountToken"] is False, (name, "stage pods need no API token")
            assert "/cache" in {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}, name


def dockerfile_env(stage: str) -> dict[str, str]:
    """The ``ENV`` values a Dockerfile stage sets (its own ``ENV`` instructions, continuation lines joined)."""
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    body = text.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
    env: dict[str, str] = {}
    for line in body.splitlines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in line[4:].split() if "=" in pair)
    return env


@pytest.mark.parametrize("stage", ["cpu-deps", "gpu"])
def test_the_model_cache_is_on_a_writable_volume_of_the_pods(
    rendered: dict[str, list[dict[str, Any]]], stage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pods' root (their home included) is read-only: a model synced from storage must land on a volume. It
    went to ~/.cache, so every stage that loads a model failed on the cluster (tokenize first)."""
    from vcot.models.loading import cache_root

    env = dockerfile_env(stage)
    monkeypatch.delenv("VCOT_MODEL_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    for name in ("HOME", "XDG_CACHE_HOME", "VCOT_MODEL_CACHE"):
        if name in env:
            monkeypatch.setenv(name, env[name])
    cache = cache_root()
    assert not cache.is_relative_to(env["HOME"]), cache
    for name, template in pod_templates(rendered["k8s/overlays/gpu"]):
        if name.startswith("vcot-") and name != "vcot-chain":
            mounts = {m["mountPath"] for m in template["spec"]["containers"][0]["volumeMounts"]}
            assert any(cache.is_relative_to(mount) for mount in mounts), (name, cache, mounts)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_chain_order_suspension_and_failure_policy(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    jobs = chain_jobs(rendered[overlay])
    stages = [job["metadata"]["labels"]["app.kubernetes.io/component"] for job in jobs]
    expected = (["dev-seed"] if overlay.endswith("cpu-dev") else []) + STAGE_ORDER
    assert stages == expected
    # Only the head of the chain starts on apply; every later Job waits with no pod (so no GPU held).
    assert [bool(job["spec"].get("suspend")) for job in jobs] == [False] + [True] * (len(jobs) - 1)
    for job in by_kind(rendered[overlay], "Job").values():
        rules = job["spec"]["podFailurePolicy"]["rules"]
        assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
        # one run id for all: the chain controller follows it, the pods write under it
        assert job["spec"]["template"]["metadata"]["labels"]["vcot.dev/run"] == job["metadata"]["labels"]["vcot.dev/run"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_controller_releases_the_rendered_jobs_in_order(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """The rendered Jobs, as the API server would hold them, driven by the chain controller."""
    jobs = [client.V1Job.from_dict(job) for job in chain_jobs(rendered[overlay])]
    for job in jobs:
        job.metadata.annotations = job.metadata.annotations or {}
    cluster = FakeCluster(jobs)
    config = ChainConfig(run="default", namespace="ns", poll_seconds=1)
    assert follow_chain(config, cluster, cluster, sleep=cluster.advance) == 0
    assert cluster.resumed == [job.metadata.name for job in jobs[1:]]
    assert all(len(running) == 1 for running in cluster.running_at_once)


def test_chain_controller_has_least_privilege(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["k8s/overlays/gpu"]
    (role,) = by_kind(docs, "Role").values()
    assert role["rules"] == [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "patch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]
    (binding,) = by_kind(docs, "RoleBinding").values()
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "vcot-chain", "namespace": "vcot"}]
    chain = by_kind(docs, "Job")["vcot-chain"]["spec"]
    assert chain["template"]["spec"]["serviceAccountName"] == "vcot-chain"
    assert {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [2, 3]}} in chain[
        "podFailurePolicy"
    ]["rules"]
    assert not by_kind(docs, "Secret"), "the gpu overlay references Secrets by name, never ships values"


def test_gpu_overlay_places_only_train_and_evaluate_on_gpus(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["k8s/overlays/gpu"]
    for name, template in pod_templates(docs):
        spec = template["spec"]
        limits = spec["containers"][0]["resources"]["limits"]
        tolerations = spec.get("tolerations", [])
        if name in GPU_STAGES:
            assert limits["nvidia.com/gpu"] == "1", name
            assert spec["nodeSelector"], name
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations, name
            shm = [v for v in spec["volumes"] if v["name"] == "dshm"][0]
            assert shm["emptyDir"]["medium"] == "Memory", name
            assert "/dev/shm" in {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}, name
            assert spec["containers"][0]["image"].startswith("ghcr.io/vcot/vcot-gpu:"), name
        else:
            assert "nvidia.com/gpu" not in limits and not tolerations and "nodeSelector" not in spec, name
    train = by_kind(docs, "Job")["vcot-train"]["spec"]["template"]["spec"]
    assert train["terminationGracePeriodSeconds"] >= 120, "time to save a checkpoint on SIGTERM"


def test_cronjob_reevaluates_the_pointer_safely(rendered: dict[str, list[dict[str, Any]]]) -> None:
    cron = by_kind(rendered["k8s/overlays/gpu"], "CronJob")["vcot-reevaluate"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    assert cron["startingDeadlineSeconds"] > 0
    assert cron["successfulJobsHistoryLimit"] >= 1 and cron["failedJobsHistoryLimit"] >= 1
    container = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["vcot-evaluate"]
    assert "--pointer=$(RUN_ROOT)/latest.json" in container["args"]
    train_args = by_kind(rendered["k8s/overlays/gpu"], "Job")["vcot-train"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--pointer=$(RUN_ROOT)/latest.json" in train_args, "train must update the pointer the CronJob reads"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shard_counts_drive_pods_and_flags(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    (config_map,) = by_kind(docs, "ConfigMap").values()
    for stage, key in (("vcot-convert", "CONVERT_SHARDS"), ("vcot-distill", "DISTILL_SHARDS")):
        job = by_kind(docs, "Job")[stage]["spec"]
        assert job["completionMode"] == "Indexed"
        assert job["completions"] == job["parallelism"] == int(config_map["data"][key])
        assert f"--num-shards=$({key})" in job["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pods_of_a_sharded_job_share_its_uid_as_run_id(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """Only one Job's shards are merged: an --overwrite rerun is a new Job, a retried pod keeps the id (item 4)."""
    jobs = by_kind(rendered[overlay], "Job").values()
    indexed = [job for job in jobs if job["spec"].get("completionMode") == "Indexed"
               and job["metadata"]["name"] != "vcot-train"]  # multi-node train: indexed for its rendezvous  # fmt: skip
    assert {job["metadata"]["name"] for job in indexed} == {"vcot-convert", "vcot-distill"}
    for job in indexed:
        env = {entry["name"]: entry for entry in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["VCOT_RUN_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.labels['{JOB_UID_LABEL}']"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_in_args_is_defined(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """Kubernetes leaves an undefined $(VAR) as literal text: a typo would reach the stage as a path."""
    docs = rendered[overlay]
    (config_map,) = by_kind(docs, "ConfigMap").values()
    for name, template in pod_templates(docs):
        for container in template["spec"]["containers"]:
            defined = {env["name"] for env in container.get("env", [])}
            if any("configMapRef" in source for source in container.get("envFrom", [])):
                defined |= set(config_map["data"])
            used = {var for arg in container.get("command", []) + container.get("args", []) for var in _VAR.findall(arg)}
            assert used <= defined, (name, used - defined)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_match_the_pods_they_are_meant_for(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """What schema validation and checkov miss: an API server rejects a workload whose selector misses its template,
    and a Service or NetworkPolicy that selects no pod (or another app's pods) silently does nothing (or harm)."""
    docs = rendered[overlay]
    pods = {name: template["metadata"].get("labels", {}) for name, template in pod_templates(docs)}
    for doc in docs:
        selector = doc["spec"].get("selector") if doc["kind"] in ("Deployment", "StatefulSet", "Job") else None
        if selector:  # a Job's is generated by the API server, unless it sets one
            assert selects(selector, doc["spec"]["template"]["metadata"]["labels"]), doc["metadata"]["name"]
    targets = [(name, {"matchLabels": doc["spec"]["selector"]}, doc) for name, doc in by_kind(docs, "Service").items()]
    targets += [(name, doc["spec"]["podSelector"], doc) for name, doc in by_kind(docs, "NetworkPolicy").items()]
    for name, selector, doc in targets:
        app = doc["metadata"]["labels"]["app.kubernetes.io/name"]
        selected = {pod: labels for pod, labels in pods.items() if selects(selector, labels)}
        assert selected, (name, "selects no pod")
        assert all(labels.get("app.kubernetes.io/name") == app for labels in selected.values()), (name, selected)
        peers = [peer for rule in doc["spec"].get("ingress", []) for peer in rule.get("from", [])]
        for peer in peers:
            client = DEMO_CLIENT_LABEL in (peer.get("podSelector") or {}).get("matchLabels", {})
            if "podSelector" in peer and "namespaceSelector" not in peer and not client:  # a client is the user's
                assert any(selects(peer["podSelector"], labels) for labels in pods.values()), (name, peer)


LAPTOP_NODE = {"cpu": 4.0, "memory": 8 * 2**30}
"""What a laptop's kind or minikube node may have: a dev pod must fit in it (requests in half of it)."""


def quantity(value: str | int) -> float:
    """A Kubernetes quantity as a number (CPUs or bytes).

    >>> quantity("250m"), quantity("4Gi"), quantity("2")
    (0.25, 4294967296.0, 2.0)
    """
    text = str(value)
    for suffix, factor in (("m", 1e-3), ("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("Ti", 2**40)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def test_dev_pods_fit_a_laptop_node_and_never_pull_local_images(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name, template in pod_templates(rendered["k8s/overlays/cpu-dev"]):
        for container in template["spec"]["containers"]:
            if container["image"].startswith("localhost/"):  # loaded into the node (kind load): a pull fails
                assert container["imagePullPolicy"] in ("IfNotPresent", "Never"), name
            for resource, node in LAPTOP_NODE.items():
                assert quantity(container["resources"]["requests"][resource]) <= node / 2, (name, resource)
                assert quantity(container["resources"]["limits"][resource]) <= node, (name, resource)
            if name in ("vcot-train", "vcot-evaluate", "vcot-reevaluate"):  # torch: a thread per node core otherwise
                threads = {e["name"]: e.get("value") for e in container.get("env", [])}.get("VCOT_THREADS")
                assert threads == str(int(quantity(container["resources"]["limits"]["cpu"]))), (name, threads)


def test_a_second_run_gets_its_own_names_and_run_id(tmp_path: Path) -> None:
    runs_dir = REPO_ROOT / "k8s" / "runs"
    folder = runs.write_run("t-exp2", REPO_ROOT / "k8s/overlays/gpu", runs_dir)
    try:
        docs = render(folder)
    finally:
        shutil.rmtree(folder)
    kinds = {doc["kind"] for doc in docs}
    assert not kinds & {"Namespace", "CronJob"}, "shared objects stay with the first apply"
    jobs = chain_jobs(docs)
    assert [job["metadata"]["name"] for job in jobs] == [f"vcot-{stage}-t-exp2" for stage in STAGE_ORDER]
    for job in by_kind(docs, "Job").values():
        assert job["metadata"]["labels"]["vcot.dev/run"] == "t-exp2"
        assert job["spec"]["template"]["metadata"]["labels"]["vcot.dev/run"] == "t-exp2"
    (binding,) = by_kind(docs, "RoleBinding").values()
    assert binding["subjects"][0]["name"] == "vcot-chain-t-exp2"
    with pytest.raises(runs.VcotError):
        runs.write_run("Bad_Id", REPO_ROOT / "k8s/overlays/gpu", tmp_path)


# --------------------------------------------------------------------------------------------------
# A local run of the rendered manifests
# --------------------------------------------------------------------------------------------------


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ escapes, undefined ones stay as is.

    >>> expand("$(A)/x/$(B)/$$(A)", {"A": "s3://b"})
    's3://b/x/$(B)/$(A)'
    """
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (what `kubectl create secret generic --from-env-file` reads)."""
    pairs = [line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {key.strip(): value for key, value in pairs}


def container_env(
    template: dict[str, Any], config_map: dict[str, str], secrets: dict[str, dict[str, str]], namespace: str
) -> dict[str, str]:
    """The environment Kubernetes gives the pod's main container: envFrom, then env (in order, expanded)."""
    container = template["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_map)
        else:
            env.update(secrets[re.sub(r"-[a-z0-9]{10}$", "", source["secretRef"]["name"])])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = expand(entry["value"], env)
            continue
        ref = entry["valueFrom"]
        if "fieldRef" in ref:
            path = ref["fieldRef"]["fieldPath"]
            label = re.fullmatch(r"metadata\.labels\['(.+)'\]", path)
            labels = {**template["metadata"]["labels"], JOB_UID_LABEL: "job-uid-1"}  # the Job controller adds it
            env[entry["name"]] = labels[label.group(1)] if label else namespace
        elif "secretKeyRef" in ref:
            secret = re.sub(r"-[a-z0-9]{10}$", "", ref["secretKeyRef"]["name"])
            env[entry["name"]] = secrets[secret][ref["secretKeyRef"]["key"]]
        else:
            env[entry["name"]] = config_map[ref["configMapKeyRef"]["key"]]
    return env


def local_command(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The container's command with this checkout's code: a console script becomes its module's main()."""
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    command = [expand(part, env) for part in container["command"]]
    args = [expand(part, env) for part in container.get("args", [])]
    if command[0] == "python":
        return [sys.executable, *command[1:], *args]
    assert command[0] in scripts, f"{command[0]} is not a console script in pyproject.toml"
    module, function = scripts[command[0]].split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())", *command[1:], *args]


def run_pod(name: str, command: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    base = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    scratch = tmp_path / "pod" / name
    scratch.mkdir(parents=True, exist_ok=True)
    # the pod's emptyDirs: /tmp and /cache
    base.update(TMPDIR=str(scratch), XDG_CACHE_HOME=str(scratch / "cache"), HF_HOME=str(scratch / "cache" / "hf"))
    return subprocess.run(
        command, env={**base, **env}, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False
    )


# Local-run settings: the cluster's MinIO endpoint becomes the local server, and the tiny model trains a
# few steps and generates short answers so the whole chain stays well under two minutes on 2 cores.
FAST = {
    "train": {"VCOT_SET": "max_steps=4,eval_steps=2,save_steps=2,logging_steps=2"},
    "evaluate": {"VCOT_MAX_NEW_TOKENS": "24", "VCOT_MAX_SAMPLES": "8"},
    "reevaluate": {"VCOT_MAX_NEW_TOKENS": "24", "VCOT_MAX_SAMPLES": "8"},
}


def run_rendered_pods(
    docs: list[dict[str, Any]], overrides: dict[str, str], secrets: dict[str, dict[str, str]], tmp_path: Path
) -> list[str]:
    """Run every chained Job's pods in chain order (then the CronJob's, if any) as Kubernetes would; their stages."""
    (config_map_doc,) = by_kind(docs, "ConfigMap").values()
    config_map = {**config_map_doc["data"], **overrides}
    pods = [(job["metadata"]["labels"]["app.kubernetes.io/component"], job["spec"]) for job in chain_jobs(docs)]
    pods += [("reevaluate", cron["spec"]["jobTemplate"]["spec"]) for cron in by_kind(docs, "CronJob").values()]
    ran: list[str] = []
    for stage, job_spec in pods:
        template = job_spec["template"]
        indexes = range(job_spec.get("completions", 1)) if job_spec.get("completionMode") == "Indexed" else [None]
        for index in indexes:
            env = container_env(template, config_map, secrets, namespace="vcot-dev")
            env.update(FAST.get(stage, {}))
            if index is not None:
                env["JOB_COMPLETION_INDEX"] = str(index)
            command = local_command(template["spec"]["containers"][0], env)
            result = run_pod(f"{stage}-{index}", command, env, tmp_path)
            assert result.returncode == 0, f"{stage} (index {index}) failed:\n{' '.join(command[3:])}\n{result.stderr[-4000:]}"
        ran.append(stage)
    return ran


@pytest.mark.integration
def test_local_run_of_the_rendered_chain(real_s3: str, tmp_path: Path) -> None:
    """The cpu-dev overlay's chain, the re-evaluation, then a train-only run (make k8s-run) on its tokenized data."""
    run_root = f"{real_s3}/runs"
    overrides = {
        "AWS_ENDPOINT_URL_S3": os.environ["AWS_ENDPOINT_URL_S3"],
        "RUN_ROOT": run_root,
        "SOURCE_INPUT": f"{real_s3}/datasets/synthetic",
        "SOURCE_IMAGES": f"{real_s3}/datasets/synthetic/images",
        "BASE_MODEL": f"{real_s3}/models/tiny-qwen2.5-vl",
        "REEVAL_DATA": f"{run_root}/default/distilled",
    }
    # The Secrets, from a local env file as `kubectl create secret generic --from-env-file` would read it.
    secrets_file = tmp_path / "secrets.env"
    secrets_file.write_text(
        f"AWS_ACCESS_KEY_ID={os.environ['AWS_ACCESS_KEY_ID']}\nAWS_SECRET_ACCESS_KEY={os.environ['AWS_SECRET_ACCESS_KEY']}\n"
        "OPENAI_API_KEY=unused-no-record-needs-a-teacher\n"
    )
    secret_values = read_env_file(secrets_file)
    secrets = {
        "vcot-s3": {k: secret_values[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
        "vcot-teacher": {"OPENAI_API_KEY": secret_values["OPENAI_API_KEY"]},
    }
    ran = run_rendered_pods(render("k8s/overlays/cpu-dev"), overrides, secrets, tmp_path)

    from vcot.io import manifest, storage
    run = f"{run_root}/default"
    expected = {"records": "convert", "distilled": "distill", "tokenized": "tokenize", "train": "train", "eval": "evaluate"}
    assert ran == ["dev-seed", *STAGE_ORDER, "reevaluate"]
    for folder, stage in expected.items():
        assert manifest.read_manifest(f"{run}/{folder}")["stage"] == stage
    pointer = storage.read_json(f"{run_root}/latest.json")
    assert pointer["run"].rstrip("/") == f"{run}/train"
    assert storage.list_uris(f"{run_root}/_teacher_cache/ledger"), "distill keeps its ledger in the shared cache"

    # One-stage rerun: a train-only run of the same overlay on the default run's tokenized data and records.
    folder = runs.write_run(
        "t-rerun", REPO_ROOT / "k8s/overlays/cpu-dev", tmp_path / "runs", stages="train,evaluate", sources="default"
    )
    run_secrets = {f"{name}-t-rerun": values for name, values in secrets.items()}  # cpu-dev generates them per run
    assert run_rendered_pods(render(folder), overrides, run_secrets, tmp_path) == ["train", "evaluate"]
    trained = manifest.read_manifest(f"{run_root}/t-rerun/train")
    assert trained["inputs"][0]["uri"] == f"{run}/tokenized"  # read, not tokenized again
    evaluated = manifest.read_manifest(f"{run_root}/t-rerun/eval")
    assert evaluated["config"]["adapter"] == f"{run_root}/t-rerun/train/adapter"
    assert evaluated["inputs"][0]["uri"] == f"{run}/distilled"
    assert not storage.exists(f"{run_root}/t-rerun/tokenized")
    assert storage.read_json(f"{run_root}/latest.json") == pointer, "a trial run leaves the production model's pointer"
