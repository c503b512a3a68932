"""Join responses to committed records by id and score each one: the rows of the predictions output."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vcot import manifest, storage
from vcot.boxes import validate_box
from vcot.errors import VcotError
from vcot.answers import extract_answer, is_correct
from vcot.evaluate.field import field_scores
from vcot.evaluate.metrics import SampleScore, score_sample
from vcot.model_format import ModelFormat
from vcot.log import get_logger

log = get_logger(__name__)


def load_records(
    data: str, split: str = "val", max_samples: int | None = None, max_per_subset: int | None = None
) -> list[dict[str, Any]]:
    """The committed records of ``data`` under ``<split>/`` (``all``: train/ then val/) in manifest order: the first
    ``max_per_subset`` of each subset, at most ``max_samples`` in all."""
    prefixes = ("train/", "val/") if split == "all" else (f"{split}/",)
    if not any(manifest.committed_files(data, prefix, expect_stage=manifest.RECORD_STAGES) for prefix in prefixes):
        where = " or ".join(prefixes)
        raise VcotError(f"{data} lists no files under {where}: choose another --split or check the data stage")
    records: Iterable[dict[str, Any]] = manifest.committed_records(data, prefixes)
    if max_per_subset is not None:
        records = first_per_subset(records, max_per_subset)
    return list(itertools.islice(records, max_samples))


def first_per_subset(records: Iterable[dict[str, Any]], limit: int) -> Iterator[dict[str, Any]]:
    """The first ``limit`` records of each subset, in order.

    >>> [r["id"] for r in first_per_subset([{"id": i, "subset": "ab"[i % 2]} for i in range(6)], 2)]
    [0, 1, 2, 3]
    """
    seen: Counter[str] = Counter()
    for record in records:
        subset = str(record.get("subset", ""))
        if seen[subset] < limit:
            seen[subset] += 1
            yield record


@dataclass
class LoadedPredictions:
    """Responses by id, and what was skipped while reading them (reason code -> count)."""

    by_id: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def load_predictions(uri: str) -> LoadedPredictions:
    """Read a predictions JSONL(.gz); malformed lines, missing fields and repeated ids are counted and skipped."""
    loaded = LoadedPredictions()
    with storage.open_uri(uri, "rb", compression="infer_from_extension") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError)
                loaded.skip("malformed_json")
                continue
            if not isinstance(item, dict) or "id" not in item or not isinstance(item.get("prediction"), str):
                loaded.skip("missing_id_or_prediction")
                continue
            key = str(item["id"])
            if key in loaded.by_id:
                loaded.skip("duplicate_id")  # the first one counts: never pick the better of two
                continue
            loaded.by_id[key] = item["prediction"]
    if loaded.skipped:
        log.warning("prediction_lines_skipped", uri=uri, **loaded.skipped)
    return loaded


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


def score_response(record: dict[str, Any], response: str, fmt: ModelFormat) -> tuple[dict[str, Any], SampleScore]:
    """One output row (raw text, parsed boxes in house coordinates, per-box IoU, answer) and its score."""
    parsed = fmt.read(response, int(record.get("width") or 0), int(record.get("height") or 0))
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
    return row, score


def join_and_score(
    records: Iterable[dict[str, Any]], responses: dict[str, str], fmt: ModelFormat
) -> tuple[list[dict[str, Any]], list[SampleScore], dict[str, int]]:
    """Score every record that has a response; count records without one and responses without a record."""
    rows: list[dict[str, Any]] = []
    scores: list[SampleScore] = []
    seen: set[str] = set()
    missing = 0
    for record in records:
        key = str(record["id"])
        if key not in responses:
            missing += 1
            continue
        seen.add(key)
        row, score = score_response(record, responses[key], fmt)
        rows.append(row)
        scores.append(score)
    join = {"scored": len(rows), "records_without_prediction": missing, "predictions_without_record": len(set(responses) - seen)}
    if missing or join["predictions_without_record"]:
        log.warning("partial_join", **join)
    if not rows:
        raise VcotError(
            "no prediction matches a record id: check that --predictions and --data/--split describe the same samples"
        )
    return rows, scores, join
