"""The pointer rule (vcot.train.pointer): an RL run that ends below its start, or below the model the pointer names,
is committed but does not move the pointer; --force-pointer moves it; a rerun never moves a pointer it was refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from vcot.grounding.model_format import ModelFormat
from vcot.io import manifest, storage
from vcot.log import configure_logging
from vcot.models.loading import MODEL_CARD
from vcot.train import TrainConfig, train
from vcot.train.pointer import (
    comparable_pointer,
    decide,
    ensure_pointer,
    publish,
    read_pointer,
    rl_decision,
    run_pointer,
)

METRIC = "eval_gen_first_object_iou"


def config(tmp_path: Path, **kwargs: object) -> TrainConfig:
    values = dict(data="s3://d", model="m", output=str(tmp_path / "runs" / "grpo"), recipe="tiny-cpu-grpo",
                  init_adapter=str(tmp_path / "runs" / "sft" / "adapter"), update_pointer=True)  # fmt: skip
    return TrainConfig(**{**values, **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("start", "end", "pointed", "moves"),
    [(0.50, 0.53, None, True), (0.50, 0.50, None, True), (0.50, 0.49, None, False), (0.50, 0.53, 0.55, False),
     (0.50, None, None, False), (0.50, float("nan"), None, False)],
)  # fmt: skip
def test_an_rl_run_moves_the_pointer_only_when_it_is_no_worse(start, end, pointed, moves) -> None:  # noqa: ANN001
    assert rl_decision(METRIC, start, end, pointed, force=False).move is moves
    assert rl_decision(METRIC, start, end, pointed, force=True).move  # --force-pointer: always, and says why


def test_a_refused_run_leaves_the_pointer_and_says_so_with_both_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("console")
    pointer_uri = str(tmp_path / "runs" / "latest.json")
    before = run_pointer(str(tmp_path / "runs" / "sft"), "m")
    storage.write_json(pointer_uri, before)
    held_out = {"held_out": {"metric": METRIC, "start": 0.52, "end": 0.47, "pointed": None}}
    decision = decide(config(tmp_path), "grpo", held_out)
    publish(config(tmp_path), decision, "lora")
    assert storage.read_json(pointer_uri) == before
    line = next(line for line in capsys.readouterr().err.splitlines() if "pointer not moved" in line)
    assert "0.4700" in line and "0.5200" in line and "--force-pointer" in line

    forced = decide(config(tmp_path, force_pointer=True), "grpo", held_out)
    publish(config(tmp_path, force_pointer=True), forced, "lora")
    assert storage.read_json(pointer_uri)["run"] == str(tmp_path / "runs" / "grpo")
    assert decide(config(tmp_path, recipe="tiny-cpu", init_adapter=""), "sft", {}).move  # SFT: as asked


def test_a_rerun_never_moves_a_pointer_the_run_was_refused(tmp_path: Path) -> None:
    run = config(tmp_path)
    pointer_uri = run.pointer_uri
    refused = rl_decision(METRIC, 0.5, 0.4, None, force=False)
    manifest.commit(run.output, stage="train", files=[], config={"model": "m"}, stats={"pointer": refused.to_dict()})
    ensure_pointer(run)
    assert not storage.exists(pointer_uri)
    storage.write_json(pointer_uri, run_pointer(str(tmp_path / "runs" / "sft"), "m"))
    ensure_pointer(run)
    assert storage.read_json(pointer_uri)["run"] == str(tmp_path / "runs" / "sft")
    ensure_pointer(config(tmp_path, force_pointer=True))  # what the refusal line says to do: it moves it
    assert storage.read_json(pointer_uri)["run"] == run.output


def test_a_run_overtaken_while_it_trained_does_not_overwrite_the_pointer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two RL runs of a sweep start from the SFT run the pointer names; A ends first, better, and moves it; B beats
    the SFT run but not A, and overwrote A."""
    configure_logging("console")
    run_b, sft = config(tmp_path), str(tmp_path / "runs" / "sft")
    storage.write_json(run_b.pointer_uri, run_pointer(sft, "m"))
    held_out = {"held_out": {"metric": METRIC, "start": 0.50, "end": 0.55, "pointed": None, "named": sft}}
    decision = decide(run_b, "grpo", held_out)
    assert decision.move and decision.replaces == sft
    run_a = str(tmp_path / "runs" / "grpo-a")
    storage.write_json(run_b.pointer_uri, run_pointer(run_a, "m"))  # A finished meanwhile
    publish(run_b, decision, "lora")
    assert storage.read_json(run_b.pointer_uri)["run"] == run_a
    line = next(line for line in capsys.readouterr().err.splitlines() if "pointer not moved" in line)
    assert "another run moved it meanwhile" in line and run_a in line
    publish(config(tmp_path, force_pointer=True), decision, "lora")
    assert storage.read_json(run_b.pointer_uri)["run"] == run_b.output


def test_a_rerun_publishes_a_run_killed_before_it_moved_the_pointer(tmp_path: Path) -> None:
    """Killed between _SUCCESS and the pointer write: the pointer still names the run this one was to replace, which
    the rerun kept as "another run's", so a run decided to move it was never published."""
    run, sft = config(tmp_path), str(tmp_path / "runs" / "sft")
    storage.write_json(run.pointer_uri, run_pointer(sft, "m"))
    decision = decide(run, "grpo", {"held_out": {"metric": METRIC, "start": 0.5, "end": 0.6, "pointed": None,
                                                 "named": sft}})  # fmt: skip
    manifest.commit(run.output, stage="train", files=[], config={"model": "m"}, stats={"pointer": decision.to_dict()})
    ensure_pointer(run)
    assert storage.read_json(run.pointer_uri)["run"] == run.output
    storage.write_json(run.pointer_uri, run_pointer(str(tmp_path / "runs" / "newer"), "m"))
    ensure_pointer(run)  # a pointer naming any other run is left alone
    assert storage.read_json(run.pointer_uri)["run"] == str(tmp_path / "runs" / "newer")


def test_a_rerun_of_an_rl_run_committed_without_a_decision_keeps_the_pointer(tmp_path: Path) -> None:
    """Committed without --update-pointer, the run's held-out check was never made: a rerun with it cannot publish."""
    run = config(tmp_path)
    manifest.commit(run.output, stage="train", files=[], config={"model": "m", "recipe_values": {"method": "grpo"}})
    ensure_pointer(run)
    assert not storage.exists(run.pointer_uri)
    ensure_pointer(config(tmp_path, force_pointer=True))
    assert storage.read_json(run.pointer_uri)["run"] == run.output


def test_only_another_adapter_of_the_same_base_and_format_is_compared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("console")
    run, house = config(tmp_path), ModelFormat.for_family("qwen2.5-vl")
    other = str(tmp_path / "runs" / "other")
    storage.write_json(f"{other}/adapter/{MODEL_CARD}", house.to_dict())
    storage.write_json(run.pointer_uri, run_pointer(other, "m"))
    assert comparable_pointer(run, house) == f"{other}/adapter"
    assert comparable_pointer(run, ModelFormat.for_family("qwen2.5-vl", coords="qwen2.5-absolute")) is None
    assert "another model format" in capsys.readouterr().err
    # An RGFN run (its Analyzer turn) against a published two-turn adapter: compared, each asked in its own layout.
    assert comparable_pointer(run, dataclasses.replace(house, layout="rationale_turn")) == f"{other}/adapter"
    storage.write_json(run.pointer_uri, run_pointer(other, "another-base"))
    assert comparable_pointer(run, house) is None
    storage.write_json(run.pointer_uri, run_pointer(run.output, "m"))  # this output's own run (--overwrite)
    assert comparable_pointer(run, house) is None
    storage.write_json(run.pointer_uri, run_pointer(str(tmp_path / "runs" / "sft"), "m"))  # the start: scored anyway
    assert comparable_pointer(run, house) is None


def test_a_sharded_run_of_several_ranks_does_not_score_the_pointed_model_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before sharding only rank 0 holds the weights: it would generate alone with the whole model on its CPU."""
    from vcot.train.generation_eval import HeldOut
    from vcot.train.pointer import pointed_score

    configure_logging("console")
    run, house = config(tmp_path), ModelFormat.for_family("qwen2.5-vl")
    other = str(tmp_path / "runs" / "other")
    storage.write_json(f"{other}/adapter/{MODEL_CARD}", house.to_dict())
    storage.write_json(run.pointer_uri, run_pointer(other, "m"))
    scored: list[object] = []
    watched = HeldOut(records=[], fmt=house, measure_in=lambda model, fmt: scored.append(model) or {})
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert pointed_score(run, object(), watched, METRIC, sharded=True) is None
    assert scored == [] and "a sharded run does not score the pointed model" in capsys.readouterr().err


def test_the_pointed_adapter_is_asked_in_its_own_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An RGFN run is watched in its Analyzer-turn layout; the published two-turn adapter it must beat answers in the
    assistant turn, so it is scored asked that way. Before, the formats differed and it was never compared."""
    from vcot.train.generation_eval import HeldOut
    from vcot.train.pointer import pointed_score

    run, house = config(tmp_path), ModelFormat.for_family("qwen2.5-vl")
    other = str(tmp_path / "runs" / "other")
    storage.write_json(f"{other}/adapter/{MODEL_CARD}", house.to_dict())
    storage.write_json(run.pointer_uri, run_pointer(other, "m"))
    asked: list[str] = []
    watched = HeldOut(records=[], fmt=dataclasses.replace(house, layout="rationale_turn"),
                      measure_in=lambda model, fmt: asked.append(fmt.layout) or {METRIC: 0.61})  # fmt: skip
    # The measurement alone: loading the adapter beside a real policy is test_train_stage's.
    monkeypatch.setattr("vcot.train.pointer.pointed_metrics", lambda model, measure, adapter: measure(model))
    assert pointed_score(run, object(), watched, METRIC) == 0.61
    assert asked == ["two_turn"]


def test_update_pointer_on_an_rl_run_needs_its_held_out_evaluation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="generation_eval_samples > 0"):
        config(tmp_path, set="generation_eval_samples=0,metric_for_best_model=eval_loss")
    config(tmp_path, set="generation_eval_samples=0,metric_for_best_model=eval_loss", force_pointer=True)


@pytest.mark.integration
def test_a_grpo_run_that_ends_worse_than_its_start_is_committed_but_not_published(
    record_data: str, tiny_model_dir: Path, sft_adapter: str, tmp_path: Path
) -> None:
    """A destructive learning rate: the run's best held-out checkpoint scores below the SFT adapter it continued
    (measured at step 0 the same way); the run commits, the pointer stays on the SFT run."""
    runs = tmp_path / "runs"
    sft_run = str(Path(sft_adapter).parent)
    storage.write_json(str(runs / "latest.json"), run_pointer(sft_run, str(tiny_model_dir)))
    destructive = (
        "max_steps=4,save_steps=2,eval_steps=2,learning_rate=0.5,generation_eval_samples=16,"
        "generation_eval_max_new_tokens=96,metric_for_best_model=eval_gen_answer_accuracy"
    )
    run = TrainConfig(data=record_data, model=str(tiny_model_dir), output=str(runs / "grpo"), recipe="tiny-cpu-grpo",
                      set=destructive, init_adapter=sft_adapter, threads=1, update_pointer=True)  # fmt: skip
    committed = train(run)
    assert committed and manifest.is_committed(run.output)
    decision = committed["stats"]["pointer"]
    metrics = json.loads((runs / "grpo" / "metrics.json").read_text())
    assert metrics["held_out"]["start"] > 0, "the SFT start must answer some held-out records right"
    assert metrics["held_out"]["start"] > metrics["held_out"]["end"], metrics["held_out"]
    assert decision["move"] is False and decision["start"] == metrics["held_out"]["start"]
    assert storage.read_json(str(runs / "latest.json"))["run"] == sft_run
    steps = [e["step"] for e in metrics["log_history"] if "eval_gen_answer_accuracy" in e]
    assert steps[0] == 0 and 2 in steps and 4 in steps  # the start, then every eval_steps


def test_a_pointer_storage_cannot_serve_stops_the_run_instead_of_reading_as_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read as "no pointer", an RL run would move it without scoring the model it names."""
    pointer = tmp_path / "latest.json"
    assert read_pointer(str(pointer)) is None
    pointer.write_text("{not json")
    assert read_pointer(str(pointer)) is None  # not a pointer: a rerun may write a good one
    pointer.write_text(json.dumps(run_pointer("s3://b/runs/sft", "m")))
    assert read_pointer(str(pointer)) == run_pointer("s3://b/runs/sft", "m")
    unreachable = storage.StorageError("cannot reach bucket 'b' at endpoint http://s3: check AWS_ENDPOINT_URL_S3")
    monkeypatch.setattr(storage, "read_bytes", lambda uri: (_ for _ in ()).throw(unreachable))
    with pytest.raises(storage.StorageError, match="cannot reach"):
        comparable_pointer(config(tmp_path, pointer=str(pointer)), ModelFormat.for_family("qwen2.5-vl"))
