"""Sharded training (recipe ``sharding: fsdp2``): one model spread over the ranks of a torchrun job by PyTorch FSDP2.

Each decoder layer and vision block (the model's ``_no_split_modules``) is its own FSDP2 unit: its parameters,
gradients and optimizer state live 1/N on each of the N ranks and are gathered for its forward and backward only.
The Trainer's own FSDP2 integration (accelerate) does the work, so what users know of it holds: checkpoints are
``torch.distributed.checkpoint`` folders, one file per rank (``pytorch_model_fsdp_0/``, ``optimizer_0/``) that
resume on another world size; mixed precision is the Trainer's (bf16 on GPUs, fp32 on a CPU).

What vcot adds:

- :func:`fsdp_arguments`: the recipe's knobs (``reshard_after_forward``, ``cpu_offload``) as trainer arguments.
  Gradient checkpointing stays the Trainer's (``activation_checkpointing``), not FSDP's own: FSDP's checkpoint
  wrapper hides the LoRA weights from PEFT's state dict, and a checkpoint would silently hold no adapter.
- :func:`sharded_trainer`: accelerate turns FSDP on for GPU backends only; on a CPU (gloo: the tests,
  ``make local-train-fsdp``) it is turned on the same way, so the code path the tests run is the GPUs' one. And
  the Trainer's ranks could disagree on the best checkpoint under FSDP (a race on its folder) and hang at the
  end; they agree here.
- :func:`gather_output_layer_with_final_norm`: the output layer gathered when the final norm runs, so a fused LM
  head that reads its weight without calling it (GRPO's, SFT's) trains it on every rank's rows.
- :func:`gathered_state_dict`: the trained weights in one piece on rank 0 at the end (only the trainable ones for
  an adapter), so the outputs are the ones a data-parallel run writes and nothing downstream changes.
- :class:`ShardReport`: what each rank holds, measured after the first step (parameters and optimizer state).
"""

from __future__ import annotations

import os
from typing import Any

from transformers import TrainerCallback

from vcot.log import get_logger
from vcot.train import distributed
from vcot.train.recipe import Recipe

log = get_logger(__name__)


def fsdp_arguments(recipe: Recipe) -> dict[str, Any]:
    """The trainer arguments of the recipe's sharding (none for data parallel).

    >>> fsdp_arguments(Recipe(sharding=None))
    {}
    >>> fsdp_arguments(Recipe(sharding="fsdp2", quantize=None, optim="adamw_torch"))["fsdp_config"]["version"]
    2
    """
    if not recipe.sharding:
        return {}
    return {
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # the model's _no_split_modules: layers, vision blocks
            "reshard_after_forward": recipe.reshard_after_forward,
            "cpu_offload": recipe.cpu_offload,
            "state_dict_type": "SHARDED_STATE_DICT",  # each rank writes its shard; resumable on another world size
            "cpu_ram_efficient_loading": True,  # rank 0's weights sent to the others (models.loading.empty_model)
            "activation_checkpointing": False,  # the Trainer's gradient checkpointing instead (see the module)
        },
    }


def sharded_trainer(trainer_class: type) -> type:
    """``trainer_class`` whose FSDP2 also runs on gloo (CPU ranks), where accelerate would silently fall back to
    data parallel: the same plugin, set on the accelerator's state before anything is prepared; and whose ranks
    agree on the best checkpoint whatever their timing (see ``save_model``)."""

    class Sharded(trainer_class):  # type: ignore[misc, valid-type]
        def create_accelerator_and_postprocess(self) -> None:
            super().create_accelerator_and_postprocess()
            from accelerate.state import PartialState
            from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

            state = self.accelerator.state
            if self.args.fsdp_plugin_args and getattr(state, "fsdp_plugin", None) is None:
                state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
                # As accelerate records it on GPUs: in the process-wide state too, or the next AcceleratorState()
                # (TRL's GRPO makes one) copies the process-wide type back and the model is prepared with DDP.
                state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
                self.is_fsdp_enabled = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.output_layer_gathered = gather_output_layer_with_final_norm(self.model)

        def train(self, *args: Any, **kwargs: Any) -> Any:
            if distributed.rank() > 0 and self.accelerator.mixed_precision != "no":
                upcast_unwritten(self.model)
            return super().train(*args, **kwargs)

        def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
            # The Trainer picks the best checkpoint by whether its folder exists, right after this call and a
            # barrier; a sharded save writes the folder only later (with the optimizer), so a rank that looks late
            # would see it and one that looks early would not, and at the end one would load it while the other
            # waited forever. Every rank makes the folder first: all see the same.
            os.makedirs(output_dir or self.args.output_dir, exist_ok=True)
            super().save_model(output_dir, _internal_call)

    Sharded.__name__ = Sharded.__qualname__ = f"Sharded{trainer_class.__name__}"
    return Sharded


def gather_output_layer_with_final_norm(model: Any) -> bool:
    """Gather the output layer's FSDP2 unit when the language model's final norm runs, and return whether that norm
    was found.

    A fused LM head (TRL's GRPO always, SFT with ``fused_lm_head``) reads the output layer's weight without calling
    the layer, so the layer's own unit never gathers it. Accelerate puts that layer in one unit with the final norm,
    which runs just before, but looks for the norm among the base model's direct children only; a Qwen VL model
    keeps it under ``model.language_model``, so the output layer was a unit of its own and still sharded when the
    fused head read it. TRL then gathered it with ``full_tensor()``, whose backward keeps each rank's own gradient:
    the output layer trained on one rank's rows (two gloo ranks' SFT loss 1.5-2% off one process's by step 10;
    GRPO's only from a rollout's second backward pass on: its rollouts call the layer, which gathers it until the
    first). Gathered here, its gradient is reduce-scattered with the others at the end of the backward pass (FSDP2
    runs the post-backward of a unit that was gathered without its forward), and the ranks agree with one process
    to float-sum order. A second trainer on the same model adds a second hook, which finds the layer gathered."""
    from torch.distributed.fsdp import FSDPModule

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    norm = getattr(decoder, "norm", None)
    if norm is None:
        return False

    def gather_output_layer(module: Any, args: Any) -> None:
        head = base.get_output_embeddings()
        if isinstance(head, FSDPModule):
            head.unshard()  # a no-op once gathered (accelerate keeps that unit gathered after its forward)

    norm.register_forward_pre_hook(gather_output_layer)
    return True


def upcast_unwritten(model: Any) -> int:
    """Make this rank's trainable 16-bit parameters fp32 without writing them, and return how many.

    Under 16-bit mixed precision accelerate upcasts what trains to fp32 before sharding (fp32 master weights) by
    copying it, on every rank. A rank whose weights come from rank 0 holds unwritten memory until then
    (:func:`vcot.models.loading.empty_model`), and the copy would write a whole fp32 model into its host memory
    for a full fine-tune (a 7B: 31 GiB per rank, eight per node). Made fp32 here first, the copy finds nothing to
    do and the memory stays unwritten until rank 0's values arrive. Rank 0 keeps accelerate's copy: its values
    are real.

    >>> import torch
    >>> layer = torch.nn.Linear(2, 2, dtype=torch.bfloat16)
    >>> layer.bias.requires_grad_(False)  # doctest: +ELLIPSIS
    Parameter containing:...
    >>> upcast_unwritten(layer), layer.weight.dtype, layer.bias.dtype
    (1, torch.float32, torch.bfloat16)
    """
    import torch

    if any(type(param).__name__ == "Params4bit" for param in model.parameters()):
        return 0  # accelerate upcasts no 4-bit model (and sends it no weights): as it does
    upcast = 0
    for param in model.parameters():  # each parameter once, tied ones included
        if param.requires_grad and param.dtype != torch.float32:
            param.data = torch.empty(param.shape, dtype=torch.float32, device=param.device)
            upcast += 1
    return upcast


def is_sharded(trainer: Any) -> bool:
    return bool(getattr(trainer, "is_fsdp_enabled", False))


def fused_head_trains_on_every_rank(trainer: Any) -> bool:
    """Whether a fused LM head would train this trainer's output layer on every rank's rows: not sharded, or
    sharded with the layer gathered (:func:`gather_output_layer_with_final_norm` found the final norm)."""
    return not is_sharded(trainer) or bool(getattr(trainer, "output_layer_gathered", False))


def gathered_state_dict(trainer: Any) -> dict[str, Any] | None:
    """What the run saves, whole, on rank 0's CPU (an empty dict on the other ranks), or ``None`` when the run is
    not sharded (its model is whole already). Every rank must call it: each sends its shards.

    An adapter needs only the trainable weights (a 72B base is never gathered), unless PEFT also saves the base
    embeddings beside it (an adapter on ``embed_tokens`` or ``lm_head``): then everything, as PEFT picks from it."""
    if not is_sharded(trainer):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    trainable_only = hasattr(trainer.model, "peft_config") and not adapts_embeddings(trainer.model)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    return get_model_state_dict(trainer.model, options=options)


def adapts_embeddings(model: Any) -> bool:
    """Whether PEFT saves the base embedding layers with this model's adapter (its ``save_embedding_layers="auto"``:
    an embedding layer among the LoRA targets)."""
    from peft.utils.other import EMBEDDING_LAYER_NAMES, match_target_against_key

    targets = model.peft_config["default"].target_modules
    embeddings = [name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in EMBEDDING_LAYER_NAMES]
    return any(match_target_against_key(targets, name) for name in embeddings)


def local_part(tensor: Any) -> Any:
    """What this rank holds of ``tensor``: a DTensor's shard, or all of a plain tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class ShardReport(TrainerCallback):
    """Log ``sharded`` once, after the first optimizer step: the parameters and optimizer state this rank holds and
    the whole model's, so how a model spreads over the ranks is measured, not assumed."""

    def __init__(self) -> None:
        self.done = False

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                    **kwargs: Any) -> None:  # fmt: skip
        if self.done or model is None:
            return
        self.done = True
        parameters = list(model.parameters())
        moments = [value for entry in getattr(optimizer, "state", {}).values() for value in entry.values()
                   if hasattr(value, "numel") and value.dim() > 0]  # fmt: skip
        log.info(
            "sharded",
            rank=distributed.rank(),
            parameters=sum(local_part(p).numel() for p in parameters),
            parameters_total=sum(p.numel() for p in parameters),
            optimizer_state=sum(local_part(m).numel() for m in moments),
            optimizer_state_total=sum(m.numel() for m in moments),
        )
