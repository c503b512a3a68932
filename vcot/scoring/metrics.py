"""Grounding and answer metrics: of one sample (``score_sample``) and of a set (``summarize``). Pure.

The seed's three numbers, kept comparable:

- **box detection rate**: share of responses with at least one valid box;
- **mean IoU**: mean, over every predicted box, of its IoU with its best-matching ground-truth box;
- **IoU success rate**: share of predicted boxes whose best match has IoU > 0.5.

Both IoU numbers pool predicted boxes over samples and are 0 when no box was predicted. A model can
raise them by predicting one easy box per sample, or (for success rate) by repeating a good box, so we
add the field's stricter number:

- **Acc@0.5 / Acc@0.75**: per sample, the boxes paired one-to-one (``vcot.grounding.boxes.match_one_to_one``)
  with IoU >= t, divided by ``max(#predicted, #ground truth)``; averaged over samples. Extra boxes
  lower it: flooding does not pay.

And the question "does the model look at the image?", answered against what no model can beat without it:

- **first-object IoU / first-object Acc@0.5**: per sample, the IoU of the first valid predicted box with the
  record's *first object* (0 when no box was predicted), averaged over samples; the share of samples where it is
  > 0.5. (``vcot.scoring.field_metrics``'s ``first_box_*`` score the first box against its best-matching object instead:
  the same with one object per record);
- **constant-box IoU**: the same first-object IoU for the best single box answered for every sample of the set
  (:func:`best_constant_box`, with the box itself as ``constant_box``): the best any model that ignores the
  image can reach. A first-object IoU well above it (twice, say) shows a model that points.

Grounding metrics count only samples that have ground-truth boxes; answer accuracy counts every sample.
Invalid boxes (out of range, inverted, ...) are never repaired: they are counted as parse failures,
by reason, and are not predicted boxes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from vcot.grounding.boxes import IOU_EPS, NORM, IntBox, best_match, iou, match_one_to_one

SUCCESS_IOU = 0.5
ACC_THRESHOLDS = (0.5, 0.75)
RATE_METRICS = (
    "box_detection_rate",
    "mean_iou",
    "iou_success_rate",
    "acc_at_50",
    "acc_at_75",
    "first_object_iou",
    "first_object_acc_at_50",
    "answer_accuracy",
)
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
    first_truth: list[float] | None = None  # the record's first object, when it has one
    first_iou: float | None = None  # the first predicted box against it (0 without a prediction)

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
    >>> score_sample([(0, 0, 10, 10)], []).best_ious
    []
    """
    best = [best_match(box, truth)[1] for box in predicted] if truth else []  # no truth: nothing to be near
    pairs = match_one_to_one(predicted, truth)
    return SampleScore(
        num_predicted=len(predicted),
        num_truth=len(truth),
        best_ious=best,
        matched_ious=[value for _, _, value in pairs],
        invalid_reasons=list(invalid_reasons),
        answer_correct=answer_correct,
        first_truth=list(truth[0]) if truth else None,
        first_iou=(iou(predicted[0], truth[0]) if predicted else 0.0) if truth else None,
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
    metrics.update(first_object_metrics(grounded))
    if not grounded:  # nothing to ground (a text-only subset): not measured, which 0.0 would read as a failure
        metrics.update({name: None for name in GROUNDING_METRICS})
    return metrics


GROUNDING_METRICS = ("box_detection_rate", "mean_iou", "iou_success_rate",
                     *(f"acc_at_{round(t * 100)}" for t in ACC_THRESHOLDS),
                     "first_object_iou", "first_object_acc_at_50", "constant_box_iou")  # fmt: skip
"""What :func:`summarize` measures on samples with ground-truth boxes only: ``None`` for a set without any."""


def first_object_metrics(grounded: Sequence[SampleScore]) -> dict[str, Any]:
    """First-object IoU and Acc@0.5 of samples with truths, beside the best constant box's IoU on the same truths.

    >>> m = first_object_metrics([score_sample([(0, 0, 500, 500)], [(0, 0, 500, 500)]), score_sample([], [(500, 500, 1000, 1000)])])
    >>> round(m["first_object_iou"], 3), m["first_object_acc_at_50"], round(m["constant_box_iou"], 3)
    (0.5, 0.5, 0.5)
    """
    truths = [s.first_truth for s in grounded if s.first_truth is not None]
    ious = [s.first_iou or 0.0 for s in grounded if s.first_truth is not None]
    box, constant = best_constant_box(truths)
    return {
        "first_object_iou": _rate(sum(ious), len(ious)),
        "first_object_acc_at_50": _rate(sum(value > SUCCESS_IOU for value in ious), len(ious)),
        "constant_box_iou": constant,
        "constant_box": list(box) if box else None,
    }


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


# --------------------------------------------------------------------------------------------------
# The best constant box: what a model that ignores the image can reach
# --------------------------------------------------------------------------------------------------

CONSTANT_BOX_SAMPLE = 2000
"""The search for the best constant box looks at this many truths at most (a deterministic sample)."""
_QUANTILES = 33  # candidate values per axis for the joint (x1, x2) / (y1, y2) moves
_STARTS = 8  # truth boxes the search starts from, besides the coordinate-wise median


def _mean_ious(candidates: Any, truths: Any) -> Any:
    """Mean IoU of each candidate box (rows of ``candidates``) with every truth box (rows of ``truths``)."""
    import numpy as np

    c, t = candidates[:, None, :], truths[None, :, :]
    inter = np.clip(np.minimum(c[..., 2], t[..., 2]) - np.maximum(c[..., 0], t[..., 0]), 0, None) * np.clip(
        np.minimum(c[..., 3], t[..., 3]) - np.maximum(c[..., 1], t[..., 1]), 0, None
    )
    area_c = np.clip(c[..., 2] - c[..., 0], 0, None) * np.clip(c[..., 3] - c[..., 1], 0, None)
    area_t = (t[..., 2] - t[..., 0]) * (t[..., 3] - t[..., 1])
    return (inter / (area_c + area_t - inter + IOU_EPS)).mean(axis=1)


def _climb(box: IntBox, truths: Any, pair_moves: list[tuple[int, Any]], upper: int) -> tuple[IntBox, float]:
    """Hill-climb from ``box``: joint moves of (x1, x2) and (y1, y2) over candidate pairs, then each coordinate
    over every integer in ``[0, upper]``, until nothing improves the mean IoU."""
    import numpy as np

    current = np.asarray(box, dtype=float)
    best = float(_mean_ious(current[None], truths)[0])
    values = np.arange(upper + 1, dtype=float)
    while True:
        before = best
        moves = [(axis, pairs) for axis, pairs in pair_moves]
        moves += [(j, values[values < current[j + 2]] if j < 2 else values[values > current[j - 2]]) for j in range(4)]
        for axis, options in moves:
            candidates = np.repeat(current[None], len(options), axis=0)
            if options.ndim == 2:  # a pair move: (x1, x2) or (y1, y2)
                candidates[:, axis], candidates[:, axis + 2] = options[:, 0], options[:, 1]
            else:
                candidates[:, axis] = options
            scores = _mean_ious(candidates, truths)
            index = int(np.argmax(scores))
            if scores[index] > best + 1e-12:
                current, best = candidates[index], float(scores[index])
        if best <= before + 1e-12:
            return tuple(int(v) for v in current), best  # type: ignore[return-value]


def best_constant_box(truths: Sequence[Sequence[float]], *, upper: int = NORM) -> tuple[IntBox | None, float]:
    """The one integer box in ``[0, upper]`` that maximizes the mean IoU with ``truths``, and that mean.

    Every model that ignores the image answers each sample with the same box, so this is the bar a model's
    first-object IoU must clear to show it looks at the image. Mean IoU over a box's four integers has local
    optima, so the search starts from the coordinate-wise median box and a spread of truth boxes, and climbs
    with joint moves of a side pair over the truths' coordinate quantiles and single-coordinate moves over
    every integer. It equals a brute force over all boxes on small grids (tests) and comes within 0.001 of
    it on sets of 40-80 boxes; above :data:`CONSTANT_BOX_SAMPLE` truths it searches a deterministic sample and
    reports the mean over all of them. ``(None, 0.0)`` without truths. Needs numpy (installed with torch).

    >>> box, value = best_constant_box([(0, 0, 10, 10), (0, 0, 10, 10), (50, 50, 60, 60)], upper=100)
    >>> box, round(value, 4)
    ((0, 0, 10, 10), 0.6667)
    """
    import numpy as np

    if not truths:
        return None, 0.0
    everything = np.asarray(truths, dtype=float).reshape(-1, 4)
    step = max(1, len(everything) // CONSTANT_BOX_SAMPLE)
    sample = everything[::step]

    def pairs(columns: tuple[int, int]) -> Any:
        values = np.concatenate([sample[:, columns[0]], sample[:, columns[1]]])
        grid = np.unique(np.round(np.concatenate([np.quantile(values, np.linspace(0, 1, _QUANTILES)), [0, upper]])))
        low, high = np.triu_indices(len(grid), 1)
        return np.stack([grid[low], grid[high]], axis=1)

    pair_moves = [(0, pairs((0, 2))), (1, pairs((1, 3)))]
    order = np.lexsort((sample[:, 1] + sample[:, 3], sample[:, 0] + sample[:, 2]))  # by centre: starts spread out
    picks = order[np.linspace(0, len(sample) - 1, min(_STARTS, len(sample))).astype(int)]
    starts = [tuple(int(v) for v in np.median(sample, axis=0))] + [tuple(int(v) for v in sample[i]) for i in picks]
    climbed = [_climb(s, sample, pair_moves, upper) for s in starts if s[0] < s[2] and s[1] < s[3]]  # type: ignore[arg-type]
    box = max(climbed, key=lambda found: found[1])[0]
    return box, sum(iou(box, truth) for truth in everything.tolist()) / len(everything)
