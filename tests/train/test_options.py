"""The open training config (issue 21 item 5) and a run's cost (item 8): trainer:/peft: pass-through checked by
field name, full fine-tuning that evaluate loads, a vision learning rate, the prompt's wording recorded from
tokenize to evaluate, length-grouped batches and the throughput numbers of every run."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs.evaluate import main as evaluate_main
from vcot.errors import ConfigError, VcotError
from vcot.grounding.families import is_vision
from vcot.grounding.model_format import ModelFormat
from vcot.grounding.prompts import build_messages
from vcot.io import manifest, shards, storage
from vcot.models.loading import MODEL_CARD, load_model_and_processor
from vcot.train import TrainConfig, train
from vcot.train.common import RunFolders, add_lora, load_policy
from vcot.train.options import NO_VISION_TRAINS, use_vision_learning_rate
from vcot.train.recipe import load_recipe
from vcot.train.sft import length_grouped_trainer, sft_arguments

STEPS = "max_steps=2,save_steps=10,eval_steps=10,logging_steps=1"
SYSTEM = "You point at what you see."
TYPO = r"^recipe trainer.label_smothing_factor is not a field of TrainingArguments: did you mean trainer.label_smoothing_factor\?$"
INSTRUCTION = "Reason with boxes written as {box_pattern}; {coords_hint}. Finish with 'Answer: <answer>'."


# --- trainer: and peft: pass-through ------------------------------------------------------------------


def test_trainer_section_reaches_the_training_arguments(tmp_path: Path) -> None:
    recipe_file = tmp_path / "mine.yaml"
    # 1e-6 as written (YAML 1.1 would read it as a string, and TrainingArguments would take the string)
    recipe_file.write_text("trainer: {label_smoothing_factor: 0.1, lr_scheduler_kwargs: {min_lr: 1e-6}}\n")
    recipe = load_recipe(str(recipe_file), "trainer.adam_beta2=0.95,trainer.adam_epsilon=1e-7")  # --set adds to it
    assert recipe.trainer == {
        "label_smoothing_factor": 0.1,
        "lr_scheduler_kwargs": {"min_lr": 1e-6},
        "adam_beta2": 0.95,
        "adam_epsilon": 1e-7,
    }
    args = sft_arguments(recipe, RunFolders(tmp_path / "scratch", str(tmp_path / "out")), has_eval=True)
    assert (args.label_smoothing_factor, args.adam_beta2, args.adam_epsilon, args.lr_scheduler_kwargs) == (
        0.1,
        0.95,
        1e-7,
        {"min_lr": 1e-6},
    )
    assert isinstance(args.adam_epsilon, float) and isinstance(args.lr_scheduler_kwargs["min_lr"], float)
    assert args.learning_rate == recipe.learning_rate and args.metric_for_best_model == "eval_loss"  # the rest kept


@pytest.mark.parametrize(
    ("recipe", "overrides", "message"),
    [
        ("tiny-cpu", "trainer.label_smothing_factor=0.1", TYPO),
        (
            "tiny-cpu-grpo",
            "trainer.epsilon_hihg=0.28",
            r"GRPOConfig: did you mean trainer.epsilon_high\?$",
        ),
        (
            "tiny-cpu",
            "trainer.learning_rate=0.1",
            r"set the recipe's top-level learning_rate instead",
        ),
        ("tiny-cpu", "trainer.warmup_steps=10", r"top-level warmup_ratio"),
        ("tiny-cpu", "trainer.report_to=[wandb]", r"set the recipe's top-level report_to instead"),
        (
            "tiny-cpu",
            "trainer.output_dir=/tmp/x",
            r"cannot be set: vcot writes checkpoints",
        ),
        (
            "tiny-cpu",
            "peft.use_dorra=true",
            r"LoraConfig: did you mean peft.use_dora\?$",
        ),
        ("tiny-cpu", "peft.r=8", r"top-level lora_r"),
        ("tiny-cpu", "trainer=[1, 2]", r"must be a mapping"),
        ("tiny-cpu", "epochs.x=1", r"only trainer and peft take section.field=value"),
        ("tiny-cpu", "trainer.adam_beta1=.nan", r"trainer.adam_beta1=nan holds a number that is not finite"),
        ("tiny-cpu-grpo", "trainer.epsilon_high=.inf", r"trainer.epsilon_high=inf holds a number that is not finite"),
        ("tiny-cpu", "trainer.lr_scheduler_kwargs={min_lr: .nan}", r"lr_scheduler_kwargs=\{'min_lr': nan\} holds"),
    ],
)
def test_a_typo_in_a_section_is_one_line_naming_the_closest_field(recipe: str, overrides: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_recipe(recipe, overrides)
    assert "\n" not in str(caught.value)


def test_no_reserved_field_is_a_recipe_knob() -> None:
    """A knob is refused with the knob's name before RESERVED is read: a reserved entry for one is a stale reason."""
    import dataclasses

    from vcot.train.options import RESERVED
    from vcot.train.recipe import Recipe

    assert not set(RESERVED) & {f.name for f in dataclasses.fields(Recipe)}


def test_peft_extras_reach_the_lora_config(tiny_model_dir: Path) -> None:
    recipe = load_recipe("tiny-cpu", "peft={use_dora: true, use_rslora: true, target_modules: [q_proj, gate_proj]},"
                                     "modules_to_save=[],lora_r=4,lora_alpha=8")  # fmt: skip
    model, _ = load_model_and_processor(str(tiny_model_dir), for_training=True)
    lora = add_lora(model, recipe)
    config = lora.peft_config["default"]
    assert config.use_dora and config.use_rslora and set(config.target_modules) == {"q_proj", "gate_proj"}
    names = [name for name, _ in lora.named_parameters()]
    assert any("lora_magnitude_vector" in name for name in names)  # DoRA's magnitudes exist
    assert any("visual" in name and "lora_A" in name for name in names)  # raw PEFT targets: the vision tower too
    assert not any("k_proj.lora_A" in name for name in names)


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_on_a_16_bit_gpu_what_trains_is_fp32_and_the_model_still_generates(
    family: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mixed precision's master weights: the tiny recipe's whole layers (``modules_to_save``) trained in bf16 lose
    their small updates. The model is loaded in bf16 here as on such a GPU; ``generate`` runs outside autocast, so
    the fp32 modules must hand their neighbours bf16 (Qwen3-VL's merger failed without that)."""
    import torch
    from PIL import Image

    from vcot.grounding.model_format import ModelFormat
    from vcot.grounding.prompts import build_messages
    from vcot.models import loading

    model_dir = request.getfixturevalue("tiny_model_dir" if family == "qwen2.5-vl" else "tiny_qwen3vl_dir")
    monkeypatch.setattr(loading, "machine_precision", lambda: loading.Precision("cpu", torch.bfloat16))
    fmt = ModelFormat.for_processor(loading.load_processor(str(model_dir)), family, coords="norm1000")
    model, processor = load_policy(str(model_dir), load_recipe("tiny-cpu"), fmt)
    trained = {name: p.dtype for name, p in model.named_parameters() if p.requires_grad}
    assert any("modules_to_save" in name for name in trained) and set(trained.values()) == {torch.float32}
    assert any(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad)  # the base stays 16-bit

    image = Image.new("RGB", (64, 48), "red")
    image.save(tmp_path / "red.png")
    record = {"image": str(tmp_path / "red.png"), "width": 64, "height": 48, "question": "What color is the square?"}
    text = processor.apply_chat_template(build_messages(record, with_answer=False), tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    with torch.no_grad():
        assert model(**inputs).logits.dtype == torch.bfloat16
        assert model.generate(**inputs, max_new_tokens=4, do_sample=False).shape[1] > inputs["input_ids"].shape[1]


# --- the vision learning rate -------------------------------------------------------------------------


def _sft_trainer(tiny_model_dir: Path, tokenized_data: str, tmp_path: Path, overrides: str) -> Any:
    from vcot.train.data import Collator, TokenizedDataset
    from vcot.train.sft import read_data_settings

    recipe = load_recipe("tiny-cpu", overrides)
    fmt, _ = read_data_settings(tokenized_data)
    model, processor = load_policy(str(tiny_model_dir), recipe, fmt)
    folders = RunFolders(tmp_path / "scratch", str(tmp_path / "out"))
    train_set = TokenizedDataset(tokenized_data, "train")
    trainer = length_grouped_trainer()(
        model=model, args=sft_arguments(recipe, folders, has_eval=False), train_dataset=train_set,
        data_collator=Collator(processor), processing_class=processor,
    )  # fmt: skip
    return trainer, recipe


def test_vision_learning_rate_puts_the_vision_parameters_in_groups_of_their_own(
    tiny_model_dir: Path, tokenized_data: str, tmp_path: Path
) -> None:
    trainer, recipe = _sft_trainer(tiny_model_dir, tokenized_data, tmp_path, "vision_learning_rate=1.0e-5")
    use_vision_learning_rate(trainer, recipe)
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    rates: dict[float, set[bool]] = {}
    for group in optimizer.param_groups:
        rates.setdefault(group["lr"], set()).update(is_vision(names[id(p)]) for p in group["params"])
    assert rates == {
        1e-5: {True},
        recipe.learning_rate: {False},
    }  # two rates, the merger alone at the vision one
    trained = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert trained == sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)  # nothing left out


def test_vision_learning_rate_without_a_trainable_vision_parameter_is_refused(
    tiny_model_dir: Path, tokenized_data: str, tmp_path: Path
) -> None:
    """What the recipe cannot decide (raw peft targets, here q_proj: the language model's alone) is refused once the
    model is loaded."""
    trainer, recipe = _sft_trainer(
        tiny_model_dir,
        tokenized_data,
        tmp_path,
        "vision_learning_rate=1.0e-5,modules_to_save=[lm_head],peft={target_modules: [q_proj]}",
    )
    with pytest.raises(VcotError, match="no vision parameter trains"):
        use_vision_learning_rate(trainer, recipe)


@pytest.mark.parametrize(
    ("recipe", "overrides", "refused"),
    [
        ("qwen2.5-vl-7b-qlora", "", True),  # the seed's: a LoRA on the language model only
        ("qwen2.5-vl-7b-qlora", "modules_to_save=[embed_tokens, lm_head]", True),
        ("qwen2.5-vl-7b-qlora", "modules_to_save=[merger]", False),
        ("qwen2.5-vl-7b-qlora", "tune_vision=true", False),
        ("qwen2.5-vl-7b-qlora", "finetune=full,quantize=null", False),
        ("qwen2.5-vl-7b-qlora", "peft.target_modules=all-linear", False),  # decided on the loaded model
        ("qwen2.5-vl-7b-qlora", "modules_to_save=[mlp]", False),  # PEFT matches names' ends: vision's mlp too
    ],
)
def test_vision_learning_rate_where_the_recipe_trains_no_vision_is_refused_before_any_model_loads(
    recipe: str, overrides: str, refused: bool
) -> None:
    settings = ",".join(filter(None, ["vision_learning_rate=1.0e-5", overrides]))
    config = {"data": "d", "model": "no-such-model", "output": "o", "recipe": recipe, "set": settings}
    if refused:
        with pytest.raises(ConfigError, match=re.escape(NO_VISION_TRAINS)):
            TrainConfig(**config)  # the recipe is read here: no model is loaded (there is none)
    else:
        assert TrainConfig(**config).recipe == recipe


def test_vision_learning_rate_of_a_new_grpo_lora_is_refused_early_and_of_a_continued_adapter_late() -> None:
    """GRPO (RGFN) continues an adapter, whose own settings decide what trains: only a new LoRA is refused early."""
    config = {"data": "d", "model": "m", "output": "o", "recipe": "qwen2.5-vl-7b-grpo"}
    config["set"] = "vision_learning_rate=1e-5"
    assert load_recipe(config["recipe"], config["set"]).vision_learning_rate == 1e-5
    with pytest.raises(ConfigError, match=re.escape(NO_VISION_TRAINS)):
        TrainConfig(**config)
    assert TrainConfig(**config, init_adapter="s3://vcot/runs/exp1/train/adapter").init_adapter


def test_a_full_fine_tune_that_would_continue_an_adapter_is_refused_before_loading() -> None:
    """It trained every step and then failed at its commit (a PEFT model saved as a whole one), retried as exit 1."""
    config = {"data": "d", "model": "no-such-model", "output": "o", "recipe": "qwen2.5-vl-7b-qlora",
              "set": "finetune=full,quantize=null", "init_adapter": "s3://vcot/runs/exp1/train/adapter"}
    with pytest.raises(ValueError, match="finetune=full trains the whole model: drop --init-adapter"):
        TrainConfig(**config)
    assert TrainConfig(**{**config, "init_adapter": ""}).recipe == "qwen2.5-vl-7b-qlora"


# --- length-grouped batches ---------------------------------------------------------------------------


def test_group_by_length_reads_lengths_from_the_length_column(
    tiny_model_dir: Path, tokenized_data: str, tmp_path: Path
) -> None:
    from transformers.trainer_pt_utils import LengthGroupedSampler

    trainer, _ = _sft_trainer(tiny_model_dir, tokenized_data, tmp_path, "group_by_length=true")
    sampler = trainer._get_train_sampler()
    dataset = trainer.train_dataset
    assert isinstance(sampler, LengthGroupedSampler) and dataset.reads == 0  # no row read to measure it
    assert sampler.lengths == [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
    assert sorted(sampler) == list(range(len(dataset)))
    with pytest.raises(ConfigError, match="group_by_length is SFT-only"):
        load_recipe("tiny-cpu-grpo", "group_by_length=true")


# --- the prompt's wording, tokenize -> train -> evaluate; the run's cost --------------------------------


@pytest.fixture(scope="module")
def worded_tokens(record_data: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    from vcot.tokenize import TokenizeConfig, tokenize

    output = str(tmp_path_factory.mktemp("worded") / "tokens")
    tokenize(TokenizeConfig(input=[record_data], output=output, model=str(tiny_model_dir), system_prompt=SYSTEM,
                            instruction=INSTRUCTION))  # fmt: skip
    return output


def test_wording_is_recorded_and_evaluate_prompts_with_it(
    worded_tokens: str, record_data: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from vcot.evaluate.stage import load_generator
    from vcot.models.generation import GenerationSettings, prompt_text
    from vcot.tokenize.encode import Encoder
    from vcot.train.data import TokenizedDataset

    fmt = ModelFormat.from_dict(manifest.read_manifest(worded_tokens)["config"])
    assert (fmt.system_prompt, fmt.instruction_text) == (SYSTEM, INSTRUCTION)
    _, processor = load_model_and_processor(str(tiny_model_dir))
    trained_on = processor.tokenizer.decode(TokenizedDataset(worded_tokens, "train")[0]["input_ids"])
    asked = "Reason with boxes written as <ref>label</ref><box>[x1, y1, x2, y2]</box>; coordinates are integers 0-1000"
    assert SYSTEM in trained_on and asked in trained_on and "Think step by step" not in trained_on

    run = str(tmp_path / "runs" / "worded")
    committed = train(TrainConfig(data=worded_tokens, model=str(tiny_model_dir), output=run, recipe="tiny-cpu",
                                  set=f"{STEPS},group_by_length=true"))  # fmt: skip
    card = json.loads((Path(run) / "adapter" / MODEL_CARD).read_text())
    assert ModelFormat.from_dict(card) == fmt
    _, eval_processor, eval_fmt = load_generator(str(tiny_model_dir), f"{run}/adapter", {})
    record = next(shards.read_jsonl(storage.list_uris(f"{record_data}/val", ".jsonl.gz")[0]))
    prompt = prompt_text(eval_processor, record, GenerationSettings(fmt=eval_fmt))
    assert prompt == Encoder(processor, fmt).chat_texts(record)[0]  # evaluate asks exactly what training asked
    assert SYSTEM in prompt and asked in prompt

    # Every run records what it cost: in metrics.json and the manifest's stats.
    throughput = storage.read_json(f"{run}/metrics.json")["throughput"]
    assert committed is not None and committed["stats"]["throughput"] == throughput
    assert throughput["steps"] == 2 and throughput["samples"] == 2 * 8  # tiny-cpu: batch 8, one process
    for key in (
        "wall_seconds",
        "samples_per_second",
        "tokens",
        "tokens_per_second",
        "peak_memory_gib",
    ):
        assert throughput[key] > 0, key
    assert throughput["peak_memory_kind"] == ("gpu_max_allocated" if torch.cuda.is_available() else "cpu_max_rss")
    assert throughput["gpu_hours"] == 0.0 if not torch.cuda.is_available() else throughput["gpu_hours"] > 0
    assert 0 < throughput["padding_share"] < 0.5  # rows of unequal lengths padded in a batch (grouped: little)


def test_a_card_without_wording_loads_with_todays_prompt() -> None:
    fmt = ModelFormat.for_family()
    old = {k: v for k, v in fmt.to_dict().items() if k not in ("system_prompt", "instruction_text")}
    assert ModelFormat.from_dict(old) == fmt
    record = {"image": "x.png", "width": 10, "height": 10, "question": "Q?"}
    messages = build_messages(record, ModelFormat.from_dict(old), with_answer=False)
    assert [m["role"] for m in messages] == ["user"]
    assert messages[0]["content"][1]["text"].endswith(
        "Think step by step. Name each region you rely on as <ref>label</ref><box>[x1, y1, x2, y2]</box> "
        "(coordinates are integers 0-1000 of the image width and height), then end with 'Answer: <answer>'."
    )


# --- full fine-tuning ---------------------------------------------------------------------------------


def test_full_finetune_trains_the_model_and_evaluate_loads_it(
    tokenized_data: str, record_data: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file

    run = str(tmp_path / "runs" / "full")
    assert train(TrainConfig(data=tokenized_data, model=str(tiny_model_dir), output=run, recipe="tiny-cpu",
                             set=f"{STEPS},finetune=full", update_pointer=True))  # fmt: skip
    model_dir = Path(run) / "model"
    assert not (Path(run) / "adapter").exists() and (model_dir / "config.json").exists()
    card = json.loads((model_dir / MODEL_CARD).read_text())
    assert card["base_model"] == str(tiny_model_dir)
    for name in ("processor_config.json", "preprocessor_config.json"):  # saved for serving: the family's own class
        assert json.loads((model_dir / name).read_text())["processor_class"] == "Qwen2_5_VLProcessor", name
    files = {f["path"] for f in manifest.read_manifest(run)["files"]}
    assert {"model/model.safetensors", f"model/{MODEL_CARD}"} <= files
    pointer = json.loads((Path(run).parent / "latest.json").read_text())
    assert pointer == {"run": run, "base_model": f"{run}/model", "adapter": None}

    trained, base = (
        load_file(str(model_dir / "model.safetensors")),
        load_file(str(tiny_model_dir / "model.safetensors")),
    )
    changed = {name for name in trained if not torch.equal(trained[name], base[name])}
    assert any(".layers.0." in n for n in changed) and any("visual.merger" in n for n in changed)
    assert not any("visual.blocks" in n or "patch_embed" in n for n in changed)  # the vision tower stays frozen

    out = str(tmp_path / "eval")  # the card inside model/ gives the format: no --coords needed
    args = [
        "--model",
        f"{run}/model",
        "--data",
        record_data,
        "--output",
        out,
        "--max-samples",
        "4",
    ]
    assert evaluate_main([*args, "--max-new-tokens", "8", "--batch-size", "4"]) == 0
    assert ModelFormat.from_dict(
        storage.read_json(f"{out}/metrics.json")["details"]["model_format"]
    ) == ModelFormat.from_dict(card)
    # What the cluster chain passes (train/adapter) is refused with the folder to pass instead.
    assert evaluate_main([*args, "--adapter", f"{run}/adapter", "--output", f"{out}-adapter"]) == 2
    assert f"{run} is a full fine-tune: pass --model {run}/model without --adapter" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            "finetune=full,quantize=4bit",
            "finetune=full trains the weights themselves: it needs .*quantize=null",
        ),
        (
            "finetune=full,merge_adapter=true",
            "finetune=full trains the weights themselves: it needs .*merge_adapter=false",
        ),
        ("finetune=partial", "finetune='partial' is not valid: use lora or full"),
        ("finetune=full,peft.use_dora=true", "finetune=full trains without one"),
    ],
)
def test_full_finetune_refuses_what_it_cannot_do(overrides: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_recipe("tiny-cpu", overrides)


def test_full_finetune_is_sft_only() -> None:
    with pytest.raises(ConfigError, match="needs method sft"):
        load_recipe("tiny-cpu-grpo", "finetune=full")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    """A saved model's weights by their in-memory names, whichever naming the folder was written with."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(folder)).state_dict()


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


FOUR_STEPS = "finetune=full,max_steps=4,save_steps=2,eval_steps=2,logging_steps=1,generation_eval_samples=0"


def test_a_full_finetune_keeps_its_best_checkpoint_and_resumes_from_its_weights(
    tokenized_data: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The Trainer reloads its checkpoints by the model's in-memory weight names; they were saved under
    transformers' older names, so nothing loaded: model/ held the last step, and a resume restarted from the base."""
    diverging = tmp_path / "best"  # a step too large for the weights: the eval loss is best at step 2, not 4
    train(TrainConfig(data=tokenized_data, model=str(tiny_model_dir), output=str(diverging), recipe="tiny-cpu",
                      set=f"{FOUR_STEPS},learning_rate=2.0"))  # fmt: skip
    assert json.loads((diverging / "metrics.json").read_text())["best_metric"]["step"] == 2
    kept = _weights(diverging / "model")
    assert _same_weights(kept, _weights(diverging / "checkpoints" / "checkpoint-2"))
    assert not _same_weights(kept, _weights(diverging / "checkpoints" / "checkpoint-4"))

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    for run in (whole, resumed):
        train(TrainConfig(data=tokenized_data, model=str(tiny_model_dir), output=str(run), recipe="tiny-cpu",
                          set=FOUR_STEPS))  # fmt: skip
    for done in ("_SUCCESS", "metrics.json"):  # as if the pod died after step 2's checkpoint
        (resumed / done).unlink()
    for folder in ("model", "checkpoints/checkpoint-4"):
        shutil.rmtree(resumed / folder)
    train(TrainConfig(data=tokenized_data, model=str(tiny_model_dir), output=str(resumed), recipe="tiny-cpu",
                      set=FOUR_STEPS))  # fmt: skip
    step_4 = "checkpoints/checkpoint-4"
    assert _same_weights(_weights(resumed / step_4), _weights(whole / step_4))


def test_rerun_of_a_committed_full_finetune_writes_its_model_pointer(
    tmp_path: Path,
) -> None:
    """A pod killed between _SUCCESS and the pointer write of a full fine-tune: the retry points at its model/."""
    output = str(tmp_path / "runs" / "run-1")
    config = {
        "model": "s3://models/tiny",
        "data": "s3://d",
        "recipe_values": {"finetune": "full"},
    }
    manifest.commit(output, stage="train", files=[], config=config)
    again = TrainConfig(
        data="s3://d",
        model="s3://models/tiny",
        output=output,
        recipe="tiny-cpu",
        set="finetune=full",
        update_pointer=True,
    )
    assert train(again) is None
    pointer = json.loads((tmp_path / "runs" / "latest.json").read_text())
    assert pointer == {"run": output, "base_model": f"{output}/model", "adapter": None}
