"""The train stage: a LoRA adapter trained by one of three methods on one machinery, resumable on S3.

The recipe's ``method`` picks the method; each reads top to bottom in its own module:

- ``sft`` (:mod:`vcot.train.sft`): supervised fine-tuning on a tokenize output (grounded rationales);
- ``grpo`` (:mod:`vcot.train.grpo`): reward-driven fine-tuning on committed records with TRL's GRPOTrainer,
  from a committed SFT run's adapter (``--init-adapter``) or a new LoRA;
- ``gfn`` (:mod:`vcot.train.rgfn`): LaCoT's GFlowNet fine-tuning of the rationale turn (RGFN) on committed
  records with their reference rationales, from an SFT run trained in the ``rationale_turn`` layout.

Both use the shared machinery of :mod:`vcot.train.common`. Output layout (``OUTPUT``)::

    adapter/        PEFT adapter, processor files, vcot-model.json (base model + model format)
    merged/         optional: the base with the adapter merged in
    model/          instead of adapter/ with the recipe's finetune: full: the trained model, processor, card
    checkpoints/    checkpoint-<step>/ (+ _COMPLETE marker once fully uploaded), _settings.json (what they resume as)
    tensorboard/    event files
    metrics.json    final metrics, the log history and the run's throughput (vcot.train.throughput)
    _SUCCESS        manifest: files, config (recipe included), lineage of the data
"""

from __future__ import annotations

from typing import Any

from vcot.errors import ConfigError
from vcot.io import manifest, storage
from vcot.log import get_logger
from vcot.train import distributed
from vcot.train.checkpoints import settings_change
from vcot.train.common import TrainConfig, TrainingInterrupted
from vcot.train.grpo import grpo
from vcot.train.plan import log_plan
from vcot.train.pointer import ensure_pointer
from vcot.train.recipe import Recipe, load_recipe
from vcot.train.rgfn import rgfn
from vcot.train.sft import sft

log = get_logger(__name__)


def train(config: TrainConfig) -> dict[str, Any] | None:
    """Run the stage; returns the manifest written, or ``None`` when the output was already committed."""
    recipe = load_recipe(config.recipe, config.set)
    # A sharded recipe joins a group of one outside torchrun: its checkpoints are sharded ones, which any world size
    # resumes. A SIGTERM stops every rank at the same step: they all leave the group then.
    with distributed.process_group(group_of_one=recipe.sharding is not None, stopped_together=(TrainingInterrupted,)):
        return _train(config, recipe)


def _train(config: TrainConfig, recipe: Recipe) -> dict[str, Any] | None:
    """Under torchrun: rank 0 alone prepares (and may delete) the output, the others follow."""
    inputs = [config.data, config.model, *([config.init_adapter] if config.init_adapter else [])]
    todo = None
    if distributed.is_main():
        todo = manifest.prepare_output(config.output, stage="train", inputs=inputs, overwrite=config.overwrite)
    if not distributed.from_main(todo):
        log.info("already_committed", output=config.output, hint="pass --overwrite to retrain")
        if distributed.is_main() and config.update_pointer:
            ensure_pointer(config)
        return None
    check_resume(config, recipe)
    log.info("recipe", **recipe.to_dict())
    if distributed.is_main():
        log_plan(config.model, recipe, world_size=distributed.world_size())
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)  # torch sizes its pool from the node's cores, not the pod's CPU limit
    method = {"grpo": grpo, "gfn": rgfn}.get(recipe.method, sft)
    return method(config, recipe)


def check_resume(config: TrainConfig, recipe: Recipe) -> None:
    """Refuse a rerun that would resume the checkpoints of a run with other settings (exit 2: no retry helps); the
    first start pins its settings beside its checkpoints (:func:`vcot.train.checkpoints.settings_change`)."""
    settings = {**recipe.to_dict(), "data": config.data, "model": config.model, "init_adapter": config.init_adapter}
    changed = None
    if distributed.is_main():
        changed = settings_change(storage.join(config.output, "checkpoints"), settings)
    changed = distributed.from_main(changed)
    if changed:
        raise ConfigError(
            f"{config.output} holds checkpoints of a run with other settings, which a resume would continue as if "
            f"they were these ({changed}): rerun with the run's settings to resume it, or pass --overwrite to start "
            "over with these"
        )
