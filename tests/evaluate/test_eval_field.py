"""The field's grounding metrics against brute-force pixel counting, and the consistency counts on a hand-made table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobs.evaluate import main
from tests.evaluate.evaluate_helpers import commit_records, make_record
from vcot.scoring.field_metrics import dual_iou, field_scores, summarize_field, truth_mean_iou, union_iou
from vcot.scoring.metrics import score_sample, summarize

SIDE = 40  # boxes on a small grid, so every metric can be recomputed by counting pixels


@st.composite
def grid_boxes(draw: st.DrawFn) -> tuple[int, int, int, int]:
    x1, y1 = draw(st.integers(0, SIDE - 1)), draw(st.integers(0, SIDE - 1))
    return x1, y1, draw(st.integers(x1 + 1, SIDE)), draw(st.integers(y1 + 1, SIDE))


box_lists = st.lists(grid_boxes(), max_size=4)


def mask(boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """The pixels covered by any of ``boxes`` (pixel (x, y) is the unit square right of and below (x, y))."""
    covered = np.zeros((SIDE, SIDE), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        covered[y1:y2, x1:x2] = True
    return covered


def pixel_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def brute_best(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]]) -> float:
    return max((pixel_iou(mask([box]), mask([other])) for other in others), default=0.0)


@given(box_lists, st.lists(grid_boxes(), min_size=1, max_size=4))
def test_truth_mean_and_dual_iou_agree_with_pixel_counting(predicted: list, truth: list) -> None:
    recall = float(np.mean([brute_best(box, predicted) for box in truth]))
    precision = float(np.mean([brute_best(box, truth) for box in predicted])) if predicted else 0.0
    assert truth_mean_iou(predicted, truth) == pytest.approx(recall, abs=1e-5)
    assert dual_iou(predicted, truth) == pytest.approx((recall + precision) / 2, abs=1e-5)


@given(box_lists, box_lists)
def test_union_iou_agrees_with_pixel_counting(predicted: list, truth: list) -> None:
    expected = pixel_iou(mask(predicted), mask(truth)) if predicted and truth else 0.0
    assert union_iou(predicted, truth) == pytest.approx(expected, abs=1e-5)


def test_edge_cases_no_prediction_no_truth_several_boxes() -> None:
    truth = [(0, 0, 10, 10), (20, 20, 30, 30)]
    assert field_scores([], truth, True) == {
        "truth_mean_iou": 0.0, "dual_iou": 0.0, "union_iou": 0.0, "first_box_iou": 0.0,
        "grounding_correct": False, "consistency_case": "CM",
    }
    assert set(field_scores([(0, 0, 5, 5)], [], True).values()) == {None}  # not a grounded sample
    # one of two truths found exactly: TreeBench 0.5 (not grounded), GRIT's union IoU 0.5, first box exact
    half = field_scores([(0, 0, 10, 10)], truth, False)
    assert half["truth_mean_iou"] == pytest.approx(0.5) and half["union_iou"] == pytest.approx(0.5)
    assert half["first_box_iou"] == pytest.approx(1.0) and half["consistency_case"] == "WW"
    # a flood of copies: TreeBench does not mind, the dual IoU's precision side does
    flood = field_scores([(0, 0, 10, 10), (20, 20, 30, 30), *[(50, 50, 60, 60)] * 6], truth, True)
    assert flood["truth_mean_iou"] == pytest.approx(1.0) and flood["dual_iou"] == pytest.approx(0.625)
    assert flood["consistency_case"] == "CR"
    # boxes that tile the truth between them: each covers half, their union covers all of it
    tiles = field_scores([(0, 0, 5, 10), (5, 0, 10, 10)], [(0, 0, 10, 10)], True)
    assert tiles["union_iou"] == pytest.approx(1.0) and tiles["truth_mean_iou"] == pytest.approx(0.5)


def test_consistency_counts_on_a_hand_made_table() -> None:
    truth = [(0, 0, 100, 100)]
    hit, miss = [(0, 0, 100, 100)], [(500, 500, 600, 600)]
    table = [  # (answer right, box) -> expected cell
        (True, hit, "CR"), (True, hit, "CR"), (True, hit, "CR"),
        (True, miss, "CM"), (True, [], "CM"),
        (False, hit, "WR"),
        (False, miss, "WW"), (False, [], "WW"),
    ]
    rows = [field_scores(boxes, truth, right) for right, boxes, _ in table]
    assert [row["consistency_case"] for row in rows] == [cell for _, _, cell in table]
    rows.append(field_scores(hit, [], True))  # no ground truth: in no cell
    summary = summarize_field(rows)
    assert summary["consistency_counts"] == {"CR": 3, "CM": 2, "WR": 1, "WW": 2}
    assert summary["consistency"] == pytest.approx(3 / (3 + 2 + 1))
    assert summary["first_box_acc_at_50"] == pytest.approx(4 / 8)
    assert summarize_field(rows[-3:-1])["consistency"] == 0.0  # only WW: grounded rows, none decided
    # Nothing to ground (a text-only subset): not measured. 0.000 in the report read as a model that fails to ground.
    assert summarize_field(rows[-1:])["truth_mean_iou"] is None and summarize_field([])["consistency"] is None
    assert summarize([score_sample([], [], answer_correct=True)])["mean_iou"] is None
    assert summarize([score_sample([], [(0, 0, 5, 5)])])["mean_iou"] == 0.0  # boxes to find, none predicted


def test_metrics_json_has_the_field_metrics_overall_and_per_subset(tmp_path: Path) -> None:
    root = str(tmp_path)
    records = [
        make_record(root, 0, "gqa", [[0, 0, 500, 500]], "red"),
        make_record(root, 1, "gqa", [[0, 0, 500, 500], [500, 500, 1000, 1000]], "blue"),
        make_record(root, 2, "docvqa", [[100, 100, 200, 200]], "yes"),
    ]
    data = commit_records(root, records)
    predictions = tmp_path / "predictions.jsonl"
    lines = [
        {"id": "test:gqa:0", "prediction": "<ref>a</ref><box>[0, 0, 500, 500]</box> Answer: red"},  # CR
        {"id": "test:gqa:1", "prediction": "<ref>a</ref><box>[0, 0, 500, 500]</box> Answer: no"},  # WW: 1 of 2
        {"id": "test:docvqa:2", "prediction": "<ref>b</ref><box>[600, 600, 700, 700]</box> Answer: yes"},  # CM
    ]
    predictions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["--predictions", str(predictions), "--data", data, "--output", str(tmp_path / "out")]) == 0
    metrics: dict[str, Any] = json.loads((tmp_path / "out" / "metrics.json").read_text())
    overall, gqa = metrics["overall"], metrics["subsets"]["gqa"]
    assert overall["consistency_counts"] == {"CR": 1, "CM": 1, "WR": 0, "WW": 1}
    assert overall["consistency"] == pytest.approx(0.5)
    assert gqa["truth_mean_iou"] == pytest.approx((1.0 + 0.5) / 2, abs=1e-5)
    assert gqa["union_iou"] == pytest.approx((1.0 + 0.5) / 2, abs=1e-5)
    assert metrics["subsets"]["docvqa"]["first_box_acc_at_50"] == 0.0
    for name in ("truth_mean_iou", "dual_iou", "union_iou", "first_box_acc_at_50", "mean_iou", "acc_at_50"):
        assert name in overall and name in gqa
