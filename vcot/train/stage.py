"""The train stage: SFT of a LoRA adapter on tokenized grounded rationales, resumable on S3.

Reads top to bottom in the order things happen:

1. skip a committed output (writing its pointer if a killed pod never did); resolve the recipe; read the
   model format tokenize recorded (``vcot.model_format``: frame, syntax, pixel budget, mode);
2. load the base model (4-bit on GPU per the recipe) and its processor, set to tokenize's pixel budget;
3. wrap the language model's projections in LoRA (the vision tower only when asked);
4. datasets and the collator that loads pixels; TrainingArguments from the recipe and the machine;
5. restore the newest complete checkpoint from storage, train (checkpoints synced, SIGTERM saves one);
6. save the adapter + processor + ``vcot-model.json`` (and optionally a merged model), metrics and
   TensorBoard events; commit ``_SUCCESS``; point ``latest.json`` at this run.

Output layout (``OUTPUT``)::

    adapter/        PEFT adapter, processor files, vcot-model.json (base model + model format)
    merged/         optional: the base with the adapter merged in
    checkpoints/    checkpoint-<step>/ (+ _COMPLETE marker once fully uploaded)
    tensorboard/    event files
    metrics.json    final train/eval metrics and the log history
    _SUCCESS        manifest: files, config (recipe included), lineage of the data
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vcot import manifest, storage
from vcot.config import option, redacted
from vcot.errors import StorageError, VcotError
from vcot.log import get_logger
from vcot.model_format import ModelFormat
from vcot.train.recipe import DEFAULT_RECIPE, Recipe, load_recipe, lora_target_regex

if TYPE_CHECKING:
    from vcot.modeling import Precision

log = get_logger(__name__)


class TrainingInterrupted(VcotError):
    """SIGTERM stopped training after a checkpoint was saved; rerunning resumes from it."""


@dataclass
class TrainConfig:
    """Fine-tune a LoRA adapter on a tokenize output (SFT), resumable from checkpoints in storage."""

    data: str = option(help="Committed tokenize output (s3://bucket/prefix or a local path).")
    model: str = option(help="Base model: a folder, an s3:// prefix (synced to a local cache) or a hub id.")
    output: str = option(help="Run folder to write (adapter/, checkpoints/, tensorboard/, metrics.json, _SUCCESS).")
    recipe: str = option(DEFAULT_RECIPE, help="Recipe preset name (qwen2.5-vl-7b-qlora, tiny-cpu) or a YAML file/URI.")
    set: str = option("", help="Recipe overrides, key=value pairs with YAML values: 'lora_r=16,max_steps=100'.")
    pointer: str = option("", help="Newest-model pointer JSON to update (default: <parent of --output>/latest.json).")
    overwrite: bool = option(False, help="Retrain an output that is already committed (deletes it first).")
    threads: int = option(
        0, help="On CPU: torch threads (0: torch's default, the node's cores; 1 is fastest on a busy shared CPU)."
    )

    def __post_init__(self) -> None:
        if self.output.rstrip("/") == self.data.rstrip("/"):
            raise ValueError("--output must differ from --data")
        if self.pointer and not self.pointer.endswith(".json"):
            raise ValueError("--pointer must name a .json file")
        if self.threads < 0:
            raise ValueError("--threads must be >= 0 (0 keeps torch's default)")
        load_recipe(self.recipe, self.set)  # a bad recipe or override fails here, before any model is loaded (exit 2)

    @property
    def pointer_uri(self) -> str:
        return self.pointer or default_pointer(self.output)


def default_pointer(output: str) -> str:
    """
    >>> default_pointer("s3://bucket/runs/run-7/")
    's3://bucket/runs/latest.json'
    """
    return storage.join(storage.parent(output), "latest.json")


# --------------------------------------------------------------------------------------------------
# The pieces, in the order train() uses them
# --------------------------------------------------------------------------------------------------


def read_data_settings(data_uri: str) -> tuple[ModelFormat, str]:
    """What tokenize recorded: the model format (any layout vcot wrote) and the model whose tokenizer it used."""
    settings = manifest.read_manifest(data_uri, expect_stage="tokenize").get("config", {})
    try:
        return ModelFormat.from_dict(settings), str(settings["model"])
    except (ValueError, TypeError, KeyError) as exc:
        raise VcotError(f"{data_uri} manifest has no usable model format ({exc}): re-run tokenize") from exc


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
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=lora_target_regex(recipe.lora_target_modules, include_vision=recipe.tune_vision),
        bias="none",
        task_type="CAUSAL_LM",
        modules_to_save=list(recipe.modules_to_save or []) or None,
    )
    return get_peft_model(model, lora)


def resolve_optimizer(name: str, device: str) -> str:
    """The recipe's optimizer, or ``adamw_torch`` (with a warning) when bitsandbytes cannot run it here."""
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


def training_arguments(recipe: Recipe, local_dir: Path, *, precision: Precision, has_eval: bool) -> Any:
    """The recipe as ``TrainingArguments`` for this machine: bf16/fp16 on GPU, fp32 on CPU; the optimizer."""
    import torch
    from transformers import TrainingArguments

    device = precision.device
    return TrainingArguments(
        output_dir=str(local_dir),
        num_train_epochs=recipe.num_train_epochs,
        max_steps=recipe.max_steps,
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        per_device_eval_batch_size=recipe.per_device_eval_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler_type,
        warmup_steps=recipe.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the total steps
        weight_decay=recipe.weight_decay,
        max_grad_norm=recipe.max_grad_norm,
        optim=resolve_optimizer(recipe.optim, device),
        neftune_noise_alpha=recipe.neftune_noise_alpha,
        seed=recipe.seed,
        bf16=device == "cuda" and precision.dtype == torch.bfloat16,
        fp16=device == "cuda" and precision.dtype == torch.float16,
        use_cpu=device == "cpu",
        activation_checkpointing=recipe.gradient_checkpointing,  # transformers 5's name for gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False} if recipe.gradient_checkpointing else None,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=recipe.eval_steps,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=recipe.save_total_limit,
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        restore_callback_states_from_checkpoint=True,  # early stopping's patience survives a resume
        logging_steps=recipe.logging_steps,
        logging_first_step=True,
        report_to="none",  # TensorBoard is added explicitly, writing where we sync from
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=recipe.dataloader_num_workers,
        disable_tqdm=not sys.stderr.isatty(),  # a progress bar on a terminal; structured log lines in a pod
    )


def model_card(config: TrainConfig, fmt: ModelFormat, base_config: dict[str, Any]) -> dict[str, Any]:
    """``vcot-model.json``: what evaluate needs to check its base model, prompt the adapter and read its boxes back."""
    from vcot.modeling import architecture

    return {"base_model": config.model, "base_architecture": architecture(base_config), "model_format": fmt.to_dict()}


def merge_adapter(config: TrainConfig, adapter_dir: Path, dest: Path) -> None:
    """The base in 16-bit (never the 4-bit one) with the adapter merged in: a standalone model."""
    from vcot.modeling import load_model_and_processor

    model, processor = load_model_and_processor(config.model, adapter_uri=str(adapter_dir))
    model.merge_and_unload().save_pretrained(dest)
    processor.save_pretrained(dest)


def _files_of(root: Path, prefix: str) -> list[Any]:
    """Manifest entries (path, sha256, size) for every file under ``root``, listed as ``prefix/...``."""
    from vcot.shards import file_entry

    return [
        file_entry(path, f"{prefix}/{path.relative_to(root).as_posix()}")
        for path in sorted(p for p in root.rglob("*") if p.is_file())
    ]


def run_pointer(output: str, base_model: str) -> dict[str, str]:
    """The pointer JSON scheduled evaluation follows to the newest run.

    >>> run_pointer("s3://b/runs/r1", "s3://b/models/qwen")["adapter"]
    's3://b/runs/r1/adapter'
    """
    return {"run": output, "base_model": base_model, "adapter": storage.join(output, "adapter")}


def ensure_pointer(config: TrainConfig) -> None:
    """On the rerun of a committed output, write its pointer if it is missing, unreadable or names this run.

    A pod killed between ``_SUCCESS`` and the pointer write left a finished run that scheduled evaluation
    may never see; the retried pod skips training and writes the pointer here. A pointer that names another
    run is left alone: nothing tells an older run from a newer one, and moving the pointer back would have
    the next scheduled evaluation score an older model (and flag a regression). The base model is the one
    the committed run recorded.
    """
    recorded = manifest.read_manifest(config.output).get("config", {})
    expected = run_pointer(config.output, recorded.get("model") or config.model)
    try:
        current = storage.read_json(config.pointer_uri) if storage.exists(config.pointer_uri) else None
    except StorageError:
        current = None  # unreadable: rewrite it
    if not isinstance(current, dict):
        current = None  # not a pointer: rewrite it
    if current == expected:
        return
    if current is not None and str(current.get("run", "")).rstrip("/") != config.output.rstrip("/"):
        log.info("pointer_kept", pointer=config.pointer_uri, run=config.output, points_to=current.get("run"))
        return
    storage.write_json(config.pointer_uri, expected)
    log.info("pointer_written", pointer=config.pointer_uri, run=config.output, previous=current)


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


def train(config: TrainConfig) -> dict[str, Any] | None:
    """Run the stage; returns the manifest written, or ``None`` when the output was already committed."""
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from transformers import EarlyStoppingCallback, PrinterCallback, Trainer
    from transformers.integrations import TensorBoardCallback

    from vcot.modeling import MODEL_CARD, load_model_and_processor, load_processor, machine_precision
    from vcot.train.checkpoints import CheckpointSync, LogMetrics, SaveOnSigterm, restore_checkpoints
    from vcot.train.data import Collator, TokenizedDataset, local_scratch

    # 1. What to do.
    inputs = [config.data, config.model]
    if not manifest.prepare_output(config.output, stage="train", inputs=inputs, overwrite=config.overwrite):
        log.info("already_committed", output=config.output, hint="pass --overwrite to retrain")
        ensure_pointer(config)
        return None
    recipe = load_recipe(config.recipe, config.set)
    fmt, tokenized_with = read_data_settings(config.data)
    if tokenized_with != config.model:
        log.warning(
            "model_differs",
            tokenized_with=tokenized_with,
            training=config.model,
            hint="the tokenizers must be identical",
        )
    log.info("recipe", **recipe.to_dict())
    if config.threads:
        torch.set_num_threads(config.threads)  # torch sizes its pool from the node's cores, not the pod's CPU limit

    # 2. Model and processor (the processor cuts images exactly as tokenize counted their tokens).
    model, processor = load_model_and_processor(config.model, quantize=recipe.quantize, for_training=True)
    base_config = model.config.to_dict()
    processor.image_processor.size = {"shortest_edge": fmt.vision.min_pixels, "longest_edge": fmt.vision.max_pixels}
    check_processor(processor, fmt)
    precision = machine_precision()

    # 3. LoRA.
    torch.manual_seed(recipe.seed)
    model = add_lora(model, recipe)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("lora", trainable=trainable, total=total)

    # 4. Data and arguments.
    train_set = TokenizedDataset(config.data, "train")
    eval_set = TokenizedDataset(config.data, "val")
    if len(train_set) == 0:
        raise VcotError(f"{config.data} has no train rows: check the tokenize stats in its _SUCCESS")
    scratch = local_scratch(hashlib.sha256(config.output.rstrip("/").encode()).hexdigest()[:16])
    local_dir, tensorboard_dir = scratch / "trainer", scratch / "tensorboard"
    args = training_arguments(recipe, local_dir, precision=precision, has_eval=len(eval_set) > 0)
    remote_checkpoints = storage.join(config.output, "checkpoints")
    remote_tensorboard = storage.join(config.output, "tensorboard")
    sigterm = SaveOnSigterm()
    callbacks: list[Any] = [
        TensorBoardCallback(SummaryWriter(log_dir=str(tensorboard_dir))),
        CheckpointSync(local_dir, remote_checkpoints, tensorboard_dir, remote_tensorboard),
        sigterm,
    ]
    if args.load_best_model_at_end and recipe.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(recipe.early_stopping_patience, recipe.early_stopping_threshold))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set if len(eval_set) else None,
        data_collator=Collator(processor),
        processing_class=processor,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LogMetrics())

    # 5. Resume and train.
    resume_from = restore_checkpoints(remote_checkpoints, local_dir)
    if resume_from is not None and storage.list_uris(remote_tensorboard):
        storage.download_prefix(remote_tensorboard, tensorboard_dir)
    sigterm.install()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        sigterm.uninstall()
    if sigterm.received:
        raise TrainingInterrupted(
            f"stopped by SIGTERM at step {trainer.state.global_step}; the checkpoint is in {remote_checkpoints}. "
            "Run the same command again to resume from it"
        )

    # 6. Outputs.
    metrics: dict[str, Any] = {"train": result.metrics, "global_step": trainer.state.global_step}
    if trainer.eval_dataset is not None:
        metrics["eval"] = trainer.evaluate()
        metrics["best_eval_loss"] = trainer.state.best_metric
    metrics["log_history"] = trainer.state.log_history
    with tempfile.TemporaryDirectory(prefix="vcot-train-out-") as tmp:
        out = Path(tmp)
        adapter_dir = out / "adapter"
        trainer.model.save_pretrained(adapter_dir)
        processor.save_pretrained(adapter_dir)
        check_processor(load_processor(str(adapter_dir)), fmt)  # what evaluate will load cuts images as trained
        card = model_card(config, fmt, base_config)
        (adapter_dir / MODEL_CARD).write_text(storage.dumps_json(card), encoding="utf-8")
        storage.upload_dir(adapter_dir, storage.join(config.output, "adapter"))
        files = _files_of(adapter_dir, "adapter")
        if recipe.merge_adapter:
            merge_adapter(config, adapter_dir, out / "merged")
            storage.upload_dir(out / "merged", storage.join(config.output, "merged"))
            files += _files_of(out / "merged", "merged")
    storage.write_json(storage.join(config.output, "metrics.json"), metrics)
    storage.upload_dir(tensorboard_dir, remote_tensorboard)

    committed = manifest.commit(
        config.output,
        stage="train",
        files=files,
        config={**redacted(config), "recipe_values": recipe.to_dict(), "model_format": fmt.to_dict()},
        inputs=[config.data],
        stats={
            "global_step": trainer.state.global_step,
            "train_loss": result.metrics.get("train_loss"),
            "eval_loss": metrics.get("eval", {}).get("eval_loss"),
            "best_eval_loss": metrics.get("best_eval_loss"),
        },
    )
    storage.write_json(config.pointer_uri, run_pointer(config.output, config.model))
    shutil.rmtree(scratch, ignore_errors=True)  # everything is in storage now
    log.info("committed", output=config.output, pointer=config.pointer_uri, global_step=trainer.state.global_step)
    return committed
