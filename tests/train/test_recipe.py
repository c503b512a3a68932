"""Recipes: every shipped preset loads, the default is the seed's, overrides and typos are handled."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from vcot.errors import ConfigError, VcotError
from vcot.train.recipe import (
    DEFAULT_RECIPE,
    NUMBER_RULES,
    SEED_ONLY,
    Recipe,
    load_recipe,
    lora_target_regex,
    recipe_names,
)


def test_every_shipped_recipe_loads_and_documents_every_knob() -> None:
    names = recipe_names()
    assert {"qwen2.5-vl-7b-qlora", "tiny-cpu"} <= set(names)
    knobs = {name for name in Recipe.__dataclass_fields__}
    for name in names:
        recipe = load_recipe(name)
        assert isinstance(recipe, Recipe)
        text = (Path(__file__).parents[2] / "vcot" / "train" / "recipes" / f"{name}.yaml").read_text()
        assert {m for m in re.findall(r"^([a-z_]+):", text, flags=re.MULTILINE)} == knobs, name


def test_default_recipe_is_the_seeds() -> None:
    recipe = load_recipe(DEFAULT_RECIPE)
    assert (recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout) == (64, 128, 0.05)
    assert recipe.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert not recipe.tune_vision and recipe.quantize == "4bit" and recipe.modules_to_save == []
    assert (recipe.learning_rate, recipe.lr_scheduler_type, recipe.warmup_ratio) == (1e-4, "cosine", 0.03)
    assert (recipe.num_train_epochs, recipe.per_device_train_batch_size, recipe.gradient_accumulation_steps) == (
        2,
        4,
        4,
    )
    assert (recipe.weight_decay, recipe.max_grad_norm, recipe.optim) == (0.01, 0.3, "adamw_8bit")
    assert recipe.neftune_noise_alpha == 5
    assert (recipe.early_stopping_patience, recipe.early_stopping_threshold) == (3, 0.001)
    assert recipe.logging_steps == 50 and recipe.gradient_checkpointing


def test_a_warm_up_takes_a_schedule_that_has_one() -> None:
    recipe = load_recipe("tiny-cpu-grpo", "lr_scheduler_type=constant_with_warmup,warmup_ratio=0.1")
    assert (recipe.lr_scheduler_type, recipe.warmup_ratio) == ("constant_with_warmup", 0.1)
    assert load_recipe("tiny-cpu-grpo").warmup_ratio == 0.0  # constant, no warm-up: as shipped


def test_an_accumulation_the_global_batch_would_override_is_refused() -> None:
    """The large presets derive the accumulation from global_batch_size on any GPU count: an override of the
    accumulation alone would train with the preset's batch while the run's manifest records the asked one."""
    with pytest.raises(ConfigError, match="set global_batch_size=N"):
        load_recipe("qwen2.5-vl-7b-qlora", "gradient_accumulation_steps=8")
    assert load_recipe("qwen2.5-vl-7b-qlora", "gradient_accumulation_steps=8,global_batch_size=0").accumulation_for(1) == 8
    assert load_recipe("qwen2.5-vl-7b-qlora", "global_batch_size=32").accumulation_for(1) == 8
    assert load_recipe("tiny-cpu", "gradient_accumulation_steps=2").accumulation_for(1) == 2  # no global batch


def test_overrides_and_files(tmp_path: Path) -> None:
    recipe = load_recipe(
        "tiny-cpu", "lora_r=4, learning_rate=3e-4, quantize=null, lora_target_modules=[q_proj, v_proj]"
    )
    assert (recipe.lora_r, recipe.learning_rate, recipe.quantize) == (4, 3e-4, None)
    assert recipe.lora_target_modules == ["q_proj", "v_proj"]
    custom = tmp_path / "mine.yaml"
    custom.write_text("lora_r: 2\nnum_train_epochs: 1\n")
    from_file = load_recipe(str(custom))
    assert from_file.lora_r == 2 and from_file.learning_rate == Recipe().learning_rate  # the rest: the seed's


def test_the_defaults_are_the_seed_recipe_but_for_what_the_docs_name() -> None:
    defaults, seed = Recipe(), load_recipe(DEFAULT_RECIPE)
    differ = [f.name for f in dataclasses.fields(Recipe) if getattr(defaults, f.name) != getattr(seed, f.name)]
    assert differ == list(SEED_ONLY)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("lora_rank=8", "unknown recipe keys"),
        ("lora_r=eight", "not a valid int"),
        ("quantize=3bit", "quantize"),
        ("save_steps=15,eval_steps=10", "multiple of eval_steps"),
        ("lora_r", "not key=value"),
        ("lr_scheduler_type=constant,warmup_ratio=0.1", "set lr_scheduler_type=constant_with_warmup"),
        ("lr_scheduler_type=reduce_lr_on_plateau", "warmup_ratio=0.02 would do nothing: set warmup_ratio=0"),
    ],
)
def test_bad_recipes_are_refused_with_a_hint(overrides: str, message: str) -> None:
    with pytest.raises(VcotError, match=message):
        load_recipe("tiny-cpu", overrides)


SHARDED = "sharding=fsdp2,optim=adamw_torch"


@pytest.mark.parametrize(
    ("recipe", "overrides", "message"),
    [
        ("tiny-cpu", SHARDED + ",quantize=4bit", "a 4bit base is not sharded: set quantize=null, or sharding=null"),
        ("tiny-cpu", SHARDED + ",optim=adamw_8bit", "use optim=adamw_torch with sharding, or sharding=null"),
        ("qwen2.5-vl-7b-grpo", SHARDED + ",quantize=null", "set use_vllm=false"),
        ("tiny-cpu", "cpu_offload=true", "apply to sharding=fsdp2 only"),
        ("tiny-cpu", "reshard_after_forward=false", "apply to sharding=fsdp2 only"),
        ("tiny-cpu", "sharding=fsdp1", "sharding='fsdp1' is not valid: use fsdp2 or null"),
    ],
)
def test_what_sharding_cannot_do_is_refused_with_the_way_that_can(recipe: str, overrides: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_recipe(recipe, overrides)


def test_sharding_takes_lora_full_finetunes_every_method_and_the_generation_evaluation() -> None:
    assert load_recipe("tiny-cpu", SHARDED).sharding == "fsdp2"
    assert load_recipe("tiny-cpu", SHARDED + ",finetune=full").finetune == "full"
    assert load_recipe("tiny-cpu-grpo", SHARDED).method == "grpo"
    assert load_recipe("tiny-cpu-rgfn", SHARDED).method == "gfn"
    assert load_recipe("tiny-cpu", SHARDED + ",generation_eval_samples=4").generation_eval_samples == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("learning_rate: 1.0e-4\nlora_r: 8\nlearning_rate: 1.0e-3\n", "has the key 'learning_rate' twice in one mapping (line 3)"),
        ("reward_weights:\n  bbox: 1.0\n  accuracy: 1.0\n  bbox: 0.0\n", "has the key 'bbox' twice"),
        ("trainer: {adam_beta2: 0.95, adam_beta2: 0.9}\n", "has the key 'adam_beta2' twice"),
    ],
)
def test_a_recipe_file_with_a_duplicated_key_is_refused(tmp_path: Path, text: str, message: str) -> None:
    """PyYAML keeps the last of two equal keys: a recipe would silently train with the second value."""
    (tmp_path / "mine.yaml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_recipe(str(tmp_path / "mine.yaml"))


def test_a_duplicated_key_inside_an_override_value_is_refused_and_a_repeated_override_wins() -> None:
    with pytest.raises(ConfigError, match=re.escape("has the key 'bbox' twice")):
        load_recipe("tiny-cpu", "reward_weights={bbox: 1, bbox: 0}")
    # key=value pairs are flags, not one YAML mapping: a later one overrides (scripts append to a base string)
    assert load_recipe("tiny-cpu", "lora_r=8,lora_r=16").lora_r == 16


def test_unknown_recipe_names_list_the_presets() -> None:
    with pytest.raises(VcotError, match="neither a preset.*tiny-cpu"):
        load_recipe("no-such-recipe")


def test_lora_targets_only_the_language_model(tiny_model_dir: Path) -> None:
    from vcot.models.loading import load_model_and_processor
    from vcot.train.common import add_lora

    model, _ = load_model_and_processor(str(tiny_model_dir), for_training=True)
    names = {name for name, _ in model.named_modules()}
    assert any(".visual." in n and n.endswith("mlp.gate_proj") for n in names)  # the trap exists
    wrapped = add_lora(model, load_recipe("qwen2.5-vl-7b-qlora"))
    lora = [name for name, _ in wrapped.named_modules() if name.endswith("lora_A")]
    assert lora and not any("visual" in name for name in lora)
    suffixes = {name.rsplit(".", 2)[-2] for name in lora}
    assert suffixes == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    with_vision = lora_target_regex(["gate_proj"], include_vision=True)
    assert re.fullmatch(with_vision, "model.visual.blocks.0.mlp.gate_proj")


@pytest.mark.parametrize(("family_dir", "recipe", "layer"), [
    ("tiny_model_dir", "tiny-cpu", "qkv"),  # its one LoRA target is embed_tokens
    ("tiny_qwen3vl_dir", "qwen3-vl-8b-qlora", "linear_fc1"),  # Qwen3-VL's vision MLP is not named as the LM's
])
def test_tune_vision_that_adapts_no_vision_layer_is_refused(
    family_dir: str, recipe: str, layer: str, request: pytest.FixtureRequest
) -> None:
    from vcot.models.loading import load_model_and_processor
    from vcot.train.common import add_lora

    model_dir = request.getfixturevalue(family_dir)
    model, _ = load_model_and_processor(str(model_dir), for_training=True)
    with pytest.raises(ConfigError, match=rf"adapts nothing of the vision tower: .*\b{layer}\b"):
        add_lora(model, load_recipe(recipe, "tune_vision=true"))
    model, _ = load_model_and_processor(str(model_dir), for_training=True)
    wrapped = add_lora(model, load_recipe(recipe, f"tune_vision=true,lora_target_modules=[{layer}]"))
    tower = [name for name, param in wrapped.named_parameters() if param.requires_grad and ".visual.blocks." in name]
    assert tower and all(f".{layer}.lora_" in name for name in tower)


def test_tiny_cpu_trains_the_language_model_in_full_and_the_vision_tower_not(tiny_model_dir: Path) -> None:
    """make local-train's recipe: random weights have nothing low-rank to adapt (docs/train.md)."""
    from vcot.models.loading import load_model_and_processor
    from vcot.train.common import add_lora

    model, _ = load_model_and_processor(str(tiny_model_dir), for_training=True)
    wrapped = add_lora(model, load_recipe("tiny-cpu"))
    trainable = [name for name, param in wrapped.named_parameters() if param.requires_grad]
    layers = model.config.text_config.num_hidden_layers
    for index in range(layers):  # every weight of every decoder layer
        prefix = f"language_model.layers.{index}.modules_to_save.default."
        assert any(prefix + "self_attn.q_proj" in name for name in trainable)
        assert any(prefix + "mlp.down_proj" in name for name in trainable)
    assert any("lm_head.modules_to_save" in name for name in trainable)
    assert any("visual.merger.modules_to_save" in name for name in trainable)
    assert any("embed_tokens.lora_embedding_A" in name for name in trainable)
    assert not any("visual.blocks" in name or "patch_embed" in name for name in trainable)  # the tower stays frozen


def test_cli_refuses_a_bad_override_before_loading_anything(tmp_path: Path) -> None:
    from jobs.train import main

    argv = ["--data", str(tmp_path / "d"), "--model", str(tmp_path / "m"), "--output", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--set", "lora_rank=8"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("recipe", "overrides", "message"),
    [
        ("tiny-cpu-grpo", "learning_rate=.inf", "learning_rate=inf is not a finite number: learning_rate must be > 0"),
        ("tiny-cpu", "learning_rate=.nan", "learning_rate=nan is not a finite number"),
        ("tiny-cpu", "learning_rate=0", "learning_rate must be > 0"),
        ("tiny-cpu", "learning_rate=-1e-4", "learning_rate must be > 0"),
        ("tiny-cpu", "learning_rate=null", "learning_rate=None must be a number > 0"),
        ("tiny-cpu", "num_train_epochs=.inf", "num_train_epochs=inf is not a finite number"),
        ("tiny-cpu", "lora_dropout=.nan", "lora_dropout=nan is not a finite number"),
        ("tiny-cpu", "lora_dropout=1", "lora_dropout must be in [0, 1)"),
        ("tiny-cpu", "warmup_ratio=.nan", "warmup_ratio=nan is not a finite number"),
        ("tiny-cpu", "weight_decay=-0.1", "weight_decay must be >= 0"),
        ("tiny-cpu", "max_grad_norm=.nan", "max_grad_norm=nan is not a finite number"),
        ("tiny-cpu", "early_stopping_threshold=.inf", "early_stopping_threshold=inf is not a finite number"),
        ("tiny-cpu", "neftune_noise_alpha=.inf", "neftune_noise_alpha=inf is not a finite number"),
        ("tiny-cpu", "vision_learning_rate=.nan", "vision_learning_rate=nan is not a finite number"),
        ("tiny-cpu", "vision_learning_rate=-1e-5", "vision_learning_rate must be >= 0"),
        ("tiny-cpu", "max_steps=0", "max_steps must be -1 (num_train_epochs decides) or >= 1"),
        ("tiny-cpu", "seed=-1", "seed must be in [0, 2**32)"),
        ("tiny-cpu", "save_total_limit=0", "save_total_limit must be >= 1"),
        ("tiny-cpu", "per_device_eval_batch_size=0", "per_device_eval_batch_size must be >= 1"),
        ("tiny-cpu", "dataloader_num_workers=-1", "dataloader_num_workers must be >= 0"),
        ("tiny-cpu", "lora_r=true", "lora_r=True is not a valid int"),
        ("tiny-cpu-grpo", "top_p=1.5", "top_p must be in (0, 1]"),
        ("tiny-cpu-grpo", "temperature=.inf", "temperature=inf is not a finite number"),
        ("tiny-cpu-grpo", "beta=.nan", "beta=nan is not a finite number"),
        ("tiny-cpu-grpo", "vllm_gpu_memory_utilization=0", "vllm_gpu_memory_utilization must be in (0, 1]"),
        ("tiny-cpu-rgfn", "reward_tolerance_end=.inf", "reward_tolerance_end=inf is not a finite number"),
        ("tiny-cpu-rgfn", "subtb_lambda=.nan", "subtb_lambda=nan is not a finite number"),
    ],
)
def test_every_numeric_knob_must_be_finite_and_in_range(recipe: str, overrides: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_recipe(recipe, overrides)


def test_every_numeric_knob_has_a_range() -> None:
    """A new numeric knob cannot slip past the checks: it needs its entry in NUMBER_RULES."""
    numeric = {f.name for f in dataclasses.fields(Recipe) if str(f.type).split(" ")[0] in ("int", "float")}
    assert numeric == set(NUMBER_RULES)
    for name in recipe_names():  # and every shipped value is in its range
        load_recipe(name)


def test_cli_refuses_an_infinite_grpo_learning_rate_before_loading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's run: GRPO at learning_rate .inf crashed with a traceback after its first step."""
    from jobs.train import main

    argv = ["--data", str(tmp_path / "d"), "--model", str(tmp_path / "no-model"), "--output", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--recipe", "tiny-cpu-grpo", "--set", "learning_rate=.inf"])
    assert exit_info.value.code == 2
    assert "learning_rate=inf is not a finite number" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_grpo_recipes_say_why_for_every_knob() -> None:
    for name in ("qwen2.5-vl-7b-grpo", "tiny-cpu-grpo"):
        recipe = load_recipe(name)
        assert recipe.method == "grpo" and recipe.early_stopping_patience == 0 and recipe.neftune_noise_alpha is None
        text = (Path(__file__).parents[2] / "vcot" / "train" / "recipes" / f"{name}.yaml").read_text()
        bare = [line for line in text.splitlines() if re.match(r"^[a-z_]+:", line) and "#" not in line]
        assert not bare, (name, bare)
    seven_b = load_recipe("qwen2.5-vl-7b-grpo")
    assert seven_b.quantize is None and seven_b.use_vllm  # vLLM's rollout copy takes merged bf16 LoRA weights
    assert seven_b.per_device_train_batch_size * seven_b.gradient_accumulation_steps % seven_b.num_generations == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("method=rl", "method='rl' is not valid"),
        ("num_generations=1", "num_generations must be >= 2"),
        ("num_generations=3", "multiple of num_generations=3"),
        ("temperature=0", "temperature must be > 0"),
        ("loss_type=ppo", "loss_type='ppo'"),
        ("records_without_objects=drop", "records_without_objects='drop'"),
        ("neftune_noise_alpha=5", "SFT-only"),
        ("early_stopping_patience=2,eval_steps=20", "SFT-only"),
        ("save_steps=40", "save_steps=40 must equal eval_steps=20 for grpo"),
        ("use_vllm=true,top_p=0.9", "recipe top_p=0.9 with use_vllm=true"),
        ("use_vllm=true,top_p=1.0,trainer.top_k=20", "recipe trainer.top_k=20 with use_vllm=true"),
        ("use_vllm=true,top_p=1.0,trainer.min_p=0.05", "sample without a cut (top_p=1.0, no trainer.top_k or min_p)"),
    ],
)
def test_bad_grpo_recipes_are_refused_with_a_hint(overrides: str, message: str) -> None:
    with pytest.raises(VcotError, match=re.escape(message)):
        load_recipe("tiny-cpu-grpo", overrides)


def test_a_nucleus_cut_takes_vllm_rollouts_only_without_trls_importance_correction() -> None:
    """TRL corrects vLLM's rollouts by the ratio of two log-probabilities that a nucleus cut makes disagree."""
    assert load_recipe("tiny-cpu-grpo", "top_p=0.9").top_p == 0.9  # generate's samples: no correction to bias
    assert load_recipe("tiny-cpu-grpo", "use_vllm=true,top_p=1.0").use_vllm
    uncorrected = "use_vllm=true,top_p=0.9,trainer.vllm_importance_sampling_correction=false"
    unchecked = load_recipe("tiny-cpu-grpo", uncorrected)
    assert unchecked.trainer["vllm_importance_sampling_correction"] is False


def test_grpo_groups_are_checked_against_the_global_batch_when_one_is_set() -> None:
    """With global_batch_size the accumulation is derived from it: 4 a device and groups of 8 in a global batch of
    16 generate whole groups, and were refused for 4 x the (ignored) accumulation of 1."""
    overrides = "per_device_train_batch_size=4,gradient_accumulation_steps=1,num_generations=8"
    assert load_recipe("tiny-cpu-grpo", f"{overrides},global_batch_size=16").global_batch_size == 16
    with pytest.raises(VcotError, match="global_batch_size=12 must be a multiple of num_generations=8"):
        load_recipe("tiny-cpu-grpo", f"{overrides},global_batch_size=12")


def test_rgfn_recipes_say_why_for_every_knob() -> None:
    for name in ("qwen2.5-vl-7b-rgfn", "tiny-cpu-rgfn"):
        recipe = load_recipe(name)
        assert recipe.method == "gfn" and recipe.early_stopping_patience == 0 and recipe.neftune_noise_alpha is None
        text = (Path(__file__).parents[2] / "vcot" / "train" / "recipes" / f"{name}.yaml").read_text()
        bare = [line for line in text.splitlines() if re.match(r"^[a-z_]+:", line) and "#" not in line]
        assert not bare, (name, bare)
    paper = load_recipe("qwen2.5-vl-7b-rgfn")
    assert (paper.lora_r, paper.lora_alpha, paper.learning_rate, paper.weight_decay) == (64, 128, 1e-5, 0.05)
    assert (paper.rat_min_len, paper.rat_max_len, paper.explore_nums, paper.reward_every) == (64, 700, 6, 8)
    assert (paper.reward_tolerance_start, paper.reward_tolerance_end) == (1.5, 1.0)
    assert (paper.reward_temp_start, paper.reward_temp_end) == (1.0, 0.7)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("explore_nums=0", "explore_nums"),
        ("rat_min_len=10,rat_max_len=5", "rat_min_len <= rat_max_len"),
        ("reward_temp_end=0", "reward_temp_end must be > 0"),
        ("subtb_lambda=0", "subtb_lambda"),
        ("neftune_noise_alpha=5", "SFT-only"),
    ],
)
def test_bad_rgfn_recipes_are_refused_with_a_hint(overrides: str, message: str) -> None:
    with pytest.raises(VcotError, match=re.escape(message)):
        load_recipe("tiny-cpu-rgfn", overrides)
