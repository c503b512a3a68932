"""Chain a run's stage Jobs on Kubernetes: start each one only after its predecessor succeeded.

Plain Jobs have no dependencies, and an init container that waits would hold a GPU (and any queue
quota) for the whole wait. So every stage Job after the first is created with ``spec.suspend: true``
(a suspended Job has no pods), and this small controller, run as its own light CPU Job, resumes them
in order. A run's Jobs carry the label ``vcot.dev/run=<id>``; their order is the label
``vcot.dev/step`` (1, 2, ...). The state lives in the Jobs themselves, so a restarted controller
simply carries on.

Each poll looks at the steps in order and takes one decision (:func:`decide`):

- every step ``Complete``: the chain is done, exit 0;
- the first step not yet complete has ``Failed``: stop the chain visibly, leaving the later steps
  suspended: annotate them (``vcot.dev/chain: stopped``), record a Warning Event on each, log it and
  exit 3 (the chain Job's podFailurePolicy fails it without retry);
- it is suspended and not yet released (its predecessors are all complete): release it;
- otherwise it is running (or queued): wait.

Releasing a Job sets ``spec.suspend: false``. Under Kueue (``k8s/components/kueue``), which admits a
Job by unsuspending it, a chained Job instead carries its queue in the annotation
``vcot.dev/queue-name`` and releasing it adds the label ``kueue.x-k8s.io/queue-name``: Kueue then
queues and starts it, and no stage reaches the queue before its predecessor completed.

``python -m vcot.cluster.chain --run ID --namespace NS`` (flags or ``VCOT_RUN``, ``VCOT_NAMESPACE``...).
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vcot.config import option, parse_config, redacted
from vcot.errors import VcotError
from vcot.log import configure_logging, get_logger

RUN_LABEL = "vcot.dev/run"
STEP_LABEL = "vcot.dev/step"
CHAIN_ANNOTATION = "vcot.dev/chain"
CHAIN_MESSAGE_ANNOTATION = "vcot.dev/chain-message"
QUEUE_ANNOTATION = "vcot.dev/queue-name"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
EXIT_DONE = 0
EXIT_STOPPED = 3  # a stage failed: the chain Job's podFailurePolicy fails it without retry
# A dict body is sent as a JSON merge patch (the client's default content type is JSON Patch, a list).
MERGE_PATCH = "application/merge-patch+json"

log = get_logger("vcot.cluster.chain")


@dataclass
class ChainConfig:
    """Resume a run's suspended stage Jobs in order, each after its predecessor completed."""

    run: str = option(help="Run id: the value of the vcot.dev/run label on the run's Jobs.")
    namespace: str = option(help="Namespace of the run's Jobs (in a pod: the downward API's metadata.namespace).")
    poll_seconds: float = option(30.0, help="Seconds between two looks at the Jobs.")
    once: bool = option(False, help="Take one decision and exit (for debugging); 0 done, 3 stopped, 4 waiting.")

    def __post_init__(self) -> None:
        if not self.run.strip():
            raise ValueError("--run is empty: set it to the run's vcot.dev/run label")
        if self.poll_seconds <= 0:
            raise ValueError("--poll-seconds must be positive")


# --------------------------------------------------------------------------------------------------
# What the Jobs say, and what to do about it (pure: tested with the client's model objects)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One stage Job as the chain sees it."""

    name: str
    order: int
    suspended: bool
    complete: bool
    failed: bool
    reason: str = ""  # why it failed, from the Job's Failed condition
    released: bool = False  # the chain already let it go (it may still wait in a Kueue queue)
    queue: str = ""  # Kueue LocalQueue to hand it to on release (annotation vcot.dev/queue-name)


@dataclass(frozen=True)
class Decision:
    """``action`` is one of ``done``, ``stop``, ``resume``, ``wait``; ``step`` is the step it is about."""

    action: str
    step: Step | None = None
    later: tuple[Step, ...] = ()  # for ``stop``: the steps that will not run


def _condition_true(job: Any, kind: str) -> Any:
    for condition in (job.status.conditions if job.status else None) or []:
        if condition.type == kind and condition.status == "True":
            return condition
    return None


def step_from_job(job: Any) -> Step:
    """Read a ``V1Job`` (the kubernetes client's model) into a :class:`Step`."""
    labels = job.metadata.labels or {}
    try:
        order = int(labels[STEP_LABEL])
    except (KeyError, ValueError):
        raise VcotError(
            f"Job {job.metadata.name} has no integer {STEP_LABEL} label: every chained Job needs one"
        ) from None
    annotations = job.metadata.annotations or {}
    failed = _condition_true(job, "Failed")
    reason = f"{failed.reason or 'Failed'}: {failed.message or ''}".rstrip(": ") if failed else ""
    return Step(
        name=job.metadata.name,
        order=order,
        suspended=bool(job.spec.suspend),
        complete=_condition_true(job, "Complete") is not None,
        failed=failed is not None,
        reason=reason,
        released=annotations.get(CHAIN_ANNOTATION) == "resumed",
        queue=annotations.get(QUEUE_ANNOTATION, ""),
    )


def decide(steps: Sequence[Step]) -> Decision:
    """The one thing to do now, looking at the steps in chain order.

    >>> running = Step("vcot-convert", 1, suspended=False, complete=False, failed=False)
    >>> waiting = Step("vcot-distill", 2, suspended=True, complete=False, failed=False)
    >>> decide([running, waiting]).action
    'wait'
    >>> done = Step("vcot-convert", 1, suspended=False, complete=True, failed=False)
    >>> decide([done, waiting]).step.name
    'vcot-distill'
    """
    ordered = sorted(steps, key=lambda step: step.order)
    for position, step in enumerate(ordered):
        if step.complete:
            continue
        if step.failed:
            return Decision("stop", step, tuple(ordered[position + 1 :]))
        if step.suspended and not step.released:
            return Decision("resume", step)
        return Decision("wait", step)
    return Decision("done")


# --------------------------------------------------------------------------------------------------
# Talking to the API server
# --------------------------------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def record_event(core: Any, namespace: str, job_name: str, *, reason: str, message: str, warning: bool) -> None:
    """An Event on a Job: what ``kubectl describe job`` and ``kubectl get events`` show."""
    from kubernetes import client

    now = _now()
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{job_name}.", namespace=namespace),
        involved_object=client.V1ObjectReference(api_version="batch/v1", kind="Job", name=job_name, namespace=namespace),
        reason=reason,
        message=message,
        type="Warning" if warning else "Normal",
        source=client.V1EventSource(component="vcot-chain"),
        reporting_component="vcot-chain",
        first_timestamp=now,
        last_timestamp=now,
        count=1,
    )
    core.create_namespaced_event(namespace, event)


def release_patch(step: Step, message: str) -> dict[str, Any]:
    """The merge patch that lets a Job run: unsuspend it, or hand it to its Kueue queue.

    >>> release_patch(Step("vcot-train", 4, True, False, False), "go")["spec"]
    {'suspend': False}
    >>> release_patch(Step("vcot-train", 4, True, False, False, queue="gpu"), "go")["metadata"]["labels"]
    {'kueue.x-k8s.io/queue-name': 'gpu'}
    """
    metadata: dict[str, Any] = {"annotations": {CHAIN_ANNOTATION: "resumed", CHAIN_MESSAGE_ANNOTATION: message}}
    if step.queue:
        return {"metadata": {**metadata, "labels": {KUEUE_QUEUE_LABEL: step.queue}}}
    return {"metadata": metadata, "spec": {"suspend": False}}


def resume(batch: Any, core: Any, namespace: str, step: Step, after: str) -> None:
    """Release one Job (its pods are created now, or once Kueue admits it) and say why."""
    message = f"resumed by vcot-chain: {after} completed" if after else "resumed by vcot-chain"
    batch.patch_namespaced_job(step.name, namespace, release_patch(step, message), _content_type=MERGE_PATCH)
    record_event(core, namespace, step.name, reason="ChainResumed", message=message, warning=False)
    log.info("resumed", job=step.name, after=after or None)


def stop(batch: Any, core: Any, namespace: str, failed: Step, later: Sequence[Step]) -> None:
    """Leave the later steps suspended and mark them, so the failure is visible on every Job of the run."""
    message = f"not started: {failed.name} failed ({failed.reason or 'Failed'}); fix it and start a new run"
    for step in later:
        batch.patch_namespaced_job(
            step.name,
            namespace,
            {"metadata": {"annotations": {CHAIN_ANNOTATION: "stopped", CHAIN_MESSAGE_ANNOTATION: message}}},
            _content_type=MERGE_PATCH,
        )
        record_event(core, namespace, step.name, reason="ChainStopped", message=message, warning=True)
    record_event(
        core, namespace, failed.name, reason="ChainStopped",
        message=f"vcot-chain stopped the run: {failed.reason or 'Failed'}", warning=True,
    )  # fmt: skip
    log.error("chain stopped", failed=failed.name, reason=failed.reason, not_started=[step.name for step in later])


def list_steps(batch: Any, namespace: str, run: str) -> list[Step]:
    jobs = batch.list_namespaced_job(namespace, label_selector=f"{RUN_LABEL}={run},{STEP_LABEL}").items
    if not jobs:
        raise VcotError(
            f"no Jobs labelled {RUN_LABEL}={run} with a {STEP_LABEL} label in namespace {namespace}: "
            "check the run id, the namespace and that the run's Jobs were applied"
        )
    return sorted((step_from_job(job) for job in jobs), key=lambda step: step.order)


def follow_chain(
    config: ChainConfig,
    batch: Any,
    core: Any,
    *,
    sleep: Callable[[float], None] = time.sleep,
    max_api_errors: int = 10,
) -> int:
    """Poll the run's Jobs and act until the chain is done (0) or stopped (3); ``--once`` may return 4."""
    api_errors = 0
    previous: Step | None = None
    while True:
        try:
            steps = list_steps(batch, config.namespace, config.run)
            decision = decide(steps)
            if decision.action == "done":
                log.info("chain complete", run=config.run, steps=[step.name for step in steps])
                return EXIT_DONE
            if decision.action == "stop":
                assert decision.step is not None
                stop(batch, core, config.namespace, decision.step, decision.later)
                return EXIT_STOPPED
            if decision.action == "resume":
                assert decision.step is not None
                done = [step for step in steps if step.complete and step.order < decision.step.order]
                resume(batch, core, config.namespace, decision.step, done[-1].name if done else "")
                continue  # look again at once: the next decision is usually "wait"
            if decision.step != previous:
                log.info("waiting", job=decision.step.name if decision.step else None)
                previous = decision.step
            api_errors = 0
        except VcotError:
            raise
        except Exception as exc:  # noqa: BLE001 - API server hiccups: retry, then give up loudly
            from kubernetes.client.exceptions import ApiException

            if isinstance(exc, ApiException) and exc.status in (401, 403):
                raise VcotError(
                    f"the API server refused the chain controller ({exc.status} {exc.reason}): "
                    "check the vcot-chain Role and RoleBinding (k8s/base/rbac.yaml)"
                ) from exc
            api_errors += 1
            log.warning("api error, retrying", error=str(exc).splitlines()[0], attempt=api_errors)
            if api_errors >= max_api_errors:
                raise
        if config.once:
            return 4
        sleep(config.poll_seconds)


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    config = parse_config(ChainConfig, argv, prog="python -m vcot.cluster.chain")
    log.info("config", **redacted(config))
    from kubernetes import client
    from kubernetes import config as kube_config

    try:
        try:
            kube_config.load_incluster_config()
        except kube_config.ConfigException:
            kube_config.load_kube_config()  # outside a cluster: the current kubectl context
    except (kube_config.ConfigException, OSError) as exc:
        log.error("failed", error=str(exc))
        print(f"vcot-chain: error: no Kubernetes API to talk to ({exc}): run it in a pod or with a kubeconfig", file=sys.stderr)
        return 1
    try:
        return follow_chain(config, client.BatchV1Api(), client.CoreV1Api())
    except VcotError as exc:
        log.error("failed", error=str(exc))
        print(f"vcot-chain: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
