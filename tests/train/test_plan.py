"""The memory plan (``vcot-plan``): its parts move the way the recipe's knobs say, it names the smallest change that
fits, every shipped recipe fits what it was planned for, and the command prints a table or JSON from a published
name, a model folder or a ``config.json``. (Predicted against measured memory: ``bench/plan_bench.py``.)"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from jobs.plan import main
from vcot.models.published import published_config
from vcot.train.plan import FUSED_TILE, GIB, NF4_BYTES, ModelShape, fused_head, plan, smallest_fix
from vcot.train.recipe import load_recipe, recipe_names

SEVEN_B = ModelShape.from_config(published_config("qwen2.5-vl-7b"))


def test_4bit_weights_are_about_a_quarter_of_16bit_and_sharding_divides_them() -> None:
    qlora = load_recipe("qwen2.5-vl-7b-qlora")
    bf16 = load_recipe("qwen2.5-vl-7b-qlora", "quantize=null,optim=adamw_torch,generation_eval_samples=0")
    four, sixteen = plan(SEVEN_B, qlora).parts["weights"], plan(SEVEN_B, bf16).parts["weights"]
    assert sixteen == SEVEN_B.parameters() * 2
    unpacked = SEVEN_B.parameters() - SEVEN_B.quantized_parameters()  # embeddings, output layer, norms, biases
    assert four == pytest.approx(SEVEN_B.quantized_parameters() * NF4_BYTES + unpacked * 2)
    assert 0.25 < four / sixteen < 0.4  # the 16-bit embeddings and output layer keep it above a quarter
    sharded = replace(bf16, sharding="fsdp2")
    assert plan(SEVEN_B, sharded, gpus=4).parts["weights"] == pytest.approx(sixteen / 4)
    whole_optimizer = plan(SEVEN_B, bf16).parts["optimizer"]
    assert plan(SEVEN_B, sharded, gpus=4).parts["optimizer"] == pytest.approx(whole_optimizer / 4)


def test_activations_follow_batch_length_pixels_and_checkpointing() -> None:
    recipe = load_recipe("qwen2.5-vl-7b-qlora")
    base = plan(SEVEN_B, recipe).parts
    half_batch = plan(SEVEN_B, replace(recipe, per_device_train_batch_size=2)).parts
    assert half_batch["activations_logits"] == pytest.approx(base["activations_logits"] / 2)
    assert plan(SEVEN_B, recipe, seq_len=1024).parts["activations_language_model"] < base["activations_language_model"]
    assert plan(SEVEN_B, recipe, max_pixels=4 * 1280 * 28 * 28).parts["activations_vision"] > base["activations_vision"]
    unchecked = plan(SEVEN_B, replace(recipe, gradient_checkpointing=False)).parts
    assert unchecked["activations_language_model"] > 5 * base["activations_language_model"]


def test_sfts_fused_lm_head_holds_a_tile_of_logits_over_the_labelled_positions() -> None:
    from trl.kernels import chunked_logprob
    from trl.trainer import utils

    assert FUSED_TILE == (chunked_logprob.TOKEN_CHUNK_SIZE, utils._CHUNKED_LOGPROB_CHUNK_SIZE)  # TRL's tile
    fused = load_recipe("qwen2.5-vl-7b-qlora")
    unfused = plan(SEVEN_B, replace(fused, fused_lm_head=False)).parts["activations_logits"]
    # 4 rows x 2,048 positions x 152k vocabulary: logits, their fp32 copy and the log-softmax
    assert unfused == 4 * 2048 * SEVEN_B.text.vocab * (2 + 4 + 4)
    labelled = 4 * (2048 - 1280 - 128)  # the answer's positions: not the 1,280 image tokens nor the prompt's text
    tile = labelled * 32768 * 2  # one tile of the fused head's logits, bf16
    assert plan(SEVEN_B, fused).parts["activations_logits"] == tile + labelled * SEVEN_B.text.hidden * 6
    smoothed = load_recipe("qwen2.5-vl-7b-qlora", "trainer={label_smoothing_factor: 0.1}")  # needs the logits
    assert plan(SEVEN_B, smoothed).parts["activations_logits"] == unfused
    head_lora = load_recipe("qwen2.5-vl-7b-qlora", "peft={target_modules: [q_proj, lm_head]}")  # the head is adapted
    assert plan(SEVEN_B, head_lora).parts["activations_logits"] == unfused
    assert plan(SEVEN_B, fused).total < plan(SEVEN_B, replace(fused, fused_lm_head=False)).total - 9 * GIB
    assert fused_head(load_recipe("qwen2.5-vl-72b-lora"))  # sharded too: its output layer is gathered for it


def test_8bit_adamw_keeps_a_quarter_of_the_32bit_states_and_vllm_takes_its_share() -> None:
    recipe = load_recipe("qwen2.5-vl-7b-grpo")
    adamw_32bit = plan(SEVEN_B, replace(recipe, optim="adamw_torch")).parts["optimizer"]
    assert plan(SEVEN_B, recipe).parts["optimizer"] * 4 == adamw_32bit
    assert plan(SEVEN_B, recipe, gpu_memory_gib=40).parts["vllm"] == pytest.approx(0.3 * 40 * GIB)
    on_cpu = plan(SEVEN_B, recipe, device="cpu").parts
    assert "vllm" not in on_cpu and "framework_overhead" not in on_cpu  # a CPU run: HF generate, no CUDA context


def test_a_plan_that_does_not_fit_names_the_smallest_change_that_does() -> None:
    recipe = load_recipe("qwen2.5-vl-7b-qlora")
    assert not plan(SEVEN_B, recipe, gpu_memory_gib=12).fits
    assert smallest_fix(SEVEN_B, recipe, gpu_memory_gib=12) == (
        "per_device_train_batch_size=2 (global_batch_size=16 kept by accumulation)")
    assert smallest_fix(SEVEN_B, recipe, gpu_memory_gib=8) is None  # no one change is enough: said, not guessed
    grpo = smallest_fix(SEVEN_B, load_recipe("qwen2.5-vl-7b-grpo"), gpu_memory_gib=40)
    assert grpo == "per_device_train_batch_size=4,gradient_accumulation_steps=8 (the same global batch)"
    bf16_72b = ModelShape.from_config(published_config("qwen2.5-vl-72b"))
    lora = load_recipe("qwen2.5-vl-7b-qlora", "quantize=null")
    four_bit = "sharding=null,quantize=4bit,optim=adamw_8bit (QLoRA, a whole copy per GPU)"
    assert smallest_fix(bf16_72b, lora, gpu_memory_gib=80) == four_bit  # 72B in 4 bits: ~40 GiB
    sharded = load_recipe("qwen2.5-vl-72b-lora")
    assert smallest_fix(bf16_72b, sharded, gpus=1, gpu_memory_gib=80) == four_bit  # one GPU: 4 bits
    assert smallest_fix(bf16_72b, sharded, gpus=1, gpu_memory_gib=40).startswith("8 GPUs with sharding=fsdp2")


def test_a_full_fine_tune_keeps_no_fp32_copy_and_trains_every_merger() -> None:
    full = load_recipe("qwen2.5-vl-7b-qlora", "finetune=full,quantize=null,optim=adamw_torch")
    parts = plan(SEVEN_B, full).parts
    trainable = parts["weights"] / 2 - SEVEN_B.vision.parameters() + SEVEN_B.vision.merger_parameters()
    assert parts["adapter"] == 0 and parts["gradients"] == pytest.approx(trainable * 2)  # bf16 gradients
    assert parts["optimizer"] == pytest.approx(trainable * 4)  # two bf16 moments


def test_sharding_adds_the_gathered_layers_and_an_fp32_master_copy_of_what_trains_in_full() -> None:
    shape = ModelShape.from_config(published_config("qwen2.5-vl-72b"))
    lora = load_recipe("qwen2.5-vl-72b-lora")
    text = shape.text
    gathered = plan(shape, lora, gpus=8).parts["gathered_weights"]
    assert gathered == pytest.approx((text.vocab * text.hidden + 2 * text.layer_parameters()) * 2 * 7 / 8)
    kept = plan(shape, replace(lora, reshard_after_forward=False), gpus=8).parts["gathered_weights"]
    assert kept == pytest.approx(shape.parameters() * 2 * 7 / 8) and kept > 10 * gathered  # the model, whole
    assert plan(shape, lora, gpus=1).parts["gathered_weights"] == 0  # a group of one gathers nothing
    full = replace(lora, finetune="full")
    whole, sharded = plan(shape, replace(full, sharding=None), gpus=1).parts, plan(shape, full, gpus=8).parts
    assert sharded["optimizer"] == pytest.approx(whole["optimizer"] * 2 / 8)  # fp32 moments, not bf16
    assert sharded["gradients"] == pytest.approx(whole["gradients"] * 2 / 8)
    trained = whole["gradients"] / 2
    assert sharded["weights"] == pytest.approx((whole["weights"] + trained * 2) / 8)  # what trains kept in fp32


@pytest.mark.parametrize("recipe_name", [name for name in recipe_names() if not name.startswith("tiny-")])
def test_every_large_recipe_fits_the_gpus_it_was_planned_for(recipe_name: str) -> None:
    from tests.train.test_real_shapes import MODEL_OF

    recipe = load_recipe(recipe_name)
    shape = ModelShape.from_config(published_config(MODEL_OF[recipe_name]))
    result = plan(shape, recipe)
    assert result.fits, (recipe_name, result.to_dict())
    assert (result.gpus, result.gpu_memory_gib) == (recipe.gpus, recipe.gpu_memory_gib)


def test_vcot_plan_prints_a_table_or_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "qwen2.5-vl-7b", "--recipe", "qwen2.5-vl-7b-qlora", "--gpu-memory-gib", "12"]) == 0
    table = capsys.readouterr().out
    assert "8.29B parameters, 161.5M trainable" in table and "does NOT fit; smallest change that fits:" in table
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(published_config("qwen3-vl-8b")))
    for model in (str(tmp_path / "model"), str(tmp_path / "model" / "config.json")):
        assert main(["--model", model, "--recipe", "qwen3-vl-8b-qlora", "--json"]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["fits"] and out["parameters"] == 8_767_123_696 and out["fix"] is None
        assert set(out["parts_gib"]) >= {"weights", "adapter", "gradients", "optimizer", "activations_vision"}


def test_vcot_plan_says_what_to_pass_for_a_model_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--model", str(tmp_path / "nowhere")]) == 2
    assert "no config.json at" in capsys.readouterr().err


def test_the_train_stages_plan_is_advice_and_never_fails_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from vcot.train import plan as plan_module

    def broken() -> tuple[str, float]:
        raise OSError("no sysconf here")

    monkeypatch.setattr(plan_module, "machine_memory_gib", broken)
    assert plan_module.log_plan("qwen2.5-vl-7b", load_recipe("qwen2.5-vl-7b-qlora")) is None
    monkeypatch.setattr(plan_module, "machine_memory_gib", lambda: ("cuda", 8.0))
    assert not plan_module.log_plan("qwen2.5-vl-7b", load_recipe("qwen2.5-vl-7b-qlora")).fits  # a warning, no error


@pytest.mark.parametrize(("family_dir", "recipe"), [
    ("tiny_model_dir", "qwen2.5-vl-7b-qlora"), ("tiny_qwen3vl_dir", "qwen3-vl-8b-qlora"),
])
def test_a_vision_lora_is_counted_as_peft_makes_it(
    family_dir: str, recipe: str, request: pytest.FixtureRequest
) -> None:
    """The plan's count of a ``tune_vision`` adapter is the built one's, whichever names the family's tower uses."""
    from vcot.models.loading import load_model_and_processor
    from vcot.train.common import add_lora
    from vcot.train.plan import recipe_lora_parameters

    model_dir = request.getfixturevalue(family_dir)
    targets = "[q_proj, v_proj, down_proj, qkv, attn.proj, linear_fc1, linear_fc2]"
    chosen = load_recipe(recipe, f"tune_vision=true,lora_target_modules={targets}")
    model, _ = load_model_and_processor(str(model_dir), for_training=True)
    built = sum(p.numel() for name, p in add_lora(model, chosen).named_parameters() if ".lora_" in name)
    shape = ModelShape.from_config(json.loads((model_dir / "config.json").read_text()))
    assert built == recipe_lora_parameters(shape, chosen)
