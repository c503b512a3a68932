"""Kubeflow Trainer (k8s/components/kubeflow-trainer): the training stages as TrainJobs of a TrainingRuntime.

The gpu overlay is rendered with the component last, alone and with the components users combine it with. Every
TrainJob and TrainingRuntime is validated strictly against the Trainer's own CRD schemas (v2.3.0, kept in
tests/k8s/schemas with their source), the rest against Kubernetes' schemas, and the checks an API server and the
Trainer's admission make are repeated here. The pod the Trainer makes for each TrainJob (the runtime's pod with the
TrainJob's trainer and runtime patch applied, as Trainer v2.2+ does) must be the pod the plain Job would have run.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes import client

import tests.k8s.test_k8s_manifests as manifest_checks  # a module, so pytest does not collect its tests twice
from tests.k8s.k8s_helpers import FakeCluster
from tests.k8s.test_k8s_manifests import by_kind, listed_components, overlay_copy, render
from vcot.cluster import runs
from vcot.cluster.chain import ChainConfig, follow_chain
from vcot.config import parse_config
from vcot.train.distributed import free_port

SCHEMAS = Path(__file__).parent / "schemas" / "kubeflow-trainer-v2.3.0"
TRAINER = "../../components/kubeflow-trainer"
ANCESTOR = "trainer.kubeflow.org/trainjob-ancestor-step"
PET_ENV = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
"""Set by the Trainer's torch plugin; a TrainJob that sets one is refused by its admission webhook."""
SETTINGS = {"TRAIN_NODES": "2", "GPUS_PER_NODE": "4"}
VARIANTS = {
    "alone": [],
    "kueue": ["kueue"],
    "multi-node": ["multi-node"],
    "grpo": ["grpo"],
    "rgfn": ["rgfn"],
    "grpo-spot-kueue-multi-node": ["grpo", "spot", "kueue", "kueue-topology", "multi-node"],
}
"""The components added (where the gpu overlay's comments show them: before gpu-count) beside kubeflow-trainer, last."""
JOB_PODS = manifest_checks.pod_templates
"""The pods of the Jobs, CronJobs and Deployments (test_k8s_manifests), before this module adds the TrainJobs'."""


def with_trainer(extra: list[str]) -> list[str]:
    shipped = listed_components("k8s/overlays/gpu")
    at = shipped.index("../../components/gpu-count")
    return [*shipped[:at], *(f"../../components/{name}" for name in extra), *shipped[at:], TRAINER]


@cache
def rendered(variant: str, trainer: bool = True) -> list[dict[str, Any]]:
    components = with_trainer(VARIANTS[variant]) if trainer else with_trainer(VARIANTS[variant])[:-1]
    with overlay_copy("k8s/overlays/gpu", components=components, settings=SETTINGS) as folder:
        return render(folder)


# --------------------------------------------------------------------------------------------------
# The pod the Trainer makes (pkg/runtime/framework/plugins/{jobset,torch}: v2.2+)
# --------------------------------------------------------------------------------------------------


def trainer_pod(trainjob: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The pod template of a TrainJob's trainer nodes: the runtime's `node` container with the TrainJob's command,
    args and resources, its env upserted, the PET_* variables added, and the runtime patch's pod labels and
    annotations."""
    ref = trainjob["spec"]["runtimeRef"]
    runtime = by_kind(docs, ref["kind"])[ref["name"]]
    (node,) = [job for job in runtime["spec"]["template"]["spec"]["replicatedJobs"]
               if job["template"]["metadata"]["labels"].get(ANCESTOR) == "trainer"]  # fmt: skip
    pod = copy.deepcopy(node["template"]["spec"]["template"])
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "node"]
    trainer = trainjob["spec"]["trainer"]
    container.update(command=trainer["command"], args=trainer["args"], resources=trainer["resourcesPerNode"])
    env = {entry["name"]: entry for entry in container.get("env", [])}
    env.update({entry["name"]: entry for entry in trainer.get("env", [])})
    env.update({name: {"name": name, "value": "set-by-the-trainer"} for name in PET_ENV})
    container["env"] = list(env.values())
    for patch in trainjob["spec"].get("runtimePatches", []):
        for job in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            if job["name"] == node["name"]:
                patched = job["template"]["spec"]["template"]["metadata"]
                for field in ("labels", "annotations"):
                    if patched.get(field):
                        pod["metadata"].setdefault(field, {}).update(patched[field])
    return pod


def stage_pods(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, pod template) of the stages that run as Jobs or as TrainJobs."""
    yield from JOB_PODS(docs)
    for name, trainjob in by_kind(docs, "TrainJob").items():
        yield name, trainer_pod(trainjob, docs)


# --------------------------------------------------------------------------------------------------
# Strict validation against the Trainer's CRD schemas
# --------------------------------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """An openAPIV3Schema as a JSON schema that refuses unknown fields, as the API server prunes (or, with
    `kubectl apply --validate=strict`, refuses) them."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema and not schema.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        schema["additionalProperties"] = False
    return schema


@cache
def crd_schema(kind: str) -> dict[str, Any]:
    name = "trainingruntime" if kind in ("TrainingRuntime", "ClusterTrainingRuntime") else kind.lower()
    return strict(json.loads((SCHEMAS / f"{name}.json").read_text()))


def crd_errors(doc: dict[str, Any]) -> list[str]:
    """What the API server refuses in a Trainer object: its schema, and the CEL rules on its name."""
    validator = jsonschema.Draft7Validator(crd_schema(doc["kind"]))
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(doc)]
    name = doc["metadata"]["name"]
    if doc["apiVersion"] != "trainer.kubeflow.org/v1alpha1":
        errors.append(f"apiVersion {doc['apiVersion']}")
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
        errors.append(f"metadata.name {name!r} is not an RFC 1035 label")
    return errors


def test_the_schemas_are_the_trainers_own() -> None:
    readme = (SCHEMAS / "README.md").read_text()
    assert "kubeflow/trainer" in readme and "v2.3.0" in readme
    for kind in ("TrainJob", "TrainingRuntime"):
        assert {"apiVersion", "kind", "metadata", "spec"} <= set(crd_schema(kind)["properties"])
    # the strict schema refuses what the API server would (a misspelt field, a wrong type)
    trainjob = by_kind(rendered("alone"), "TrainJob")["vcot-train"]
    misspelt = copy.deepcopy(trainjob)
    misspelt["spec"]["trainer"]["numNode"] = 1
    wrong_type = copy.deepcopy(trainjob)
    wrong_type["spec"]["trainer"]["numNodes"] = "2"
    assert not crd_errors(trainjob)
    assert crd_errors(misspelt) and crd_errors(wrong_type)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_trainer_object_validates_against_the_crds(variant: str) -> None:
    docs = rendered(variant)
    trainer_docs = [doc for doc in docs if doc["apiVersion"].startswith("trainer.kubeflow.org/")]
    assert {doc["kind"] for doc in trainer_docs} == {"TrainJob", "TrainingRuntime"}
    for doc in trainer_docs:
        assert not crd_errors(doc), (doc["metadata"]["name"], crd_errors(doc))


@pytest.mark.parametrize("variant", ["alone", "grpo-spot-kueue-multi-node"])
def test_the_other_objects_validate_against_kubernetes(variant: str, tmp_path: Path) -> None:
    others = [doc for doc in rendered(variant) if not doc["apiVersion"].startswith("trainer.kubeflow.org/")]
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(others))
    validate = Path(sys.executable).parent / "kubernetes-validate"
    for version in ("1.30", "1.33"):
        out = subprocess.run([str(validate), "--strict", "--quiet", "--kubernetes-version", version, str(path)],
                             capture_output=True, text=True, check=False)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_trainers_admission_would_accept_them(variant: str) -> None:
    """The Trainer's webhook and JobSet's: the runtime exists (same namespace, the referenced kind), it has a trainer
    job whose container is `node`, no TrainJob sets a PET_* variable, and the nodes' names fit a DNS label."""
    docs = rendered(variant)
    for name, trainjob in by_kind(docs, "TrainJob").items():
        ref = trainjob["spec"]["runtimeRef"]
        assert ref["apiGroup"] == "trainer.kubeflow.org"
        runtime = by_kind(docs, ref["kind"])[ref["name"]]
        assert runtime["metadata"]["namespace"] == trainjob["metadata"]["namespace"] == "vcot"
        assert {entry["name"] for entry in trainjob["spec"]["trainer"]["env"]}.isdisjoint(PET_ENV), name
        assert "torch" in runtime["spec"]["mlPolicy"]
        assert len(f"{name}-node-0-0") <= 63
        trainer_pod(trainjob, docs)  # finds the trainer job and its `node` container


# --------------------------------------------------------------------------------------------------
# What the TrainJobs run: the Jobs' own pods
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["alone", "grpo", "rgfn", "grpo-spot-kueue-multi-node"])
def test_each_trainjob_runs_the_pod_its_job_would_have_run(variant: str) -> None:
    docs, plain = rendered(variant), rendered(variant, trainer=False)
    trainjobs, jobs = by_kind(docs, "TrainJob"), by_kind(plain, "Job")
    assert set(trainjobs) == {name for name in jobs if re.fullmatch(r"vcot-(train|grpo|rgfn)", name)}
    for name, trainjob in trainjobs.items():
        job, pod = jobs[name], trainer_pod(trainjob, docs)
        labels = dict(trainjob["metadata"]["labels"])
        assert labels.pop("vcot.dev/trainjob") == "true"  # what the first of the two applies leaves out
        assert labels == job["metadata"]["labels"]  # the step label and run id
        assert trainjob["metadata"].get("annotations") == job["metadata"].get("annotations")  # the Kueue queue
        assert trainjob["spec"]["suspend"] is True
        expected, actual = copy.deepcopy(job["spec"]["template"]), copy.deepcopy(pod)
        expected["spec"].pop("subdomain", None)  # components/multi-node's: JobSet names its own
        (want,), (got,) = expected["spec"]["containers"], actual["spec"]["containers"]
        assert got.pop("name") == "node" and want.pop("name") == "main"
        if want["command"] != ["vcot-train"]:  # multi-gpu / multi-node: their torchrun, the Trainer's here
            theirs = ("JOB_NAME", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE")
            want["env"] = [entry for entry in want["env"] if entry["name"] not in theirs]
            got["env"] = [entry for entry in got["env"] if entry["name"] not in theirs]
        assert got.pop("command") == ["vcot-torchrun", "--shutdown-timeout=150", "--no-python", "vcot-train"]
        want.pop("command")
        got["env"] = [entry for entry in got["env"] if entry["name"] not in PET_ENV]
        assert actual == expected, name
        (node,) = by_kind(docs, "TrainingRuntime")["vcot-torch"]["spec"]["template"]["spec"]["replicatedJobs"]
        failure = node["template"]["spec"]["podFailurePolicy"]
        rules = [dict(rule) for rule in job["spec"]["podFailurePolicy"]["rules"]]
        for rule in rules:
            if "onExitCodes" in rule:
                rule["onExitCodes"] = {**rule["onExitCodes"], "containerName": "node"}
        assert failure["rules"] == rules  # exit 2 still fails at once, preemption is still not a failure


def test_nodes_and_processes_come_from_the_settings() -> None:
    trainjobs = by_kind(rendered("grpo-spot-kueue-multi-node"), "TrainJob")
    assert trainjobs["vcot-train"]["spec"]["trainer"]["numNodes"] == int(SETTINGS["TRAIN_NODES"])
    assert trainjobs["vcot-grpo"]["spec"]["trainer"]["numNodes"] == 1  # vcot's GRPO has not run across nodes
    for trainjob in trainjobs.values():
        trainer = trainjob["spec"]["trainer"]
        assert trainer["numProcPerNode"] == int(SETTINGS["GPUS_PER_NODE"])
        assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == SETTINGS["GPUS_PER_NODE"]
    assert not by_kind(rendered("multi-node"), "Service"), "JobSet makes the nodes' headless Service"
    runtime = by_kind(rendered("alone"), "TrainingRuntime")["vcot-torch"]["spec"]["template"]["spec"]
    assert runtime["failurePolicy"]["rules"] == [
        {"name": "settings-are-invalid", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}
    ]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_manifest_checks_hold_for_the_trainers_pods(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pod hardening, every $(VAR) defined, selectors that select: the checks of every overlay, on the pods the
    Trainer makes too."""
    monkeypatch.setattr(manifest_checks, "pod_templates", stage_pods)
    docs = {variant: rendered(variant)}
    manifest_checks.test_every_pod_is_hardened_and_bounded(docs, variant)
    manifest_checks.test_every_variable_in_args_is_defined(docs, variant)
    manifest_checks.test_selectors_match_the_pods_they_are_meant_for(docs, variant)
    pods = dict(stage_pods(docs[variant]))
    peers = by_kind(docs[variant], "NetworkPolicy")["vcot-trainer-peers"]["spec"]["podSelector"]
    assert {name for name, pod in pods.items() if manifest_checks.selects(peers, pod["metadata"]["labels"])} == set(
        by_kind(docs[variant], "TrainJob")
    ), "the nodes of a TrainJob reach each other, and no other pod reaches them"


def test_the_chain_controller_follows_the_trainjobs() -> None:
    docs = rendered("grpo-spot-kueue-multi-node")
    chain = by_kind(docs, "Job")["vcot-chain"]["spec"]["template"]["spec"]["containers"][0]
    assert "--trainjobs" in chain["args"]
    (role,) = by_kind(docs, "Role").values()
    assert {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"], "verbs": ["get", "list", "patch"]} in (
        role["rules"]
    )
    args = [manifest_checks.expand(arg, {"RUN_ID": "default", "POD_NAMESPACE": "ns"}) for arg in chain["args"]]
    assert parse_config(ChainConfig, args).trainjobs
    config = ChainConfig(run="default", namespace="ns", poll_seconds=1, trainjobs=True)
    jobs = [client.V1Job.from_dict(job) for job in manifest_checks.chain_jobs(docs)]
    for job in jobs:
        job.metadata.annotations = job.metadata.annotations or {}
    trainjobs = [copy.deepcopy(trainjob) for trainjob in by_kind(docs, "TrainJob").values()]
    for trainjob in trainjobs:
        trainjob["metadata"].setdefault("annotations", {})
    cluster = FakeCluster(jobs, trainjobs=trainjobs)
    assert follow_chain(config, cluster, cluster, cluster, sleep=cluster.advance) == 0
    ran = [name for running in cluster.running_at_once for name in running]
    assert ran == ["vcot-convert", "vcot-distill", "vcot-tokenize", "vcot-train", "vcot-grpo", "vcot-evaluate"]
    assert cluster.trainjobs["vcot-train"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"


def test_kueue_topology_reaches_the_pods_of_jobs_and_trainjobs() -> None:
    """components/kueue-topology: the TAS annotation on each training pod, a plain Job's or a TrainJob's."""
    annotation = "kueue.x-k8s.io/podset-preferred-topology"
    for trainer in (False, True):
        docs = rendered("grpo-spot-kueue-multi-node", trainer=trainer)
        pods = dict(stage_pods(docs))
        for name in ("vcot-train", "vcot-grpo"):
            assert pods[name]["metadata"]["annotations"][annotation] == "cloud.google.com/gce-topology-block", name
        assert annotation not in pods["vcot-evaluate"]["metadata"].get("annotations", {})


# --------------------------------------------------------------------------------------------------
# make k8s-run: a run's names, run id and inputs reach the TrainJobs
# --------------------------------------------------------------------------------------------------


def test_only_the_trainjobs_wait_for_the_second_apply() -> None:
    """`kubectl apply -k ... -l 'vcot.dev/trainjob!=true'` first (the runtime, the namespace, the Jobs, the chain),
    then all: the Trainer refuses a TrainJob whose runtime does not exist yet (docs/k8s.md, make k8s-run)."""
    docs = rendered("grpo-spot-kueue-multi-node")
    marked = {(doc["kind"], doc["metadata"]["name"]) for doc in docs if "vcot.dev/trainjob" in doc["metadata"].get(
        "labels", {})}  # fmt: skip
    assert marked == {("TrainJob", "vcot-train"), ("TrainJob", "vcot-grpo")}
    makefile = (manifest_checks.REPO_ROOT / "Makefile").read_text()
    two_steps = "kubectl apply -k k8s/runs/$(RUN_ID) -l 'vcot.dev/trainjob!=true'\n\tkubectl apply -k k8s/runs/$(RUN_ID)\n"
    assert two_steps in makefile


def test_a_run_without_training_follows_its_jobs_alone(tmp_path: Path) -> None:
    with overlay_copy("k8s/overlays/gpu", components=with_trainer([])) as overlay:
        docs = render(runs.write_run("ev1", overlay, tmp_path, stages="evaluate", sources="exp1"))
    chain = by_kind(docs, "Job")["vcot-chain-ev1"]["spec"]["template"]["spec"]["containers"][0]
    assert "--trainjobs" not in chain["args"] and not by_kind(docs, "TrainJob")
    with overlay_copy("k8s/overlays/gpu", components=with_trainer([])) as overlay:
        docs = render(runs.write_run("tr1", overlay, tmp_path, stages="train", sources="exp1"))
    assert "--trainjobs" in by_kind(docs, "Job")["vcot-chain-tr1"]["spec"]["template"]["spec"]["containers"][0]["args"]


def test_a_run_renames_the_runtime_and_reads_other_runs(tmp_path: Path) -> None:
    with overlay_copy("k8s/overlays/gpu", components=with_trainer(["grpo"])) as overlay:
        folder = runs.write_run("exp2", overlay, tmp_path, stages="grpo,evaluate", sources="exp1,distilled=exp0")
        docs = render(folder)
    assert set(by_kind(docs, "TrainJob")) == {"vcot-grpo-exp2"}
    (runtime,) = by_kind(docs, "TrainingRuntime").values()
    assert runtime["metadata"]["name"] == "vcot-torch-exp2"
    grpo = by_kind(docs, "TrainJob")["vcot-grpo-exp2"]
    assert grpo["spec"]["runtimeRef"]["name"] == "vcot-torch-exp2"
    env = {entry["name"]: entry.get("value") for entry in grpo["spec"]["trainer"]["env"]}
    assert (env["DISTILLED_RUN"], env["TRAIN_RUN"]) == ("exp0", "exp1")
    pod = trainer_pod(grpo, docs)
    assert pod["metadata"]["labels"]["vcot.dev/run"] == "exp2", "RUN_ID is read from the pod's label"
    (config_map,) = by_kind(docs, "ConfigMap").values()
    (container,) = pod["spec"]["containers"]
    assert container["envFrom"][0]["configMapRef"]["name"] == config_map["metadata"]["name"], "the run's settings"
    assert pod["spec"]["serviceAccountName"] == "vcot-exp2"
    assert not crd_errors(grpo) and not crd_errors(runtime)


# --------------------------------------------------------------------------------------------------
# The train TrainJob's node, run here as the Trainer would start it
# --------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_the_train_trainjobs_node_trains(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The node's container (the runtime's, with the TrainJob's command, args and env) with the environment
    Kubernetes and the Trainer give it: the ConfigMap, the Secret, the pod's labels, and the PET_* variables of a
    one-node TrainJob (torchrun reads them: static rendezvous at the master). It trains and commits the run."""
    from tests.train.conftest import write_record_output
    from vcot.io import manifest
    from vcot.tokenize import TokenizeConfig, tokenize

    run_root = str(tmp_path / "runs")
    records = write_record_output(f"{run_root}/default/distilled", 24, seed=3)
    tokenize(TokenizeConfig(input=[records], output=f"{run_root}/default/tokenized", model=str(tiny_model_dir)))
    docs = rendered("alone")
    (config_map,) = by_kind(docs, "ConfigMap").values()
    settings = {**config_map["data"], "RUN_ROOT": run_root, "BASE_MODEL": str(tiny_model_dir),
                "TRAIN_RECIPE": "tiny-cpu"}  # fmt: skip
    pod = trainer_pod(by_kind(docs, "TrainJob")["vcot-train"], docs)
    secrets = {"vcot-s3": {"AWS_ACCESS_KEY_ID": "unused", "AWS_SECRET_ACCESS_KEY": "unused"}}
    env = manifest_checks.container_env(pod, settings, secrets, namespace="vcot")
    env.update(PET_NNODES="1", PET_NPROC_PER_NODE="1", PET_NODE_RANK="0", PET_MASTER_ADDR="127.0.0.1",
               PET_MASTER_PORT=str(free_port()), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               **manifest_checks.FAST["train"])  # fmt: skip
    command = manifest_checks.local_command(pod["spec"]["containers"][0], env)
    result = manifest_checks.run_pod("trainjob-node", command, env, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    trained = manifest.read_manifest(f"{run_root}/default/train")
    assert trained["stage"] == "train" and trained["inputs"][0]["uri"] == f"{run_root}/default/tokenized"
