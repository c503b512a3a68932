"""A fake Kubernetes API for the chain controller's tests: the kubernetes client's own model objects."""

from __future__ import annotations

from kubernetes import client

from vcot.cluster.chain import step_from_job

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


class FakeCluster:
    """Stands in for BatchV1Api and CoreV1Api: lists by label selector, applies merge patches, keeps events.

    ``outcomes`` says how each running Job ends when the controller sleeps (default: Complete).
    """

    def __init__(self, jobs: list[client.V1Job], outcomes: dict[str, str] | None = None) -> None:
        self.jobs = {job.metadata.name: job for job in jobs}
        self.outcomes = outcomes or {}
        self.events: list[client.CoreV1Event] = []
        self.resumed: list[str] = []
        self.running_at_once: list[list[str]] = []

    def list_namespaced_job(self, namespace: str, label_selector: str) -> client.V1JobList:
        assert namespace == "ns"
        wanted = [term.split("=") for term in label_selector.split(",")]
        matching = [
            job
            for job in self.jobs.values()
            if all(
                key in job.metadata.labels and (not value or job.metadata.labels[key] == value[0])
                for key, *value in wanted
            )
        ]
        return client.V1JobList(items=matching)

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
        return [
            name for name, job in self.jobs.items() if not job.spec.suspend and not step_from_job(job).complete
            and not step_from_job(job).failed
        ]  # fmt: skip

    def advance(self, _seconds: float) -> None:
        """Time passes: every running Job finishes with its scripted outcome; Kueue admits queued Jobs."""
        running = self.running()
        self.running_at_once.append(running)
        for name in running:
            condition = self.outcomes.get(name, "Complete")
            self.jobs[name].status = client.V1JobStatus(
                conditions=[client.V1JobCondition(type=condition, status="True", reason="BackoffLimitExceeded" if condition == "Failed" else None)]  # fmt: skip
            )
        for job in self.jobs.values():
            if job.spec.suspend and "kueue.x-k8s.io/queue-name" in job.metadata.labels:
                job.spec.suspend = False  # admitted
