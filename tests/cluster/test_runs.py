"""`make k8s-run`: one-stage reruns that read other runs' committed outputs, the shared teacher cache, the pointer.

The runs are rendered with ``kubectl kustomize`` as `make k8s-run` writes them, and each container's arguments
are expanded with the environment Kubernetes would give it (the run's ConfigMap, the downward API, ``$(VAR)``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.k8s.k8s_helpers import FakeCluster
from tests.k8s.test_k8s_manifests import by_kind, chain_jobs, container_env, expand, render
from vcot.cluster import runs
from vcot.cluster.chain import ChainConfig, follow_chain
from vcot.errors import VcotError

REPO_ROOT = Path(__file__).resolve().parents[2]
GPU = REPO_ROOT / "k8s/overlays/gpu"
SECRETS = {"vcot-s3": {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}, "vcot-teacher": {"OPENAI_API_KEY": "t"}}


def render_run(tmp_path: Path, run_id: str, overlay: Path = GPU, **options: Any) -> list[dict[str, Any]]:
    return render(runs.write_run(run_id, overlay, tmp_path / "runs", **options))


def commands(docs: list[dict[str, Any]]) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Per chained stage: its container's arguments and environment as the pod would see them."""
    (config_map,) = by_kind(docs, "ConfigMap").values()
    found = {}
    for job in chain_jobs(docs):
        template = job["spec"]["template"]
        env = container_env(template, config_map["data"], SECRETS, namespace="vcot")
        args = [expand(arg, env) for arg in template["spec"]["containers"][0]["args"]]
        found[template["metadata"]["labels"]["app.kubernetes.io/component"]] = (args, env)
    return found


def test_a_train_only_run_reads_another_runs_tokenized_data(tmp_path: Path) -> None:
    """A new recipe on exp1's tokenized data: no convert, distill or tokenize; evaluate scores the new adapter on
    exp1's records; the chain starts with train; the pointer stays on the production model."""
    docs = render_run(
        tmp_path, "t-lr2", stages="train,evaluate", sources="exp1", settings=["TRAIN_RECIPE=s3://vcot/recipes/lr2.yaml"]
    )
    jobs = chain_jobs(docs)
    assert [job["metadata"]["name"] for job in jobs] == ["vcot-train-t-lr2", "vcot-evaluate-t-lr2"]
    stages = commands(docs)
    train_args, train_env = stages["train"]
    assert "--data=s3://vcot/runs/exp1/tokenized" in train_args
    assert "--output=s3://vcot/runs/t-lr2/train" in train_args
    assert "--recipe=s3://vcot/recipes/lr2.yaml" in train_args
    assert train_env["VCOT_UPDATE_POINTER"] == "false", "a trial must not replace the production model"
    eval_args, _ = stages["evaluate"]
    assert "--adapter=s3://vcot/runs/t-lr2/train/adapter" in eval_args  # the adapter this run trains
    assert "--data=s3://vcot/runs/exp1/distilled" in eval_args
    assert "--output=s3://vcot/runs/t-lr2/eval" in eval_args

    # Only train is suspended-and-first: the chain controller releases it at once, then evaluate.
    objects = [client.V1Job.from_dict(job) for job in jobs]
    for job in objects:
        job.metadata.annotations = job.metadata.annotations or {}
    cluster = FakeCluster(objects)
    assert follow_chain(ChainConfig(run="t-lr2", namespace="ns", poll_seconds=1), cluster, cluster, sleep=cluster.advance) == 0
    assert cluster.resumed == ["vcot-train-t-lr2", "vcot-evaluate-t-lr2"]


def test_an_eval_only_run_scores_one_runs_adapter_on_another_runs_records(tmp_path: Path) -> None:
    docs = render_run(tmp_path, "t-ev", stages="evaluate", sources="distilled=exp1,train=exp2")
    assert [job["metadata"]["name"] for job in chain_jobs(docs)] == ["vcot-evaluate-t-ev"]
    args, _ = commands(docs)["evaluate"]
    assert "--adapter=s3://vcot/runs/exp2/train/adapter" in args
    assert "--data=s3://vcot/runs/exp1/distilled" in args
    assert "--output=s3://vcot/runs/t-ev/eval" in args


def test_only_the_production_run_or_one_that_says_so_moves_the_pointer(tmp_path: Path) -> None:
    production = commands(render(GPU))["train"][1]
    assert production["VCOT_UPDATE_POINTER"] == "true"  # the overlay's own run: what the CronJob follows
    assert commands(render_run(tmp_path, "t-sweep"))["train"][1]["VCOT_UPDATE_POINTER"] == "false"
    assert commands(render_run(tmp_path, "t-prod2", update_pointer=True))["train"][1]["VCOT_UPDATE_POINTER"] == "true"


def test_every_run_shares_one_teacher_cache(tmp_path: Path) -> None:
    """Outside any run's folder, so a new run never pays the teacher again for a request an earlier one made."""
    caches = set()
    for docs in (render(GPU), render_run(tmp_path, "t-exp2")):
        args, _ = commands(docs)["distill"]
        (cache,) = [arg.removeprefix("--cache=") for arg in args if arg.startswith("--cache=")]
        caches.add(cache)
    assert caches == {"s3://vcot/runs/_teacher_cache"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stages": "train"}, "train reads tokenized/, which this run does not make: add FROM="),
        ({"sources": "exp1"}, "FROM needs STAGES"),
        ({"stages": "tokenize,train", "sources": "tokenized=exp1"}, "which this run makes itself"),
        ({"stages": "train,eval", "sources": "exp1"}, "STAGES names 'eval', not a stage"),
        ({"stages": "train", "sources": "tokens=exp1"}, "FROM names 'tokens', not a folder"),
        ({"stages": "train", "sources": "t-x"}, "FROM names this run"),
        ({"settings": ["TRAIN_RECIPES=x"]}, "SET names TRAIN_RECIPES, which is not in run.env"),
        ({"settings": ["CONVERT_SHARDS=8"]}, "read when the overlay is built"),
    ],
)
def test_a_run_that_cannot_work_is_refused_before_anything_is_written(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(VcotError, match=message):
        runs.write_run("t-x", GPU, tmp_path, **options)
    assert not (tmp_path / "t-x").exists()


@pytest.fixture(params=["grpo", "rgfn"])
def scoring_overlay(request: pytest.FixtureRequest) -> Iterator[tuple[Path, str]]:
    """The gpu overlay with its commented-out grpo (rgfn) line turned on (a copy under the git-ignored k8s/runs/,
    at the same depth so that its ../../ paths hold), and that component's name."""
    component = request.param
    folder = REPO_ROOT / "k8s" / "runs" / f"test-{component}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(GPU, folder)
    try:
        text = (folder / "kustomization.yaml").read_text()
        off = f"  # - ../../components/{component}\n"
        assert off in text
        (folder / "kustomization.yaml").write_text(text.replace(off, f"  - ../../components/{component}\n"))
        yield folder, component
    finally:
        shutil.rmtree(folder)


def test_a_retrain_does_not_score_another_runs_grpo_adapter(scoring_overlay: tuple[Path, str], tmp_path: Path) -> None:
    """With components/grpo (rgfn) evaluate scores that adapter: a run that trains a new SFT adapter but not it
    must not score FROM's, so a bare FROM is refused; the stage in STAGES, or the run named, is what it scores."""
    overlay, component = scoring_overlay
    with pytest.raises(VcotError, match=f"add {component} to STAGES .*or name the run to score .*{component}=<run id>"):
        runs.write_run("t-x", overlay, tmp_path, stages="train,evaluate", sources="exp1")
    assert not (tmp_path / "t-x").exists()

    cases = {
        ("train,evaluate", f"exp1,{component}=exp2"): "exp2",  # named: the run asked for
        (f"train,{component},evaluate", "exp1"): "t-x",  # this run's own, continued from its new SFT adapter
        ("evaluate", "exp1"): "exp1",  # nothing trained here: FROM's adapter
    }
    for (stages, sources), scored in cases.items():
        docs = render(runs.write_run("t-x", overlay, tmp_path / stages, stages=stages, sources=sources))
        args, _ = commands(docs)["evaluate"]
        assert f"--adapter=s3://vcot/runs/{scored}/{component}/adapter" in args, (stages, sources)
        assert "--data=s3://vcot/runs/exp1/distilled" in args


def test_make_k8s_run_needs_only_the_standard_library() -> None:
    """``make k8s-run`` runs the module with a plain ``python3`` (no venv): an import of an installed package
    (structlog, through vcot.io.storage) stopped it for every user without one."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-S", "-m", "vcot.cluster.runs", "--help"], cwd=root, capture_output=True,
                          text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
