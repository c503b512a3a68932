"""Is a teacher answer a usable grounded rationale? Pure checks with reason codes, plus the accepted record.

Reason codes (see ``prompts.PROBLEM_HINTS`` for what the corrective message says about each):
``empty_answer``, ``invalid_box``, ``no_boxes``, ``box_without_ref``, ``only_question_box`` (a record without
objects whose rationale boxes only the region its question gives), ``malformed_tag``, ``no_final_answer``,
``wrong_answer``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vcot.grounding import answers
from vcot.grounding.boxes import parse_grounded
from vcot.grounding.records import question_boxes

_ANSWER_MARKER = re.compile(r"\banswer\s*\**\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    """``problem`` is ``None`` for a valid answer; ``final`` is the answer the rationale gives."""

    problem: str | None
    detail: str = ""
    final: str = ""


def split_final_answer(text: str) -> tuple[str, str] | None:
    """``(reasoning, final answer)`` from the last ``Answer:`` on the last line, or ``None`` without one.

    The marker may end the reasoning inline (``... it is clearly red. Answer: red``, the form convert writes and
    evaluate reads) or start a line of its own; markdown bold around it is dropped.

    >>> split_final_answer("The <ref>car</ref><box>[1, 2, 3, 4]</box> is clearly red. Answer: red")
    ('The <ref>car</ref><box>[1, 2, 3, 4]</box> is clearly red.', 'red')
    >>> split_final_answer("It is blue.\\n**Answer:** blue")
    ('It is blue.', 'blue')
    >>> split_final_answer("It is blue.") is None
    True
    """
    lines = text.strip().splitlines()
    last_line = lines[-1] if lines else ""
    markers = list(_ANSWER_MARKER.finditer(last_line))
    if not markers:
        return None
    final = last_line[markers[-1].end() :].strip().strip("*").strip()
    if not final:
        return None
    inline = last_line[: markers[-1].start()].rstrip().rstrip("*").rstrip()
    return "\n".join([*lines[:-1], inline] if inline else lines[:-1]), final


def tail(text: str, limit: int = 80) -> str:
    """The end of ``text`` (where a final answer would be), marked when cut.

    >>> tail("x" * 100 + " Answer", limit=12)
    '...xx Answer'
    """
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def answer_matches(final: str, record: dict[str, Any]) -> bool:
    """Whether ``final`` gives the record's known answer, judged by :mod:`vcot.grounding.answers` (as evaluate scores).

    Accepted: what evaluate scores correct (normalized exact match; for multiple choice the option's letter,
    letter and text, or text); or, for an open question, a short answer that contains the truth as whole
    words (``"it is red"`` for ``red``, at most 3 extra words, no negation): the answer line is rewritten
    to the truth afterwards (:func:`accepted_record`).

    >>> answer_matches("(B) blue", {"answer": "blue", "choices": ["red", "blue"], "answer_index": 1})
    True
    >>> answer_matches("It is red.", {"answer": "red"}), answer_matches("2apples", {"answer": "2 apples"})
    (True, False)
    >>> answer_matches("not red", {"answer": "red"})
    False
    """
    truth = str(record.get("answer") or "")
    if not truth:
        return True  # nothing known to compare against
    if answers.answer_matches(final, record):
        return True
    multiple_choice = bool(record.get("choices")) and (
        record.get("answer_index") is not None or answers.right_choice(record) is not None
    )  # as evaluate judges it: by the choice, never a verbose answer that names several
    return not multiple_choice and answers.contains_answer(final, truth)


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
        written = text[found.span[0] : found.span[1]].rsplit("<box>", 1)[-1].removesuffix("</box>")
        if "." in written:  # 0-1 fractions read as 0-1000 are a dot; any decimal is not the frame asked for
            return Verdict("invalid_box", f"box {written} is not four integers 0-1000 (fractions or decimals)")
        if not found.ref:
            return Verdict("box_without_ref", f"box {list(found.box)} has no <ref>")
    asked = question_boxes(str(record.get("question") or ""))
    if asked and not record.get("objects") and all(found.box in asked for found in parsed.boxes):
        return Verdict("only_question_box", "its only boxes are the region the question gives: no object to learn")
    tags = {tag: text.count(tag) for tag in ("<ref>", "</ref>", "<box>", "</box>")}
    if len(set(tags.values())) != 1 or tags["<box>"] != len(parsed.boxes):
        return Verdict("malformed_tag", f"tag counts {tags} for {len(parsed.boxes)} grounded objects")
    split = split_final_answer(text)
    if split is None:
        return Verdict("no_final_answer", f"no 'Answer: ...' at the end; the text ends {tail(text)!r}")
    final = split[1]
    if not answer_matches(final, record):
        return Verdict("wrong_answer", f"answered {final[:80]!r}, expected {str(record.get('answer'))[:80]!r}", final)
    return Verdict(None, "", final)


def accepted_record(record: dict[str, Any], text: str, *, distill_info: dict[str, Any]) -> dict[str, Any]:
    """The canonical grounded record for a valid answer.

    The answer goes on a last line of its own, rewritten to the record's answer (``Answer: <answer>``), so every
    training target ends the same way; records without ground-truth objects take the teacher's boxes as their objects
    (but for a region the question gives, which the teacher may repeat: it is no object to find).
    """
    reasoning, final = split_final_answer(text) or (text.strip(), "")
    truth = str(record.get("answer") or "") or final
    rationale = f"{reasoning}\nAnswer: {truth}" if reasoning else f"Answer: {truth}"
    out = dict(record)
    out["rationale"] = rationale
    out["needs_distillation"] = False
    objects = record.get("objects") or []
    objects_from = "source"
    if not objects:
        seen: set[tuple[str, tuple[int, ...]]] = set()
        objects = []
        asked = question_boxes(str(record.get("question") or ""))
        for found in parse_grounded(rationale).boxes:
            key = (found.ref or "", found.box)
            if key not in seen and found.box not in asked:
                seen.add(key)
                objects.append({"ref": found.ref or "", "box": list(found.box)})
        objects_from = "teacher"
    out["objects"] = objects
    provenance = dict(record.get("provenance") or {})
    provenance["distill"] = {**distill_info, "objects_from": objects_from}
    out["provenance"] = provenance
    return out
