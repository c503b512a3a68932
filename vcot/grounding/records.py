"""The canonical grounded record: what convert and distill write, and tokenize and evaluate read.

The schema is documented in ``docs/records.md``. Helpers here are pure and shared by every stage; the
``rejected/`` line (:class:`Rejection`) is the one both record-producing stages (convert, distill) write, and
:func:`merge_counts` the one way both add up their shards' quality reports.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vcot.grounding.boxes import ParseResult, format_box, parse_grounded, validate_box

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


def box_tags_match_objects(rationale: str, objects: list[dict[str, Any]]) -> bool:
    """Whether every ``<box>`` in ``rationale`` is one of the (valid) object boxes exactly as the house format prints it.

    A shortcut for :func:`grounding_problem`, exact and ~5x cheaper than parsing: when it holds, the parse
    finds only those valid boxes, at least one. It is how converted records look; anything else (other
    spacing, other boxes) goes to the full parse.

    >>> box_tags_match_objects("<ref>a</ref><box>[1, 2, 3, 4]</box>", [{"box": [1, 2, 3, 4]}])
    True
    >>> box_tags_match_objects("<box>[1, 2, 3, 4]</box><box>[9, 9, 9]</box>", [{"box": [1, 2, 3, 4]}])
    False
    """
    tags = set()
    for obj in objects:
        box = obj["box"]
        if not all(type(value) is int for value in box):  # 10.7 prints as 10: only integer boxes print exactly
            return False
        tags.add(f"<box>{format_box(box)}</box>")
    boxes = rationale.count("<box>")
    return boxes > 0 and sum(rationale.count(tag) for tag in tags) == boxes


def objects_problem(objects: list[Any]) -> str | None:
    """``no_objects``, ``invalid_object_box`` (an object without a valid house box), or ``None``.

    >>> objects_problem([{"ref": "cat", "box": [1, 2, 3, 4]}]), objects_problem([{"box": [5, 2, 3, 4]}])
    (None, 'invalid_object_box')
    """
    if not objects:
        return "no_objects"
    for obj in objects:
        box = obj.get("box") if isinstance(obj, dict) else None
        if not isinstance(box, list) or validate_box(box) is not None:
            return "invalid_object_box"
    return None


_LETTER = re.compile(r"[A-Za-z]")


def question_mentions(question: str) -> ParseResult:
    """The house mentions a record's question names, read as every stage reads boxes (:func:`parse_grounded`),
    but for a template the question quotes (``<box>[x1, y1, x2, y2]</box>``: letters in the box), which is text.

    >>> found = question_mentions("<box>[1, 2, 3, 4]</box>, <box>[5, 5, 1, 1]</box>, <box>[x1, y1, x2, y2]</box>")
    >>> [m.box for m in found.boxes], [m.raw for m in found.invalid]
    ([(1, 2, 3, 4)], ['[5, 5, 1, 1]'])
    """
    if "<box>" not in question:
        return ParseResult([], [])
    parsed = parse_grounded(question)

    def quoted(span: tuple[int, int]) -> bool:
        return bool(_LETTER.search(question[span[0] : span[1]].rsplit("<box>", 1)[-1].removesuffix("</box>")))

    return ParseResult([m for m in parsed.boxes if not quoted(m.span)],
                       [m for m in parsed.invalid if not quoted(m.span)])


def question_boxes(question: str) -> set[tuple[int, int, int, int]]:
    """The valid house boxes a question names: regions it gives, not objects to find.

    >>> question_boxes("What is left of <box>[500, 200, 800, 900]</box>?")
    {(500, 200, 800, 900)}
    """
    return {found.box for found in question_mentions(question).boxes}


def question_problem(record: dict[str, Any]) -> str | None:
    """``question_invalid_box`` when a box the question names is not a valid house box (no model frame could show
    it), else ``None``.

    >>> question_problem({"question": "What is in <box>[9, 9, 1, 1]</box>?"}), question_problem({"question": "Q?"})
    ('question_invalid_box', None)
    """
    return "question_invalid_box" if question_mentions(str(record.get("question") or "")).invalid else None


def record_problem(record: dict[str, Any]) -> str | None:
    """What no rationale can fix in a record (``missing_<field>``, ``question_invalid_box``), or ``None``: a record
    still to distill needs only this much.

    >>> record_problem({"question": "Q?"})
    'missing_id'
    """
    for name in REQUIRED_FIELDS:
        if record.get(name) in (None, ""):
            return f"missing_{name}"
    return question_problem(record)


def grounding_problem(record: dict[str, Any]) -> str | None:
    """Why a record cannot be used as a *grounded* training example, or ``None`` if it can.

    Reason codes: ``missing_<field>``, ``question_invalid_box`` (:func:`record_problem`), ``no_objects``,
    ``invalid_object_box``, ``no_rationale``, ``rationale_without_box``, ``rationale_invalid_box``.
    """
    problem = record_problem(record)
    if problem:
        return problem
    objects = record.get("objects") or []
    problem = objects_problem(objects)
    if problem:
        return problem
    rationale = record.get("rationale") or ""
    if not isinstance(rationale, str) or not rationale.strip():
        return "no_rationale"
    if box_tags_match_objects(rationale, objects):
        return None
    parsed = parse_grounded(rationale)
    if parsed.invalid:
        return "rationale_invalid_box"
    if not parsed.boxes:
        return "rationale_without_box"
    return None


RAW_LIMIT = 2000
"""How much of a bad input item is kept in ``rejected/`` (enough to debug, never a whole document)."""


@dataclass
class Rejection:
    """An input item that did not become a record, with a reason code: one line of ``rejected/``
    (``docs/records.md``; reason codes in ``docs/convert.md`` and ``docs/distill.md``)."""

    reason: str
    detail: str
    source_index: int
    id: str | None = None
    subset: str = "unknown"
    raw: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "detail": self.detail,
            "id": self.id,
            "subset": self.subset,
            "source_index": self.source_index,
            "raw": truncate_raw(self.raw),
            **self.extra,
        }


def truncate_raw(raw: Any) -> Any:
    """The input item as stored in ``rejected/``: JSON-safe and at most ``RAW_LIMIT`` characters.

    >>> truncate_raw("x" * 3000)[-3:]
    '...'
    >>> truncate_raw({"a": 1}), truncate_raw({"image": {"bytes": b"PNG"}})
    ({'a': 1}, {'image': {'bytes': "b'PNG'"}})
    """
    if raw is None or isinstance(raw, (int, float, bool)):
        return raw
    native = True
    try:
        text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)
    except (TypeError, ValueError):  # bytes (a Parquet row's embedded image), sets...: written as their str()
        native = False
        text = json.dumps(raw, ensure_ascii=False, default=str)
    if len(text) > RAW_LIMIT:
        return text[:RAW_LIMIT] + "..."
    return raw if native else json.loads(text)


def top_reasons(counts: Mapping[str, int], n: int = 3) -> str:
    """The ``n`` most frequent reasons of a rejection or skip count, as one phrase for a report or an error line.

    >>> top_reasons({"no_box": 2, "bad_image": 5, "missing_answer": 2, "too_long": 1})
    'bad_image 5, missing_answer 2, no_box 2'
    """
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return ", ".join(f"{reason} {count}" for reason, count in ranked)


def merge_counts(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Quality reports of several shards (or blocks) as one: the integers at the same place added up, nested
    mappings merged, keys sorted. Anything else (a name, a time, a list) is left out: the caller says how it adds up.

    >>> merge_counts([{"counts": {"input": 2, "distilled": 2}, "model": "m"}, {"counts": {"input": 1, "rejected": 1}}])
    {'counts': {'distilled': 2, 'input': 3, 'rejected': 1}}
    """
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, Mapping):
                merged[key] = merge_counts([merged.get(key, {}), value])
            elif type(value) is int:  # not a bool
                merged[key] = merged.get(key, 0) + value
    return dict(sorted(merged.items()))
