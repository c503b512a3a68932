"""The canonical grounded record: what convert and distill write, and tokenize and evaluate read.

The schema is documented in ``docs/records.md``. Helpers here are pure and shared by every stage.
"""

from __future__ import annotations

import hashlib
from typing import Any, TypedDict

from vcot.boxes import parse_grounded, validate_box


class GroundedObject(TypedDict):
    ref: str
    box: list[int]  # [x1, y1, x2, y2], integers 0-1000 of the original image


class Record(TypedDict, total=False):
    id: str
    source: str
    subset: str
    split: str
    image: str
    width: int
    height: int
    question: str
    answer: str
    choices: list[str] | None
    answer_index: int | None
    objects: list[GroundedObject]
    rationale: str
    needs_distillation: bool
    provenance: dict[str, Any]


REQUIRED_FIELDS = ("id", "source", "subset", "split", "image", "width", "height", "question", "answer")


def split_for(record_id: str, val_fraction: float) -> str:
    """Deterministic train/val assignment from a hash of the id: the same on every rerun and shard count.

    >>> split_for("viscot:gqa:7", 0.0)
    'train'
    >>> split_for("viscot:gqa:7", 1.0)
    'val'
    """
    bucket = int.from_bytes(hashlib.sha256(record_id.encode("utf-8")).digest()[:8], "big") / 2**64
    return "val" if bucket < val_fraction else "train"


def grounding_problem(record: dict[str, Any]) -> str | None:
    """Why a record cannot be used as a *grounded* training example, or ``None`` if it can.

    Reason codes: ``missing_<field>``, ``no_objects``, ``invalid_object_box``, ``no_rationale``,
    ``rationale_without_box``, ``rationale_invalid_box``.
    """
    for field in REQUIRED_FIELDS:
        if record.get(field) in (None, ""):
            return f"missing_{field}"
    objects = record.get("objects") or []
    if not objects:
        return "no_objects"
    for obj in objects:
        box = obj.get("box") if isinstance(obj, dict) else None
        if not isinstance(box, list) or validate_box(box) is not None:
            return "invalid_object_box"
    rationale = record.get("rationale") or ""
    if not rationale.strip():
        return "no_rationale"
    parsed = parse_grounded(rationale)
    if parsed.invalid:
        return "rationale_invalid_box"
    if not parsed.boxes:
        return "rationale_without_box"
    return None
