"""Grounding and answer metrics: of one sample (``score_sample``) and of a set (``summarize``). Pure.

The seed's three numbers, kept comparable:

- **box detection rate**: share of responses with at least one valid box;
- **mean IoU**: mean, over every predicted box, of its IoU with its best-matching ground-truth box;
- **IoU success rate**: share of predicted boxes whose best match has IoU > 0.5.

Both IoU numbers pool predicted boxes over samples and are 0 when no box was predicted. A model can
raise them by predicting one easy box per sample, or (for success rate) by repeating a good box, so we
add the field's stricter number:

- **Acc@0.5 / Acc@0.75**: per sample, the boxes paired one-to-one (``vcot.boxes.match_one_to_one``)
  with IoU >= t, divided by ``max(#predicted, #ground truth)``; averaged over samples. Extra boxes
  lower it: flooding does not pay.

Grounding metrics count only samples that have ground-truth boxes; answer accuracy counts every sample.
Invalid boxes (out of range, inverted, ...) are never repaired: they are counted as parse failures,
by reason, and are not predicted boxes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from vcot.boxes import best_match, match_one_to_one

SUCCESS_IOU = 0.5
ACC_THRESHOLDS = (0.5, 0.75)
RATE_METRICS = ("box_detection_rate", "mean_iou", "iou_success_rate", "acc_at_50", "acc_at_75", "answer_accuracy")
"""The metrics in [0, 1] where higher is better: the ones a regression check can watch."""


@dataclass(frozen=True)
class SampleScore:
    """What one response scored; enough to recompute every aggregate metric."""

    num_predicted: int
    num_truth: int
    best_ious: list[float]  # per predicted box: IoU with its best-matching ground truth
    matched_ious: list[float]  # per one-to-one pair
    invalid_reasons: list[str] = field(default_factory=list)
    answer_correct: bool = False

    def accuracy_at(self, threshold: float) -> float:
        """This sample's share of boxes paired one-to-one with IoU >= ``threshold``."""
        denominator = max(self.num_predicted, self.num_truth)
        if denominator == 0:
            return 0.0
        return sum(value >= threshold for value in self.matched_ious) / denominator

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_sample(
    predicted: Sequence[Sequence[float]],
    truth: Sequence[Sequence[float]],
    *,
    invalid_reasons: Sequence[str] = (),
    answer_correct: bool = False,
) -> SampleScore:
    """Score one response's valid predicted boxes against the ground truth (same coordinates).

    >>> s = score_sample([(0, 0, 10, 10), (0, 0, 10, 10)], [(0, 0, 10, 10)])
    >>> [round(v, 3) for v in s.best_ious], s.accuracy_at(0.5)
    ([1.0, 1.0], 0.5)
    """
    best = [best_match(box, truth)[1] for box in predicted]
    pairs = match_one_to_one(predicted, truth)
    return SampleScore(
        num_predicted=len(predicted),
        num_truth=len(truth),
        best_ious=best,
        matched_ious=[value for _, _, value in pairs],
        invalid_reasons=list(invalid_reasons),
        answer_correct=answer_correct,
    )


def _rate(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def summarize(scores: Iterable[SampleScore]) -> dict[str, Any]:
    """Aggregate metrics of a set of samples (see the module docstring for definitions).

    >>> m = summarize([score_sample([(0, 0, 10, 10)], [(0, 0, 10, 10)]), score_sample([], [(0, 0, 5, 5)])])
    >>> m["box_detection_rate"], m["iou_success_rate"], m["acc_at_50"]
    (0.5, 1.0, 0.5)
    """
    scores = list(scores)
    grounded = [s for s in scores if s.num_truth > 0]
    ious = [value for s in grounded for value in s.best_ious]
    reasons = Counter(reason for s in scores for reason in s.invalid_reasons)
    metrics: dict[str, Any] = {
        "samples": len(scores),
        "grounded_samples": len(grounded),
        "box_detection_rate": _rate(sum(s.num_predicted > 0 for s in grounded), len(grounded)),
        "predicted_boxes": len(ious),
        "mean_iou": _rate(sum(ious), len(ious)),
        "iou_success_rate": _rate(sum(value > SUCCESS_IOU for value in ious), len(ious)),
        "answer_accuracy": _rate(sum(s.answer_correct for s in scores), len(scores)),
        "invalid_boxes": sum(reasons.values()),
        "samples_with_invalid_boxes": sum(bool(s.invalid_reasons) for s in scores),
        "invalid_reasons": dict(sorted(reasons.items())),
    }
    for threshold in ACC_THRESHOLDS:
        metrics[f"acc_at_{round(threshold * 100)}"] = _rate(sum(s.accuracy_at(threshold) for s in grounded), len(grounded))
    return metrics


def summarize_by_subset(scores: Sequence[SampleScore], subsets: Sequence[str]) -> dict[str, Any]:
    """``{"overall": metrics, "subsets": {subset: metrics}}`` for scores labelled with their subsets."""
    if len(scores) != len(subsets):
        raise ValueError(f"{len(scores)} scores but {len(subsets)} subset labels")
    groups: dict[str, list[SampleScore]] = {}
    for score, subset in zip(scores, subsets):
        groups.setdefault(subset, []).append(score)
    return {
        "overall": summarize(scores),
        "subsets": {name: summarize(group) for name, group in sorted(groups.items())},
    }
