"""Checkpoints that survive the pod: synced to storage, marked complete, resumed from automatically.

The Trainer writes ``checkpoint-<step>/`` into each node's local folder. After each save every node uploads
what its ranks wrote (their RNG states; a sharded run's shards: :mod:`vcot.train.sharding`) to
``OUTPUT/checkpoints/checkpoint-<step>/``, and only when all have a ``_COMPLETE`` marker is written into it, so a
pod killed mid-upload leaves a checkpoint nobody resumes from. Remote checkpoints mirror the local ones the
Trainer keeps (its rotation keeps the newest and the best); a marker is deleted before its files.

On SIGTERM (preemption, eviction: ~30 s on GKE to ~120 s on AWS) the current optimizer step finishes,
a checkpoint is saved and synced, and training stops; the restarted job resumes from it.

TensorBoard event files are uploaded to ``OUTPUT/tensorboard/`` after every log step (``TensorBoardSync``).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from vcot.errors import MissingError
from vcot.io import storage
from vcot.log import get_logger
from vcot.train import distributed

COMPLETE = "_COMPLETE"
DCP_INDEX = ".metadata"
"""The index of a ``torch.distributed.checkpoint`` folder (which rank's file holds which slice)."""
_STEP_RE = re.compile(r"checkpoint-(\d+)$")

log = get_logger(__name__)


def checkpoint_step(name: str) -> int | None:
    """
    >>> checkpoint_step("checkpoint-120"), checkpoint_step("runs")
    (120, None)
    """
    match = _STEP_RE.search(name.rstrip("/"))
    return int(match.group(1)) if match else None


def complete_checkpoints(remote: str) -> dict[int, str]:
    """``{step: uri}`` of the checkpoints under ``remote`` that carry a ``_COMPLETE`` marker."""
    found: dict[int, str] = {}
    for uri in storage.list_uris(remote, suffix=COMPLETE):
        folder = uri[: -len(COMPLETE)].rstrip("/")
        step = checkpoint_step(folder)
        if step is not None:
            found[step] = folder
    return dict(sorted(found.items()))


SETTINGS = "_settings.json"
"""What the run whose checkpoints these are trains with (:func:`settings_change`)."""
FREE_ON_RESUME = frozenset({
    "max_steps", "num_train_epochs",  # a run extended or shortened
    "per_device_train_batch_size", "gradient_accumulation_steps", "global_batch_size",  # another GPU count
    "gpus", "gpu_memory_gib", "cpu_offload", "reshard_after_forward", "gradient_checkpointing", "fused_lm_head",
    "logging_steps", "save_steps", "eval_steps", "save_total_limit", "report_to", "dataloader_num_workers",
    "per_device_eval_batch_size", "generation_eval_steps", "merge_adapter", "use_vllm", "vllm_gpu_memory_utilization",
})
"""Settings a resumed run may change: its length, how it is laid out on the GPUs, what it logs, keeps and reports.
Any other change would continue the checkpoints' optimizer, schedule, adapter, data order or early stopping (its
patience and threshold are restored with it) as another run. Not the held-out slice or its token budget
(``generation_eval_samples``, ``..._max_new_tokens``): the checkpoints' scores, the best one kept and an RL run's
start would then be measured on another slice than the rest."""


def settings_change(remote: str, settings: dict[str, Any]) -> str | None:
    """Pin ``settings`` beside the checkpoints under ``remote``, or say how they differ from those of the run whose
    checkpoints a rerun would resume (``key: was -> now``, ``None`` when they agree): resumed, a changed learning
    rate would be ignored (the schedule is restored) and a changed LoRA rank would fail on the saved weights.

    >>> import tempfile
    >>> remote = tempfile.mkdtemp()
    >>> settings_change(remote, {"learning_rate": 2e-3, "max_steps": 10}) is None  # no checkpoint yet: pinned
    True
    """
    uri = storage.join(remote, SETTINGS)
    if complete_checkpoints(remote):
        try:
            pinned = storage.read_json(uri)
        except MissingError:  # checkpoints of a run from before settings were pinned: nothing to compare with
            pinned = None
        if isinstance(pinned, dict):
            now = json.loads(json.dumps(settings))  # tuples as the pinned JSON holds them
            keys = sorted({*pinned, *now} - FREE_ON_RESUME)
            changed = [f"{k}: {pinned.get(k)!r} -> {now.get(k)!r}" for k in keys if pinned.get(k) != now.get(k)]
            return "; ".join(changed) or None
    storage.write_json(uri, settings)
    return None


def mark_complete(uri: str) -> None:
    storage.write_text(storage.join(uri, COMPLETE), f"{checkpoint_step(uri)}\n")


def fetch_indexes(uri: str, local: Path) -> None:
    """Copy the sharded checkpoint indexes (``.metadata``, written by rank 0 alone) that ``local`` lacks: another
    node reloads its own shards from its own folder (the best checkpoint at the end) and needs the index beside them."""
    for folder in (path for path in local.iterdir() if path.is_dir()):
        index = storage.join(uri, folder.name, DCP_INDEX)
        if not (folder / DCP_INDEX).exists() and storage.exists(index):
            (folder / DCP_INDEX).write_bytes(storage.read_bytes(index))


def delete_checkpoint(uri: str) -> None:
    storage.delete(storage.join(uri, COMPLETE))  # first: from here on nobody resumes from it
    storage.delete_prefix(uri)


def restore_checkpoints(remote: str, local_dir: Path) -> Path | None:
    """Replace ``local_dir``'s checkpoints by the complete remote ones; return the newest, or ``None``."""
    for stale in local_dir.glob("checkpoint-*"):
        shutil.rmtree(stale, ignore_errors=True)
    complete = complete_checkpoints(remote)
    for uri in complete.values():  # oldest first: the Trainer's rotation orders checkpoints by mtime
        local = storage.download_prefix(uri, local_dir / uri.rsplit("/", 1)[-1])
        (local / COMPLETE).unlink(missing_ok=True)
    if not complete:
        return None
    for state_file in local_dir.glob("checkpoint-*/trainer_state.json"):
        _point_best_here(state_file, local_dir)
    newest = local_dir / f"checkpoint-{max(complete)}"
    log.info("resume_from", checkpoint=complete[max(complete)], kept=list(complete))
    return newest


def _point_best_here(state_file: Path, local_dir: Path) -> None:
    """Name the best checkpoint by its path in this node's folder. The trainer state records the folder of the node
    that saved it (``...-node0``); resumed elsewhere (one process after two) the Trainer would drop it as gone and
    end a run resumed at its last step with the last checkpoint instead of the best."""
    state = json.loads(state_file.read_text())
    best = state.get("best_global_step")
    if best is not None and state.get("best_model_checkpoint"):
        state["best_model_checkpoint"] = str(local_dir / f"checkpoint-{best}")
        state_file.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


class CheckpointSync(TrainerCallback):
    """After every save: upload the new checkpoint, drop remote ones rotated out locally."""

    def __init__(self, local_dir: Path, remote: str) -> None:
        self.local_dir = local_dir
        self.remote = remote

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        local = self.local_dir / f"checkpoint-{state.global_step}"
        uri = storage.join(self.remote, local.name)
        distributed.barrier()  # every rank has written its part (its RNG state, its shards)
        if distributed.local_rank() == 0:  # each node uploads what its ranks wrote
            storage.upload_dir(local, uri)
        distributed.barrier()
        if distributed.node_rank() > 0 and distributed.local_rank() == 0:
            fetch_indexes(uri, local)
        if not state.is_world_process_zero:
            return
        mark_complete(uri)
        kept = {p.name for p in self.local_dir.glob("checkpoint-*")}
        for step, remote_uri in complete_checkpoints(self.remote).items():
            if f"checkpoint-{step}" not in kept:
                delete_checkpoint(remote_uri)
        log.info("checkpoint_synced", step=state.global_step, uri=uri)


class TensorBoardSync(TrainerCallback):
    """After every log (TensorBoard's callback, added before this one, has flushed its writer): upload the event
    files that changed, so a run's curves are in storage as it trains, not only at checkpoints."""

    def __init__(self, local_dir: Path, remote: str) -> None:
        self.local_dir = local_dir
        self.remote = remote
        self.sent: dict[Path, tuple[int, int]] = {}  # file -> (size, mtime) when last uploaded

    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        for path in sorted(p for p in self.local_dir.rglob("*") if p.is_file()):
            stamp = (path.stat().st_size, path.stat().st_mtime_ns)
            if self.sent.get(path) != stamp:
                target = storage.join(self.remote, path.relative_to(self.local_dir).as_posix())
                storage.write_bytes(target, path.read_bytes())
                self.sent[path] = stamp


class SaveOnSigterm(TrainerCallback):
    """Turn SIGTERM into "finish this step, save a checkpoint, stop" (the save is synced by CheckpointSync).

    Under torchrun the ranks agree after every step: SIGTERM on any rank stops them all at the same step."""

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None

    def install(self) -> None:
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def uninstall(self) -> None:
        """Put the previous handler back, unless a SIGTERM came: the stop is then under way, and another one (torchrun
        stopping the ranks left once one has exited) must not cut its report short. It is ignored until the
        entrypoint puts its own caller's handler back as it exits."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN if self.received else self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        # Only set a flag: a handler that logs could wait forever on the lock of a write it interrupted.
        self.received = True

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.received = distributed.any_rank(self.received, args.device)
        if self.received:
            log.warning("sigterm", step=state.global_step, action="saving a checkpoint, then stopping")
            control.should_save = True
            control.should_training_stop = True


class RunFinished(Exception):
    """The checkpoint the run resumed from is its last step: nothing is left to train (:class:`StopAtLastStep`)."""


class StopAtLastStep(TrainerCallback):
    """Stop a run resumed from its last checkpoint before it trains a step past ``max_steps``, or past the step at
    which early stopping ended it (the patience of an ``EarlyStoppingCallback`` among ``callbacks``, the trainer's
    callback handler, as restored from the checkpoint).

    The Trainer checks its step budget after a step, so a run resumed from a checkpoint at ``max_steps`` that ends
    mid-epoch (a pod killed after its last save, before its commit) would train one step more than an uninterrupted
    run; early stopping is only asked at the next evaluation, so an early-stopped run would train on until then, and
    on if its metric improved. Raised before that step computes anything; :func:`vcot.train.common.run_training`
    finishes as ``train()`` does."""

    def __init__(self, callbacks: Any | None = None) -> None:
        self.callbacks = callbacks  # the handler: resuming replaces its early stopping by a restored one

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if 0 < state.max_steps <= state.global_step:
            log.info("resumed_at_last_step", step=state.global_step, max_steps=state.max_steps)
            raise RunFinished
        for early in self.callbacks.callbacks if self.callbacks is not None else []:
            patience = getattr(early, "early_stopping_patience", None)
            if patience is not None and early.early_stopping_patience_counter >= patience:
                log.info("resumed_after_early_stop", step=state.global_step, patience=patience)
                raise RunFinished


class NoLossWithoutSteps(TrainerCallback):
    """Drop the Trainer's mean train loss from the final log of a call that trained no step (resumed at its last
    step): it is a mean over none, written as 0, which a curve would show as a collapse.

    Placed first among the trainer's callbacks, it removes the value from the logged dict and from the log
    history's copy of it, before any tracker records it (:func:`vcot.train.common.run_training` also drops it from
    the run's result, which a trainer whose ``log`` copies the dict keeps)."""

    def __init__(self, resumed_at: int | None) -> None:
        self.resumed_at = resumed_at

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs is None or "train_runtime" not in logs or state.global_step != self.resumed_at:
            return
        logs.pop("train_loss", None)
        if state.log_history and "train_runtime" in state.log_history[-1]:
            state.log_history[-1].pop("train_loss", None)
