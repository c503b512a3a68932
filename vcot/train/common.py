"""What both training methods share, in the order a run uses it (the stage and the methods: :mod:`vcot.train.stage`).

1. :class:`TrainConfig` (:mod:`vcot.train.config`);
2. :func:`load_policy`: the base model (4-bit on GPU per the recipe) and its processor, set to the run's pixel
   budget, with a trainable LoRA on the language model (a committed adapter continued, or a new one);
3. :class:`RunFolders` and :func:`common_arguments`: where the trainer writes, the recipe as trainer arguments;
4. :func:`run_training`: restore the newest complete checkpoint from storage, train (checkpoints synced,
   SIGTERM saves one, a non-finite loss or weights stop it: vcot.train.divergence), TensorBoard events and
   structured log lines;
5. :func:`commit_run`: the adapter + processor + ``vcot-model.json`` (and optionally a merged model; with
   ``finetune: full`` the whole model in ``model/`` instead), metrics with the run's throughput and TensorBoard
   events; commit ``_SUCCESS``; with ``--update-pointer``, point ``latest.json`` at this run when
   :mod:`vcot.train.pointer` allows it (an RL run that scores below its start does not move it).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vcot.config import redacted
from vcot.errors import ConfigError, VcotError
from vcot.grounding.families import is_vision
from vcot.grounding.model_format import ModelFormat
from vcot.io import manifest, storage
from vcot.log import get_logger
from vcot.train import distributed, pointer
from vcot.train.config import TrainConfig
from vcot.train.options import prepare_full
from vcot.train.recipe import Recipe, lora_target_regex
from vcot.train.sharding import ShardReport, fsdp_arguments, gathered_state_dict, is_sharded
from vcot.train.throughput import Throughput, throughput_of

if TYPE_CHECKING:
    from vcot.models.loading import Precision

log = get_logger(__name__)


class TrainingInterrupted(VcotError):
    """SIGTERM stopped training after a checkpoint was saved; rerunning resumes from it."""


# --------------------------------------------------------------------------------------------------
# The machinery, in the order a method uses it
# --------------------------------------------------------------------------------------------------


def check_processor(processor: Any, fmt: ModelFormat) -> None:
    """Refuse a processor that would cut images differently from what tokenize counted (and the card says)."""
    found = ModelFormat.for_processor(processor, fmt.family).vision
    if found != fmt.vision:
        raise VcotError(
            f"the processor's image geometry {found} differs from the data's {fmt.vision}: "
            "tokenize with the same --model, or re-run tokenize"
        )


def add_lora(model: Any, recipe: Recipe) -> Any:
    """Wrap the targeted projections in LoRA adapters (language model only unless ``tune_vision``).

    ``modules_to_save`` modules (e.g. ``embed_tokens``, ``lm_head``) are trained in full and saved with the adapter.
    """
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        **{
            "r": recipe.lora_r,
            "lora_alpha": recipe.lora_alpha,
            "lora_dropout": recipe.lora_dropout,
            "target_modules": lora_target_regex(recipe.lora_target_modules, include_vision=recipe.tune_vision),
            "bias": "none",
            "task_type": "CAUSAL_LM",
            "modules_to_save": list(recipe.modules_to_save or []) or None,
            **recipe.peft,  # the recipe's peft: extras (use_dora, use_rslora, target_modules, ...), checked by name
        }
    )
    model = get_peft_model(model, lora)
    if recipe.tune_vision:
        targets = "peft.target_modules" if "target_modules" in recipe.peft else "lora_target_modules"
        check_vision_tower_trains(model, targets)
    return model


def check_vision_tower_trains(model: Any, targets: str = "lora_target_modules") -> None:
    """``tune_vision`` that adapts nothing of the vision tower is refused: Qwen3-VL's blocks name their layers
    ``attn.qkv``, ``attn.proj``, ``mlp.linear_fc1``, ``mlp.linear_fc2`` (Qwen2.5-VL's attention ``attn.qkv``,
    ``attn.proj``), which the language model's LoRA names do not match: the run would train what it trains without."""
    import torch

    tower = [(name, module) for name, module in model.named_modules() if is_vision(name) and "merger" not in name]
    if not tower:
        raise ConfigError("tune_vision=true, but the model has no vision tower: set tune_vision=false")
    if any(param.requires_grad for _, module in tower for param in module.parameters(recurse=False)):
        return
    layers = {".".join(name.split(".")[-2:]) for name, module in tower if isinstance(module, torch.nn.Linear)}
    raise ConfigError(
        f"tune_vision=true adapts nothing of the vision tower: none of its layers ({', '.join(sorted(layers))}) is "
        f"in {targets}: add the ones to adapt, or set tune_vision=false"
    )


def load_policy(model_uri: str, recipe: Recipe, fmt: ModelFormat, *, init_adapter: str = "") -> tuple[Any, Any]:
    """The base model with a trainable LoRA on its language model, and a processor that cuts images as ``fmt`` says.

    ``init_adapter`` continues a committed run's adapter (its own LoRA settings and processor); otherwise a new
    LoRA is made from the recipe, or none with ``finetune: full`` (the weights themselves train).
    """
    import torch

    from vcot.models.loading import load_model_and_processor

    model, processor = load_model_and_processor(
        model_uri, adapter_uri=init_adapter or None, quantize=recipe.quantize, for_training=True,
        sharded=recipe.sharding is not None,
    )  # fmt: skip
    processor.image_processor.size = {"shortest_edge": fmt.vision.min_pixels, "longest_edge": fmt.vision.max_pixels}
    check_processor(processor, fmt)
    if recipe.finetune == "full":
        model = prepare_full(model, recipe)
    elif not init_adapter:
        torch.manual_seed(recipe.seed)
        model = add_lora(model, recipe)
    # An adapter's trainable copies in fp32 (a full fine-tune keeps its weights' dtype unless sharded: docs/train.md)
    upcast = upcast_trainable(model) if recipe.finetune == "lora" and recipe.sharding is None else 0
    if hasattr(model, "peft_config"):  # PEFT records the folder it loaded from (a local cache of an s3:// model)
        model.peft_config["default"].base_model_name_or_path = model_uri  # the adapter names the user's model
    trainable, total = parameter_counts(model)
    log.info("trainable", finetune=recipe.finetune, trainable=trainable, total=total, continued=init_adapter or None,
             upcast_to_fp32=upcast)  # fmt: skip
    return model, processor


def upcast_trainable(model: Any) -> int:
    """Keep what trains in fp32 on a 16-bit GPU and return how many modules moved: mixed precision's master weights,
    as LLaMA-Factory keeps an adapter's by default and FSDP2 keeps them here. LoRA's matrices are fp32 already;
    ``modules_to_save`` copies are made in the base's dtype, where an update below a weight's rounding step is lost
    (the tiny SFT's eval loss 0.682 against fp32's 0.661 after 400 steps in bf16; docs/benchmarks.md), and fp16's
    gradient scaler refuses fp16 weights outright. Each such module computes in fp32 and hands the base's dtype on,
    so its neighbours see what they saw before, also outside autocast (``generate``).

    >>> import torch
    >>> layer = torch.nn.Linear(2, 2, dtype=torch.bfloat16)
    >>> layer.bias.requires_grad_(False)  # doctest: +ELLIPSIS
    Parameter containing:...
    >>> upcast_trainable(layer), layer.weight.dtype, layer(torch.ones(2, dtype=torch.bfloat16)).dtype
    (1, torch.float32, torch.bfloat16)
    """
    import torch

    half = (torch.bfloat16, torch.float16)
    upcast = 0
    for module in model.modules():
        trained = [p.dtype for p in module.parameters(recurse=False) if p.requires_grad and p.dtype in half]
        if not trained:
            continue
        dtype = trained[0]
        for param in module.parameters(recurse=False):  # a frozen bias too: one dtype inside the module
            if param.dtype in half:
                param.data = param.data.float()
        module.register_forward_pre_hook(lambda _, args, kwargs: _floats_to((args, kwargs), torch.float32),
                                         with_kwargs=True)  # fmt: skip
        module.register_forward_hook(lambda _, args, output, dtype=dtype: _floats_to(output, dtype))
        upcast += 1
    return upcast


def _floats_to(value: Any, dtype: Any) -> Any:
    """``value`` (tensors in any nesting of tuples, lists and dicts) with its floating tensors cast to ``dtype``."""
    import torch
    from torch.utils._pytree import tree_map

    return tree_map(lambda x: x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x, value)


def resolve_optimizer(name: str, device: str) -> str:
    """The recipe's optimizer, or ``adamw_torch`` (with a warning) when bitsandbytes cannot run it here. A name
    transformers does not know is the recipe's mistake (exit 2), never replaced by the fallback."""
    from transformers.training_args import OptimizerNames

    known = [option.value for option in OptimizerNames]
    if name not in known:
        raise ConfigError(
            f"recipe optim={name!r} is not an optimizer transformers knows: use one of {', '.join(known)}"
        )
    if "8bit" not in name:
        return name
    try:
        import bitsandbytes as bnb
        import torch

        param = torch.nn.Parameter(torch.ones(4096, device=device))
        optimizer = bnb.optim.AdamW8bit([param])
        param.grad = torch.ones_like(param)
        optimizer.step()
        return name
    except Exception as exc:  # noqa: BLE001 - any failure means: not usable on this machine
        log.warning("optimizer_fallback", wanted=name, using="adamw_torch", reason=str(exc).splitlines()[0][:200])
        return "adamw_torch"


@dataclass(frozen=True)
class RunFolders:
    """Where a run writes: a local scratch folder that is the same path on every restart (so paths in the trainer
    state stay valid), and the storage folders its checkpoints and TensorBoard events are synced to."""

    scratch: Path
    output: str

    @classmethod
    def for_output(cls, output: str) -> RunFolders:
        """One scratch folder per node under torchrun (the ranks of a node share it, as the Trainer expects)."""
        from vcot.train.data import local_scratch

        name = hashlib.sha256(output.rstrip("/").encode()).hexdigest()[:16]
        if distributed.world_size() > 1:
            name += f"-node{distributed.node_rank()}"  # two "nodes" on one machine must not share one
        return cls(local_scratch(name), output)

    @property
    def trainer_dir(self) -> Path:
        return self.scratch / "trainer"

    @property
    def tensorboard_dir(self) -> Path:
        return self.scratch / "tensorboard"

    @property
    def remote_checkpoints(self) -> str:
        return storage.join(self.output, "checkpoints")

    @property
    def remote_tensorboard(self) -> str:
        return storage.join(self.output, "tensorboard")


def parameter_counts(model: Any) -> tuple[int, int]:
    """``(trainable, total)`` parameters: PEFT's count (it knows 4-bit packing) or, for a full fine-tune, torch's."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())


def check_scratch(folders: RunFolders, recipe: Recipe, model: Any, *, rows_bytes: int = 0) -> int:
    """Log what the run will write to its scratch disk (:meth:`Recipe.scratch_bytes` plus the rows' local copy)
    and warn, before the first step, where the disk has less room: on Kubernetes the pod's ``/tmp`` volume must be
    sized for the recipe (docs/k8s.md, "Scratch space"). Returns the bytes needed."""
    trainable, total = parameter_counts(model)
    needed = recipe.scratch_bytes(trainable, total) + rows_bytes
    free = shutil.disk_usage(folders.scratch).free
    gib = {"needed_gib": round(needed / 2**30, 2), "free_gib": round(free / 2**30, 2), "path": str(folders.scratch)}
    log.info("scratch", **gib)
    if free < needed:
        log.warning("scratch_too_small", **gib, hint="give TMPDIR more room (Kubernetes: the /tmp volume's sizeLimit)")
    return needed


def batch_sizes(recipe: Recipe) -> dict[str, int]:
    """The batch on this world: per device, accumulation (derived when the recipe sets ``global_batch_size``),
    world size and the global batch per optimizer step; logged and recorded in the manifest's stats."""
    world = distributed.world_size()
    accumulation = recipe.accumulation_for(world)
    return {
        "per_device_train_batch_size": recipe.per_device_train_batch_size,
        "gradient_accumulation_steps": accumulation,
        "world_size": world,
        "global_batch_size": recipe.per_device_train_batch_size * accumulation * world,
    }


def common_arguments(recipe: Recipe, folders: RunFolders, precision: Precision) -> dict[str, Any]:
    """The trainer arguments both methods share: the recipe's optimization knobs for this machine (bf16/fp16 on
    GPU, fp32 on CPU), checkpoints every ``save_steps``, logging, no reporting integration (TensorBoard is ours)."""
    import torch

    device = precision.device
    batch = batch_sizes(recipe)
    log.info("batch", **batch)
    return {
        "output_dir": str(folders.trainer_dir),
        "num_train_epochs": recipe.num_train_epochs,
        "max_steps": recipe.max_steps,
        "per_device_train_batch_size": recipe.per_device_train_batch_size,
        "gradient_accumulation_steps": batch["gradient_accumulation_steps"],
        "learning_rate": recipe.learning_rate,
        "lr_scheduler_type": recipe.lr_scheduler_type,
        "warmup_steps": recipe.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the total steps
        "weight_decay": recipe.weight_decay,
        "max_grad_norm": recipe.max_grad_norm,
        "optim": resolve_optimizer(recipe.optim, device),
        "seed": recipe.seed,
        "bf16": device == "cuda" and precision.dtype == torch.bfloat16,
        "fp16": device == "cuda" and precision.dtype == torch.float16,
        "use_cpu": device == "cpu",
        "activation_checkpointing": recipe.gradient_checkpointing,  # transformers 5's name for gradient checkpointing
        "activation_checkpointing_kwargs": {"use_reentrant": False} if recipe.gradient_checkpointing else None,
        "save_strategy": "steps",
        "save_steps": recipe.save_steps,
        "save_total_limit": recipe.save_total_limit,
        "ddp_find_unused_parameters": False,  # every trainable (LoRA) parameter is used in each forward pass
        "save_on_each_node": True,  # each node's scratch holds the checkpoints its ranks reload (best model)
        "restore_callback_states_from_checkpoint": True,  # e.g. early stopping's patience survives a resume
        "logging_steps": recipe.logging_steps,
        "logging_first_step": True,
        "report_to": list(recipe.report_to),  # run_training puts our TensorBoard callback in (synced to storage)
        "remove_unused_columns": False,
        "dataloader_num_workers": recipe.dataloader_num_workers,
        # Batches of similar lengths (less padding); the rows' length column, never a pass over the data.
        "train_sampling_strategy": "group_by_length" if recipe.group_by_length else "random",
        "disable_tqdm": True,  # our TrainProgress shows the bar (console) or logs step, total, eta_s (JSON)
        **fsdp_arguments(recipe),  # sharding: fsdp2 (vcot.train.sharding)
    }


def run_training(trainer: Any, folders: RunFolders) -> Any:
    """Train from the newest complete checkpoint in storage (if any); returns the trainer's ``TrainOutput``.

    Checkpoints are synced to storage after every save, TensorBoard events after every log; SIGTERM finishes the
    step, saves a checkpoint and raises :class:`TrainingInterrupted` (exit 1: the rerun resumes). A loss or weights
    that become non-finite stop the run at that step with :class:`~vcot.train.divergence.TrainingDiverged` (exit 2):
    nothing is saved after it, nothing committed.
    """
    from torch.utils.tensorboard import SummaryWriter
    from transformers import PrinterCallback, ProgressCallback
    from transformers.integrations import TensorBoardCallback

    from vcot.train.checkpoints import (
        CheckpointSync,
        NoLossWithoutSteps,
        RunFinished,
        SaveOnSigterm,
        StopAtLastStep,
        TensorBoardSync,
        checkpoint_step,
    )
    from vcot.train.divergence import StopOnDivergence, diverged_crash
    from vcot.train.progress import TrainProgress

    sigterm = SaveOnSigterm()
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)  # a recipe's trainer: {disable_tqdm: false} would add it back
    trainer.remove_callback(TensorBoardCallback)  # the recipe's report_to added one writing into the trainer's folder
    resume_from = restore(folders)
    if resume_from is not None:  # the start was scored in the first session (its score is in the restored history)
        trainer.args.eval_on_start = False
    # First of all callbacks: the trackers (TensorBoard here, W&B or MLflow from report_to) log what it leaves.
    resumed_at = checkpoint_step(resume_from.name) if resume_from else None
    trainer.callback_handler.callbacks.insert(0, NoLossWithoutSteps(resumed_at))
    if "tensorboard" in trainer.args.report_to:  # ours, in a folder uploaded after every flush (each log)
        tensorboard = TensorBoardCallback(SummaryWriter(log_dir=str(folders.tensorboard_dir)))
        tensorboard.logging_dir = str(folders.tensorboard_dir)  # where it reopens one after training (final eval)
        trainer.add_callback(tensorboard)
        trainer.add_callback(TensorBoardSync(folders.tensorboard_dir, folders.remote_tensorboard))
    batch = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps * distributed.world_size()
    sync = CheckpointSync(folders.trainer_dir, folders.remote_checkpoints)
    # StopOnDivergence after TrainProgress: a non-finite value is logged before it stops the run.
    last_step = StopAtLastStep(trainer.callback_handler)
    callbacks = (sync, sigterm, TrainProgress(), Throughput(batch), StopOnDivergence(), last_step)
    for callback in callbacks:
        trainer.add_callback(callback)
    if is_sharded(trainer):
        trainer.add_callback(ShardReport())

    sigterm.install()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except RunFinished:  # resumed from the last step: end as train() ends (best model loaded, on_train_end)
        result = trainer._finalize_training(None, 0, time.time())
    except (RuntimeError, ValueError) as exc:
        cause = diverged_crash(exc, trainer)
        if cause is None:
            raise
        raise cause from exc
    finally:
        sigterm.uninstall()
    if resumed_at == trainer.state.global_step:  # no step ran: RGFN's log() copies the dict the callback emptied
        result.metrics.pop("train_loss", None)
    # After the last step the ranks no longer agree at each step: a SIGTERM during the final save reached some only.
    if distributed.any_rank(sigterm.received, trainer.args.device):
        raise TrainingInterrupted(
            f"stopped by SIGTERM at step {trainer.state.global_step}; the checkpoint is in "
            f"{folders.remote_checkpoints}. Run the same command again to resume from it"
        )
    return result


def restore(folders: RunFolders) -> Path | None:
    """The newest complete checkpoint in storage, in this node's scratch; every rank resumes from rank 0's
    choice (each node's first rank downloads, the others wait)."""
    from vcot.train.checkpoints import restore_checkpoints

    newest = None
    if distributed.local_rank() == 0:
        newest = restore_checkpoints(folders.remote_checkpoints, folders.trainer_dir)
        # The scratch folder outlives a killed or overwritten run: its events would be uploaded with this run's. So
        # do the stored ones of a run killed before its first checkpoint, which a fresh start does not continue.
        shutil.rmtree(folders.tensorboard_dir, ignore_errors=True)
        if newest is None and distributed.is_main():
            storage.delete_prefix(folders.remote_tensorboard)
        if newest is not None and storage.list_uris(folders.remote_tensorboard):
            storage.download_prefix(folders.remote_tensorboard, folders.tensorboard_dir)
    distributed.barrier()
    name = distributed.from_main(newest.name if newest else None)
    return folders.trainer_dir / name if name else None


def model_card(config: TrainConfig, fmt: ModelFormat, base_config: dict[str, Any], method: str) -> dict[str, Any]:
    """``vcot-model.json``: what evaluate needs to check its base model, prompt the adapter and read its boxes back;
    the method that trained it and, for a continued adapter, the one it continued (``continued_from``): BiN answers
    with the SFT model, which is that adapter, the adapter itself (SFT) or the base (a new RGFN LoRA on an SFT
    model)."""
    from vcot.models.loading import architecture

    card = {"base_model": config.model, "base_architecture": architecture(base_config), "model_format": fmt.to_dict(),
            "method": method}  # fmt: skip
    return card | ({"continued_from": config.init_adapter} if config.init_adapter else {})


def merge_adapter(config: TrainConfig, adapter_dir: Path, dest: Path, card: dict[str, Any]) -> None:
    """The base (never the 4-bit one) with the adapter merged in: a standalone model, its processor saved for
    serving and the adapter's card (evaluate reads the model format from it), as vcot-export writes it."""
    from vcot.models.loading import MODEL_CARD, save_merged

    save_merged(config.model, str(adapter_dir), dest, dtype=None)  # the precision it trained at
    merged_card = {**card, "merged_from": storage.join(config.output, "adapter")}
    (dest / MODEL_CARD).write_text(storage.dumps_json(merged_card), encoding="utf-8")


def _files_of(root: Path, prefix: str) -> list[Any]:
    """Manifest entries (path, sha256, size) for every file under ``root``, listed as ``prefix/...``."""
    from vcot.io.shards import file_entry

    return [
        file_entry(path, f"{prefix}/{path.relative_to(root).as_posix()}")
        for path in sorted(p for p in root.rglob("*") if p.is_file())
    ]


def commit_run(
    config: TrainConfig,
    recipe: Recipe,
    fmt: ModelFormat,
    trainer: Any,
    processor: Any,
    folders: RunFolders,
    *,
    metrics: dict[str, Any],
    inputs: list[str],
    stats: dict[str, Any],
) -> dict[str, Any]:
    """Write the adapter, card, metrics and TensorBoard events, commit ``_SUCCESS``, then (``--update-pointer``) the
    pointer: on rank 0 only; the other ranks wait for it and return its manifest."""
    stats = {**stats, **batch_sizes(recipe), "throughput": throughput_of(trainer)}
    metrics = {**metrics, "throughput": stats["throughput"]}
    weights = gathered_state_dict(trainer)  # sharded: every rank sends its shards of what is saved to rank 0
    committed = None
    if distributed.is_main():
        committed = _commit(config, recipe, fmt, trainer, processor, folders, metrics, inputs, stats, weights)
    committed = distributed.from_main(committed)
    shutil.rmtree(folders.scratch, ignore_errors=True)  # everything is in storage now
    return committed


def _commit(
    config: TrainConfig,
    recipe: Recipe,
    fmt: ModelFormat,
    trainer: Any,
    processor: Any,
    folders: RunFolders,
    metrics: dict[str, Any],
    inputs: list[str],
    stats: dict[str, Any],
    weights: dict[str, Any] | None,
) -> dict[str, Any]:
    """``weights``: a sharded run's gathered state dict (``None``: the model's own, whole on every rank)."""
    from vcot.models.loading import MODEL_CARD, load_processor

    with tempfile.TemporaryDirectory(prefix="vcot-train-out-") as tmp:
        if recipe.finetune == "full":
            files = _save_full_model(config, fmt, trainer, processor, Path(tmp) / "model", weights)
            return _finish(config, recipe, fmt, trainer, folders, metrics, inputs, stats, files)
        out = Path(tmp)
        adapter_dir = out / "adapter"
        # Only the trained adapter: TRL's GRPO adds a frozen "ref" copy of a continued one for its KL term.
        trainer.model.save_pretrained(adapter_dir, selected_adapters=["default"], **_state_dict(weights))
        processor.save_pretrained(adapter_dir)
        check_processor(load_processor(str(adapter_dir)), fmt)  # what evaluate will load cuts images as trained
        card = model_card(config, fmt, trainer.model.config.to_dict(), recipe.method)  # a PeftModel's: its base's
        (adapter_dir / MODEL_CARD).write_text(storage.dumps_json(card), encoding="utf-8")
        storage.upload_dir(adapter_dir, storage.join(config.output, "adapter"))
        log_serving(adapter_dir, config.output, merged=recipe.merge_adapter)
        files = _files_of(adapter_dir, "adapter")
        if recipe.merge_adapter:
            merge_adapter(config, adapter_dir, out / "merged", card)
            storage.upload_dir(out / "merged", storage.join(config.output, "merged"))
            files += _files_of(out / "merged", "merged")
    return _finish(config, recipe, fmt, trainer, folders, metrics, inputs, stats, files)


def log_serving(adapter_dir: Path, output: str, *, merged: bool) -> None:
    """Say how the run's adapter can be served: as a LoRA on its base, or only merged (docs/export.md)."""
    from vcot.models.served import lora_serving_problem

    problem = lora_serving_problem(adapter_dir)
    adapter, model = storage.join(output, "adapter"), storage.join(output, "merged")
    if not problem:
        log.info("serving", how=f"as a LoRA on its base model (vllm serve BASE --enable-lora --lora-modules "
                 f"NAME={adapter}), or merged by vcot-export")  # fmt: skip
    elif merged:
        log.info("serving", how=f"merged only: serve {model}", why=problem)
    else:
        log.info("serving", how=f"merged only: vcot-export --run {output} --output DIR, then serve DIR", why=problem)


def _state_dict(weights: dict[str, Any] | None) -> dict[str, Any]:
    return {} if weights is None else {"state_dict": weights}


def _save_full_model(
    config: TrainConfig, fmt: ModelFormat, trainer: Any, processor: Any, model_dir: Path, weights: dict[str, Any] | None
) -> list[Any]:
    """``finetune: full``: the trained model, its processor and card in ``OUTPUT/model`` (no adapter)."""
    from vcot.models.loading import MODEL_CARD, load_processor, save_processor_for_serving, without_plain_penalty

    without_plain_penalty(trainer.model)  # model/ is served as it is
    trainer.model.save_pretrained(model_dir, **_state_dict(weights))
    save_processor_for_serving(processor, model_dir)  # loadable by plain transformers and vLLM
    check_processor(load_processor(str(model_dir)), fmt)
    card = model_card(config, fmt, trainer.model.config.to_dict(), "sft")  # full fine-tuning is SFT-only
    (model_dir / MODEL_CARD).write_text(storage.dumps_json(card), encoding="utf-8")
    storage.upload_dir(model_dir, storage.join(config.output, model_dir.name))
    return _files_of(model_dir, model_dir.name)


def _finish(
    config: TrainConfig,
    recipe: Recipe,
    fmt: ModelFormat,
    trainer: Any,
    folders: RunFolders,
    metrics: dict[str, Any],
    inputs: list[str],
    stats: dict[str, Any],
    files: list[Any],
) -> dict[str, Any]:
    """Metrics and TensorBoard events, then ``_SUCCESS``, then the pointer (:mod:`vcot.train.pointer`)."""
    storage.write_json(storage.join(config.output, "metrics.json"), metrics)
    storage.upload_dir(folders.tensorboard_dir, folders.remote_tensorboard)

    decision = pointer.decide(config, recipe.method, metrics) if config.update_pointer else None
    committed = manifest.commit(
        config.output,
        stage="train",
        files=files,
        config={**redacted(config), "recipe_values": recipe.to_dict(), "model_format": fmt.to_dict()},
        inputs=inputs,
        stats={**stats, **({"pointer": decision.to_dict()} if decision else {})},
    )
    log.info("committed", output=config.output, global_step=trainer.state.global_step)
    if decision is not None:
        pointer.publish(config, decision, recipe.finetune)
    return committed
