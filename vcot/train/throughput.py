"""What a run cost: wall time, samples and tokens per second, peak memory and GPU-hours.

:class:`Throughput` is a trainer callback that times this session's training loop (a resumed run counts the
steps it trained itself, not the restored ones); :func:`throughput_of` reads its numbers back for the run's
``metrics.json`` (``throughput``), the manifest's stats and the local summary. Tokens are what the trainer
counted over all ranks: SFT's non-padding input tokens (``include_num_input_tokens_seen``), GRPO's prompt and
completion tokens (TRL counts them itself); RGFN counts none (0). Samples are optimizer steps times the global
batch. Peak memory is this rank's: the GPU's ``torch.cuda.max_memory_allocated``, else the process's
CPU max RSS (model loading included). ``padding_share``: of the positions this rank's training forwards computed,
the share that was padding.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

from transformers import TrainerCallback

from vcot.train import distributed

TOKEN_COUNTING = {"include_num_input_tokens_seen": "non_padding"}
"""The trainer argument that has the Trainer count input tokens (gathered over ranks)."""


class Throughput(TrainerCallback):
    """Times the training loop of this session; ``global_batch`` is samples per optimizer step. Also counts the
    positions this rank's training forwards computed and how many were padding (``padding_share``: what padded
    batches cost, and what packing saves)."""

    def __init__(self, global_batch: int) -> None:
        self.global_batch = global_batch
        self.start = 0.0
        self.first_step = self.first_tokens = 0
        self.computed = self.padding = 0
        self.numbers: dict[str, Any] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start = time.monotonic()
        self.first_step, self.first_tokens = (
            state.global_step,
            state.num_input_tokens_seen or 0,
        )
        processing = kwargs.get("processing_class")
        pad_id = getattr(getattr(processing, "tokenizer", processing), "pad_token_id", None)
        if kwargs.get("model") is not None:
            kwargs["model"].register_forward_pre_hook(self._count(pad_id), with_kwargs=True)

    def _count(self, pad_id: int | None) -> Any:
        """A forward pre-hook counting the positions of training forwards (with gradients: not generation or
        scoring) and the padding among them: the attention mask's zeros, or without a mask the pad tokens."""
        import torch

        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            input_ids = kwargs.get("input_ids")
            if not (module.training and torch.is_grad_enabled()) or input_ids is None:
                return
            mask = kwargs.get("attention_mask")
            if mask is None and pad_id is not None:
                mask = input_ids != pad_id
            self.computed += input_ids.numel()
            if mask is not None:  # summed where it lies: no device sync a step
                self.padding = self.padding + (input_ids.numel() - mask.sum())

        return hook

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        seconds = max(time.monotonic() - self.start, 1e-9)
        steps = state.global_step - self.first_step
        tokens = (state.num_input_tokens_seen or 0) - self.first_tokens
        self.numbers = measure(seconds, steps, steps * self.global_batch, tokens)
        self.numbers["padding_share"] = round(float(self.padding) / self.computed, 4) if self.computed else 0.0


def measure(seconds: float, steps: int, samples: int, tokens: int) -> dict[str, Any]:
    """The throughput record of ``seconds`` of training on this machine and world.

    >>> numbers = measure(7200.0, 10, 80, 8000)
    >>> numbers["samples_per_second"], numbers["tokens_per_second"], numbers["peak_memory_gib"] > 0
    (0.0111, 1.1111, True)
    """
    import torch

    gpus = distributed.world_size() if torch.cuda.is_available() else 0
    if gpus:
        peak, kind = torch.cuda.max_memory_allocated(), "gpu_max_allocated"
    else:  # ru_maxrss: KiB on Linux, bytes on macOS
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        kind = "cpu_max_rss"
    return {
        "wall_seconds": round(seconds, 3),
        "steps": steps,
        "samples": samples,
        "tokens": tokens,
        "samples_per_second": round(samples / seconds, 4),
        "tokens_per_second": round(tokens / seconds, 4),
        "peak_memory_gib": round(peak / 2**30, 3),
        "peak_memory_kind": kind,
        "gpus": gpus,
        "gpu_hours": round(seconds / 3600 * gpus, 4),
    }


def throughput_of(trainer: Any) -> dict[str, Any]:
    """The numbers of the trainer's :class:`Throughput` callback (empty when it has none or did not finish)."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, Throughput):
            return callback.numbers
    return {}
