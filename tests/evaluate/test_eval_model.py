"""Model mode and scheduled re-evaluation on the tiny offline Qwen2.5-VL (mechanics, not quality)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig

from jobs.evaluate import main
from tests.evaluate.evaluate_helpers import commit_records, make_record
from vcot.errors import StorageError
from vcot.evaluate.history import read_history
from vcot.io import manifest, shards, storage
from vcot.models.loading import MODEL_CARD, architecture

FAST = ["--max-new-tokens", "12"]
WATCHED = ["mean_iou", "iou_success_rate", "acc_at_50", "answer_accuracy"]


def _records(root: str, count: int = 5) -> list[dict[str, Any]]:
    sizes = [(160, 120), (90, 200), (300, 100), (120, 120), (64, 256)]
    return [
        make_record(root, i, ("gqa", "textvqa")[i % 2], [[100 * i, 100, 100 * i + 300, 600]], "red",
                    width=sizes[i % len(sizes)][0], height=sizes[i % len(sizes)][1])
        for i in range(count)
    ]


def _predictions(output: str) -> dict[str, str]:
    rows = shards.read_jsonl(manifest.committed_files(output, "predictions/")[0])
    return {row["id"]: row["prediction"] for row in rows}


def test_model_mode_batched_equals_one_at_a_time(tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path) -> None:
    data = commit_records(str(tmp_path), _records(str(tmp_path)))
    base = ["--model", str(tiny_model_dir), "--adapter", str(adapter_dir), "--data", data, *FAST]
    assert main([*base, "--output", str(tmp_path / "batched"), "--batch-size", "4"]) == 0
    assert main([*base, "--output", str(tmp_path / "single"), "--batch-size", "1"]) == 0
    batched, single = _predictions(str(tmp_path / "batched")), _predictions(str(tmp_path / "single"))
    assert len(batched) == 5 and batched == single
    assert any(text.strip() for text in batched.values())
    metrics = storage.read_json(str(tmp_path / "batched" / "metrics.json"))
    assert metrics["overall"]["samples"] == 5 and set(metrics["subsets"]) == {"gqa", "textvqa"}
    generation = metrics["details"]["generation"]
    assert metrics["details"]["model_format"]["coords"] == "norm1000"  # from the card (the flat layout of 0.1)
    assert generation["repetition_penalty"] == 1.2 and generation["box_aware_penalty"] is True  # one default
    assert generation["max_new_tokens"] == 12 and metrics["details"]["timing"]["samples_per_second"] > 0
    # The plain penalty runs too (on this random model it may change the text); --threads sets torch's threads.
    threads = torch.get_num_threads()
    try:
        assert main([*base, "--output", str(tmp_path / "plain"), "--no-box-aware-penalty", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert len(_predictions(str(tmp_path / "plain"))) == 5


def test_unreadable_images_are_counted_and_skipped(tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path) -> None:
    records = _records(str(tmp_path), 3)
    records[1]["image"] = str(tmp_path / "missing.png")
    data = commit_records(str(tmp_path), records)
    out = str(tmp_path / "o")
    assert main(["--model", str(tiny_model_dir), "--adapter", str(adapter_dir), "--data", data, "--output", out, *FAST]) == 0
    metrics = storage.read_json(f"{out}/metrics.json")
    assert metrics["overall"]["samples"] == 2 and metrics["join"]["records_without_prediction"] == 1
    assert metrics["details"]["skipped_samples"] == {"image_unreadable": 1}
    assert set(_predictions(out)) == {records[0]["id"], records[2]["id"]}


def test_unreachable_storage_stops_the_evaluation_instead_of_skipping_its_records(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One record's image behind an outage: skipped as unreadable, the run would commit metrics on the others."""
    import vcot.io.images

    records = _records(str(tmp_path), 3)
    data = commit_records(str(tmp_path), records)
    real_load = vcot.io.images.load_rgb

    def flaky(uri: str) -> Any:
        if uri == records[1]["image"]:
            raise StorageError("cannot reach bucket 'b' at endpoint http://s3: check AWS_ENDPOINT_URL_S3")
        return real_load(uri)

    monkeypatch.setattr(vcot.io.images, "load_rgb", flaky)
    out = str(tmp_path / "o")
    assert main(["--model", str(tiny_model_dir), "--adapter", str(adapter_dir), "--data", data, "--output", out, *FAST]) == 1
    assert "cannot reach bucket" in capsys.readouterr().err and not manifest.is_committed(out)


def test_a_model_that_could_answer_no_record_commits_nothing(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every image unreadable: exit 2 with the skip reasons (it was exit 1 saying no *prediction* matched)."""
    records = _records(str(tmp_path), 2)
    for record in records:
        record["image"] = str(tmp_path / "missing.png")
    data = commit_records(str(tmp_path), records)
    out = str(tmp_path / "o")
    argv = ["--model", str(tiny_model_dir), "--adapter", str(adapter_dir), "--data", data, "--output", out, *FAST]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vcot-evaluate: error:")]
    assert errors == [
        "vcot-evaluate: error: the model answered none of the 2 records: image_unreadable 2; check that the records' "
        "images can be read from here (and are the ones the data stage sized); nothing was committed"
    ]
    assert not manifest.is_committed(out)


def test_records_whose_size_disagrees_with_their_image_are_skipped_for_absolute_boxes(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    """qwen2.5-absolute boxes are read back with the record's size: a size giving another patch grid is skipped."""
    records = _records(str(tmp_path), 3)
    records[1]["width"], records[1]["height"] = records[1]["height"], records[1]["width"]  # 90x200 image, says 200x90
    records[2]["width"], records[2]["height"] = 600, 200  # a 300x100 image: same aspect, same grid, scored
    data = commit_records(str(tmp_path), records)
    absolute = str(tmp_path / "absolute")
    args = ["--model", str(tiny_model_dir), "--data", data, *FAST]
    assert main([*args, "--coords", "qwen2.5-absolute", "--output", absolute]) == 0
    metrics = storage.read_json(f"{absolute}/metrics.json")
    assert metrics["details"]["skipped_samples"] == {"grid_mismatch": 1}
    assert metrics["overall"]["samples"] == 2 and metrics["join"]["records_without_prediction"] == 1
    assert set(_predictions(absolute)) == {records[0]["id"], records[2]["id"]}
    # norm1000 boxes are relative to the image whatever its size: nothing to skip.
    relative = str(tmp_path / "relative")
    assert main([*args, "--adapter", str(adapter_dir), "--output", relative]) == 0
    assert storage.read_json(f"{relative}/metrics.json")["details"]["skipped_samples"] == {}
    assert len(_predictions(relative)) == 3


def test_coordinate_convention_is_never_guessed(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = commit_records(str(tmp_path), _records(str(tmp_path), 1))
    out = str(tmp_path / "o")
    assert main(["--model", str(tiny_model_dir), "--data", data, "--output", out, *FAST]) == 2  # settings: exit 2
    assert "pass --coords" in capsys.readouterr().err
    args = ["--model", str(tiny_model_dir), "--adapter", str(adapter_dir), "--data", data, "--output", out]
    assert main([*args, "--coords", "qwen2.5-absolute", *FAST]) == 2
    assert "contradicts the adapter's vcot-model.json" in capsys.readouterr().err
    assert main(["--model", str(tiny_model_dir), "--coords", "qwen2.5-absolute", "--data", data, "--output", out, *FAST]) == 0


@pytest.fixture(scope="module")
def other_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base model of another size than the one ``adapter_dir`` was trained on."""
    from vcot.dev.tiny_model import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny-local"), size="local")


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("vcot-evaluate: error:")]


def test_an_adapter_on_another_base_model_is_refused_in_one_line(
    tiny_model_dir: Path, adapter_dir: Path, other_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It used to crash with a size-mismatch traceback of thousands of lines, after loading the model."""
    data = commit_records(str(tmp_path), _records(str(tmp_path), 1))
    card = json.loads((adapter_dir / MODEL_CARD).read_text())
    recorded = tmp_path / "recorded"  # what train writes: the base's architecture, compared before loading
    shutil.copytree(adapter_dir, recorded)
    card["base_architecture"] = architecture(AutoConfig.from_pretrained(tiny_model_dir).to_dict())
    (recorded / MODEL_CARD).write_text(json.dumps(card))
    older = tmp_path / "older"  # a card without it: refused when the adapter's weights do not fit
    other_hidden = AutoConfig.from_pretrained(other_base).text_config.hidden_size
    shutil.copytree(adapter_dir, older)

    refusals = {
        recorded: [f"is not the base model the adapter was trained on (text_config.hidden_size: {other_hidden}, not 64;",
                   f"pass --model {tiny_model_dir} or"],
        older: [f"adapter {older} does not fit the base model {other_base}"],
    }  # fmt: skip
    for adapter, fragments in refusals.items():
        argv = ["--model", str(other_base), "--adapter", str(adapter), "--data", data, "--output", str(tmp_path / "o")]
        assert main([*argv, *FAST]) == 2
        err = capsys.readouterr().err
        errors = _error_lines(err)
        assert len(errors) == 1 and all(f in errors[0] for f in fragments) and "Traceback" not in err, err[-3000:]
        assert ('"load_model"' in err) == (adapter == older)  # the card's architecture refuses before any weight loads
    # The same base under another name (a copy) is accepted: the architecture is compared, not the URI.
    copy = tmp_path / "copy-of-base"
    shutil.copytree(tiny_model_dir, copy)
    argv = ["--model", str(copy), "--adapter", str(recorded), "--data", data, "--output", str(tmp_path / "ok")]
    assert main([*argv, *FAST]) == 0


def _entry(data: str, output: str, value: float) -> dict[str, Any]:
    """An earlier entry asked as these tests ask (``FAST``'s budget)."""
    return {"data": data, "split": "val", "output": output, "run": output, "protocol": {"max_new_tokens": 12},
            "metrics": {name: value for name in WATCHED}}  # fmt: skip


def test_scheduled_mode_flags_a_planted_regression(
    tiny_model_dir: Path, adapter_dir: Path, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VCOT_MODEL_CACHE", str(tmp_path / "cache"))
    root = f"{s3_bucket}/project"
    data = commit_records(root, _records(root, 3))
    storage.upload_dir(tiny_model_dir, f"{root}/models/tiny")
    storage.upload_dir(adapter_dir, f"{root}/runs/run-1/adapter")
    pointer = f"{root}/runs/latest.json"
    storage.write_json(pointer, {"run": f"{root}/runs/run-1", "base_model": f"{root}/models/tiny",
                                 "adapter": f"{root}/runs/run-1/adapter"})
    history = f"{root}/runs/eval-history.jsonl"
    planted = [_entry(data, "old-0", 0.90), _entry(data, "old-1", 0.95), _entry("other-data", "x", 0.99)]
    storage.write_text(history, "".join(json.dumps(e) + "\n" for e in planted))

    assert main(["--pointer", pointer, "--data", data, *FAST]) == 3
    output = f"{root}/runs/evals/run-1"
    assert manifest.is_committed(output)
    metrics = storage.read_json(f"{output}/metrics.json")
    regression = metrics["regression"]
    assert regression["values"]["mean_iou"]["previous"] == 0.95 and regression["values"]["mean_iou"]["best"] == 0.95
    assert any(line.startswith("mean_iou") for line in regression["regressions"])
    entries = read_history(history)
    assert len(entries) == 4 and entries[-1]["output"] == output and entries[-1]["regressions"]
    report = storage.read_text(f"{output}/report.html")
    assert 'class="regression" id="regression"' in report and "below the previous entry" in report
    assert 'class="history"' in report and report.count('class="series"') == len(WATCHED)
    # The CronJob's next run finds the pointer unchanged: no new evaluation, the same verdict.
    assert main(["--pointer", pointer, "--data", data, *FAST]) == 3
    assert len(read_history(history)) == 4


def test_scheduled_mode_passes_without_regression(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    data = commit_records(str(tmp_path), _records(str(tmp_path), 2))
    pointer = tmp_path / "runs" / "latest.json"
    pointer.parent.mkdir()
    pointer.write_text(json.dumps({"run": str(tmp_path / "runs" / "run-2"), "base_model": str(tiny_model_dir),
                                   "adapter": str(adapter_dir)}))
    history = tmp_path / "history.jsonl"
    history.write_text(json.dumps(_entry(data, "old", 0.0)) + "\n")
    evals = tmp_path / "evals"
    assert main(["--pointer", str(pointer), "--history", str(history), "--data", data, "--output", str(evals), *FAST]) == 0
    output = evals / "run-2"  # --output is the prefix: every run gets its own folder
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["regression"]["regressions"] == []
    assert 'class="ok" id="regression"' in (output / "report.html").read_text()
    entries = read_history(str(history))
    assert len(entries) == 2
    # the field's metrics are in the history too, overall and per subset
    for name in ("truth_mean_iou", "dual_iou", "union_iou", "first_box_acc_at_50", "consistency"):
        assert entries[-1]["metrics"][name] == metrics["overall"][name]
        assert entries[-1]["subsets"]["gqa"][name] == metrics["subsets"]["gqa"][name]


def test_scheduled_mode_evaluates_each_new_run_even_when_runs_share_a_folder_name(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    """k8s runs all train into RUN_ROOT/<run id>/train: the second night's model must be evaluated too."""
    data = commit_records(str(tmp_path), _records(str(tmp_path), 2))
    root = tmp_path / "runs"
    root.mkdir()
    pointer = root / "latest.json"
    assert main(["--pointer", str(pointer), "--data", data, *FAST]) == 0  # a new cluster's nights before a model
    assert sorted(root.iterdir()) == []  # nothing evaluated, nothing written
    outputs = []
    for run_id in ("exp1", "exp2"):  # train moves the pointer to the newest run
        pointer.write_text(json.dumps({"run": str(root / run_id / "train"), "base_model": str(tiny_model_dir),
                                       "adapter": str(adapter_dir)}))
        assert main(["--pointer", str(pointer), "--data", data, *FAST]) == 0
        outputs.append(root / "evals" / run_id / "train")
        assert manifest.is_committed(str(outputs[-1]))
    entries = read_history(str(root / "eval-history.jsonl"))
    assert [e["output"] for e in entries] == [str(o) for o in outputs]
    assert [e["run"] for e in entries] == [str(root / "exp1" / "train"), str(root / "exp2" / "train")]
    first = json.loads((outputs[0] / "metrics.json").read_text())
    second = json.loads((outputs[1] / "metrics.json").read_text())
    assert "regression" not in first or first["regression"]["values"]["mean_iou"]["previous"] is None
    assert second["regression"]["values"]["mean_iou"]["previous"] == first["overall"]["mean_iou"]
    assert second["regression"]["regressions"] == []  # the same adapter twice: no change


@pytest.mark.integration
def test_cronjob_command_exits_3_on_the_real_s3_server(
    tiny_model_dir: Path, adapter_dir: Path, real_s3: str, tmp_path: Path
) -> None:
    """What the CronJob runs, as a process: ``python -m jobs.evaluate --pointer ...`` against the local S3 server."""
    import os
    import subprocess
    import sys

    data = commit_records(real_s3, _records(real_s3, 2))
    storage.upload_dir(adapter_dir, f"{real_s3}/runs/run-9/adapter")
    pointer = f"{real_s3}/runs/latest.json"
    storage.write_json(pointer, {"run": f"{real_s3}/runs/run-9", "base_model": str(tiny_model_dir),
                                 "adapter": f"{real_s3}/runs/run-9/adapter"})
    storage.write_text(f"{real_s3}/runs/eval-history.jsonl", json.dumps(_entry(data, "old", 0.9)) + "\n")
    env = dict(os.environ, VCOT_MODEL_CACHE=str(tmp_path / "cache"), VCOT_LOG_FORMAT="json")
    result = subprocess.run(
        [sys.executable, "-m", "jobs.evaluate", "--pointer", pointer, "--data", data, *FAST],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("vcot-evaluate: error:")]
    assert len(errors) == 1 and "regression: mean_iou" in errors[0] and "report.html" in errors[0]
    assert manifest.is_committed(f"{real_s3}/runs/evals/run-9")
    assert len(read_history(f"{real_s3}/runs/eval-history.jsonl")) == 2


def test_sampled_answers_in_process_are_seeded_and_averaged(tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path) -> None:
    """Model mode's Avg@k: answer j is sampled with seed + j, so the same flags draw the same answers."""
    data = commit_records(str(tmp_path), _records(str(tmp_path), 3))
    base = ["--model", str(tiny_model_dir), "--adapter", str(adapter_dir), "--data", data, *FAST,
            "--samples", "3", "--temperature", "1.5", "--seed", "4"]  # fmt: skip
    assert main([*base, "--output", str(tmp_path / "a")]) == 0
    assert main([*base, "--output", str(tmp_path / "b")]) == 0

    def samples(output: str) -> list[tuple[str, int, str]]:
        rows = shards.read_jsonl(manifest.committed_files(output, "predictions-samples/")[0])
        return [(row["id"], row["sample"], row["prediction"]) for row in rows]

    first = samples(str(tmp_path / "a"))
    assert first == samples(str(tmp_path / "b")) and len(first) == 6
    assert _predictions(str(tmp_path / "a")) == _predictions(str(tmp_path / "b"))
    texts = {(sample, text) for _, sample, text in first} | {(0, t) for t in _predictions(str(tmp_path / "a")).values()}
    assert len({text for _, text in texts}) > 3  # sampled at 1.5: the answers differ
    metrics = storage.read_json(str(tmp_path / "a" / "metrics.json"))
    assert metrics["avg_at_k"]["k"] == 3 and metrics["details"]["generation"]["temperature"] == 1.5
