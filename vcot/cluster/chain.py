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

With ``--trainjobs`` (``k8s/components/kubeflow-trainer``) the training steps are Kubeflow Trainer TrainJobs: the
same labels, ``spec.suspend`` and ``Complete``/``Failed`` conditions, read and patched through the custom objects
API; the chain treats them as it treats Jobs. They are applied after their TrainingRuntime (the Trainer refuses them
before it), so the chain releases nothing until the run has one (``--trainjob-wait-seconds``).

``python -m vcot.cluster.chain --run ID --namespace NS`` (flags or ``VCOT_RUN``, ``VCOT_NAMESPACE``...).
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vcot.cluster import TRAINJOB_API, TRAINJOB_GROUP, TRAINJOB_PLURAL, TRAINJOB_VERSION
from vcot.config import option, parse_config, redacted
from vcot.errors import ConfigError, VcotError
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
    trainjobs: bool = option(
        False, help="Also follow the run's Kubeflow Trainer TrainJobs (k8s/components/kubeflow-trainer sets it)."
    )
    trainjob_wait_seconds: float = option(
        900.0, help="With --trainjobs: how long to wait for the run's TrainJobs to exist (they are applied after their "
        "runtime) before giving up; no step is released meanwhile.",
    )

    def __post_init__(self) -> None:
        if not self.run.strip():
            raise ValueError("--run is empty: set it to the run's vcot.dev/run label")
        if self.poll_seconds <= 0:
            raise ValueError("--poll-seconds must be positive")
        if self.trainjob_wait_seconds < 0:
            raise ValueError("--trainjob-wait-seconds must not be negative")


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
    kind: str = "Job"  # or "TrainJob" (Kubeflow Trainer)


@dataclass(frozen=True)
class Decision:
    """``action`` is one of ``done``, ``stop``, ``resume``, ``wait``; ``step`` is the step it is about."""

    action: str
    step: Step | None = None
    later: tuple[Step, ...] = ()  # for ``stop``: the steps that will not run


def _step(
    kind: str, name: str, labels: dict[str, str], annotations: dict[str, str], suspended: bool,
    conditions: Sequence[tuple[str, str, str | None, str | None]],
) -> Step:
    """A :class:`Step` from what Jobs and TrainJobs share; ``conditions``: (type, status, reason, message)."""
    try:
        order = int(labels[STEP_LABEL])
    except (KeyError, ValueError):
        raise ConfigError(f"{kind} {name} has no integer {STEP_LABEL} label: every chained {kind} needs one") from None
    true = {type_: (reason, message) for type_, status, reason, message in conditions if status == "True"}
    reason, message = true.get("Failed", (None, None))
    return Step(
        name=name,
        order=order,
        suspended=suspended,
        complete="Complete" in true,
        failed="Failed" in true,
        reason=f"{reason or 'Failed'}: {message or ''}".rstrip(": ") if "Failed" in true else "",
        released=annotations.get(CHAIN_ANNOTATION) == "resumed",
        queue=annotations.get(QUEUE_ANNOTATION, ""),
        kind=kind,
    )


def step_from_job(job: Any) -> Step:
    """Read a ``V1Job`` (the kubernetes client's model) into a :class:`Step`."""
    conditions = (job.status.conditions if job.status else None) or []
    return _step(
        "Job", job.metadata.name, job.metadata.labels or {}, job.metadata.annotations or {}, bool(job.spec.suspend),
        [(c.type, c.status, c.reason, c.message) for c in conditions],
    )  # fmt: skip


def step_from_trainjob(trainjob: dict[str, Any]) -> Step:
    """Read a TrainJob (a dict, as the custom objects API returns it) into a :class:`Step`.

    >>> trainjob = {"metadata": {"name": "vcot-train", "labels": {"vcot.dev/step": "4"}}, "spec": {"suspend": True}}
    >>> step = step_from_trainjob(trainjob)
    >>> step.kind, step.order, step.suspended, step.complete
    ('TrainJob', 4, True, False)
    """
    metadata, status = trainjob["metadata"], trainjob.get("status") or {}
    return _step(
        "TrainJob", metadata["name"], metadata.get("labels") or {}, metadata.get("annotations") or {},
        bool((trainjob.get("spec") or {}).get("suspend")),
        [(c.get("type"), c.get("status"), c.get("reason"), c.get("message")) for c in status.get("conditions") or []],
    )  # fmt: skip


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


def record_event(core: Any, namespace: str, step: Step, *, reason: str, message: str, warning: bool) -> None:
    """An Event on a step's Job or TrainJob: what ``kubectl describe`` and ``kubectl get events`` show."""
    from kubernetes import client

    now = _now()
    api_version = "batch/v1" if step.kind == "Job" else TRAINJOB_API
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{step.name}.", namespace=namespace),
        involved_object=client.V1ObjectReference(
            api_version=api_version, kind=step.kind, name=step.name, namespace=namespace
        ),
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


def patch_step(batch: Any, custom: Any, namespace: str, step: Step, body: dict[str, Any]) -> None:
    """A merge patch on a step's Job, or on its TrainJob through the custom objects API."""
    if step.kind == "TrainJob":
        custom.patch_namespaced_custom_object(
            TRAINJOB_GROUP, TRAINJOB_VERSION, namespace, TRAINJOB_PLURAL, step.name, body, _content_type=MERGE_PATCH
        )
    else:
        batch.patch_namespaced_job(step.name, namespace, body, _content_type=MERGE_PATCH)


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


def resume(batch: Any, core: Any, custom: Any, namespace: str, step: Step, after: str) -> None:
    """Release one Job or TrainJob (its pods are created now, or once Kueue admits it) and say why."""
    message = f"resumed by vcot-chain: {after} completed" if after else "resumed by vcot-chain"
    patch_step(batch, custom, namespace, step, release_patch(step, message))
    record_event(core, namespace, step, reason="ChainResumed", message=message, warning=False)
    log.info("resumed", job=step.name, kind=step.kind, after=after or None)


def stop(batch: Any, core: Any, custom: Any, namespace: str, failed: Step, later: Sequence[Step]) -> None:
    """Leave the later steps suspended and mark them, so the failure is visible on every step of the run."""
    message = f"not started: {failed.name} failed ({failed.reason or 'Failed'}); fix it and start a new run"
    for step in later:
        body = {"metadata": {"annotations": {CHAIN_ANNOTATION: "stopped", CHAIN_MESSAGE_ANNOTATION: message}}}
        patch_step(batch, custom, namespace, step, body)
        record_event(core, namespace, step, reason="ChainStopped", message=message, warning=True)
    record_event(
        core, namespace, failed, reason="ChainStopped",
        message=f"vcot-chain stopped the run: {failed.reason or 'Failed'}", warning=True,
    )  # fmt: skip
    log.error("chain stopped", failed=failed.name, reason=failed.reason, not_started=[step.name for step in later])


def list_steps(batch: Any, namespace: str, run: str, custom: Any = None) -> list[Step]:
    """The run's Jobs, and with ``custom`` (a CustomObjectsApi) its TrainJobs, in chain order."""
    selector = f"{RUN_LABEL}={run},{STEP_LABEL}"
    steps = [step_from_job(job) for job in batch.list_namespaced_job(namespace, label_selector=selector).items]
    if custom is not None:
        steps += [step_from_trainjob(trainjob) for trainjob in list_trainjobs(custom, namespace, selector)]
    if not steps:
        raise VcotError(
            f"no Jobs labelled {RUN_LABEL}={run} with a {STEP_LABEL} label in namespace {namespace}: "
            "check the run id, the namespace and that the run's Jobs were applied"
        )
    return sorted(steps, key=lambda step: step.order)


def list_trainjobs(custom: Any, namespace: str, selector: str) -> list[dict[str, Any]]:
    from kubernetes.client.exceptions import ApiException

    try:
        listed = custom.list_namespaced_custom_object(
            TRAINJOB_GROUP, TRAINJOB_VERSION, namespace, TRAINJOB_PLURAL, label_selector=selector
        )
    except ApiException as exc:
        if exc.status == 404:
            raise ConfigError(
                f"the cluster serves no TrainJobs ({TRAINJOB_GROUP}/{TRAINJOB_VERSION}): install Kubeflow Trainer "
                "v2.2 or later, or build the overlay without components/kubeflow-trainer"
            ) from exc
        raise
    return list(listed.get("items") or [])


def follow_chain(
    config: ChainConfig,
    batch: Any,
    core: Any,
    custom: Any = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    max_api_errors: int = 10,
) -> int:
    """Poll the run's Jobs (and TrainJobs: ``custom``, a CustomObjectsApi, needed with ``--trainjobs``) and act until
    the chain is done (0) or stopped (3); ``--once`` may return 4."""
    if config.trainjobs and custom is None:
        raise ConfigError("--trainjobs needs the custom objects API: pass a CustomObjectsApi")
    custom = custom if config.trainjobs else None
    api_errors = 0
    waited = 0.0  # for the TrainJobs to exist
    previous: Step | None = None
    while True:
        try:
            steps = list_steps(batch, config.namespace, config.run, custom)
            if custom is not None and not any(step.kind == "TrainJob" for step in steps):
                # Applied after their runtime (the Trainer refuses them before it): a step released now could be
                # the one after training.
                if waited >= config.trainjob_wait_seconds:
                    raise ConfigError(
                        f"no TrainJobs of run {config.run} in namespace {config.namespace} after {waited:.0f} s: apply "
                        "them (kubectl apply -k <overlay>, after its TrainingRuntime exists: docs/k8s.md \"Kubeflow "
                        "Trainer\"), or build the run without components/kubeflow-trainer"
                    )
                if waited == 0:
                    log.info("waiting for the run's TrainJobs", run=config.run)
                if config.once:
                    return 4
                waited += config.poll_seconds
                sleep(config.poll_seconds)
                continue
            decision = decide(steps)
            if decision.action == "done":
                log.info("chain complete", run=config.run, steps=[step.name for step in steps])
                return EXIT_DONE
            if decision.action == "stop":
                assert decision.step is not None
                stop(batch, core, custom, config.namespace, decision.step, decision.later)
                return EXIT_STOPPED
            if decision.action == "resume":
                assert decision.step is not None
                done = [step for step in steps if step.complete and step.order < decision.step.order]
                resume(batch, core, custom, config.namespace, decision.step, done[-1].name if done else "")
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
                raise ConfigError(
                    f"the API server refused the chain controller ({exc.status} {exc.reason}): "
                    "check the vcot-chain Role and RoleBinding (k8s/base/rbac.yaml; TrainJobs: "
                    "components/kubeflow-trainer)"
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
        return follow_chain(config, client.BatchV1Api(), client.CoreV1Api(), client.CustomObjectsApi())
    except VcotError as exc:
        log.error("failed", error=str(exc))
        print(f"vcot-chain: error: {exc}", file=sys.stderr)
        return exc.exit_code  # 2 (settings no retry fixes: the Job fails at once) or 1


if __name__ == "__main__":
    raise SystemExit(main())
