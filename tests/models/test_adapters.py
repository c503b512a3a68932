"""The frozen reference of an RL run is an exact copy of the adapter it continues (vcot.models.adapters)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vcot.models.adapters import REFERENCE, active, copy_adapter, reference_adapter


@pytest.fixture
def continued(tiny_model_dir: Path) -> torch.nn.Module:
    """The tiny model with an adapter shaped like tiny-cpu's (embedding LoRA, layers and head saved in full),
    its weights moved off their initial values as a trained adapter's are."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=8, lora_alpha=8, target_modules=r".*language_model.*(embed_tokens|q_proj)",
                        modules_to_save=["lm_head", "layers.0"])
    model = get_peft_model(base, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".default" in name or name.endswith("default"):
                param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([[3, 5, 7, 11, 13]])).logits


def test_the_reference_scores_exactly_as_the_continued_adapter(continued: torch.nn.Module) -> None:
    policy = logits(continued)
    copied = reference_adapter(continued)
    with active(continued, REFERENCE):
        reference = logits(continued)
        assert not any(p.requires_grad for n, p in continued.named_parameters() if f".{REFERENCE}" in n)
    assert torch.equal(policy, reference)
    # Every kind of adapter parameter was copied: LoRA matrices, the embedding's LoRA, the modules saved in full.
    names = [n for n, _ in continued.named_parameters() if f".{REFERENCE}" in n]
    assert copied == len(names) and any("lora_embedding_A" in n for n in names) and any("modules_to_save" in n for n in names)
    # Frozen: the policy trains, the reference does not; the policy is active again after scoring.
    trainable = {n for n, p in continued.named_parameters() if p.requires_grad}
    assert trainable and all(".default" in n for n in trainable)
    assert continued.active_adapter == "default"


def test_the_reference_stays_where_the_policy_started(continued: torch.nn.Module) -> None:
    reference_adapter(continued)
    start = logits(continued)
    with torch.no_grad():
        for name, param in continued.named_parameters():
            if param.requires_grad:
                param.add_(1.0)
    assert not torch.allclose(logits(continued), start)
    with active(continued, REFERENCE):
        assert torch.equal(logits(continued), start)


def test_copying_only_dotted_names_misses_the_embedding_lora(continued: torch.nn.Module) -> None:
    """Why vcot completes TRL's copy: TRL copies parameters whose name contains ``.default.``, and an embedding
    LoRA's are named ``...lora_embedding_A.default``; a reference made that way differs before any training."""
    continued.add_adapter(REFERENCE, continued.peft_config["default"])
    with torch.no_grad():
        for name, param in continued.named_parameters():
            if ".default." in name:
                continued.get_parameter(name.replace(".default.", f".{REFERENCE}.")).copy_(param)
    continued.set_adapter("default")
    policy = logits(continued)
    with active(continued, REFERENCE):
        assert not torch.allclose(logits(continued), policy)
    copy_adapter(continued)
    with active(continued, REFERENCE):
        assert torch.equal(logits(continued), policy)
