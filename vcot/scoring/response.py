"""One response scored against its record: the boxes read back through the model format, IoUs, the answer.

Shared by the evaluate stage (every sample of a run) and train's generation evaluation (a small val slice
between steps, ``vcot.train.generation_eval``), so a checkpoint is chosen by the numbers evaluate reports.
"""

from __future__ import annotations

from typing import Any

from vcot.grounding.answers import extract_answer, is_correct
from vcot.grounding.boxes import ParseResult, validate_box
from vcot.grounding.model_format import ModelFormat
from vcot.scoring.field_metrics import field_scores, first_box_iou
from vcot.scoring.metrics import SampleScore, score_sample


def truth_boxes(record: dict[str, Any]) -> list[tuple[int, int, int, int]]:
    """The record's ground-truth boxes; an object without a usable box is left out (convert never writes one).

    >>> truth_boxes({"objects": [{"box": [1, 2, 3, 4]}, {"box": [5, 5, 1, 1]}, {"ref": "no box"}]})
    [(1, 2, 3, 4)]
    """
    boxes = []
    for obj in record.get("objects") or []:
        box = obj.get("box") if isinstance(obj, dict) else None
        numeric = isinstance(box, list) and all(isinstance(v, (int, float)) for v in box)
        if numeric and validate_box(box) is None:
            boxes.append(tuple(int(v) for v in box))
    return boxes  # type: ignore[return-value]


def read_boxes(fmt: ModelFormat, text: str, record: dict[str, Any]) -> ParseResult:
    """``text``'s boxes in house coordinates, read in ``fmt`` at the record's image size (0 where it has none, which
    only ``norm1000`` can read; the other frames raise ``ValueError``).

    >>> read_boxes(ModelFormat.for_family(), "<box>[1, 2, 3, 4]</box>", {}).boxes[0].box
    (1, 2, 3, 4)
    """
    return fmt.read(text, int(record.get("width") or 0), int(record.get("height") or 0))


def score_response(
    record: dict[str, Any], response: str, fmt: ModelFormat, *, best_of_two: bool = False
) -> tuple[dict[str, Any], SampleScore]:
    """One output row (raw text, parsed boxes in house coordinates, per-box IoU, answer) and its score.

    ``best_of_two``: the row also holds ``other_frame_first_box_iou``, the first box read in the other frame
    (:meth:`ModelFormat.other_frame`), so that the best-of-two reading some harnesses score can be shown beside ours.
    """
    parsed = read_boxes(fmt, response, record)
    truth = truth_boxes(record)
    correct = is_correct(response, record)
    score = score_sample(
        [b.box for b in parsed.boxes],
        truth,
        invalid_reasons=[i.reason for i in parsed.invalid],
        answer_correct=correct,
    )
    row = {
        "id": record["id"],
        "subset": record.get("subset", ""),
        "prediction": response,
        "boxes": [{"ref": b.ref, "box": list(b.box)} for b in parsed.boxes],
        "invalid_boxes": [{"ref": i.ref, "raw": i.raw, "reason": i.reason} for i in parsed.invalid],
        "truth_boxes": [list(box) for box in truth],
        "best_ious": score.best_ious,
        "matched_ious": score.matched_ious,
        "mean_iou": sum(score.best_ious) / len(score.best_ious) if score.best_ious else None,
        "answer": record.get("answer"),
        "predicted_answer": extract_answer(response),
        "answer_correct": correct,
        **field_scores([b.box for b in parsed.boxes], truth, correct),
    }
    if "options_order" in record:  # --shuffle-options: the order the options were shown in
        row["options_order"] = record["options_order"]
    if best_of_two and truth:
        try:
            other = read_boxes(fmt.other_frame(), response, record)
        except ValueError:  # the other frame resizes the image, and refuses an aspect over 200:1: no second reading
            return row, score
        row["other_frame_first_box_iou"] = first_box_iou([b.box for b in other.boxes], truth)
    return row, score
