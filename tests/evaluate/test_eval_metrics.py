"""Metrics agree with an independent numpy computation, and with hand-computed numbers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vcot.scoring.metrics import best_constant_box, first_object_metrics, score_sample, summarize, summarize_by_subset


@st.composite
def house_boxes(draw: st.DrawFn) -> tuple[int, int, int, int]:
    x1 = draw(st.integers(0, 999))
    y1 = draw(st.integers(0, 999))
    return x1, y1, draw(st.integers(x1 + 1, 1000)), draw(st.integers(y1 + 1, 1000))


samples = st.lists(
    st.tuples(st.lists(house_boxes(), max_size=4), st.lists(house_boxes(), min_size=0, max_size=3)),
    min_size=1,
    max_size=6,
)


def numpy_iou(preds: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """IoU matrix written from scratch with broadcasting (same epsilon as the library)."""
    p = preds[:, None, :].astype(float)
    t = truths[None, :, :].astype(float)
    inter_w = np.clip(np.minimum(p[..., 2], t[..., 2]) - np.maximum(p[..., 0], t[..., 0]), 0, None)
    inter_h = np.clip(np.minimum(p[..., 3], t[..., 3]) - np.maximum(p[..., 1], t[..., 1]), 0, None)
    inter = inter_w * inter_h
    area_p = (p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1])
    area_t = (t[..., 2] - t[..., 0]) * (t[..., 3] - t[..., 1])
    return inter / (area_p + area_t - inter + 1e-6)


def numpy_greedy_pairs(matrix: np.ndarray) -> list[float]:
    """Greedy one-to-one matching: repeatedly take the largest remaining IoU (> 0), crossing out its row and column."""
    matrix = matrix.copy()
    values = []
    while matrix.size and matrix.max() > 0:
        row, col = np.unravel_index(np.argmax(matrix), matrix.shape)
        values.append(float(matrix[row, col]))
        matrix[row, :] = -1
        matrix[:, col] = -1
    return values


def reference_metrics(items: list[tuple[list, list]]) -> dict[str, float]:
    best, detections, accs, grounded = [], [], {0.5: [], 0.75: []}, 0
    for preds, truths in items:
        if not truths:
            continue
        grounded += 1
        detections.append(len(preds) > 0)
        matrix = numpy_iou(np.array(preds).reshape(-1, 4), np.array(truths).reshape(-1, 4))
        best.extend(matrix.max(axis=1).tolist() if preds else [])
        pairs = numpy_greedy_pairs(matrix)
        for threshold in accs:
            accs[threshold].append(sum(v >= threshold for v in pairs) / max(len(preds), len(truths)))
    best_arr = np.array(best)
    measured = {  # nothing to ground: not measured
        "box_detection_rate": float(np.mean(detections)) if grounded else None,
        "mean_iou": float(best_arr.mean()) if best else 0.0,
        "iou_success_rate": float((best_arr > 0.5).mean()) if best else 0.0,
        "acc_at_50": float(np.mean(accs[0.5])) if grounded else None,
        "acc_at_75": float(np.mean(accs[0.75])) if grounded else None,
    }
    if not grounded:
        measured.update(mean_iou=None, iou_success_rate=None)
    return {**measured, "grounded_samples": grounded, "predicted_boxes": len(best)}


@given(samples)
def test_metrics_agree_with_numpy(items: list[tuple[list, list]]) -> None:
    metrics = summarize(score_sample(preds, truths) for preds, truths in items)
    for name, value in reference_metrics(items).items():
        assert metrics[name] == (None if value is None else pytest.approx(value, abs=1e-9)), name


def _max_matching(matrix: np.ndarray, threshold: float) -> int:
    """Brute force: the largest number of one-to-one pairs with IoU >= threshold."""
    rows, cols = matrix.shape
    if rows > cols:
        matrix, rows, cols = matrix.T, cols, rows
    best = 0
    for perm in itertools.permutations(range(cols), rows):
        best = max(best, sum(matrix[r, c] >= threshold for r, c in enumerate(perm)))
    return best


@given(st.lists(house_boxes(), min_size=1, max_size=4), st.lists(house_boxes(), min_size=1, max_size=4))
def test_one_to_one_never_credits_more_pairs_than_exist(preds: list, truths: list) -> None:
    sample = score_sample(preds, truths)
    matrix = numpy_iou(np.array(preds), np.array(truths))
    for threshold in (0.5, 0.75):
        credited = sum(v >= threshold for v in sample.matched_ious)
        assert credited <= _max_matching(matrix, threshold)
        assert sample.accuracy_at(threshold) <= min(len(preds), len(truths)) / max(len(preds), len(truths))


def test_hand_computed_sample_set() -> None:
    gt = (0, 0, 100, 100)
    scores = [
        score_sample([gt], [gt], answer_correct=True),  # perfect
        score_sample([(0, 0, 100, 50)], [gt]),  # IoU 0.5 exactly (minus epsilon): not a success
        score_sample([gt, gt, gt], [gt], answer_correct=True),  # flooding: 3 successes but Acc 1/3
        score_sample([], [gt], invalid_reasons=["out_of_range"]),  # a malformed box only
    ]
    metrics = summarize(scores)
    assert metrics["samples"] == 4 and metrics["grounded_samples"] == 4
    assert metrics["box_detection_rate"] == 0.75
    assert metrics["predicted_boxes"] == 5
    assert metrics["mean_iou"] == pytest.approx((1 + 0.5 + 3) / 5, abs=1e-6)
    assert metrics["iou_success_rate"] == pytest.approx(4 / 5)
    assert metrics["acc_at_50"] == pytest.approx((1 + 0 + 1 / 3 + 0) / 4)
    assert metrics["acc_at_75"] == pytest.approx((1 + 0 + 1 / 3 + 0) / 4)
    assert metrics["answer_accuracy"] == 0.5
    assert metrics["invalid_boxes"] == 1 and metrics["invalid_reasons"] == {"out_of_range": 1}


def test_samples_without_ground_truth_count_only_for_answers() -> None:
    scores = [score_sample([(0, 0, 5, 5)], [], answer_correct=True), score_sample([], [(0, 0, 5, 5)])]
    metrics = summarize_by_subset(scores, ["a", "b"])
    assert metrics["overall"]["grounded_samples"] == 1 and metrics["overall"]["predicted_boxes"] == 0
    assert metrics["overall"]["answer_accuracy"] == 0.5
    assert metrics["subsets"]["a"]["answer_accuracy"] == 1.0 and metrics["subsets"]["b"]["box_detection_rate"] == 0.0
    assert metrics["subsets"]["a"]["mean_iou"] is None and metrics["subsets"]["a"]["acc_at_50"] is None  # n/a
    assert summarize([])["mean_iou"] is None


# --- first box and the best constant box -------------------------------------------------------------------------


def brute_force_constant_box(truths: list[tuple[int, int, int, int]], upper: int) -> float:
    """The best mean IoU of any one box on the integer grid [0, upper]: every box tried."""
    sides = [(a, b) for a in range(upper + 1) for b in range(a + 1, upper + 1)]
    boxes = np.array([(x1, y1, x2, y2) for x1, x2 in sides for y1, y2 in sides])
    return float(numpy_iou(boxes, np.array(truths)).mean(axis=1).max())


@st.composite
def small_grid_sets(draw: st.DrawFn) -> tuple[int, list[tuple[int, int, int, int]]]:
    upper = draw(st.integers(4, 10))
    side = st.tuples(st.integers(0, upper - 1), st.integers(1, upper)).filter(lambda s: s[0] < s[1])
    pairs = draw(st.lists(st.tuples(side, side), min_size=1, max_size=6))
    return upper, [(x1, y1, x2, y2) for (x1, x2), (y1, y2) in pairs]


@given(small_grid_sets())
def test_constant_box_equals_brute_force_on_small_grids(case: tuple[int, list]) -> None:
    upper, truths = case
    box, value = best_constant_box(truths, upper=upper)
    assert value == pytest.approx(brute_force_constant_box(truths, upper), abs=1e-9)
    assert box is not None and 0 <= box[0] < box[2] <= upper and 0 <= box[1] < box[3] <= upper
    assert value == pytest.approx(float(numpy_iou(np.array([box]), np.array(truths)).mean()), abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_constant_box_is_near_brute_force_on_larger_sets(seed: int) -> None:
    rng = np.random.default_rng(seed)
    upper = 12
    x = np.sort(rng.integers(0, upper + 1, size=(40, 2)), axis=1)
    y = np.sort(rng.integers(0, upper + 1, size=(40, 2)), axis=1)
    keep = (x[:, 0] < x[:, 1]) & (y[:, 0] < y[:, 1])
    truths = [tuple(int(v) for v in (a[0], b[0], a[1], b[1])) for a, b in zip(x[keep], y[keep])]
    _, value = best_constant_box(truths, upper=upper)
    assert brute_force_constant_box(truths, upper) - 0.002 <= value <= brute_force_constant_box(truths, upper) + 1e-9


@given(small_grid_sets(), st.data())
def test_a_model_that_ignores_the_image_never_beats_the_constant_box(case: tuple[int, list], data: st.DataObject) -> None:
    upper, truths = case
    x1, y1 = data.draw(st.integers(0, upper - 1)), data.draw(st.integers(0, upper - 1))
    same = (x1, y1, data.draw(st.integers(x1 + 1, upper)), data.draw(st.integers(y1 + 1, upper)))
    grounded = [score_sample([same], [truth]) for truth in truths]
    found = first_object_metrics(grounded)  # searched on 0-1000, a superset of this grid
    assert found["first_object_iou"] <= found["constant_box_iou"] + 1e-9


def test_first_object_metrics_by_hand() -> None:
    gt, other = (0, 0, 100, 100), (500, 500, 600, 600)
    scores = [
        score_sample([gt, other], [gt, other]),  # first box right: IoU 1
        score_sample([(0, 0, 100, 50)], [gt]),  # IoU 0.5: not above 0.5
        score_sample([other, gt], [gt]),  # a right box, but not first: IoU 0
        score_sample([other], [gt, other]),  # the first box finds the second object, not the first: IoU 0
        score_sample([], [gt], invalid_reasons=["out_of_range"]),  # no valid box: IoU 0
        score_sample([gt], []),  # nothing to point at: not counted
    ]
    metrics = summarize(scores)
    assert metrics["first_object_iou"] == pytest.approx(1.5 / 5, abs=1e-6)
    assert metrics["first_object_acc_at_50"] == 0.2
    assert metrics["constant_box"] == [0, 0, 100, 100] and metrics["constant_box_iou"] == pytest.approx(1.0, abs=1e-6)
    assert summarize([score_sample([], [])])["constant_box"] is None
