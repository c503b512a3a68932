"""The summary make local-train prints: losses, the evaluation's key metrics, a response, the report copied."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from vcot.dev.local_s3 import LocalS3
from vcot.dev.summary import main, summary
from vcot.io import shards, storage
from vcot.train.distributed import free_port


def _write_outputs(root: Path) -> tuple[str, str]:
    run, evaluation = str(root / "run"), str(root / "eval")
    history = [{"loss": 6.5, "step": 1}, {"eval_loss": 2.0, "step": 50}, {"loss": 0.9, "step": 120}]
    storage.write_json(f"{run}/metrics.json", {"log_history": history, "eval": {"eval_loss": 0.85}})
    overall = {
        "samples": 10,
        "box_detection_rate": 0.9,
        "mean_iou": 0.25,
        "acc_at_50": 0.1,
        "answer_accuracy": None,
        "first_object_iou": 0.4,
        "first_object_acc_at_50": 0.35,
        "constant_box_iou": 0.16,
        "constant_box": [200, 150, 700, 800],
    }
    storage.write_json(f"{evaluation}/metrics.json", {"overall": overall, "subsets": {}})
    response = "I find the <ref>bar</ref><box>[1, 2, 3, 4]</box>. Answer: red"
    other = "I find the <ref>bar</ref><box>[500, 20, 900, 80]</box>. Answer: blue"
    rows = [
        {"id": "a", "prediction": response, "boxes": [{"ref": "bar", "box": [1, 2, 3, 4]}], "truth_boxes": [[1, 2, 3, 5]]},
        {"id": "b", "prediction": other, "boxes": [{"ref": "bar", "box": [500, 20, 900, 80]}],
         "truth_boxes": [[510, 20, 880, 90]]},
    ]
    shards.write_jsonl(evaluation, "predictions/00000-of-00001.jsonl.gz", rows)
    storage.write_text(f"{evaluation}/report.html", "<html>report</html>")
    return run, evaluation


def test_summary_shows_losses_metrics_a_response_and_copies_the_report(tmp_path: Path) -> None:
    run, evaluation = _write_outputs(tmp_path)
    lines = summary(run, evaluation, tmp_path / "out" / "report.html")
    text = "\n".join(lines)
    assert "train loss 6.500 (step 1) -> 0.900 (step 120); eval loss 0.850" in text
    assert "box detection rate 0.900; mean IoU 0.250; Acc@0.5 0.100" in text
    assert "answer accuracy" not in text  # not computed for these records: not shown as a number
    assert "<box>[1, 2, 3, 4]</box>" in text and "(read as [1, 2, 3, 4]; truth [1, 2, 3, 5])" in text
    assert "(read as [500, 20, 900, 80]; truth [510, 20, 880, 90])" in text  # more than one response
    assert (
        "first-object IoU 0.400 vs 0.160 for the best constant box [200, 150, 700, 800] (2.5x); first-object Acc@0.5 0.350"
        in text
    )
    assert (tmp_path / "out" / "report.html").read_text() == "<html>report</html>"
    assert (tmp_path / "out" / "report.html").resolve().as_uri() in lines[-1]


def test_without_an_evaluation_only_the_losses_and_the_cost(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run, _ = _write_outputs(tmp_path)
    assert main(["--run", run]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and "eval loss 0.850" in out[0]
    assert out[1].startswith("cost") and "no throughput recorded" in out[1]  # a run trained before it was
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["eval"]["eval_loss"] == 0.85


def test_a_grpo_run_shows_each_reward_at_the_start_and_the_end(tmp_path: Path) -> None:
    run = str(tmp_path / "grpo")
    history = [
        {"loss": 0.01, "rewards/format_reward/mean": 0.1 * step, "rewards/bbox_reward/mean": None, "step": step}
        for step in range(1, 11)
    ]
    history[-1]["rewards/bbox_reward/mean"] = 0.25  # a reward None in most steps (not applicable) still shows
    storage.write_json(f"{run}/metrics.json", {"log_history": history})
    lines = summary(run)
    assert "reward       format_reward 0.300 (steps 1-5) -> 0.800 (steps 6-10)" in lines
    assert "reward       bbox_reward 0.250 (steps 10-10) -> 0.250 (steps 10-10)" in lines


@pytest.mark.integration
def test_the_last_line_says_the_local_s3_server_still_runs_and_how_to_stop_it(
    local_s3_server: LocalS3, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``make local-train`` leaves its server up for the next run and ``make demo``: the summary says where, and how
    to stop it."""
    run, evaluation = _write_outputs(tmp_path)
    lines = summary(run, evaluation, local_s3=local_s3_server)
    assert lines[-1] == (f"local S3     still running on {local_s3_server.endpoint} "
                         f"(data in {local_s3_server.root / 'data'}): make s3-down stops it")
    assert lines[-2].startswith("report ")

    monkeypatch.setenv("VCOT_LOCAL_S3_DIR", str(local_s3_server.root))
    monkeypatch.setenv("VCOT_LOCAL_S3_PORT", str(local_s3_server.port))
    assert main(["--run", run, "--local-s3"]) == 0  # as the Makefile asks for it
    assert capsys.readouterr().out.strip().splitlines()[-1] == lines[-1]

    stopped = dataclasses.replace(local_s3_server, port=free_port())  # a server that is not running
    assert summary(run, local_s3=stopped)[-1].startswith("cost ")
