"""A fake Kubernetes API for the chain controller's tests: the kubernetes client's own model objects."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from vcot.cluster.chain import TRAINJOB_GROUP, TRAINJOB_PLURAL, TRAINJOB_VERSION, step_from_job, step_from_trainjob

STAGES = ["convert", "distill", "tokenize", "train", "evaluate"]


def make_job(stage: str, step: int, *, run: str = "r1", suspend: bool | None = None, condition: str | None = None) -> client.V1Job:
    conditions = [client.V1JobCondition(type=condition, status="True", reason="BackoffLimitExceeded" if condition == "Failed" else None, message="Job has reached the specified backoff limit" if condition == "Failed" else None)] if condition else None  # fmt: skip
    return client.V1Job(
        metadata=client.V1ObjectMeta(
            name=f"vcot-{stage}-{run}", labels={"vcot.dev/run": run, "vcot.dev/step": str(step)}, annotations={}
        ),
        spec=client.V1JobSpec(suspend=suspend, template=client.V1PodTemplateSpec()),
        status=client.V1JobStatus(conditions=conditions),
    )


def pipeline(run: str = "r1") -> list[client.V1Job]:
    """A fresh run as `kubectl apply -k` creates it: the first step running, the others suspended."""
    return [make_job(stage, step, run=run, suspend=step > 1 or None) for step, stage in enumerate(STAGES, start=1)]


def make_trainjob(stage: str, step: int, *, run: str = "r1", suspend: bool = True) -> dict[str, Any]:
    """A TrainJob as the custom objects API returns it (a dict), created suspended."""
    labels = {"vcot.dev/run": run, "vcot.dev/step": str(step)}
    return {"apiVersion": f"{TRAINJOB_GROUP}/{TRAINJOB_VERSION}", "kind": "TrainJob",
            "metadata": {"name": f"vcot-{stage}-{run}", "labels": labels, "annotations": {}},
            "spec": {"suspend": suspend}}  # fmt: skip


def _selects(label_selector: str, labels: dict[str, str]) -> bool:
    wanted = [term.split("=") for term in label_selector.split(",")]
    return all(key in labels and (not value or labels[key] == value[0]) for key, *value in wanted)


class FakeCluster:
    """Stands in for BatchV1Api, CoreV1Api and CustomObjectsApi (TrainJobs): lists by label selector, applies merge
    patches, keeps events.

    ``outcomes`` says how each running Job or TrainJob ends when the controller sleeps (default: Complete).
    """

    def __init__(
        self, jobs: list[client.V1Job], outcomes: dict[str, str] | None = None,
        trainjobs: list[dict[str, Any]] | None = None,
    ) -> None:  # fmt: skip
        self.jobs = {job.metadata.name: job for job in jobs}
        self.trainjobs = {trainjob["metadata"]["name"]: trainjob for trainjob in trainjobs or []}
        self.outcomes = outcomes or {}
        self.events: list[client.CoreV1Event] = []
        self.resumed: list[str] = []
        self.running_at_once: list[list[str]] = []

    def list_namespaced_job(self, namespace: str, label_selector: str) -> client.V1JobList:
        assert namespace == "ns"
        jobs = [job for job in self.jobs.values() if _selects(label_selector, job.metadata.labels)]
        return client.V1JobList(items=jobs)

    def list_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, label_selector: str
    ) -> dict[str, Any]:
        assert (group, version, namespace, plural) == (TRAINJOB_GROUP, TRAINJOB_VERSION, "ns", TRAINJOB_PLURAL)
        return {"items": [tj for tj in self.trainjobs.values() if _selects(label_selector, tj["metadata"]["labels"])]}

    def patch_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: dict[str, Any],
        _content_type: str | None = None,
    ) -> None:  # fmt: skip
        assert (group, version, plural) == (TRAINJOB_GROUP, TRAINJOB_VERSION, TRAINJOB_PLURAL)
        assert _content_type == "application/merge-patch+json", "a dict body must be sent as a merge patch"
        trainjob = self.trainjobs[name]
        trainjob["metadata"]["annotations"].update(body.get("metadata", {}).get("annotations", {}))
        trainjob["metadata"]["labels"].update(body.get("metadata", {}).get("labels", {}))
        if "suspend" in body.get("spec", {}):
            trainjob["spec"]["suspend"] = body["spec"]["suspend"]
            self.resumed.append(name)

    def patch_namespaced_job(self, name: str, namespace: str, body: dict, _content_type: str | None = None) -> None:
        assert _content_type == "application/merge-patch+json", "a dict body must be sent as a merge patch"
        job = self.jobs[name]
        job.metadata.annotations.update(body.get("metadata", {}).get("annotations", {}))
        job.metadata.labels.update(body.get("metadata", {}).get("labels", {}))
        if "suspend" in body.get("spec", {}):
            job.spec.suspend = body["spec"]["suspend"]
            self.resumed.append(name)

    def create_namespaced_event(self, namespace: str, body: client.CoreV1Event) -> None:
        self.events.append(body)

    def running(self) -> list[str]:
        steps = [step_from_job(job) for job in self.jobs.values()]
        steps += [step_from_trainjob(trainjob) for trainjob in self.trainjobs.values()]
        return [step.name for step in steps if not step.suspended and not step.complete and not step.failed]

    def advance(self, _seconds: float) -> None:
        """Time passes: every running Job or TrainJob finishes with its scripted outcome; Kueue admits queued ones."""
        running = self.running()
        self.running_at_once.append(running)
        for name in running:
            condition = self.outcomes.get(name, "Complete")
            reason = "BackoffLimitExceeded" if condition == "Failed" else None
            if name in self.jobs:
                self.jobs[name].status = client.V1JobStatus(
                    conditions=[client.V1JobCondition(type=condition, status="True", reason=reason)]
                )
            else:  # a TrainJob's conditions: metav1.Condition, as its controller writes them
                self.trainjobs[name]["status"] = {"conditions": [
                    {"type": condition, "status": "True", "reason": "JobSetFailed" if reason else "JobSetCompleted",
                     "message": "jobset failed" if reason else "jobset completed"}]}  # fmt: skip
        for job in self.jobs.values():
            if job.spec.suspend and "kueue.x-k8s.io/queue-name" in job.metadata.labels:
                job.spec.suspend = False  # admitted
        for trainjob in self.trainjobs.values():
            if trainjob["spec"]["suspend"] and "kueue.x-k8s.io/queue-name" in trainjob["metadata"]["labels"]:
                trainjob["spec"]["suspend"] = False  # admitted
