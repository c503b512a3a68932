"""SFT: supervised fine-tuning of a LoRA adapter on a tokenize output (grounded rationales).

Reads top to bottom: the model format tokenize recorded; the policy (base + LoRA) with a processor cut to that
format; the tokenized rows and the collator that loads their pixels; the transformers ``Trainer`` with the best
checkpoint and early stopping by the val split's ``eval_loss`` or, with the generation evaluation
(:mod:`vcot.train.generation_eval`), by a grounding metric of the model's answers; then the run is trained and
committed by the shared machinery (:mod:`vcot.train.common`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

from vcot.errors import ConfigError, VcotError
from vcot.grounding.model_format import ModelFormat
from vcot.io import manifest
from vcot.log import get_logger
from vcot.models.loading import MODEL_CARD, adapter_format, machine_precision, refuse_full_finetune
from vcot.train import distributed
from vcot.train.checkpoints import checkpoint_step
from vcot.train.common import (
    RunFolders,
    TrainConfig,
    check_scratch,
    commit_run,
    common_arguments,
    load_policy,
    run_training,
)
from vcot.train.estimate import announce_cpu_run, sft_workload
from vcot.train.options import build_arguments, use_vision_learning_rate
from vcot.train.recipe import Recipe
from vcot.train.sharding import fused_head_trains_on_every_rank, sharded_trainer
from vcot.train.throughput import TOKEN_COUNTING

log = get_logger(__name__)


def read_data_settings(data_uri: str) -> tuple[ModelFormat, str]:
    """What tokenize recorded: the model format (any layout vcot wrote) and the model whose tokenizer it used."""
    settings = manifest.read_manifest(data_uri, expect_stage="tokenize").get("config", {})
    try:
        return ModelFormat.from_dict(settings), str(settings["model"])
    except (ValueError, TypeError, KeyError) as exc:
        raise VcotError(f"{data_uri} manifest has no usable model format ({exc}): re-run tokenize") from exc


def has_val_rows(data_uri: str) -> bool:
    """Whether the tokenize output has val rows, from its manifest's counts (no row is read)."""
    files = manifest.read_manifest(data_uri).get("files", [])
    return any(entry.get("records") for entry in files if str(entry.get("path", "")).startswith("val/"))


def check_continued_format(adapter: str, fmt: ModelFormat) -> None:
    """A continued adapter must have been trained in the tokenize output's frame, syntax, pixel budget and layout."""
    refuse_full_finetune(adapter, flag="--init-adapter")
    found = adapter_format(adapter)
    if found is None:
        raise VcotError(f"{adapter} has no {MODEL_CARD}: pass the adapter/ folder of a committed train run")
    if found != fmt:
        raise ConfigError(
            f"--init-adapter {adapter} was trained as {found.to_dict()}, the data is tokenized as {fmt.to_dict()}: "
            "tokenize with the adapter's settings (its vcot-model.json), or train a new adapter"
        )


def sft_arguments(recipe: Recipe, folders: RunFolders, *, has_eval: bool) -> Any:
    """The shared arguments plus SFT's own: eval_loss on the val split, the best checkpoint (by the recipe's metric)
    kept, NEFTune."""
    from transformers import TrainingArguments

    arguments = dict(
        **common_arguments(recipe, folders, machine_precision()),
        per_device_eval_batch_size=recipe.per_device_eval_batch_size,
        neftune_noise_alpha=recipe.neftune_noise_alpha,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=recipe.eval_steps,
        load_best_model_at_end=has_eval,
        metric_for_best_model=recipe.metric_for_best_model,
        greater_is_better=recipe.metric_for_best_model != "eval_loss",  # the generation metrics: higher is better
        label_names=["labels"],
        **TOKEN_COUNTING,  # tokens/s in the run's throughput (TRL's GRPO counts its own)
    )
    return build_arguments(TrainingArguments, arguments, recipe)  # the recipe's trainer: values last


def length_grouped_trainer() -> type:
    """The ``Trainer`` with ``group_by_length`` batches grouped by the rows' ``length`` column: transformers would
    read every row to measure it (it takes lengths only from a ``datasets.Dataset``), and would look for them under
    the processor's first input name (``pixel_values``)."""
    import torch
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    def grouped(trainer: Trainer, dataset: Any) -> bool:
        return trainer.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths")

    class SFTTrainer(Trainer):
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            dataset = self.train_dataset if train_dataset is None else train_dataset
            if not grouped(self, dataset):
                return super()._get_train_sampler(train_dataset)
            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=dataset.lengths()
            )

        def _get_eval_sampler(self, eval_dataset: Any) -> Any:
            if not grouped(self, eval_dataset):
                return super()._get_eval_sampler(eval_dataset)
            seeded = torch.Generator().manual_seed(self.args.seed)  # the same eval batches at every evaluation
            return LengthGroupedSampler(self.args.eval_batch_size, lengths=eval_dataset.lengths(), generator=seeded)

        def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
            with names_as_loaded(self.accelerator.unwrap_model(self.model, keep_torch_compile=False)):
                super()._save(output_dir, state_dict)

        def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            if getattr(self, "fused_lm_head", False):
                inputs = {**inputs, "fused_lm_head": True}
            return super().compute_loss(model, inputs, *args, **kwargs)

    return SFTTrainer


def use_fused_lm_head(trainer: Any) -> bool:
    """Score the loss through TRL's fused LM head (recipe ``fused_lm_head``): only the positions with a label go
    through the head, in tiles, so the ``(batch, tokens, vocab)`` logits and their fp32 copy are never built (on a
    7B with 152k tokens of vocabulary, gigabytes a step, most of them for image and prompt tokens that have no
    label). The model's own forward is kept for generation. Not where :func:`fused_head_problem` says; whether it
    was used is returned."""
    from trl.trainer.utils import add_fused_lm_head

    model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    problem = fused_head_problem(trainer, model)
    if problem:
        log.warning("fused_lm_head_off", reason=problem)
        return False
    add_fused_lm_head(model)
    trainer.fused_lm_head = True
    log.info("fused_lm_head", scored="the labelled positions only")
    return True


def fused_head_problem(trainer: Any, model: Any) -> str | None:
    """Why the fused head cannot score this run's loss, if it cannot. It reads the output layer's ``weight`` alone:
    a LoRA on the output layer (``peft.target_modules``) or PEFT's trainable tokens of a tied output layer would be
    left out of the loss or fail."""
    import torch

    if trainer.label_smoother is not None or trainer.compute_loss_func is not None:
        return "the loss needs the logits (label smoothing or compute_loss_func)"
    if not fused_head_trains_on_every_rank(trainer):
        return "sharded, and no final norm before the output layer to gather that layer with"
    head = model.get_output_embeddings()
    copies = getattr(head, "modules_to_save", None)  # PEFT's ModulesToSaveWrapper: the trained copy is what counts
    if isinstance(copies, torch.nn.ModuleDict) and head.active_adapter in copies:
        head = copies[head.active_adapter]
    if type(head) is not torch.nn.Linear:
        return f"the output layer is a {type(head).__name__} (an adapter on it), not a plain linear layer"
    return None


@contextlib.contextmanager
def names_as_loaded(model: Any) -> Iterator[None]:
    """A full model's checkpoints keep the weight names it has in memory. ``save_pretrained`` writes transformers'
    older names for the Qwen VL families (``visual.*``, not ``model.visual.*``), and the Trainer reloads its own
    checkpoints (resume, the best model at the end) by ``load_state_dict`` without mapping them back: every weight
    was left unloaded, so a resumed full fine-tune went on from the base model's weights and ``model/`` held the
    last step's instead of the best checkpoint's. ``from_pretrained`` reads both namings; an adapter is unaffected."""
    if not hasattr(model, "save_pretrained") or hasattr(model, "peft_config"):
        yield
        return
    model.save_pretrained = functools.partial(model.save_pretrained, save_original_format=False)
    try:
        yield
    finally:
        del model.save_pretrained  # the class's method again


def sft(config: TrainConfig, recipe: Recipe) -> dict[str, Any]:
    """Train and commit an SFT run; returns its manifest."""
    from transformers import EarlyStoppingCallback

    from vcot.train.data import Collator, TokenizedDataset
    from vcot.train.generation_eval import generation_eval, record_outputs_of
    from vcot.train.packing import PackedCollator, PackedDataset, use_packed_positions

    # 1. The model format tokenize recorded (frame, syntax, pixel budget, mode).
    fmt, tokenized_with = read_data_settings(config.data)
    if tokenized_with != config.model:
        log.warning(
            "model_differs", tokenized_with=tokenized_with, training=config.model, hint="the tokenizers must be identical"
        )

    # 2. The trainer's arguments, checked by transformers before any model loads; base + a new LoRA, the processor
    # cutting images exactly as tokenize counted their tokens.
    folders = RunFolders.for_output(config.output)
    args = sft_arguments(recipe, folders, has_eval=has_val_rows(config.data))
    if config.init_adapter:
        check_continued_format(config.init_adapter, fmt)
    tokens = manifest.read_manifest(config.data).get("stats", {})
    announce_cpu_run(config.model, recipe, config.recipe, sft_workload(recipe, tokens))  # on a CPU: before loading
    model, processor = load_policy(config.model, recipe, fmt, init_adapter=config.init_adapter)

    # 3. Data, the trainer.
    # Memory-mapped from this node's scratch (converted once per node); each rank reads only the rows it is dealt.
    vocab_size = len(processor.tokenizer)
    rows_bytes = 8 * sum(int((tokens.get(split) or {}).get("tokens", 0)) for split in ("train", "val"))  # ids + labels
    check_scratch(folders, recipe, model, rows_bytes=rows_bytes)
    train_set = TokenizedDataset(config.data, "train", cache=folders.scratch / "rows", vocab_size=vocab_size)
    eval_set = TokenizedDataset(config.data, "val", cache=folders.scratch / "rows", vocab_size=vocab_size)
    if len(train_set) == 0:
        raise VcotError(f"{config.data} has no train rows: check the tokenize stats in its _SUCCESS")
    collator: Any = Collator(processor)
    if recipe.packing:  # training rows packed, no padding; evaluation's rows as they are (vcot.train.packing)
        train_set, collator = PackedDataset(train_set, recipe.packing), PackedCollator(processor)
        use_packed_positions(model)
        log.info("packed", rows=len(train_set.rows), packed_rows=len(train_set), tokens_per_row=recipe.packing)
    early_stopping = args.load_best_model_at_end and recipe.early_stopping_patience > 0
    trainer_class = sharded_trainer(length_grouped_trainer()) if recipe.sharding else length_grouped_trainer()
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set if len(eval_set) else None,
        data_collator=collator,
        processing_class=processor,
    )
    if recipe.fused_lm_head:
        use_fused_lm_head(trainer)
    if args.eval_strategy != "no" and recipe.generation_eval_samples:  # before early stopping: it reads its metrics
        trainer.add_callback(generation_eval(trainer, processor, fmt, recipe, record_outputs_of(config.data)))
    if early_stopping:
        trainer.add_callback(EarlyStoppingCallback(recipe.early_stopping_patience, recipe.early_stopping_threshold))

    # 4. Train (resuming from storage), then the final evaluation (the kept model's, when it was evaluated).
    use_vision_learning_rate(trainer, recipe)
    result = run_training(trainer, folders)
    metrics: dict[str, Any] = {"train": result.metrics, "global_step": trainer.state.global_step}
    if trainer.eval_dataset is not None:
        metrics["eval"] = kept_model_evaluation(trainer.state, args.load_best_model_at_end) or trainer.evaluate()
        metrics["best_metric"] = {"name": recipe.metric_for_best_model, "value": trainer.state.best_metric,
                                  "step": trainer.state.best_global_step}
    metrics["log_history"] = trainer.state.log_history
    # Rows this process read (with dataloader workers, they read them: 0 here).
    rows = train_set.rows if recipe.packing else train_set
    log.info("rows_read", rank=distributed.rank(), rows=rows.reads, of=len(rows))

    # 5. Commit.
    stats = {
        "global_step": trainer.state.global_step,
        "train_loss": result.metrics.get("train_loss"),
        "eval_loss": metrics.get("eval", {}).get("eval_loss"),
        "best_metric": metrics.get("best_metric"),
    }
    return commit_run(
        config, recipe, fmt, trainer, processor, folders, metrics=metrics, inputs=config.input_runs, stats=stats
    )


def kept_model_evaluation(state: Any, load_best: bool) -> dict[str, Any]:
    """The evaluation logged for the model the run keeps: the best checkpoint's when the best is loaded at the end
    (the best *saved* one: an evaluation between checkpoints may score higher), else the last step's; empty when
    that step was not evaluated. Evaluating it again would only repeat it, the generation evaluation included.

    >>> from types import SimpleNamespace as State
    >>> history = [{"step": 2, "eval_loss": 0.5, "epoch": 1.0}, {"step": 2, "eval_gen_iou": 0.3},
    ...            {"step": 3, "eval_loss": 0.4}, {"step": 4, "eval_loss": 0.6}]
    >>> kept_model_evaluation(State(log_history=history, global_step=4, best_model_checkpoint="out/checkpoint-2"), True)
    {'eval_loss': 0.5, 'eval_gen_iou': 0.3}
    >>> kept_model_evaluation(State(log_history=history, global_step=4, best_model_checkpoint=None), True)
    {'eval_loss': 0.6}
    >>> kept_model_evaluation(State(log_history=history, global_step=5, best_model_checkpoint=None), False)
    {}
    """
    kept = checkpoint_step(state.best_model_checkpoint or "") if load_best else None
    step = state.global_step if kept is None else kept
    logged = [entry for entry in state.log_history if entry.get("step") == step]
    return {key: value for entry in logged for key, value in entry.items() if key.startswith("eval_")}
