"""GRPO on the tiny model: a few steps from an SFT adapter change it and log every reward; kill/resume; bad input.

The tiny model only gets rewards that differ within a group (the learning signal) once it has seen the output
format, so the GRPO runs continue a short SFT run's adapter, as ``make local-grpo`` does after ``make local-train``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from safetensors.torch import load_file

from tests.conftest import LogMode
from tests.train.train_helpers import UNWATCHED, WATCH, assert_train_progress, run_until_killed
from vcot.errors import ConfigError, StorageError, VcotError
from vcot.grounding.model_format import ModelFormat
from vcot.io import manifest, storage
from vcot.scoring.rewards import reward_setup
from vcot.train import TrainConfig, train
from vcot.train.checkpoints import complete_checkpoints
from vcot.train.grpo import (
    PromptTransform,
    ZeroAdvantageWarning,
    grpo_arguments,
    grpo_format,
    prompt_dataset,
    read_prompts,
    with_completion_metrics,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# A few steps, a checkpoint part-way; save_steps > the kill step so the killed run's checkpoint is SIGTERM's own.
RUN_SET = f"max_steps=6,save_steps=4,eval_steps=4,per_device_train_batch_size=8,{WATCH}"
REWARDS = ("format_reward", "accuracy_reward", "bbox_reward", "dual_iou_reward")
HOUSE = ModelFormat.for_family("qwen2.5-vl", min_pixels=56 * 56, max_pixels=112 * 112)


def grpo_config(record_data: str, model: Path, output: str, adapter: str) -> TrainConfig:
    return TrainConfig(
        data=record_data, model=str(model), output=output, recipe="tiny-cpu-grpo", set=RUN_SET, init_adapter=adapter,
        threads=1,  # one torch thread: fastest on a busy shared CPU (docs/bench-train.md)
        update_pointer=True,
        force_pointer=True,  # the pointer rule itself: tests/train/test_pointer.py
    )  # fmt: skip


@pytest.fixture(scope="module")
def grpo_run(record_data: str, tiny_model_dir: Path, sft_adapter: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    output = str(tmp_path_factory.mktemp("grpo") / "run")
    assert train(grpo_config(record_data, tiny_model_dir, output, sft_adapter))
    return output


@pytest.mark.integration
def test_grpo_steps_change_the_adapter_and_log_every_reward(
    grpo_run: str, sft_adapter: str, record_data: str, tiny_model_dir: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # The adapter moved (the recipe has no weight decay: only the rewards and the KL term move it).
    before = load_file(f"{sft_adapter}/adapter_model.safetensors")
    after = load_file(f"{grpo_run}/adapter/adapter_model.safetensors")
    assert set(before) == set(after)
    assert any((before[name] - after[name]).abs().max() > 1e-6 for name in before)
    assert not (Path(grpo_run) / "adapter" / "ref").exists(), "TRL's frozen reference copy is not part of the output"

    # Every reward, the KL, completion length and boxes per completion: in each step's log and in TensorBoard.
    metrics = json.loads((Path(grpo_run) / "metrics.json").read_text())
    steps = [entry for entry in metrics["log_history"] if "reward" in entry]
    assert [entry["step"] for entry in steps] == list(range(1, 7))
    wanted = [f"rewards/{name}/mean" for name in REWARDS] + ["kl", "completions/mean_length", "completions/boxes_mean"]
    for entry in steps:
        assert all(isinstance(entry.get(key), float) for key in wanted), entry
    assert any(entry["frac_reward_zero_std"] < 1 for entry in steps), "no step had a learning signal"
    # The KL reference is the SFT adapter as GRPO found it (embedding LoRA included): no distance before any update.
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6), steps[0]["kl"]
    (events,) = (Path(grpo_run) / "tensorboard").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert {f"train/{key}" for key in wanted} <= set(accumulator.Tags()["scalars"])

    # Committed like an SFT run: card (the SFT adapter's format), lineage to the records and the SFT run, pointer.
    card = json.loads((Path(grpo_run) / "adapter" / "vcot-model.json").read_text())
    assert card["base_model"] == str(tiny_model_dir) and card["model_format"] == HOUSE.to_dict()
    assert card["base_architecture"]["text_config.hidden_size"] == 64  # evaluate checks its --model against it
    committed = manifest.read_manifest(grpo_run)
    assert committed["stage"] == "train" and committed["config"]["recipe_values"]["method"] == "grpo"
    assert [item["uri"] for item in committed["inputs"]] == [record_data, str(Path(sft_adapter).parent)]
    assert committed["inputs"][1]["stage"] == "train"
    assert committed["stats"]["records"]["used"] > 0 and set(committed["stats"]["rewards"]) == set(REWARDS)
    throughput = committed["stats"]["throughput"]  # what the run cost; tokens: TRL's prompt + completion count
    assert throughput["steps"] > 0 and throughput["tokens"] > 0 and throughput["samples_per_second"] > 0
    pointer = json.loads((Path(grpo_run).parent / "latest.json").read_text())
    assert pointer == {"run": grpo_run, "base_model": str(tiny_model_dir), "adapter": f"{grpo_run}/adapter"}


class _OneRollout(Exception):
    """Stops a GRPO run after its first rollout has been looked at."""


@pytest.mark.integration
def test_the_update_places_images_where_the_rollout_did(
    record_data: str, tiny_model_dir: Path, sft_adapter: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRL scores a rollout's completions with image token types (``mm_token_type_ids``: where Qwen places image
    positions) that it rebuilds for the left-padded prompts. With vcot's processor padding on the right they missed
    a shorter prompt's image tokens: the update scored another model than the one that sampled (0.47 nats per token
    apart in bench/grpo_bench.py's vLLM run; TRL logs the gap only under vLLM)."""
    import torch

    from vcot.train import grpo

    seen: dict[str, Any] = {}

    def first_rollout_only(trainer: Any, folders: Any) -> None:
        batch = next(iter(trainer.get_train_dataloader()))
        seen.update(trainer._generate_and_score_completions(batch), image=trainer.processing_class.image_token_id)
        raise _OneRollout

    monkeypatch.setattr(grpo, "run_training", first_rollout_only)
    four_prompts = f"per_device_train_batch_size=8,num_generations=2,{UNWATCHED}"  # of the 5 image sizes
    with pytest.raises(_OneRollout):
        train(TrainConfig(data=record_data, model=str(tiny_model_dir), output=str(tmp_path / "run"),
                          recipe="tiny-cpu-grpo", set=four_prompts, init_adapter=sft_adapter, threads=1))  # fmt: skip
    ids = torch.cat([seen["prompt_ids"], seen["completion_ids"]], dim=1)
    assert (seen["prompt_mask"][:, 0] == 0).any()  # some prompts were padded: their images have fewer tokens
    assert torch.equal(seen["mm_token_type_ids"] == 1, ids == seen["image"])


@pytest.mark.integration
def test_grpo_adapter_loads_as_evaluate_loads_it(grpo_run: str) -> None:
    from peft import PeftModel

    from vcot.grounding.prompts import build_messages
    from vcot.io.images import load_rgb
    from vcot.models.loading import adapter_format, load_model_and_processor

    pointer = json.loads((Path(grpo_run).parent / "latest.json").read_text())
    model, processor = load_model_and_processor(pointer["base_model"], adapter_uri=pointer["adapter"])
    assert isinstance(model, PeftModel) and adapter_format(pointer["adapter"]) == HOUSE
    record = next(manifest.committed_records(manifest.read_manifest(grpo_run)["inputs"][0]["uri"], ("val/",)))
    text = processor.apply_chat_template(build_messages(record, HOUSE, with_answer=False), add_generation_prompt=True)
    inputs = processor(text=[text], images=[load_rgb(record["image"])], return_tensors="pt")
    assert model.generate(**inputs, max_new_tokens=4, do_sample=False).shape[1] > inputs["input_ids"].shape[1]


@pytest.mark.integration
def test_killed_grpo_run_resumes_to_the_same_adapter(
    grpo_run: str, record_data: str, tiny_model_dir: Path, sft_adapter: str, real_s3: str
) -> None:
    output = f"{real_s3}/runs/grpo-killed"
    argv = ["--data", record_data, "--model", str(tiny_model_dir), "--output", output, "--recipe", "tiny-cpu-grpo",
            "--set", RUN_SET, "--init-adapter", sft_adapter, "--threads", "1"]  # fmt: skip
    code, stderr = run_until_killed(argv, kill_at_step=2)
    assert code == 1 and "stopped by SIGTERM" in stderr, stderr[-3000:]
    saved = complete_checkpoints(storage.join(output, "checkpoints"))
    assert saved and max(saved) < 4 and not manifest.is_committed(output)

    assert train(grpo_config(record_data, tiny_model_dir, output, sft_adapter))
    with storage.open_uri(f"{output}/adapter/adapter_model.safetensors") as handle:
        from safetensors.torch import load

        resumed = load(handle.read())
    reference = load_file(f"{grpo_run}/adapter/adapter_model.safetensors")
    assert max((resumed[name] - reference[name]).abs().max().item() for name in reference) < 1e-6
    metrics = storage.read_json(f"{output}/metrics.json")
    reference_metrics = json.loads((Path(grpo_run) / "metrics.json").read_text())
    curve = [(e["step"], e["reward"]) for e in metrics["log_history"] if "reward" in e]
    expected = [(e["step"], e["reward"]) for e in reference_metrics["log_history"] if "reward" in e]
    assert curve == expected  # the history spans the killed session too, and the resumed rollouts are the same
    # The pointer's decision reads the kept checkpoint's score: the resumed weights (step 2) were scored again at the
    # restart, never kept, and their score counted as the run's end.
    metric = metrics["held_out"]["metric"]
    assert [e["step"] for e in metrics["log_history"] if metric in e] == [
        e["step"] for e in reference_metrics["log_history"] if metric in e]  # fmt: skip
    held, reference_held = metrics["held_out"], reference_metrics["held_out"]
    assert (held["start"], held["end"]) == pytest.approx((reference_held["start"], reference_held["end"]))


# --------------------------------------------------------------------------------------------------
# Input: records, model format, bad images (no training)
# --------------------------------------------------------------------------------------------------


def _records_with(root: Path, record_output: Callable[..., str], edit: Callable[[list[dict[str, Any]]], None]) -> str:
    """A committed record output of 12 records, ``edit``ed in place before it is rewritten and committed."""
    from vcot.io import shards
    source = record_output(12, root=str(root / "source"))
    records = list(manifest.committed_records(source, ("train/",)))
    edit(records)
    out = str(root / "edited")
    files = [shards.write_jsonl(out, "train/00000-of-00001.jsonl.gz", records)]
    manifest.commit(out, stage="distill", files=files, config={})
    return out


@pytest.mark.integration
def test_grpo_shows_its_progress_in_both_log_formats(
    log_mode: LogMode, record_data: str, tiny_model_dir: Path, sft_adapter: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from jobs.train import main

    argv = ["--data", record_data, "--model", str(tiny_model_dir), "--output", str(tmp_path / "run"), "--recipe",
            "tiny-cpu-grpo", "--set", f"max_steps=2,save_steps=2,per_device_train_batch_size=8,{UNWATCHED}",
            "--init-adapter", sft_adapter, "--threads", "1"]
    assert main(argv) == 0
    assert_train_progress(capsys.readouterr().err, log_mode.fmt, total=2)


def test_records_without_objects_are_skipped_and_counted_or_kept(record_output: Callable[..., str], tmp_path: Path) -> None:
    def drop_objects(records: list[dict[str, Any]]) -> None:
        records[0]["objects"] = []
        records[1].pop("objects")
        records[2]["answer"] = ""
        records[3]["rationale"] = ""  # no rationale: fine for GRPO, the policy writes its own

    data = _records_with(tmp_path, record_output, drop_objects)
    total = len(list(manifest.committed_records(data, ("train/",))))
    rows, skipped = read_prompts(data, need_objects=True)
    assert skipped == {"no_objects": 2, "missing_answer": 1} and len(rows) == total - 3
    rows, skipped = read_prompts(data, need_objects=False)  # records_without_objects=format_accuracy
    assert skipped == {"missing_answer": 1} and len(rows) == total - 1
    kept = [row for row in rows if not row["objects"]]
    funcs, _ = reward_setup({"format": 1.0, "accuracy": 1.0, "bbox": 1.0})
    columns = {key: [row[key] for row in kept] for key in ("answer", "objects", "width", "height")}
    completion = [f"the <ref>x</ref><box>[1, 2, 3, 4]</box>\nAnswer: {kept[0]['answer']}"] * len(kept)
    assert [f(completion, **columns)[0] for f in funcs] == [1.0, 1.0, None]  # scored on format and accuracy only


def test_a_tokenize_output_is_refused_as_grpo_data(tmp_path: Path) -> None:
    manifest.commit(str(tmp_path / "tokens"), stage="tokenize", files=[], config={})
    with pytest.raises(VcotError, match="is a tokenize output; expected records"):
        read_prompts(str(tmp_path / "tokens"), need_objects=True)


def test_model_format_from_the_adapter_card_or_the_base_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    absolute = ModelFormat.for_family("qwen2.5-vl", coords="qwen2.5-absolute", min_pixels=3136, max_pixels=12544)
    (adapter / "vcot-model.json").write_text(json.dumps({"base_model": "m", "model_format": absolute.to_dict()}))

    def config(**kwargs: str) -> TrainConfig:
        return TrainConfig(data="d", model=str(tiny_model_dir), output="o", recipe="tiny-cpu-grpo", **kwargs)

    assert grpo_format(config(init_adapter=str(adapter))) == absolute
    assert grpo_format(config(init_adapter=str(adapter), grpo_coords="qwen2.5-absolute")) == absolute
    with pytest.raises(VcotError, match="contradicts"):
        grpo_format(config(init_adapter=str(adapter), grpo_coords="norm1000"))
    with pytest.raises(VcotError, match="no vcot-model.json"):
        grpo_format(config(init_adapter=str(tmp_path)))
    # No adapter: the family from config.json, the pixel budget from the base model's processor, --grpo-coords.
    assert grpo_format(config()) == HOUSE
    assert grpo_format(config(grpo_coords="qwen2.5-absolute")).coords == "qwen2.5-absolute"
    with pytest.raises(ValueError, match="for methods grpo and gfn"):
        TrainConfig(data="d", model="m", output="o", recipe="tiny-cpu", grpo_coords="norm1000")


def test_model_format_from_the_card_of_a_full_finetune(tmp_path: Path) -> None:
    """A full fine-tune's model/ (or a merged model) carries its format: --grpo-coords may repeat it, not contradict it;
    the run's adapter/ (there is none) is refused with the model to pass instead."""
    model = tmp_path / "train" / "model"
    model.mkdir(parents=True)
    absolute = ModelFormat.for_family("qwen2.5-vl", coords="qwen2.5-absolute", min_pixels=3136, max_pixels=12544)
    (model / "vcot-model.json").write_text(json.dumps({"base_model": "m", "model_format": absolute.to_dict()}))

    def config(**kwargs: str) -> TrainConfig:
        return TrainConfig(data="d", model=str(model), output="o", recipe="tiny-cpu-grpo", **kwargs)

    assert grpo_format(config()) == absolute
    assert grpo_format(config(grpo_coords="qwen2.5-absolute")) == absolute
    with pytest.raises(ConfigError, match=f"^--grpo-coords norm1000 contradicts {model}/vcot-model.json"):
        grpo_format(config(grpo_coords="norm1000"))
    run = tmp_path / "train"
    with pytest.raises(ConfigError, match=f"^{run} is a full fine-tune: pass --model {model} without --init-adapter$"):
        grpo_format(config(init_adapter=f"{run}/adapter"))


def test_an_adapter_trained_on_another_base_is_refused_before_the_model_loads(
    sft_adapter: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A Qwen3-VL SFT adapter continued on a Qwen2.5-VL --model (GRPO and RGFN read the card the same way) ended in
    PEFT's KeyError after the model loaded, exit 1: a Job retried it."""
    foreign = shutil.copytree(sft_adapter, tmp_path / "adapter")
    card = json.loads((foreign / "vcot-model.json").read_text())
    card["base_model"] = "s3://elsewhere/qwen3-vl"
    card["base_architecture"] = {**card["base_architecture"], "model_type": "qwen3_vl"}
    (foreign / "vcot-model.json").write_text(json.dumps(card))
    config = TrainConfig(data="d", model=str(tiny_model_dir), output=str(tmp_path / "out"), recipe="tiny-cpu-grpo",
                         init_adapter=str(foreign))  # fmt: skip
    with pytest.raises(ConfigError, match="is not the base model the adapter was trained on .*qwen3_vl.*pass --model "
                                          "s3://elsewhere/qwen3-vl"):  # fmt: skip
        grpo_format(config)


def test_images_that_disagree_with_the_record_or_do_not_load_are_handled(
    record_output: Callable[..., str], tmp_path: Path
) -> None:
    def break_images(records: list[dict[str, Any]]) -> None:
        width, height = records[0]["width"], records[0]["height"]
        Image.new("RGB", (width * 3, height), "gray").save(storage.local_path(records[0]["image"]))  # another grid
        records[1]["image"] = str(tmp_path / "missing.png")

    rows, _ = read_prompts(_records_with(tmp_path, record_output, break_images), need_objects=True)
    dataset = prompt_dataset(rows, HOUSE)
    batch = dataset[:3]
    assert batch["image_problem"] == ["size_mismatch", "unreadable", None]
    assert batch["prompt"][2][0]["content"][0] == {"type": "image"}  # TRL fills it from the image column
    assert batch["image"][1].size == (rows[1]["width"], rows[1]["height"])  # a blank stand-in, not a crash
    assert batch["width"][:2] == [None, None] and batch["answer"][1] is None and batch["answer"][0] == rows[0]["answer"]

    # The rewards see those rows as not applicable (None), the metrics count them, nothing raises.
    funcs, _ = reward_setup({"format": 0.5, "accuracy": 1.0, "bbox": 1.0}, model_format=HOUSE)
    logged: dict[str, float] = {}
    first = with_completion_metrics(funcs[0], HOUSE)
    columns = {key: batch[key] for key in batch if key != "prompt"}
    completions = [f"<ref>a</ref><box>[0, 0, 9, 9]</box> <box>[1, 2</box>\nAnswer: {rows[0]['answer']}"] * 3
    values = [func(completions, **columns, log_metric=logged.__setitem__) for func in (first, *funcs[1:])]
    assert [v[0] for v in values][1:] == [1.0, None]  # size mismatch: accuracy scored, boxes not applicable
    assert [v[1] for v in values] == [None, None, None]  # unreadable: nothing applicable, TRL gives advantage 0
    assert logged["problems/image/size_mismatch"] == logged["problems/image/unreadable"] == pytest.approx(1 / 3)
    assert logged["completions/boxes_mean"] == 2.0


@pytest.mark.parametrize("group", [4, 16, 32])
def test_any_group_size_passes_grpo_config(group: int, tmp_path: Path) -> None:
    """TRL checks that its evaluation batch holds whole groups (default 8: a group of 16 was refused); vcot replaces
    that evaluation, so the batch is one group."""
    from vcot.train.common import RunFolders
    from vcot.train.recipe import load_recipe

    recipe = load_recipe("tiny-cpu-grpo", f"num_generations={group}")
    args = grpo_arguments(recipe, RunFolders(tmp_path, str(tmp_path / "out")), [1.0])
    assert args.num_generations == group and args.per_device_eval_batch_size % group == 0


def test_zero_advantage_steps_are_logged() -> None:
    from transformers import TrainerControl, TrainerState

    warning = ZeroAdvantageWarning()
    state = TrainerState()
    for share in (0.5, 1.0, None, 1.0):
        warning.on_log(None, state, TrainerControl(), logs={"frac_reward_zero_std": share})
    assert warning.count == 2


def test_prompt_transform_in_text_mode_has_no_image() -> None:
    import dataclasses

    row = {"id": "r", "image_uri": "s3://b/x.png", "width": 10, "height": 10, "question": "Q?", "choices": None,
           "answer": "a", "answer_index": None, "objects": []}  # fmt: skip
    out = PromptTransform(dataclasses.replace(HOUSE, mode="text"))({key: [value] for key, value in row.items()})
    assert "image" not in out  # nothing is loaded, and TRL sees a text-only prompt
    assert [block["type"] for block in out["prompt"][0][0]["content"]] == ["text"]


def test_unreachable_storage_stops_grpo_instead_of_making_every_image_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = {"id": "r", "image_uri": str(tmp_path / "gone.png"), "width": 10, "height": 10, "question": "Q?",
           "choices": None, "answer": "a", "answer_index": None, "objects": []}  # fmt: skip
    batch = {key: [value] for key, value in row.items()}
    assert PromptTransform(HOUSE)(batch)["image_problem"] == ["unreadable"]  # a missing file: one bad record
    unreachable = StorageError("cannot reach bucket 'b' at endpoint http://s3: check AWS_ENDPOINT_URL_S3")
    monkeypatch.setattr("vcot.io.images.load_rgb", lambda uri: (_ for _ in ()).throw(unreachable))
    with pytest.raises(StorageError, match="cannot reach"):
        PromptTransform(HOUSE)(batch)


def test_the_coords_variable_of_tokenize_and_evaluate_does_not_reach_training() -> None:
    """VCOT_COORDS (tokenize's, evaluate's) set in a shell or a ConfigMap must not make SFT refuse to run; GRPO's
    frame is its own flag, --grpo-coords, with the variable every flag has (VCOT_GRPO_COORDS)."""
    from vcot.config import parse_config

    argv = ["--data", "d", "--model", "m", "--output", "o", "--recipe", "tiny-cpu"]
    assert parse_config(TrainConfig, argv, environ={"VCOT_COORDS": "qwen2.5-absolute"}).grpo_coords == ""
    grpo_argv = [*argv[:-1], "tiny-cpu-grpo"]
    grpo = parse_config(TrainConfig, grpo_argv, environ={"VCOT_GRPO_COORDS": "qwen2.5-absolute"})
    assert grpo.grpo_coords == "qwen2.5-absolute"
    assert parse_config(TrainConfig, [*grpo_argv, "--grpo-coords", "qwen2.5-absolute"], environ={}) == grpo


def test_vllm_gets_one_placeholder_per_image_and_only_the_policy_weights() -> None:
    """What TRL's colocated vLLM is handed (the run itself: tests/train/test_grpo_vllm.py, in vLLM's venv)."""
    from types import SimpleNamespace

    from vcot.train.grpo import vllm_rollouts_as_trained

    seen: list[list[list[int]]] = []
    weights = [("model.visual.merger.mlp.0.weight", 1), ("model.visual.merger.modules_to_save.ref.mlp.0.weight", 2),
               ("lm_head.weight", 3)]  # fmt: skip
    generation = SimpleNamespace(generate=lambda prompts, *a, **k: seen.append(prompts),
                                 _iter_named_params=lambda: iter(weights),
                                 generation_kwargs={"top_k": 5, "logit_bias": {3: 1.0}})  # fmt: skip
    trainer = SimpleNamespace(vllm_generation=generation, processing_class=SimpleNamespace(image_token_id=7))
    vllm_rollouts_as_trained(trainer)
    generation.generate([[1, 5, 7, 7, 7, 7, 6, 2]], None, num_generations=2)
    assert seen == [[[1, 5, 7, 6, 2]]]
    synced = [name for name, _ in generation._iter_named_params()]
    assert synced == ["model.visual.merger.mlp.0.weight", "lm_head.weight"]  # the KL reference's copy stays out
    # never sampled (as TRL's suppress_tokens does for generate); the user's sampling settings kept
    assert generation.generation_kwargs == {"top_k": 5, "logit_bias": {3: 1.0, 7: -100.0}}
    vllm_rollouts_as_trained(SimpleNamespace())  # no vLLM: nothing to do
