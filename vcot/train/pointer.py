"""The newest-model pointer (``latest.json``) scheduled re-evaluation follows, and when a run may move it.

An SFT run moves it when asked (``--update-pointer``). A GRPO or RGFN run continues an adapter, and RL can make a
model worse while its training rewards rise: such a run moves the pointer only when the checkpoint it kept scores
at least as well on its held-out slice (:mod:`vcot.train.generation_eval`) as the adapter it started from (scored
the same way at step 0) and as the model the pointer names now, when that is another adapter on the same base.
Otherwise it commits, leaves the pointer where it is and says so in one line with the scores; ``--force-pointer``
moves it anyway. The decision is recorded in the run's ``_SUCCESS`` (``stats.pointer``), so a rerun of the
committed output (:func:`ensure_pointer`) never moves a pointer the run was refused. The cluster chain runs the same
``vcot-train``, so the CronJob re-evaluation keeps scoring the better model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from vcot.errors import MissingError
from vcot.io import manifest, storage
from vcot.log import get_logger
from vcot.train import distributed
from vcot.train.config import TrainConfig

if TYPE_CHECKING:
    from vcot.grounding.model_format import ModelFormat
    from vcot.train.generation_eval import HeldOut

log = get_logger(__name__)

RL_METHODS = ("grpo", "gfn")
POINTER_ADAPTER = "pointer"
"""The name the adapter the pointer names is loaded under while it is scored beside the run's own."""


@dataclass(frozen=True)
class PointerDecision:
    """Whether the run moves the pointer, why, and the held-out scores behind it (``None``: not measured)."""

    move: bool
    reason: str
    metric: str | None = None
    start: float | None = None
    end: float | None = None
    pointed: float | None = None
    replaces: str | None = None
    """The run the pointer named when this run was compared with it (``None``: no pointer): the pointer moves only
    from that run, so a run that another run overtook meanwhile (a sweep) does not overwrite it."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rl_decision(
    metric: str, start: float | None, end: float | None, pointed: float | None, *, force: bool
) -> PointerDecision:
    """An RL run's move: its kept checkpoint's score ``end`` against its start's and the pointed model's.

    >>> rl_decision("eval_gen_first_object_iou", 0.52, 0.55, None, force=False).move
    True
    >>> decision = rl_decision("eval_gen_first_object_iou", 0.52, 0.50, None, force=False)
    >>> decision.move, decision.reason
    (False, 'eval_gen_first_object_iou 0.5000 is below the start (0.5200)')
    >>> rl_decision("eval_gen_first_object_iou", 0.52, 0.50, None, force=True).move
    True
    >>> rl_decision("eval_gen_first_object_iou", 0.52, float("nan"), None, force=False).move
    False
    """
    scores = {"metric": metric, "start": start, "end": end, "pointed": pointed}
    if end is None or start is None or not (math.isfinite(end) and math.isfinite(start)):
        worse = "the run has no held-out score to compare with its start"
    elif end < start:
        worse = f"{metric} {end:.4f} is below the start ({start:.4f})"
    elif pointed is not None and end < pointed:
        worse = f"{metric} {end:.4f} is below the model the pointer names ({pointed:.4f})"
    else:
        return PointerDecision(True, f"{metric} {end:.4f} >= the start ({start:.4f})", **scores)
    if force:
        return PointerDecision(True, f"--force-pointer: {worse}", **scores)
    return PointerDecision(False, worse, **scores)


def run_pointer(output: str, base_model: str, *, finetune: str = "lora") -> dict[str, str | None]:
    """The pointer JSON scheduled evaluation follows to the newest run: its base model and adapter, or, for a
    full fine-tune, the run's ``model/`` as the model and no adapter.

    >>> run_pointer("s3://b/runs/r1", "s3://b/models/qwen")["adapter"]
    's3://b/runs/r1/adapter'
    >>> run_pointer("s3://b/runs/r1", "s3://b/models/qwen", finetune="full")
    {'run': 's3://b/runs/r1', 'base_model': 's3://b/runs/r1/model', 'adapter': None}
    """
    if finetune == "full":
        return {"run": output, "base_model": storage.join(output, "model"), "adapter": None}
    return {"run": output, "base_model": base_model, "adapter": storage.join(output, "adapter")}


def read_pointer(uri: str) -> dict[str, Any] | None:
    """The pointer at ``uri``; ``None`` when there is none or it is not a pointer (not JSON, not a mapping).

    Storage that cannot be reached raises: read as "no pointer", the run would move it without scoring the
    model it names."""
    try:
        current = json.loads(storage.read_bytes(uri))
    except (MissingError, ValueError):
        return None
    return current if isinstance(current, dict) else None


def comparable_pointer(config: TrainConfig, fmt: ModelFormat) -> str | None:
    """The adapter the pointer names when an RL run must also beat it: another adapter on the run's base model
    that writes boxes in the run's format ``fmt``, whatever its turn layout (an RGFN run's Analyzer turn against a
    published two-turn model: each is asked in its own; the adapter the run continues is its start, scored anyway).
    ``None`` otherwise, said once when not comparable."""
    from vcot.models.loading import adapter_format

    current = read_pointer(config.pointer_uri)
    if current is None or str(current.get("run", "")).rstrip("/") == config.output.rstrip("/"):
        return None  # no pointer, or this output's own earlier run (--overwrite deleted it)
    adapter = current.get("adapter")
    if adapter and str(adapter).rstrip("/") == config.init_adapter.rstrip("/"):
        return None
    if not adapter or current.get("base_model") != config.model:
        why = "it names a model on another base" if adapter else "it names a full fine-tune"
    elif (found := adapter_format(str(adapter))) is None or replace(found, layout=fmt.layout) != fmt:
        why = "its adapter writes boxes in another model format"
    else:
        return str(adapter)
    log.warning("pointer_not_compared", pointer=config.pointer_uri, names=current.get("run"),
                hint=f"{why}: only the run's start is compared")  # fmt: skip
    return None


def pointed_metrics(model: Any, measure: Callable[[Any], dict[str, float]], adapter: str) -> dict[str, float]:
    """The held-out metrics of ``adapter`` (the pointed model), loaded beside the policy for the measurement."""
    from vcot.models.adapters import active, load_named_adapter
    from vcot.models.loading import local_model_path

    load_named_adapter(model, local_model_path(adapter), POINTER_ADAPTER)
    try:
        with active(model, POINTER_ADAPTER):
            return measure(model)
    finally:
        model.delete_adapter(POINTER_ADAPTER)


def named_run(config: TrainConfig) -> str | None:
    """The run the pointer names now (``None``: no pointer, or none asked for: no ``--update-pointer``)."""
    current = read_pointer(config.pointer_uri) if config.update_pointer else None
    return str(current["run"]) if current and current.get("run") else None


def decide(config: TrainConfig, method: str, metrics: dict[str, Any]) -> PointerDecision:
    """Whether this run moves the pointer (only asked with ``--update-pointer``)."""
    if method not in RL_METHODS:
        return PointerDecision(True, "sft run", replaces=named_run(config))
    held_out = metrics.get("held_out") or {}
    decision = rl_decision(held_out.get("metric"), held_out.get("start"), held_out.get("end"),
                           held_out.get("pointed"), force=config.force_pointer)  # fmt: skip
    return replace(decision, replaces=held_out.get("named"))


def publish(config: TrainConfig, decision: PointerDecision, finetune: str) -> None:
    """Move the pointer as decided, or say in one line why it stays."""
    current = named_run(config)
    if decision.move and current != decision.replaces and not config.force_pointer:
        log.warning(f"pointer not moved: it named {decision.replaces or 'no run'} when this run was compared with it "
                    f"and names {current or 'no run'} now (another run moved it meanwhile); the run is committed at "
                    f"{config.output}, --force-pointer moves it anyway", pointer=config.pointer_uri)  # fmt: skip
        return
    if decision.move:
        storage.write_json(config.pointer_uri, run_pointer(config.output, config.model, finetune=finetune))
        log.info("pointer_moved", pointer=config.pointer_uri, run=config.output, why=decision.reason)
        return
    log.warning(f"pointer not moved: {decision.reason}; the run is committed at {config.output}, "
                f"--force-pointer moves it anyway", pointer=config.pointer_uri, **decision.to_dict())  # fmt: skip


def ensure_pointer(config: TrainConfig) -> None:
    """On the rerun of a committed output with ``--update-pointer``: write its pointer if it is missing, unreadable
    or names this run, unless the committed run was refused it (``stats.pointer.move`` false) or is an RL run
    committed without a decision (no ``--update-pointer`` then: its held-out check was never made).
    ``--force-pointer`` writes it in every case.

    A pod killed between ``_SUCCESS`` and the pointer write left a finished run that scheduled evaluation
    may never see; the retried pod skips training and writes the pointer here, also over the run the decision
    recorded it would replace (``stats.pointer.replaces``). A pointer that names any other run is left alone:
    nothing tells an older run from a newer one, and moving the pointer back would have the next scheduled
    evaluation score an older model (and flag a regression). The base model is the one the committed run recorded.
    """
    committed = manifest.read_manifest(config.output)
    recorded = committed.get("config", {})
    values = recorded.get("recipe_values") or {}
    decided = (committed.get("stats") or {}).get("pointer") or {}
    unchecked = values.get("method") in RL_METHODS and not decided
    if not config.force_pointer and (decided.get("move") is False or unchecked):
        why = decided.get("reason") or "committed without --update-pointer: its held-out check was not recorded"
        log.info("pointer_kept", pointer=config.pointer_uri, run=config.output, why=why,
                 hint="--force-pointer moves it")  # fmt: skip
        return
    finetune = values.get("finetune", "lora")
    expected = run_pointer(config.output, recorded.get("model") or config.model, finetune=finetune)
    current = read_pointer(config.pointer_uri)
    if current == expected:
        return
    names_another = current is not None and str(current.get("run", "")).rstrip("/") != config.output.rstrip("/")
    replaced = current is not None and decided.get("replaces") == current.get("run")  # killed before it moved it
    if names_another and not replaced and not config.force_pointer:
        log.info("pointer_kept", pointer=config.pointer_uri, run=config.output, points_to=current.get("run"))
        return
    storage.write_json(config.pointer_uri, expected)
    log.info("pointer_written", pointer=config.pointer_uri, run=config.output, previous=current)


def pointed_score(
    config: TrainConfig, model: Any, watched: HeldOut | None, metric: str, *, sharded: bool = False
) -> float | None:
    """``metric`` of the model the pointer names when the run must also beat it (:func:`comparable_pointer`), on the
    run's held-out slice (``watched``, :class:`vcot.train.generation_eval.HeldOut`); ``None`` when not needed.

    Not for a ``sharded`` run of several ranks: before sharding only rank 0 holds weights, and it would generate
    alone with the whole model in CPU memory (hours for a 32B) while the others wait; only its start is compared."""
    if watched is None or not config.update_pointer:
        return None
    adapter = comparable_pointer(config, watched.fmt)
    if adapter is None:
        return None
    if sharded and distributed.world_size() > 1:
        log.warning("pointer_not_compared", pointer=config.pointer_uri, names=adapter,
                    hint="a sharded run does not score the pointed model: only the run's start is compared")  # fmt: skip
        return None
    from vcot.models.loading import adapter_format

    own = adapter_format(adapter)  # its format, its layout included: asked as it was trained

    def measure(policy: Any) -> dict[str, float]:
        return watched.measure_in(policy, own)

    # Rank 0 alone (the others wait for its score): data-parallel ranks would all compute the same score.
    score = pointed_metrics(model, measure, adapter)[metric] if distributed.is_main() else math.nan
    score = distributed.from_main(score)
    log.info("pointer_scored", adapter=adapter, **{metric: round(score, 4)})
    return score


def held_out_summary(
    log_history: list[dict[str, Any]], metric: str, pointed: float | None, kept: float | None, named: str | None
) -> dict[str, Any]:
    """What :func:`decide` reads from an RL run's metrics: the held-out ``metric`` at the start, at the kept
    checkpoint (``kept``: the trainer's ``state.best_metric``, the score of the weights it commits), of the model
    the pointer named (``pointed``), and which run it named then (``named``: :func:`named_run` at the start). Not
    the best score logged: a resumed run also scored the weights it resumed from, which are never kept."""
    from vcot.train.generation_eval import held_out_start

    start = held_out_start(log_history, metric)
    return {"metric": metric, "start": start, "end": kept, "pointed": pointed, "named": named}
