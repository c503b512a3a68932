"""Is a teacher answer a usable grounded rationale? Pure checks with reason codes, plus the accepted record.

Reason codes (see ``prompts.PROBLEM_HINTS`` for what the corrective message says about each):
``empty_answer``, ``invalid_box``, ``no_boxes``, ``box_without_ref``, ``malformed_tag``, ``no_final_answer``,
``wrong_answer``.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

from vcot.boxes import parse_grounded

_FINAL_ANSWER = re.compile(r"^\s*\**\s*answer\s*\**\s*:\s*(.+?)\s*$", re.IGNORECASE)
_CHOICE_LETTER = re.compile(r"^\(?([a-z])\)?[.:)]?(?:\s+(.*))?$", re.IGNORECASE)
_ARTICLES = {"a", "an", "the"}


@dataclass(frozen=True)
class Verdict:
    """``problem`` is ``None`` for a valid answer; ``final`` is the answer the rationale gives."""

    problem: str | None
    detail: str = ""
    final: str = ""


def normalize_answer(text: str) -> str:
    """Lowercase, with punctuation, articles and spaces removed.

    >>> normalize_answer("  The Red-Car. ")
    'redcar'
    """
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return "".join(word for word in text.split() if word not in _ARTICLES)


def _words(text: str) -> list[str]:
    text = text.lower().translate(str.maketrans(string.punctuation, " " * len(string.punctuation)))
    return [word for word in text.split() if word not in _ARTICLES]


def answer_matches(final: str, record: dict[str, Any]) -> bool:
    """Whether ``final`` gives the record's known answer.

    Accepted: the same text after normalization; for multiple choice the option's letter or text; or a short
    answer that contains the truth as whole words (``"it is red"`` for ``red``, at most 3 extra words).

    >>> answer_matches("(B) blue", {"answer": "blue", "choices": ["red", "blue"], "answer_index": 1})
    True
    >>> answer_matches("It is red.", {"answer": "red"})
    True
    >>> answer_matches("not red", {"answer": "red"})
    False
    """
    truth = str(record.get("answer") or "")
    if not truth:
        return True  # nothing known to compare against
    if normalize_answer(final) == normalize_answer(truth):
        return True
    choices = record.get("choices") or []
    index = record.get("answer_index")
    letter = _CHOICE_LETTER.match(final.strip())
    if choices and isinstance(index, int) and letter:
        position = ord(letter.group(1).lower()) - ord("a")
        rest = letter.group(2)
        if position == index and (rest is None or normalize_answer(rest) == normalize_answer(choices[index])):
            return True
    final_words, truth_words = _words(final), _words(truth)
    if not truth_words or "not" in final_words or "no" in final_words and "no" not in truth_words:
        return False
    if len(final_words) > len(truth_words) + 3:
        return False
    size = len(truth_words)
    return any(final_words[i : i + size] == truth_words for i in range(len(final_words) - size + 1))


def check_answer(text: str, record: dict[str, Any]) -> Verdict:
    """Validate one teacher answer against the house format and the record's ground truth.

    >>> check_answer("The <ref>sky</ref><box>[0, 0, 1000, 400]</box> is blue.\\nAnswer: blue", {"answer": "blue"})
    Verdict(problem=None, detail='', final='blue')
    >>> check_answer("The sky is blue.\\nAnswer: blue", {"answer": "blue"}).problem
    'no_boxes'
    """
    text = (text or "").strip()
    if not text:
        return Verdict("empty_answer", "the teacher returned no text")
    parsed = parse_grounded(text)
    if parsed.invalid:
        bad = parsed.invalid[0]
        return Verdict("invalid_box", f"{bad.reason}: {bad.raw!r}")
    if not parsed.boxes:
        return Verdict("no_boxes", "no <ref>..</ref><box>[..]</box> in the answer")
    for found in parsed.boxes:
        if not found.ref:
            return Verdict("box_without_ref", f"box {list(found.box)} has no <ref>")
    tags = {tag: text.count(tag) for tag in ("<ref>", "</ref>", "<box>", "</box>")}
    if len(set(tags.values())) != 1 or tags["<box>"] != len(parsed.boxes):
        return Verdict("malformed_tag", f"tag counts {tags} for {len(parsed.boxes)} grounded objects")
    last_line = text.splitlines()[-1]
    match = _FINAL_ANSWER.match(last_line)
    if not match:
        return Verdict("no_final_answer", f"last line is {last_line[:80]!r}")
    final = match.group(1).strip().strip("*").strip()
    if not answer_matches(final, record):
        return Verdict("wrong_answer", f"answered {final[:80]!r}, expected {str(record.get('answer'))[:80]!r}", final)
    return Verdict(None, "", final)


def accepted_record(record: dict[str, Any], text: str, *, distill_info: dict[str, Any]) -> dict[str, Any]:
    """The canonical grounded record for a valid answer.

    The last line is rewritten to the record's own answer (``Answer: <answer>``) so every training target ends
    the same way; records without ground-truth objects take the teacher's boxes as their objects.
    """
    lines = text.strip().splitlines()
    truth = str(record.get("answer") or "")
    if truth:
        lines[-1] = f"Answer: {truth}"
    rationale = "\n".join(lines)
    out = dict(record)
    out["rationale"] = rationale
    out["needs_distillation"] = False
    objects = record.get("objects") or []
    objects_from = "source"
    if not objects:
        seen: set[tuple[str, tuple[int, ...]]] = set()
        objects = []
        for found in parse_grounded(rationale).boxes:
            key = (found.ref or "", found.box)
            if key not in seen:
                seen.add(key)
                objects.append({"ref": found.ref or "", "box": list(found.box)})
        objects_from = "teacher"
    out["objects"] = objects
    provenance = dict(record.get("provenance") or {})
    provenance["distill"] = {**distill_info, "objects_from": objects_from}
    out["provenance"] = provenance
    return out
