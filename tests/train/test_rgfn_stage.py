"""RGFN (method gfn) on the tiny model: a few steps from an SFT adapter trained in the rationale_turn layout change
the adapter and log RGFN's curves; a killed run resumes to the same adapter. Mechanics, not quality: the objective
itself is proven in tests/scoring/test_gfn.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load, load_file

from tests.conftest import LogMode
from tests.train.train_helpers import UNWATCHED, WATCH, assert_train_progress, rgfn_trainer, run_until_killed
from vcot.errors import ConfigError, StorageError
from vcot.io import manifest, storage
from vcot.models.loading import read_model_card
from vcot.train import TrainConfig, train
from vcot.train.checkpoints import complete_checkpoints

RUN_SET = f"max_steps=4,save_steps=2,eval_steps=2,{WATCH}"
CURVES = ("rgfn/kept_fraction", "rgfn/reward_reference", "rgfn/reward_samples", "rgfn/length_samples")


def rgfn_config(record_data: str, model: Path, output: str, adapter: str) -> TrainConfig:
    return TrainConfig(data=record_data, model=str(model), output=output, recipe="tiny-cpu-rgfn", set=RUN_SET,
                       init_adapter=adapter, threads=1)  # fmt: skip


@pytest.fixture(scope="module")
def rgfn_run(record_data: str, tiny_model_dir: Path, analyzer_adapter: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    output = str(tmp_path_factory.mktemp("rgfn") / "run")
    assert train(rgfn_config(record_data, tiny_model_dir, output, analyzer_adapter))
    return output


@pytest.mark.integration
def test_rgfn_steps_change_the_adapter_and_log_the_curves(rgfn_run: str, analyzer_adapter: str) -> None:
    before = load_file(f"{analyzer_adapter}/adapter_model.safetensors")
    after = load_file(f"{rgfn_run}/adapter/adapter_model.safetensors")
    assert set(before) == set(after)
    assert any((before[name] - after[name]).abs().max() > 1e-6 for name in before)
    assert read_model_card(f"{rgfn_run}/adapter")["model_format"]["layout"] == "rationale_turn"
    history = json.loads((Path(rgfn_run) / "metrics.json").read_text())["log_history"]
    logged = [entry for entry in history if "loss" in entry]
    assert len(logged) == 4 and all(entry["loss"] >= 0 for entry in logged)
    for name in CURVES:
        assert all(name in entry for entry in logged), name
    assert all(0 <= entry["rgfn/kept_fraction"] <= 1 for entry in logged)
    assert manifest.read_manifest(rgfn_run, expect_stage="train")["config"]["recipe_values"]["method"] == "gfn"


@pytest.mark.integration
def test_an_rgfn_run_resumed_at_its_last_step_reports_no_train_loss(
    rgfn_run: str, record_data: str, tiny_model_dir: Path, analyzer_adapter: str, tmp_path: Path
) -> None:
    """Killed after its last checkpoint: the rerun trains no step, and RGFN's log (which copies the logged dict)
    must not leave the Trainer's mean over no step, 0, in the run's metrics."""
    import shutil

    output = tmp_path / "finished"
    shutil.copytree(Path(rgfn_run) / "checkpoints" / "checkpoint-4", output / "checkpoints" / "checkpoint-4")
    assert train(rgfn_config(record_data, tiny_model_dir, str(output), analyzer_adapter))
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["global_step"] == 4
    assert "train_loss" not in metrics["train"]
    assert all(entry.get("train_loss") != 0 for entry in metrics["log_history"])


@pytest.mark.integration
def test_killed_rgfn_run_resumes_to_the_same_adapter(
    rgfn_run: str, record_data: str, tiny_model_dir: Path, analyzer_adapter: str, real_s3: str
) -> None:
    output = f"{real_s3}/runs/rgfn-killed"
    argv = ["--data", record_data, "--model", str(tiny_model_dir), "--output", output, "--recipe", "tiny-cpu-rgfn",
            "--set", RUN_SET, "--init-adapter", analyzer_adapter, "--threads", "1"]  # fmt: skip
    code, stderr = run_until_killed(argv, kill_at_step=1)
    assert code == 1 and "stopped by SIGTERM" in stderr, stderr[-3000:]
    saved = complete_checkpoints(storage.join(output, "checkpoints"))
    assert saved and max(saved) < 3 and not manifest.is_committed(output)

    assert train(rgfn_config(record_data, tiny_model_dir, output, analyzer_adapter))
    with storage.open_uri(f"{output}/adapter/adapter_model.safetensors") as handle:
        resumed = load(handle.read())
    reference = load_file(f"{rgfn_run}/adapter/adapter_model.safetensors")
    assert max((resumed[name] - reference[name]).abs().max().item() for name in reference) < 1e-5


@pytest.mark.integration
def test_rgfn_scores_rationales_as_the_model_reads_them(
    analyzer_adapter: str, record_data: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The policy's log-probabilities of a rationale are the model's given the processor's own inputs (the image on
    its 3-D positions, not laid out as text), and the reward is scored by the adapter RGFN started from (not the
    bare base model), which at the start is the policy itself."""
    import torch

    config = rgfn_config(record_data, tiny_model_dir, str(tmp_path / "run"), analyzer_adapter)
    trainer = rgfn_trainer(config, tmp_path / "trainer")
    model, rows = trainer.model, trainer.train_dataset.rows
    model.eval()
    prompt = trainer.prompt(rows[0])
    z = prompt.reference
    with torch.no_grad():
        log_pf, _ = trainer.policy_terms(model, prompt, [z])
        x = prompt.inputs
        ids = torch.cat([x["input_ids"], torch.tensor([z])], dim=1)
        types = torch.cat([x["mm_token_type_ids"], torch.zeros(1, len(z), dtype=torch.long)], dim=1)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=x["pixel_values"],
                       image_grid_thw=x["image_grid_thw"], mm_token_type_ids=types).logits.float()  # fmt: skip
        x_len = x["input_ids"].shape[1]
        expected = logits[0, x_len - 1 : -1].log_softmax(-1).gather(-1, torch.tensor(z).view(-1, 1)).squeeze(-1)
        assert torch.allclose(log_pf[0], expected, atol=1e-4), (log_pf[0] - expected).abs().max()

        continuation = z + prompt.tail
        reward = trainer.joint_log_probs(model, prompt, [continuation])
        ids = torch.cat([x["input_ids"], torch.tensor([continuation])], dim=1)
        types = torch.cat([x["mm_token_type_ids"], torch.zeros(1, len(continuation), dtype=torch.long)], dim=1)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=x["pixel_values"],
                       image_grid_thw=x["image_grid_thw"], mm_token_type_ids=types).logits.float()  # fmt: skip
        policy = logits[0, x_len - 1 : -1].log_softmax(-1).gather(-1, torch.tensor(continuation).view(-1, 1)).sum()
        assert reward.item() == pytest.approx(policy.item(), abs=1e-3)


@pytest.mark.integration
def test_a_record_whose_image_cannot_be_used_runs_on_a_gray_one_and_teaches_nothing(
    analyzer_adapter: str, record_data: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One missing or mis-sized image among many must not stop a run, nor teach the model boxes on the wrong
    picture: a stand-in keeps every rank's passes the same, and that record's loss counts zero."""
    config = rgfn_config(record_data, tiny_model_dir, str(tmp_path / "run"), analyzer_adapter)
    trainer = rgfn_trainer(config, tmp_path / "trainer")
    row = next(r for r in trainer.train_dataset.rows
               if trainer.fmt.vision.grid(r["width"], r["height"]) != trainer.fmt.vision.grid(r["height"], r["width"]))
    missing = {**row, "image": str(tmp_path / "no-such.png")}
    turned = {**row, "width": row["height"], "height": row["width"]}
    assert [trainer.prompt(r).image_problem for r in (row, missing, turned)] == [None, "unreadable", "size_mismatch"]
    model = trainer.model
    model.train()
    loss = trainer.compute_loss(model, {"records": [missing, turned]})
    loss.backward()
    assert loss.item() == 0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters() if p.requires_grad)
    assert dict(trainer.logged) == {"rgfn/image_problems": [1.0, 1.0]}  # the share logged; no curve point from them
    assert trainer.compute_loss(model, {"records": [row]}).item() != 0
    unreachable = StorageError("cannot reach bucket 'b' at endpoint http://s3: check AWS_ENDPOINT_URL_S3")
    monkeypatch.setattr("vcot.io.images.load_rgb", lambda uri: (_ for _ in ()).throw(unreachable))
    with pytest.raises(StorageError, match="cannot reach"):  # not a bad image: every record would be one
        trainer.prompt(row)


@pytest.mark.integration
def test_rgfn_shows_its_progress_in_both_log_formats(
    log_mode: LogMode, record_data: str, tiny_model_dir: Path, analyzer_adapter: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from jobs.train import main

    argv = ["--data", record_data, "--model", str(tiny_model_dir), "--output", str(tmp_path / "run"), "--recipe",
            "tiny-cpu-rgfn", "--set", f"max_steps=2,save_steps=2,{UNWATCHED}", "--init-adapter", analyzer_adapter,
            "--threads", "1"]
    assert main(argv) == 0
    assert_train_progress(capsys.readouterr().err, log_mode.fmt, total=2)


def test_a_model_whose_chat_template_drops_the_analyzer_turn_is_refused_before_it_loads(tiny_qwen3vl_dir: Path) -> None:
    """Qwen3-VL's template renders no Analyzer turn: the run loaded the model and crashed in its first step (exit 1,
    retried by a Job); tokenize already refuses the layout."""
    from vcot.train.rgfn import rgfn_format

    config = TrainConfig(data="d", model=str(tiny_qwen3vl_dir), output="o", recipe="tiny-cpu-rgfn")
    with pytest.raises(ConfigError, match="cannot render one: its chat template drops turns of the Analyzer role"):
        rgfn_format(config)
