"""The grounding metrics of the 2025-26 papers, so a row can sit next to theirs. Pure.

Per sample (:func:`field_scores`, from its valid predicted boxes and its ground-truth boxes, both 0-1000):

- **truth_mean_iou** (TreeBench's mIoU): the mean, over ground-truth boxes, of the best IoU among the
  predicted boxes. Extra predicted boxes are not penalized; no prediction scores 0.
- **dual_iou** (TreeVGR's dual IoU): half of the recall side (``truth_mean_iou``) plus the precision side
  (the mean, over predicted boxes, of the best IoU among the ground truth). Flooding lowers the second half.
- **union_iou** (GRIT's grounding IoU): the IoU of the region covered by all predicted boxes with the region
  covered by all ground-truth boxes (exact areas of unions of rectangles). One box each: plain IoU.
- **first_box_iou** (VisCoT's detection): the best IoU of the reasoning's *first* box with a ground-truth box;
  ``first_box_acc_at_50`` is the share of samples where it is above 0.5.
- **box_missing_or_invalid**: the share of samples whose response names no valid box or writes an invalid one
  (out of range, inverted, ...): what a grounded answer may not do, and plain-text CoT always does.
- **best_of_two_acc_at_50**: the first box's Acc@0.5 when the box is also read in the other frame (0-1000 and pixels)
  and the better reading kept, as some harnesses score RefCOCO; beside ``first_box_acc_at_50`` (one reading, the
  model's own frame) it shows how much that protocol inflates (the other reading's first box is its first box that
  is valid in that frame). From rows with ``other_frame_first_box_iou``
  (evaluate always writes it; train's held-out check does not).
- **grounding_correct**: ``truth_mean_iou > 0.5`` (with one box each, the box's IoU > 0.5), the grounding
  half of MM-GCoT's **answer-grounding consistency** ``CR / (CR + CM + WR)`` (CR: answer right and grounded,
  CM: right but not grounded, WR: wrong but grounded, WW: neither).

A set (:func:`summarize_field`) averages them over the samples with ground-truth boxes (as the seed's
metrics do), and counts CR/CM/WR/WW. Keys are separate from ``metrics.summarize``'s so both live side by side.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from vcot.grounding.boxes import IOU_EPS, iou

GROUNDED_IOU = 0.5
CONSISTENCY_CASES = ("CR", "CM", "WR", "WW")
FIELD_RATE_METRICS = ("truth_mean_iou", "dual_iou", "union_iou", "first_box_acc_at_50", "consistency")
"""The field metrics in [0, 1] where higher is better: a regression check may watch them too."""

Boxes = Sequence[Sequence[float]]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _best(box: Sequence[float], others: Boxes) -> float:
    return max((iou(box, other) for other in others), default=0.0)


def truth_mean_iou(predicted: Boxes, truth: Boxes) -> float:
    """TreeBench's mIoU of one sample (0 without predictions; call it only with ground truth).

    >>> round(truth_mean_iou([(0, 0, 10, 10), (50, 50, 60, 60)], [(0, 0, 10, 10)]), 4)
    1.0
    """
    return _mean([_best(box, predicted) for box in truth])


def dual_iou(predicted: Boxes, truth: Boxes) -> float:
    """TreeVGR's dual IoU: (recall side + precision side) / 2.

    >>> round(dual_iou([(0, 0, 10, 10), (50, 50, 60, 60)], [(0, 0, 10, 10)]), 4)
    0.75
    """
    recall = _mean([_best(box, predicted) for box in truth])
    precision = _mean([_best(box, truth) for box in predicted])
    return (recall + precision) / 2


def _merged(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for low, high in sorted(intervals):
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Total length of the intersection of two merged interval lists."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def union_iou(predicted: Boxes, truth: Boxes) -> float:
    """GRIT's grounding IoU: IoU of the union of ``predicted`` with the union of ``truth`` (0 if either is empty).

    Exact: the plane is cut into vertical slabs at every box edge; in each slab the covered heights are
    merged intervals. With one box each it equals :func:`vcot.grounding.boxes.iou` (same epsilon).

    >>> round(union_iou([(0, 0, 10, 10), (10, 0, 20, 10)], [(0, 0, 20, 10)]), 4)
    1.0
    """
    if not predicted or not truth:
        return 0.0
    edges = sorted({x for box in (*predicted, *truth) for x in (box[0], box[2])})
    area_p = area_t = inter = 0.0
    for left, right in zip(edges, edges[1:]):
        p = _merged((b[1], b[3]) for b in predicted if b[0] <= left and b[2] >= right)
        t = _merged((b[1], b[3]) for b in truth if b[0] <= left and b[2] >= right)
        width = right - left
        area_p += width * sum(high - low for low, high in p)
        area_t += width * sum(high - low for low, high in t)
        inter += width * _overlap(p, t)
    return inter / (area_p + area_t - inter + IOU_EPS)


def first_box_iou(predicted: Boxes, truth: Boxes) -> float:
    """The best IoU of the first predicted box with a ground-truth box (0 without a prediction).

    >>> first_box_iou([(0, 0, 10, 10), (50, 50, 60, 60)], [(50, 50, 60, 60)]), first_box_iou([], [(0, 0, 1, 1)])
    (0.0, 0.0)
    """
    return _best(predicted[0], truth) if predicted else 0.0


def consistency_case(answer_correct: bool, grounded: bool) -> str:
    """MM-GCoT's table cell: CR, CM, WR or WW.

    >>> consistency_case(True, False), consistency_case(False, True)
    ('CM', 'WR')
    """
    return ("C" if answer_correct else "W") + ("R" if grounded else ("M" if answer_correct else "W"))


def field_scores(predicted: Boxes, truth: Boxes, answer_correct: bool) -> dict[str, Any]:
    """The per-sample field metrics (keys of a predictions row); ``None`` values for a sample without ground truth.

    >>> field_scores([(0, 0, 10, 10)], [(0, 0, 10, 10)], False)["consistency_case"]
    'WR'
    """
    if not truth:
        keys = ("truth_mean_iou", "dual_iou", "union_iou", "first_box_iou", "grounding_correct", "consistency_case")
        return dict.fromkeys(keys)
    recall = truth_mean_iou(predicted, truth)
    grounded = recall > GROUNDED_IOU
    return {
        "truth_mean_iou": recall,
        "dual_iou": dual_iou(predicted, truth),
        "union_iou": union_iou(predicted, truth),
        "first_box_iou": first_box_iou(predicted, truth),
        "grounding_correct": grounded,
        "consistency_case": consistency_case(answer_correct, grounded),
    }


def summarize_field(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The field metrics of a set of predictions rows (those with ground truth; see the module docstring).

    >>> rows = [{"truth_mean_iou": 1.0, "dual_iou": 1.0, "union_iou": 1.0, "first_box_iou": 1.0,
    ...          "consistency_case": "CR"}, {"truth_mean_iou": 0.0, "dual_iou": 0.0, "union_iou": 0.0,
    ...          "first_box_iou": 0.0, "consistency_case": "CM"}, {"truth_mean_iou": None}]
    >>> m = summarize_field(rows)
    >>> m["truth_mean_iou"], m["first_box_acc_at_50"], m["consistency"], m["consistency_counts"]["CM"]
    (0.5, 0.5, 0.5, 1)
    """
    grounded = [row for row in rows if row.get("truth_mean_iou") is not None]
    counts = Counter(row["consistency_case"] for row in grounded)
    decided = counts["CR"] + counts["CM"] + counts["WR"]
    if not grounded:  # a text-only subset: nothing measured (0.0 would read as a model that fails to ground)
        return {"truth_mean_iou": None, "dual_iou": None, "union_iou": None, "first_box_acc_at_50": None,
                "first_box_mean_iou": None, "consistency": None,
                "consistency_counts": {case: 0 for case in CONSISTENCY_CASES}, "box_missing_or_invalid": None}
    return {
        "truth_mean_iou": _mean([row["truth_mean_iou"] for row in grounded]),
        "dual_iou": _mean([row["dual_iou"] for row in grounded]),
        "union_iou": _mean([row["union_iou"] for row in grounded]),
        "first_box_acc_at_50": _mean([float(row["first_box_iou"] > GROUNDED_IOU) for row in grounded]),
        "first_box_mean_iou": _mean([row["first_box_iou"] for row in grounded]),
        "consistency": counts["CR"] / decided if decided else 0.0,
        "consistency_counts": {case: counts[case] for case in CONSISTENCY_CASES},
        "box_missing_or_invalid": _mean([float(not row.get("boxes") or bool(row.get("invalid_boxes")))
                                         for row in grounded]),  # fmt: skip
        **best_of_two(grounded),
    }


def best_of_two(grounded: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The first box's Acc@0.5 read once (the model's frame) and read both ways keeping the better reading, and the
    difference: empty unless the rows were scored with ``best_of_two``.

    >>> best_of_two([{"first_box_iou": 0.1, "other_frame_first_box_iou": 0.9}, {"first_box_iou": 0.8,
    ...              "other_frame_first_box_iou": 0.0}])
    {'single_reading_acc_at_50': 0.5, 'best_of_two_acc_at_50': 1.0, 'best_of_two_inflation': 0.5}
    """
    read = [row for row in grounded if row.get("other_frame_first_box_iou") is not None]
    if not read:
        return {}
    single = _mean([float(row["first_box_iou"] > GROUNDED_IOU) for row in read])
    both = [max(row["first_box_iou"], row["other_frame_first_box_iou"]) for row in read]
    better = _mean([float(value > GROUNDED_IOU) for value in both])
    return {"single_reading_acc_at_50": single, "best_of_two_acc_at_50": better, "best_of_two_inflation": better - single}


def add_field_metrics(metrics: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
    """Add the field metrics to ``metrics["overall"]`` and to each ``metrics["subsets"][name]``."""
    metrics["overall"].update(summarize_field(rows))
    for name, values in metrics["subsets"].items():
        values.update(summarize_field(row for row in rows if row["subset"] == name))
