"""TRL's GRPO loop really optimizes: a tiny text-only policy learns a toy reward in seconds on CPU.

The policy is a randomly initialized 2-layer Qwen2 (~0.2M parameters) over the tiny model's tokenizer; the reward
is the share of vowels in the completion's text: dense from the first step (random tokens score ~0.3) and
learnable by shifting the output distribution alone. A second reward returns NaN for every other completion,
through :func:`vcot.scoring.rewards.guarded` as the pipeline's rewards are: TRL must keep going, and the count must show.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from vcot.scoring.rewards import guarded

STEPS = 30
WINDOW = 5  # steps averaged at each end of the curve
PROMPTS = ["what color is the gear", "find the red cat", "how many cups are on the table", "read the sign"]


def vowel_reward(completions: list[str], **_: Any) -> list[float]:
    """Share of the completion's characters that are vowels (0.0 for an empty completion)."""
    return [sum(ch in "aeiou" for ch in text) / len(text) if text else 0.0 for text in completions]


def flaky_reward(completions: list[str], **_: Any) -> list[float]:
    """NaN for every other completion, 0.0 otherwise: a broken reward must not stop or steer training."""
    return [math.nan if i % 2 else 0.0 for i in range(len(completions))]


def train_toy(output_dir: Path, learning_rate: float) -> list[dict[str, Any]]:
    """Run GRPO for ``STEPS`` steps and return TRL's log history (one entry per step)."""
    import torch
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from vcot.dev.tiny_model import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    args = GRPOConfig(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,  # TRL defaults to bf16: several times slower than fp32 on CPU
        activation_checkpointing=False,  # TRL defaults to checkpointing (and warns under its old name)
        learning_rate=learning_rate,  # TRL's default 1e-6 suits pretrained 7B models, not random tiny ones
        lr_scheduler_type="constant",
        max_steps=STEPS,
        per_device_train_batch_size=8,  # one prompt's whole group per step
        num_generations=8,
        max_completion_length=16,
        temperature=1.0,
        reward_weights=[1.0, 1.0],
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=Qwen2ForCausalLM(config),
        reward_funcs=[guarded(vowel_reward), guarded(flaky_reward)],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=tokenizer,
    )
    trainer.train()
    return [entry for entry in trainer.state.log_history if "reward" in entry]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.mark.integration
def test_grpo_raises_the_mean_reward(tmp_path: Path) -> None:
    history = train_toy(tmp_path, learning_rate=2e-2)
    curve = [entry["rewards/vowel_reward/mean"] for entry in history]
    print("mean vowel reward per step:", [round(value, 3) for value in curve])
    assert len(curve) == STEPS
    first, last = _mean(curve[:WINDOW]), _mean(curve[-WINDOW:])
    assert last > first + 0.1, f"GRPO did not optimize: mean reward {first:.3f} at the start, {last:.3f} at the end"
    # The NaN reward was turned into None, left out by TRL, and counted.
    assert all(entry["problems/flaky_reward/not_finite"] == 0.5 for entry in history)
    assert all(entry["rewards/flaky_reward/mean"] == 0.0 for entry in history)
