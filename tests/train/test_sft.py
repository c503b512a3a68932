"""SFT's trainer: the fused LM head (recipe ``fused_lm_head``) computes the model's own loss and gradients."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from vcot.errors import ConfigError
from vcot.train.common import RunFolders, load_policy
from vcot.train.recipe import load_recipe
from vcot.train.sft import length_grouped_trainer, read_data_settings, sft_arguments, use_fused_lm_head


def _trainer(tiny_model_dir: Path, tokenized_data: str, tmp_path: Path, overrides: str = "") -> Any:
    from vcot.train.data import Collator, TokenizedDataset

    recipe = load_recipe("tiny-cpu", overrides)  # trains lm_head in full (modules_to_save): the head uses its copy
    fmt, _ = read_data_settings(tokenized_data)
    torch.manual_seed(0)
    model, processor = load_policy(str(tiny_model_dir), recipe, fmt)
    folders = RunFolders(tmp_path / "scratch", str(tmp_path / "out"))
    return length_grouped_trainer()(
        model=model, args=sft_arguments(recipe, folders, has_eval=False),
        train_dataset=TokenizedDataset(tokenized_data, "train"), data_collator=Collator(processor),
        processing_class=processor,
    )  # fmt: skip


def _first_batch(trainer: Any) -> dict[str, Any]:
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    return {key: value for key, value in batch.items() if key != "labels"}


def _loss_and_gradients(trainer: Any, batch: dict[str, Any]) -> tuple[float, dict[str, torch.Tensor], Any]:
    trainer.model.zero_grad()
    trainer.model.eval()  # no dropout: the two passes must see the same network
    loss, outputs = trainer.compute_loss(trainer.model, dict(batch), return_outputs=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad and p.grad is not None}
    return float(loss.detach()), grads, outputs


def test_the_fused_lm_head_gives_the_models_loss_and_gradients(
    tiny_model_dir: Path, tokenized_data: str, tmp_path: Path
) -> None:
    trainer = _trainer(tiny_model_dir, tokenized_data, tmp_path)
    assert "lm_head" in load_recipe("tiny-cpu").modules_to_save
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()  # prompt tokens have no label
    plain_loss, plain_grads, plain_outputs = _loss_and_gradients(trainer, batch)
    assert use_fused_lm_head(trainer)
    fused_loss, fused_grads, fused_outputs = _loss_and_gradients(trainer, batch)

    assert plain_outputs.logits is not None and getattr(fused_outputs, "logits", None) is None  # the fused path ran
    assert fused_loss == pytest.approx(plain_loss, rel=1e-5)
    assert fused_grads.keys() == plain_grads.keys()
    assert any("lm_head" in name and "modules_to_save" in name for name in fused_grads)  # the trained copy's
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # Generation keeps the model's own forward (the logits of every position).
    with torch.no_grad():
        assert trainer.model(**{k: v for k, v in batch.items() if k != "labels"}).logits is not None


@pytest.mark.parametrize("overrides, sharded_without_norm", [
    ("modules_to_save=[],peft={target_modules: [q_proj, v_proj, lm_head]}", False),  # a LoRA on the output layer
    ("trainer={label_smoothing_factor: 0.1}", False),  # a loss that needs the logits
    ("", True),  # sharded, with no final norm to gather the output layer with (vcot.train.sharding)
])  # fmt: skip
def test_the_fused_head_stays_off_where_it_would_leave_something_out(
    tiny_model_dir: Path, tokenized_data: str, tmp_path: Path, overrides: str, sharded_without_norm: bool
) -> None:
    trainer = _trainer(tiny_model_dir, tokenized_data, tmp_path, overrides)
    if sharded_without_norm:  # as a sharded trainer records a model whose final norm it did not find
        trainer.is_fsdp_enabled, trainer.output_layer_gathered = True, False
    assert not use_fused_lm_head(trainer)
    assert not getattr(trainer, "fused_lm_head", False)
    assert getattr(trainer.model(**_first_batch(trainer)), "logits", None) is not None  # the model's own forward


def test_fused_lm_head_is_on_for_the_gpu_recipes_and_sfts_alone() -> None:
    assert all(load_recipe(name).fused_lm_head for name in ("qwen2.5-vl-7b-qlora", "qwen3-vl-8b-qlora"))
    assert load_recipe("tiny-cpu").fused_lm_head is False  # a tiny vocabulary and no Triton: nothing to save
    with pytest.raises(ConfigError, match="fused_lm_head is SFT's"):
        load_recipe("tiny-cpu-grpo", "fused_lm_head=false")


@pytest.mark.parametrize("settings", ["", "finetune=full,generation_eval_samples=0"])
def test_the_train_stage_trains_through_the_fused_head(
    tiny_model_dir: Path, tokenized_data: str, tmp_path: Path, settings: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from vcot.train import TrainConfig, sft, train

    used: list[bool] = []
    monkeypatch.setattr(sft, "use_fused_lm_head", lambda trainer: used.append(True) or use_fused_lm_head(trainer))
    steps = "fused_lm_head=true,max_steps=3,save_steps=3,eval_steps=3,logging_steps=1"
    output = tmp_path / "run"
    assert train(TrainConfig(data=tokenized_data, model=str(tiny_model_dir), output=str(output), recipe="tiny-cpu",
                             set=",".join(filter(None, [steps, settings])), threads=1))  # fmt: skip
    metrics = json.loads((output / "metrics.json").read_text())
    assert used == [True]
    assert all(math.isfinite(entry["loss"]) for entry in metrics["log_history"] if "loss" in entry)
    assert math.isfinite(metrics["eval"]["eval_loss"])
