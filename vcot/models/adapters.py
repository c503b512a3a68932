"""Named adapters on one base model: the frozen reference of an RL run, the SFT model BiN answers with.

GRPO's KL term, RGFN's reward and BiN's answers are scored by the model *as RL found it*. When RL continues an SFT
adapter (vcot's usual path), that model is the base plus the SFT adapter, not the bare base that
``disable_adapter()`` gives: for vcot's tiny model, whose whole language model lives in the adapter, the bare base
is a random network, and a KL term or a reward against it pulls the policy toward noise. So the starting adapter is
kept beside the trained one under its own name and switched to with :func:`active`:

- training (:func:`reference_adapter`): a frozen copy of the policy's adapter, ``ref``. TRL's GRPO keeps one under
  that name too, but copies only parameters named ``*.default.*``: an embedding LoRA (``lora_embedding_A.default``,
  no dot after the adapter name) stays freshly initialized, so TRL's reference differs from the policy before the
  first step; :func:`copy_adapter` copies every parameter;
- evaluation (:func:`load_named_adapter`): the SFT adapter an RGFN adapter continued (its card's
  ``continued_from``), loaded beside it for BiN.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

POLICY = "default"
"""PEFT's name for the adapter a model was loaded or made with: the one that trains."""
REFERENCE = "ref"
"""TRL's name: its GRPO reads the KL reference from an adapter of this name when the model has one."""


def adapter_parameter(name: str, source: str, target: str) -> str | None:
    """``name`` with the adapter-name segment ``source`` replaced by ``target``; ``None`` when not ``source``'s.

    >>> adapter_parameter("m.embed_tokens.lora_embedding_A.default", "default", "ref")
    'm.embed_tokens.lora_embedding_A.ref'
    >>> adapter_parameter("m.lm_head.modules_to_save.default.weight", "default", "ref")
    'm.lm_head.modules_to_save.ref.weight'
    >>> adapter_parameter("m.layers.0.q_proj.base_layer.weight", "default", "ref") is None
    True
    """
    parts = name.split(".")
    if source not in parts:
        return None
    return ".".join(target if part == source else part for part in parts)


def copy_adapter(model: Any, source: str = POLICY, target: str = REFERENCE) -> int:
    """Copy every parameter of adapter ``source`` into adapter ``target`` (LoRA matrices, embedding LoRA,
    ``modules_to_save`` copies); returns how many were copied. ``target`` must exist with ``source``'s config."""
    import torch

    copied = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            twin = adapter_parameter(name, source, target)
            if twin is not None:
                model.get_parameter(twin).copy_(param)
                copied += 1
    return copied


def reference_adapter(model: Any) -> int:
    """Make adapter ``ref`` an exact, frozen copy of the policy's adapter (adding it when missing, completing
    TRL's copy otherwise); returns the parameters copied. The policy stays the active, trainable adapter."""
    if REFERENCE not in model.peft_config:
        model.add_adapter(REFERENCE, model.peft_config[POLICY])
    copied = copy_adapter(model, POLICY, REFERENCE)
    model.set_adapter(POLICY)  # PEFT: only the active adapter's parameters require gradients
    for name, param in model.named_parameters():
        if adapter_parameter(name, REFERENCE, REFERENCE) is not None:
            param.requires_grad_(False)
    return copied


def load_named_adapter(model: Any, path: str, name: str) -> None:
    """Load the adapter folder ``path`` beside the model's own, under ``name``, frozen; the policy stays active."""
    model.load_adapter(path, adapter_name=name, is_trainable=False)
    model.set_adapter(POLICY)


@contextmanager
def active(model: Any, name: str | None) -> Iterator[None]:
    """Run the enclosed forward passes with adapter ``name`` active (``None``: every adapter off, the bare base),
    then give the policy back."""
    if name is None:
        with model.disable_adapter():
            yield
        return
    model.set_adapter(name, inference_mode=True)  # frozen while active: only the policy ever trains
    try:
        yield
    finally:
        model.set_adapter(POLICY)
