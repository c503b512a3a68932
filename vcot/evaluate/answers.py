"""Final answers: read them out of a response and judge them against a record.

A grounded rationale ends with ``Answer: <answer>`` (docs/records.md). A response without that marker
is judged by its last non-empty line (a direct answer). Judging is normalized exact match; for a
multiple-choice record, a choice letter (``B``, ``(b)``, ``B.``) or the choice's text both count.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

_ANSWER_MARKER = re.compile(r"answer\s*:", re.IGNORECASE)
_TAGS = re.compile(r"<ref>|</ref>|<box>[^<]*</box>|<[^>]*>")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_LETTER = re.compile(r"^\(?([a-z])\)?[.:)]?$")


def extract_answer(response: str) -> str:
    """The final answer in a response: the text after the last ``Answer:``, else its last non-empty line.

    >>> extract_answer("The <ref>sign</ref><box>[1, 2, 3, 4]</box> reads STOP. Answer: stop")
    'stop'
    >>> extract_answer("Looking closely.\\nBlue")
    'Blue'
    """
    markers = list(_ANSWER_MARKER.finditer(response))
    if markers:
        return response[markers[-1].end() :].strip()
    lines = [line.strip() for line in response.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def normalize_answer(text: str) -> str:
    """Lowercase, drop box tags, punctuation and articles, collapse spaces (SQuAD-style normalization).

    >>> normalize_answer("  The Red-Gear. ")
    'redgear'
    >>> normalize_answer("2 apples")
    '2 apples'
    """
    text = _TAGS.sub(" ", text).lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def choice_index(answer: str, choices: Sequence[str]) -> int | None:
    """Which choice an answer names, by letter (``B``, ``(b)``) or by its normalized text; ``None`` if neither.

    >>> choice_index("(B)", ["cat", "dog"])
    1
    >>> choice_index("a dog", ["cat", "dog"])
    1
    >>> choice_index("bird", ["cat", "dog"]) is None
    True
    """
    normalized = normalize_answer(answer)
    texts = [normalize_answer(choice) for choice in choices]
    if normalized in texts:
        return texts.index(normalized)
    letter = _LETTER.match(answer.strip().lower())
    if letter:
        index = ord(letter.group(1)) - ord("a")
        if 0 <= index < len(choices):
            return index
    return None


def is_correct(response: str, record: dict[str, Any]) -> bool:
    """Whether ``response``'s final answer is the record's answer (by choice for multiple choice)."""
    predicted = extract_answer(response)
    choices = record.get("choices")
    answer_index = record.get("answer_index")
    if choices and answer_index is not None:
        return choice_index(predicted, choices) == answer_index
    expected = normalize_answer(str(record.get("answer", "")))
    return bool(expected) and normalize_answer(predicted) == expected
