"""The chain controller against a fake API server holding the kubernetes client's own model objects."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.k8s.k8s_helpers import STAGES, FakeCluster, make_job, make_trainjob, pipeline
from vcot.cluster import chain
from vcot.cluster.chain import ChainConfig, Step, decide, follow_chain, step_from_job, step_from_trainjob
from vcot.errors import ConfigError, VcotError

CONFIG = ChainConfig(run="r1", namespace="ns", poll_seconds=1)


def test_decide_walks_steps_in_step_order_not_list_order() -> None:
    done = Step("a", 1, suspended=False, complete=True, failed=False)
    waiting = Step("b", 2, suspended=True, complete=False, failed=False)
    later = Step("c", 3, suspended=True, complete=False, failed=False)
    assert decide([later, waiting, done]) == chain.Decision("resume", waiting)
    assert decide([done]).action == "done"
    running = Step("b", 2, suspended=False, complete=False, failed=False)
    assert decide([later, running, done]) == chain.Decision("wait", running)
    failed = Step("b", 2, suspended=False, complete=False, failed=True, reason="BackoffLimitExceeded")
    assert decide([done, failed, later]) == chain.Decision("stop", failed, (later,))


def test_step_from_job_reads_labels_suspend_and_conditions() -> None:
    step = step_from_job(make_job("train", 4, suspend=False, condition="Failed"))
    assert (step.order, step.suspended, step.complete, step.failed) == (4, False, False, True)
    assert step.reason == "BackoffLimitExceeded: Job has reached the specified backoff limit"
    assert step_from_job(make_job("convert", 1, condition="Complete")).complete
    unlabelled = make_job("convert", 1)
    unlabelled.metadata.labels.pop("vcot.dev/step")
    with pytest.raises(VcotError, match="vcot.dev/step"):
        step_from_job(unlabelled)


def test_a_run_resumes_each_stage_only_after_its_predecessor_completed() -> None:
    cluster = FakeCluster(pipeline() + pipeline(run="other"))
    assert follow_chain(CONFIG, cluster, cluster, sleep=cluster.advance) == 0
    assert cluster.resumed == [f"vcot-{stage}-r1" for stage in STAGES[1:]]
    # never two stages at once, never a stage of the other run
    ours = [[name for name in running if name.endswith("-r1")] for running in cluster.running_at_once]
    assert ours == [[f"vcot-{stage}-r1"] for stage in STAGES]
    assert all(cluster.jobs[f"vcot-{stage}-other"].spec.suspend for stage in STAGES[1:])
    assert [event.reason for event in cluster.events] == ["ChainResumed"] * 4
    assert cluster.events[0].involved_object.name == "vcot-distill-r1"
    assert "vcot-convert-r1 completed" in cluster.events[0].message


def test_a_failed_stage_stops_the_chain_visibly_and_leaves_later_stages_suspended() -> None:
    cluster = FakeCluster(pipeline(), outcomes={"vcot-train-r1": "Failed"})
    assert follow_chain(CONFIG, cluster, cluster, sleep=cluster.advance) == chain.EXIT_STOPPED
    evaluate = cluster.jobs["vcot-evaluate-r1"]
    assert evaluate.spec.suspend is True
    assert evaluate.metadata.annotations["vcot.dev/chain"] == "stopped"
    assert "vcot-train-r1 failed (BackoffLimitExceeded)" in evaluate.metadata.annotations["vcot.dev/chain-message"]
    warnings = [(event.involved_object.name, event.reason) for event in cluster.events if event.type == "Warning"]
    assert warnings == [("vcot-evaluate-r1", "ChainStopped"), ("vcot-train-r1", "ChainStopped")]


def test_under_kueue_a_stage_reaches_its_queue_only_after_its_predecessor() -> None:
    jobs = pipeline()
    for job in jobs[1:]:
        job.metadata.annotations["vcot.dev/queue-name"] = "gpu-queue"
    cluster = FakeCluster(jobs)
    assert follow_chain(CONFIG, cluster, cluster, sleep=cluster.advance) == 0
    assert cluster.resumed == []  # the chain never unsuspends a Kueue Job itself
    ours = [[name for name in running if name.endswith("-r1")] for running in cluster.running_at_once]
    assert [running for running in ours if running] == [[f"vcot-{stage}-r1"] for stage in STAGES]
    assert ours[1] == []  # released distill waited one tick in its queue
    assert cluster.jobs["vcot-train-r1"].metadata.labels["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert len([event for event in cluster.events if event.reason == "ChainResumed"]) == 4


def test_a_restarted_controller_carries_on_from_the_jobs_state() -> None:
    jobs = pipeline()
    for job in jobs[:2]:
        job.spec.suspend = False
        job.status = client.V1JobStatus(conditions=[client.V1JobCondition(type="Complete", status="True")])
    cluster = FakeCluster(jobs)
    assert follow_chain(CONFIG, cluster, cluster, sleep=cluster.advance) == 0
    assert cluster.resumed == ["vcot-tokenize-r1", "vcot-train-r1", "vcot-evaluate-r1"]


def test_once_takes_one_decision() -> None:
    cluster = FakeCluster(pipeline())
    once = ChainConfig(run="r1", namespace="ns", poll_seconds=1, once=True)
    assert follow_chain(once, cluster, cluster, sleep=cluster.advance) == 4
    assert cluster.resumed == []


def test_no_jobs_for_the_run_is_a_clear_error() -> None:
    cluster = FakeCluster(pipeline(run="other"))
    with pytest.raises(VcotError, match="no Jobs labelled vcot.dev/run=r1"):
        follow_chain(CONFIG, cluster, cluster, sleep=cluster.advance)


class Flaky(FakeCluster):
    def __init__(self, jobs: list[client.V1Job], failures: list[Exception]) -> None:
        super().__init__(jobs)
        self.failures = failures

    def list_namespaced_job(self, namespace: str, label_selector: str) -> client.V1JobList:
        if self.failures:
            raise self.failures.pop(0)
        return super().list_namespaced_job(namespace, label_selector)


def test_transient_api_errors_are_retried_and_refusals_explained() -> None:
    cluster = Flaky(pipeline(), [ApiException(status=503, reason="Service Unavailable"), ConnectionError("reset")])
    assert follow_chain(CONFIG, cluster, cluster, sleep=cluster.advance) == 0

    forbidden = Flaky(pipeline(), [ApiException(status=403, reason="Forbidden")])
    with pytest.raises(ConfigError, match="vcot-chain Role"):
        follow_chain(CONFIG, forbidden, forbidden, sleep=lambda _: None)

    down = Flaky(pipeline(), [ConnectionError("refused")] * 3)
    with pytest.raises(ConnectionError):
        follow_chain(CONFIG, down, down, sleep=lambda _: None, max_api_errors=3)


def test_config_rejects_an_empty_run_id() -> None:
    with pytest.raises(SystemExit) as exit_info:
        chain.parse_config(ChainConfig, ["--run", " ", "--namespace", "ns"])
    assert exit_info.value.code == 2


def test_main_outside_a_cluster_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    assert chain.main(["--run", "r1", "--namespace", "ns"]) == 1
    assert "no Kubernetes API to talk to" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# TrainJobs (k8s/components/kubeflow-trainer): train and GRPO as Kubeflow Trainer TrainJobs
# --------------------------------------------------------------------------------------------------

TRAINJOBS = ChainConfig(run="r1", namespace="ns", poll_seconds=1, trainjobs=True)


def trainer_pipeline(run: str = "r1") -> tuple[list[client.V1Job], list[dict]]:
    """convert, distill, tokenize as Jobs; train and grpo as TrainJobs; evaluate a Job (components/grpo + trainer)."""
    jobs = [make_job(stage, step, run=run, suspend=step > 1 or None) for step, stage in enumerate(STAGES[:3], 1)]
    jobs.append(make_job("evaluate", 6, run=run, suspend=True))
    return jobs, [make_trainjob("train", 4, run=run), make_trainjob("grpo", 5, run=run)]


def test_step_from_trainjob_reads_labels_suspend_and_conditions() -> None:
    trainjob = make_trainjob("train", 4)
    trainjob["status"] = {"conditions": [
        {"type": "Suspended", "status": "False", "reason": "Resumed"},
        {"type": "Failed", "status": "True", "reason": "JobSetFailed", "message": "jobset failed"}]}  # fmt: skip
    step = step_from_trainjob(trainjob)
    assert (step.kind, step.order, step.suspended, step.complete, step.failed) == ("TrainJob", 4, True, False, True)
    assert step.reason == "JobSetFailed: jobset failed"
    trainjob["metadata"]["labels"].pop("vcot.dev/step")
    with pytest.raises(VcotError, match="TrainJob vcot-train-r1 has no integer vcot.dev/step"):
        step_from_trainjob(trainjob)


def test_trainjobs_are_resumed_in_order_between_the_jobs() -> None:
    jobs, trainjobs = trainer_pipeline()
    other_jobs, other_trainjobs = trainer_pipeline("other")
    cluster = FakeCluster(jobs + other_jobs, trainjobs=trainjobs + other_trainjobs)
    assert follow_chain(TRAINJOBS, cluster, cluster, cluster, sleep=cluster.advance) == 0
    order = ["vcot-distill-r1", "vcot-tokenize-r1", "vcot-train-r1", "vcot-grpo-r1", "vcot-evaluate-r1"]
    assert cluster.resumed == order
    ours = [[name for name in running if name.endswith("-r1")] for running in cluster.running_at_once]
    assert ours == [["vcot-convert-r1"]] + [[name] for name in order]
    assert cluster.trainjobs["vcot-train-other"]["spec"]["suspend"] is True
    events = {event.involved_object.name: event.involved_object for event in cluster.events}
    train = events["vcot-train-r1"]
    assert (train.kind, train.api_version) == ("TrainJob", "trainer.kubeflow.org/v1alpha1")
    assert (events["vcot-evaluate-r1"].kind, events["vcot-evaluate-r1"].api_version) == ("Job", "batch/v1")


def test_a_failed_trainjob_stops_the_chain_and_marks_what_is_left() -> None:
    jobs, trainjobs = trainer_pipeline()
    cluster = FakeCluster(jobs, outcomes={"vcot-train-r1": "Failed"}, trainjobs=trainjobs)
    assert follow_chain(TRAINJOBS, cluster, cluster, cluster, sleep=cluster.advance) == chain.EXIT_STOPPED
    grpo, evaluate = cluster.trainjobs["vcot-grpo-r1"], cluster.jobs["vcot-evaluate-r1"]
    assert grpo["spec"]["suspend"] is True and evaluate.spec.suspend is True
    assert grpo["metadata"]["annotations"]["vcot.dev/chain"] == "stopped"
    message = grpo["metadata"]["annotations"]["vcot.dev/chain-message"]
    assert "vcot-train-r1 failed (JobSetFailed: jobset failed)" in message
    assert evaluate.metadata.annotations["vcot.dev/chain"] == "stopped"
    warnings = [(event.involved_object.name, event.reason) for event in cluster.events if event.type == "Warning"]
    assert warnings == [("vcot-grpo-r1", "ChainStopped"), ("vcot-evaluate-r1", "ChainStopped"),
                        ("vcot-train-r1", "ChainStopped")]


def test_under_kueue_a_trainjob_reaches_its_queue_only_after_its_predecessor() -> None:
    jobs, trainjobs = trainer_pipeline()
    for trainjob in trainjobs:
        trainjob["metadata"]["annotations"]["vcot.dev/queue-name"] = "gpu"
    cluster = FakeCluster(jobs, trainjobs=trainjobs)
    assert follow_chain(TRAINJOBS, cluster, cluster, cluster, sleep=cluster.advance) == 0
    assert "vcot-train-r1" not in cluster.resumed and "vcot-grpo-r1" not in cluster.resumed  # Kueue unsuspends them
    assert cluster.trainjobs["vcot-train-r1"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    ours = [[name for name in running if name.endswith("-r1")] for running in cluster.running_at_once]
    assert [running for running in ours if running] == [[name] for name in (
        "vcot-convert-r1", "vcot-distill-r1", "vcot-tokenize-r1", "vcot-train-r1", "vcot-grpo-r1", "vcot-evaluate-r1")]


def test_trainjobs_are_only_followed_when_asked() -> None:
    jobs, trainjobs = trainer_pipeline()
    cluster = FakeCluster(jobs, trainjobs=trainjobs)
    # Without --trainjobs the TrainJobs are not seen: evaluate would start right after tokenize.
    assert follow_chain(CONFIG, cluster, cluster, cluster, sleep=cluster.advance) == 0
    assert cluster.resumed[-1] == "vcot-evaluate-r1" and "vcot-train-r1" not in cluster.resumed
    with pytest.raises(VcotError, match="needs the custom objects API"):
        follow_chain(TRAINJOBS, cluster, cluster, sleep=cluster.advance)


class NoTrainer(FakeCluster):
    def list_namespaced_custom_object(self, *args: object, **kwargs: object) -> dict:
        raise ApiException(status=404, reason="Not Found")


def test_a_cluster_without_the_trainer_is_a_clear_error() -> None:
    jobs, trainjobs = trainer_pipeline()
    cluster = NoTrainer(jobs, trainjobs=trainjobs)
    with pytest.raises(ConfigError, match="install Kubeflow Trainer v2.2 or later"):
        follow_chain(TRAINJOBS, cluster, cluster, cluster, sleep=cluster.advance)


class LateTrainJobs(FakeCluster):
    """TrainJobs that are applied a few polls after the Jobs (after their runtime exists)."""

    def __init__(self, jobs: list[client.V1Job], trainjobs: list[dict], after_lists: int) -> None:
        super().__init__(jobs)
        self.later, self.after_lists, self.lists = trainjobs, after_lists, 0

    def list_namespaced_custom_object(self, *args: object, **kwargs: object) -> dict:
        self.lists += 1
        if self.lists > self.after_lists:
            self.trainjobs.update({tj["metadata"]["name"]: tj for tj in self.later})
        return super().list_namespaced_custom_object(*args, **kwargs)  # type: ignore[arg-type]


def test_nothing_is_released_before_the_trainjobs_exist() -> None:
    jobs, trainjobs = trainer_pipeline()
    cluster = LateTrainJobs(jobs, trainjobs, after_lists=3)
    assert follow_chain(TRAINJOBS, cluster, cluster, cluster, sleep=cluster.advance) == 0
    assert cluster.resumed == ["vcot-distill-r1", "vcot-tokenize-r1", "vcot-train-r1", "vcot-grpo-r1",
                               "vcot-evaluate-r1"]  # fmt: skip
    assert cluster.lists > 3  # it waited, releasing nothing, then went on in order

    never = LateTrainJobs(*trainer_pipeline(), after_lists=10**6)
    waiting = ChainConfig(run="r1", namespace="ns", poll_seconds=30, trainjobs=True, trainjob_wait_seconds=90)
    with pytest.raises(ConfigError, match="no TrainJobs of run r1 in namespace ns after 90 s: apply them"):
        follow_chain(waiting, never, never, never, sleep=never.advance)
    assert never.resumed == [], "evaluate was not released in training's place"
