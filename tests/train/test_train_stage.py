"""Train on the tiny model: outputs per contract, learning, reload + generate, kill/resume, text mode."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoConfig

from jobs.evaluate import main as evaluate_main
from tests.conftest import LogMode
from tests.train.train_helpers import assert_train_progress, run_until_killed
from vcot.grounding.model_format import ModelFormat
from vcot.grounding.prompts import build_messages
from vcot.io import manifest, storage
from vcot.io.images import load_rgb
from vcot.models.loading import architecture
from vcot.train import TrainConfig, train
from vcot.train.checkpoints import complete_checkpoints
from vcot.train.data import Collator, TokenizedDataset

REPO_ROOT = Path(__file__).resolve().parents[2]
# Deterministic, short, and long enough to be killed part-way: 40 steps, a checkpoint and eval every 10.
RUN_SET = "max_steps=40,num_train_epochs=10,logging_steps=1,save_steps=10,eval_steps=10"


def _final_loss(metrics: dict[str, Any]) -> tuple[int, float]:
    last = [entry for entry in metrics["log_history"] if "loss" in entry][-1]
    return last["step"], last["loss"]


@pytest.fixture(scope="module")
def reference_run(tokenized_data: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One uninterrupted run with RUN_SET; several tests read its outputs."""
    output = str(tmp_path_factory.mktemp("runs") / "reference")
    config = TrainConfig(
        data=tokenized_data, model=str(tiny_model_dir), output=output, recipe="tiny-cpu", set=RUN_SET, update_pointer=True
    )
    assert train(config) is not None
    return output


def test_outputs_follow_the_contract(reference_run: str, tokenized_data: str, tiny_model_dir: Path) -> None:
    adapter = Path(reference_run) / "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors", "processor_config.json", "tokenizer.json"):
        assert (adapter / name).exists(), name
    card = json.loads((adapter / "vcot-model.json").read_text())
    assert card["base_architecture"]["text_config.hidden_size"] == 64  # evaluate refuses another base with it
    assert card["base_architecture"] == architecture(AutoConfig.from_pretrained(tiny_model_dir).to_dict())
    assert card == {
        "base_model": str(tiny_model_dir),
        "base_architecture": card["base_architecture"],
        "model_format": ModelFormat.for_family("qwen2.5-vl", min_pixels=56 * 56, max_pixels=112 * 112).to_dict(),
        "method": "sft",  # BiN reads it: an SFT adapter is its own SFT model
    }
    assert list((Path(reference_run) / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((Path(reference_run) / "metrics.json").read_text())
    assert metrics["global_step"] == 40 and "eval_loss" in metrics["eval"]
    committed = manifest.read_manifest(reference_run)
    assert committed["stage"] == "train" and committed["inputs"][0]["uri"] == tokenized_data
    assert committed["inputs"][0]["inputs"][0]["stage"] == "convert"  # lineage reaches the records
    assert {f["path"] for f in committed["files"]} >= {"adapter/adapter_model.safetensors", "adapter/vcot-model.json"}
    pointer = json.loads((Path(reference_run).parent / "latest.json").read_text())
    assert pointer == {"run": reference_run, "base_model": str(tiny_model_dir), "adapter": f"{reference_run}/adapter"}
    assert set(complete_checkpoints(storage.join(reference_run, "checkpoints"))) <= {10, 20, 30, 40}
    # A committed run is not trained again.
    again = TrainConfig(
        data=tokenized_data, model=str(tiny_model_dir), output=reference_run, recipe="tiny-cpu", set=RUN_SET
    )
    assert train(again) is None


def test_training_changes_the_adapter_and_lowers_the_loss(
    reference_run: str, tokenized_data: str, tiny_model_dir: Path
) -> None:
    from vcot.models.loading import load_model_and_processor

    weights = load_file(str(Path(reference_run) / "adapter" / "adapter_model.safetensors"))
    lora = [tensor for name, tensor in weights.items() if "lora_embedding_A" in name]
    assert lora and all(t.abs().sum() > 0 for t in lora)  # PEFT starts an embedding's LoRA A at zero
    # tiny-cpu trains the random language model in full (decoder layers, output head, the vision merger; saved
    # with the adapter) and leaves the vision tower itself frozen (docs/train.md).
    assert any(".layers.0.self_attn.q_proj" in name for name in weights) and any("lm_head" in name for name in weights)
    assert any("visual.merger" in name for name in weights)
    assert not any("visual.blocks" in name or "patch_embed" in name for name in weights)

    base, processor = load_model_and_processor(str(tiny_model_dir))
    val = TokenizedDataset(tokenized_data, "val")
    batch = Collator(processor)([val[i] for i in range(len(val))])
    with torch.no_grad():
        before = base(**batch).loss.item()
        tuned = PeftModel.from_pretrained(base, str(Path(reference_run) / "adapter")).eval()
        after = tuned(**batch).loss.item()
    assert after < before - 0.05, (before, after)


def test_saved_adapter_reloads_and_generates(reference_run: str, tokenized_data: str) -> None:
    from vcot.models.loading import load_model_and_processor

    run = json.loads((Path(reference_run).parent / "latest.json").read_text())
    model, processor = load_model_and_processor(run["base_model"], adapter_uri=run["adapter"])
    assert isinstance(model, PeftModel)
    row = TokenizedDataset(tokenized_data, "val")[0]
    record = {
        "image": row["image"],
        "width": row["width"],
        "height": row["height"],
        "question": "What color is the square?",
    }
    messages = build_messages(record, with_answer=False)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[load_rgb(row["image"])], return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    assert len(new_tokens) > 0
    assert isinstance(processor.decode(new_tokens, skip_special_tokens=True), str)


@pytest.mark.integration
def test_killed_run_resumes_to_the_same_final_loss(
    reference_run: str, tokenized_data: str, tiny_model_dir: Path, s3_bucket: str
) -> None:
    output = f"{s3_bucket}/runs/killed"
    argv = [
        "--data",
        tokenized_data,
        "--model",
        str(tiny_model_dir),
        "--output",
        output,
        "--recipe",
        "tiny-cpu",
        "--set",
        RUN_SET,
    ]
    code, stderr = run_until_killed(argv, kill_at_step=3)
    assert code == 1 and "stopped by SIGTERM" in stderr, stderr[-3000:]
    checkpoints = storage.join(output, "checkpoints")
    saved = complete_checkpoints(checkpoints)
    assert saved and max(saved) < 40 and not manifest.is_committed(output)
    # A partial upload (no _COMPLETE marker) from a later step must never be resumed from.
    storage.write_text(storage.join(checkpoints, "checkpoint-39", "trainer_state.json"), "{not json")

    assert train(
        TrainConfig(data=tokenized_data, model=str(tiny_model_dir), output=output, recipe="tiny-cpu", set=RUN_SET)
    )
    resumed = storage.read_json(storage.join(output, "metrics.json"))
    reference = json.loads((Path(reference_run) / "metrics.json").read_text())
    resumed_step, resumed_loss = _final_loss(resumed)
    reference_step, reference_loss = _final_loss(reference)
    assert resumed_step == reference_step == 40
    assert abs(resumed_loss - reference_loss) < 1e-4, (resumed_loss, reference_loss)
    assert abs(resumed["eval"]["eval_loss"] - reference["eval"]["eval_loss"]) < 1e-4
    first_logged = min(e["step"] for e in resumed["log_history"] if "loss" in e)
    assert first_logged == 1  # the history spans the killed session too (restored from the checkpoint)


@pytest.mark.integration
@pytest.mark.parametrize("last", [30, 40])
def test_a_run_resumed_from_its_last_checkpoint_trains_no_step_more(
    reference_run: str, tokenized_data: str, tiny_model_dir: Path, tmp_path: Path, last: int
) -> None:
    """A pod killed after its last checkpoint, before its commit: the rerun commits that checkpoint's model and
    trains no step past ``max_steps``. At 30 (6 steps an epoch) the Trainer ends the epoch loop itself; at 40,
    mid-epoch, it took one step more (it checks its budget after a step)."""
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    checkpoint = Path(reference_run) / "checkpoints" / f"checkpoint-{last}"
    output = tmp_path / "finished"
    shutil.copytree(checkpoint, output / "checkpoints" / checkpoint.name)
    run_set = RUN_SET.replace("max_steps=40", f"max_steps={last}")
    assert train(TrainConfig(data=tokenized_data, model=str(tiny_model_dir), output=str(output), recipe="tiny-cpu",
                             set=run_set))  # fmt: skip
    metrics = storage.read_json(str(output / "metrics.json"))
    assert metrics["global_step"] == last
    assert max(entry["step"] for entry in metrics["log_history"]) == last
    assert sorted(complete_checkpoints(str(output / "checkpoints"))) == [last]
    assert "train_loss" not in metrics["train"]  # no step ran: no mean loss to report
    assert all(entry.get("train_loss") != 0 for entry in metrics["log_history"])
    (events,) = (output / "tensorboard").glob("events.out.tfevents.*")  # nor to the trackers
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert "train/train_runtime" in accumulator.Tags()["scalars"]
    assert "train/train_loss" not in accumulator.Tags()["scalars"]


def test_text_mode_trains_without_pixels(
    tiny_model_dir: Path, record_output: Callable[..., str], tmp_path: Path
) -> None:
    from vcot.tokenize import TokenizeConfig, tokenize

    tokens = str(tmp_path / "tokens")
    tokenize(TokenizeConfig(input=[record_output(16)], output=tokens, model=str(tiny_model_dir), mode="text"))
    batch = Collator(__import__("vcot.models.loading", fromlist=["load_processor"]).load_processor(str(tiny_model_dir)))(
        [TokenizedDataset(tokens, "train")[0]]
    )
    assert "pixel_values" not in batch
    output = str(tmp_path / "run")
    config = TrainConfig(
        data=tokens,
        model=str(tiny_model_dir),
        output=output,
        recipe="tiny-cpu",
        set="max_steps=2,save_steps=10,eval_steps=10",
    )
    assert train(config) is not None
    card = json.loads((Path(output) / "adapter" / "vcot-model.json").read_text())
    assert card["model_format"]["mode"] == "text"


def test_merged_model_equals_base_plus_adapter_with_loader_workers(
    tokenized_data: str, record_data: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForImageTextToText

    from vcot.models.loading import load_model_and_processor

    output = str(tmp_path / "run")
    settings = "max_steps=2,save_steps=10,eval_steps=10,merge_adapter=true,dataloader_num_workers=2"
    assert train(
        TrainConfig(data=tokenized_data, model=str(tiny_model_dir), output=output, recipe="tiny-cpu", set=settings)
    )
    merged = AutoModelForImageTextToText.from_pretrained(str(Path(output) / "merged")).eval()
    with_adapter, processor = load_model_and_processor(str(tiny_model_dir), adapter_uri=f"{output}/adapter")
    batch = Collator(processor)([TokenizedDataset(tokenized_data, "val")[0]])
    batch.pop("labels")
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, with_adapter(**batch).logits, atol=1e-4)
    files = {f["path"] for f in manifest.read_manifest(output)["files"]}
    assert {"merged/model.safetensors", "merged/vcot-model.json"} <= files
    card = json.loads((Path(output) / "merged" / "vcot-model.json").read_text())
    adapter_card = json.loads((Path(output) / "adapter" / "vcot-model.json").read_text())
    assert card == {**adapter_card, "merged_from": f"{output}/adapter"}
    # Evaluate reads the model format from the merged model's card: no --coords, the prompt as trained.
    out = str(tmp_path / "eval")
    args = ["--model", f"{output}/merged", "--data", record_data, "--output", out, "--max-samples", "2"]
    assert evaluate_main([*args, "--max-new-tokens", "4", "--batch-size", "2"]) == 0
    details = storage.read_json(f"{out}/metrics.json")["details"]
    assert ModelFormat.from_dict(details["model_format"]) == ModelFormat.from_dict(card)


def test_early_stopping_ends_a_run_that_stopped_improving(
    tokenized_data: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # At a negligible learning rate (0 is refused) eval_loss never improves by the threshold: best at step 2, then
    # patience 2 runs out at step 6.
    settings = "learning_rate=1e-12,max_steps=40,num_train_epochs=10,eval_steps=2,save_steps=2,"
    settings += "early_stopping_patience=2"
    output = str(tmp_path / "run")
    config = TrainConfig(data=tokenized_data, model=str(tiny_model_dir), output=output, recipe="tiny-cpu", set=settings)
    committed = train(config)
    assert committed is not None and committed["stats"]["global_step"] == 6
    # Killed after its last checkpoint, before its commit: the rerun ends where it had stopped, not at the next
    # evaluation (or later, had its metric improved).
    _as_if_killed_before_its_commit(Path(output))
    again = train(config)
    assert again is not None and again["stats"]["global_step"] == 6
    assert max(entry["step"] for entry in storage.read_json(f"{output}/metrics.json")["log_history"]) == 6


def _as_if_killed_before_its_commit(output: Path) -> None:
    """What a pod killed after its last checkpoint and before its commit leaves: checkpoints, nothing committed."""
    import shutil

    for name in ("_SUCCESS", "metrics.json"):
        (output / name).unlink(missing_ok=True)
    shutil.rmtree(output / "adapter", ignore_errors=True)


def test_a_rerun_with_other_settings_does_not_resume_the_checkpoints_as_if_they_were_its_own(
    tokenized_data: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Resumed, a new learning rate would be ignored (the schedule is restored) and a new LoRA rank would fail on the
    saved weights; a longer run, or one logging more often, resumes."""
    from vcot.errors import ConfigError
    from vcot.train.common import RunFolders

    output = tmp_path / "run"
    settings = "max_steps=4,num_train_epochs=10,save_steps=2,eval_steps=2,generation_eval_samples=0"

    def run(extra: str = "") -> dict[str, Any] | None:
        return train(TrainConfig(data=tokenized_data, model=str(tiny_model_dir), output=str(output),
                                 recipe="tiny-cpu", set=settings + extra))  # fmt: skip

    stale = RunFolders.for_output(str(output)).tensorboard_dir / "events.out.tfevents.stale"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"")  # a killed run's events in the scratch folder: not this run's
    (output / "tensorboard").mkdir(parents=True)
    (output / "tensorboard" / "events.out.tfevents.stored-stale").write_bytes(b"")  # synced before its first save
    assert run()
    assert [path.name for path in (output / "tensorboard").iterdir() if "stale" in path.name] == []
    _as_if_killed_before_its_commit(output)
    with pytest.raises(ConfigError, match=r"learning_rate: 0\.002 -> 1e-06.*--overwrite"):
        run(",learning_rate=1e-6")
    with pytest.raises(ConfigError, match=r"lora_r: 128 -> 8"):
        run(",lora_r=8")
    resumed = run(",max_steps=6,logging_steps=2")
    assert resumed is not None and resumed["stats"]["global_step"] == 6
    history = storage.read_json(f"{output}/metrics.json")["log_history"]
    first = min(entry["step"] for entry in history if "loss" in entry)
    assert first == 1  # resumed: the history is the first session's too


def test_threads_must_not_be_negative(tokenized_data: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--threads"):
        TrainConfig(data=tokenized_data, model=str(tiny_model_dir), output=str(tmp_path / "run"), threads=-1)


def test_8bit_adamw_falls_back_where_bitsandbytes_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import bitsandbytes

    from vcot.train.common import resolve_optimizer

    assert resolve_optimizer("adamw_8bit", "cpu") == "adamw_8bit"  # it runs on this CPU

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no kernel for this device")

    monkeypatch.setattr(bitsandbytes.optim, "AdamW8bit", broken)
    assert resolve_optimizer("adamw_8bit", "cpu") == "adamw_torch"
    assert resolve_optimizer("adamw_torch_fused", "cpu") == "adamw_torch_fused"


@pytest.mark.parametrize("left_behind", [None, "not json", '["a list"]', "stale"])
def test_rerun_of_a_committed_run_writes_a_missing_or_stale_pointer(
    tmp_path: Path, left_behind: dict[str, str] | str | None
) -> None:
    """A pod killed between _SUCCESS and the pointer write: its retry skips training and writes the pointer."""
    output = str(tmp_path / "runs" / "run-1")
    if left_behind == "stale":  # names this run, with another base model: rewritten
        left_behind = {"run": f"{output}/", "base_model": "s3://models/old", "adapter": f"{output}/adapter"}
    manifest.commit(output, stage="train", files=[], config={"model": "s3://models/tiny", "data": "s3://d"})
    pointer = tmp_path / "runs" / "latest.json"
    if isinstance(left_behind, dict):
        pointer.write_text(json.dumps(left_behind))
    elif isinstance(left_behind, str):
        pointer.write_text(left_behind)
    # The retry names the data and model as the pod did; nothing is loaded on the skip path.
    again = TrainConfig(data="s3://d", model="s3://models/tiny", output=output, recipe="tiny-cpu", update_pointer=True)
    assert train(again) is None
    assert json.loads(pointer.read_text()) == {
        "run": output,
        "base_model": "s3://models/tiny",
        "adapter": f"{output}/adapter",
    }


def test_rerun_of_an_older_run_never_moves_the_pointer_back(tmp_path: Path) -> None:
    """run-2 is the newest model; retrying (or rerunning) the committed run-1 leaves latest.json on run-2."""
    runs = tmp_path / "runs"
    for name in ("run-1", "run-2"):
        config = {"model": "s3://models/tiny", "data": "s3://d"}
        manifest.commit(str(runs / name), stage="train", files=[], config=config)
    newest = {"run": str(runs / "run-2"), "base_model": "s3://models/tiny", "adapter": str(runs / "run-2" / "adapter")}
    (runs / "latest.json").write_text(json.dumps(newest))
    again = TrainConfig(
        data="s3://d", model="s3://models/tiny", output=str(runs / "run-1"), recipe="tiny-cpu", update_pointer=True
    )
    assert train(again) is None
    assert json.loads((runs / "latest.json").read_text()) == newest


def test_only_a_run_that_says_so_moves_the_pointer(tokenized_data: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    """A trial (a sweep, a one-stage rerun) must not replace the model scheduled re-evaluation follows."""
    runs = tmp_path / "runs"
    production = {"run": str(runs / "prod"), "base_model": "s3://models/tiny", "adapter": str(runs / "prod" / "adapter")}
    runs.mkdir()
    (runs / "latest.json").write_text(json.dumps(production))
    trial = str(runs / "trial")
    settings = "max_steps=2,eval_steps=2,save_steps=2,logging_steps=1"
    config = TrainConfig(data=tokenized_data, model=str(tiny_model_dir), output=trial, recipe="tiny-cpu", set=settings)
    assert train(config) is not None  # trained and committed, without --update-pointer
    assert manifest.is_committed(trial)
    assert json.loads((runs / "latest.json").read_text()) == production
    # Its rerun (a retried pod) leaves it alone too; the same run with --update-pointer moves it.
    assert train(config) is None
    assert json.loads((runs / "latest.json").read_text()) == production
    (runs / "latest.json").unlink()
    assert train(dataclasses.replace(config, update_pointer=True)) is None
    assert json.loads((runs / "latest.json").read_text())["run"] == trial


@pytest.mark.integration
def test_training_shows_its_progress_in_both_log_formats(
    log_mode: LogMode, tokenized_data: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.train import main

    argv = ["--data", tokenized_data, "--model", str(tiny_model_dir), "--output", str(tmp_path / "run"),
            "--recipe", "tiny-cpu", "--set", "max_steps=3,eval_steps=3,save_steps=3,logging_steps=1", "--threads", "1"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert_train_progress(err, log_mode.fmt, total=3)
    assert "merged only" in err and "trains whole modules (lm_head" in err  # tiny-cpu's adapter: how to serve it


def test_data_that_is_not_a_tokenize_output_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.train import main

    records = str(tmp_path / "records")
    manifest.commit(records, stage="convert", files=[], config={})
    argv = ["--data", records, "--model", str(tmp_path / "no-model"), "--output", str(tmp_path / "run")]
    argv += ["--recipe", "tiny-cpu"]
    assert main(argv) == 2
    assert f"{records} is a convert output; expected a tokenize output" in capsys.readouterr().err


def test_a_token_shard_replaced_after_commit_is_refused(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vcot.errors import StorageError
    from vcot.io.shards import file_entry

    tokens = tmp_path / "tokens"
    shard = tokens / "train" / "00000-of-00001.parquet"
    shard.parent.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a", "b"], "length": [3, 4]}), shard)
    manifest.commit(str(tokens), stage="tokenize", files=[file_entry(shard, "train/00000-of-00001.parquet")], config={})
    assert len(TokenizedDataset(str(tokens), "train")) == 2
    pq.write_table(pa.table({"id": ["c"], "length": [5]}), shard)  # valid Parquet, but not the committed rows
    with pytest.raises(StorageError, match="00000-of-00001.parquet is not the file its manifest lists"):
        TokenizedDataset(str(tokens), "train")


@pytest.mark.parametrize(
    ("recipe", "overrides", "message"),
    [
        ("tiny-cpu", "lr_scheduler_type=cosin", "recipe refused by TrainingArguments: cosin is not a valid SchedulerType"),
        ("tiny-cpu", "optim=adamw_8bitt", "recipe optim='adamw_8bitt' is not an optimizer transformers knows"),
        ("tiny-cpu-grpo", "lr_scheduler_type=cosin", "recipe refused by GRPOConfig: cosin is not a valid SchedulerType"),
        ("tiny-cpu-rgfn", "optim=sgdd", "recipe optim='sgdd' is not an optimizer transformers knows"),
    ],
)
def test_a_recipe_the_trainer_refuses_fails_before_any_model_loads(
    recipe: str, overrides: str, message: str, tokenized_data: str, record_data: str, tiny_model_dir: Path,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A typo only transformers or TRL can see was a crash (or, for an 8-bit optimizer's name on a CPU, a silent
    fallback) after the model had loaded: now one line and exit 2 before it loads, and nothing is written."""
    from jobs.train import main

    data = tokenized_data if recipe == "tiny-cpu" else record_data
    output = tmp_path / "run"
    argv = ["--data", data, "--model", str(tiny_model_dir), "--output", str(output), "--recipe", recipe]
    assert main([*argv, "--set", overrides, "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and '"trainable"' not in err and "trainable=" not in err  # load_policy logs it once loaded
    assert not manifest.is_committed(str(output))


@pytest.mark.integration
def test_sft_is_the_same_run_for_a_seed_and_another_run_for_another(
    tokenized_data: str, tiny_model_dir: Path, sft_adapter: str, tmp_path: Path
) -> None:
    """The figures make local-train prints repeat exactly on a rerun (one thread, fixed seeds; the same on two machines
    of this kind, docs/bench-train.md); another seed is another run, and that spread is what the docs report."""
    from tests.train.conftest import SFT_FOR_RL

    def adapter(name: str, seed: int) -> dict[str, torch.Tensor]:
        output = str(tmp_path / name)
        assert train(TrainConfig(data=tokenized_data, model=str(tiny_model_dir), output=output, recipe="tiny-cpu",
                                 set=f"{SFT_FOR_RL},seed={seed}", threads=1))  # fmt: skip
        return load_file(f"{output}/adapter/adapter_model.safetensors")

    first = load_file(f"{sft_adapter}/adapter_model.safetensors")  # the same settings, seed 42 (the recipe's)
    again, other = adapter("again", 42), adapter("other", 1)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.allclose(first[k], other[k]) for k in first)
