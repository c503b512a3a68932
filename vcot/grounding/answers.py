"""Final answers: read them out of a response and judge them against a record (shared by distill and evaluate).

A grounded rationale ends with ``Answer: <answer>`` (docs/records.md). A response without that marker
is judged by its last non-empty line (a direct answer). Judging is normalized exact match; for a
multiple-choice record, a choice letter (``B``, ``(b)``, ``B.``), the letter with the choice's text
(``(B) dog``) or the choice's text all count.

One normalization for both stages: distill accepts a teacher's answer by the same rule evaluate scores
with, plus (distill only, :func:`contains_answer`) a short verbose answer that contains the truth; distill
then rewrites the answer line to the record's answer, so the student learns the form evaluate scores.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

ANSWER_MARKER = re.compile(r"answer\s*:", re.IGNORECASE)
"""Where a final answer starts, as evaluate reads it: ``Answer:`` in any case and spacing."""
_TAGS = re.compile(r"<ref>|</ref>|<box>[^<]*</box>|<[^>]*>")
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = re.compile(
    r"(?P<number>(?<=\d)[./-](?=\d)|(?<![\w.])-(?=\.?\d)|(?<![\w.])\.(?=\d))|[%s]" % re.escape(string.punctuation)
)
"""Punctuation to drop, except a number's own marks (``3.5``, ``1/4``, ``-3``, ``2-3``): without them 3.5 would
equal 35."""
_LETTER = re.compile(r"^\(?([a-z])\)?[.:)]?$", re.IGNORECASE)
_LETTER_AND_TEXT = re.compile(r"^(?:\(([a-z])\)|([a-z])[.:)])\s*(.+)$", re.IGNORECASE | re.DOTALL)
_NEGATIONS = {"not", "no", "never", "neither", "nor"}


def extract_answer(response: str) -> str:
    """The final answer in a response: the text after the last ``Answer:``, else its last non-empty line.

    >>> extract_answer("The <ref>sign</ref><box>[1, 2, 3, 4]</box> reads STOP. Answer: stop")
    'stop'
    >>> extract_answer("Looking closely.\\nBlue")
    'Blue'
    """
    marked = final_answer(response)
    if marked is not None:
        return marked
    lines = [line.strip() for line in response.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def final_answer(response: str) -> str | None:
    """The text after the last ``Answer:`` (stripped, and of the Markdown bold a chat model puts around it),
    ``None`` when there is no such marker.

    >>> final_answer("I see it. Answer: Blue "), final_answer("Blue") is None
    ('Blue', True)
    >>> final_answer("It reads OPEN. **Answer:** yes"), final_answer("**Answer: yes**")
    ('yes', 'yes')
    """
    markers = list(ANSWER_MARKER.finditer(response))
    return response[markers[-1].end() :].strip().strip("*").strip() if markers else None


def normalize_answer(text: str) -> str:
    """Lowercase, drop box tags, punctuation and articles, collapse spaces (SQuAD-style normalization).

    A number keeps its decimal point, fraction bar and minus sign; an answer that is only an article (the letter
    ``A``) keeps it.

    >>> normalize_answer("  The Red-Gear. ")
    'redgear'
    >>> normalize_answer("2 apples"), normalize_answer("3.5."), normalize_answer("-1/4"), normalize_answer("1,000")
    ('2 apples', '3.5', '-1/4', '1000')
    >>> normalize_answer(".5"), normalize_answer("-.5")
    ('.5', '-.5')
    >>> normalize_answer("the <ref>red car</ref><box>[1, 2, 3, 4]</box>"), normalize_answer("A")
    ('red car', 'a')
    """
    text = _TAGS.sub(" ", text).lower()
    words = _PUNCTUATION.sub(lambda mark: mark.group("number") or "", text).split()
    return " ".join([word for word in words if word not in _ARTICLES] or words)


def choice_index(answer: str, choices: Sequence[str]) -> int | None:
    """Which choice an answer names: by its text as written (``E. coli``), by letter (``B``, ``(b)``), by letter and
    its text (``(B) dog``), or by its normalized text.

    ``None`` if it names none, or a letter with another choice's text.

    >>> choices = ["cat", "dog"]
    >>> choice_index("(B)", choices), choice_index("B. dog", choices), choice_index("a dog", choices)
    (1, 1, 1)
    >>> choice_index("bird", ["cat", "dog"]) is None, choice_index("(A) dog", ["cat", "dog"]) is None
    (True, True)
    >>> choice_index("a. lincoln", ["G. Washington", "A. Lincoln"])
    1
    """
    answer = answer.strip()
    written = [_as_written(choice) for choice in choices]
    if _as_written(answer) in written:  # a choice whose own text looks like a letter and its text
        return written.index(_as_written(answer))
    texts = [normalize_answer(choice) for choice in choices]
    lettered = _LETTER_AND_TEXT.match(answer)
    if lettered:  # the letter decides, and the text after it must be that choice's
        index = ord((lettered.group(1) or lettered.group(2)).lower()) - ord("a")
        return index if 0 <= index < len(choices) and normalize_answer(lettered.group(3)) == texts[index] else None
    normalized = normalize_answer(answer)
    if normalized in texts:
        return texts.index(normalized)
    letter = _LETTER.match(answer)
    if letter:
        index = ord(letter.group(1).lower()) - ord("a")
        if 0 <= index < len(choices):
            return index
    return None


def _as_written(text: str) -> str:
    """Text compared as written: case, spacing and a final full stop aside."""
    return " ".join(text.lower().split()).removesuffix(".")


def right_choice(record: dict[str, Any]) -> int | None:
    """The index of a multiple-choice record's right choice: its ``answer_index``, else the choice its stored answer
    names (a letter or the text); ``None`` for a record without choices, or whose answer names none.

    >>> right_choice({"answer": "B", "choices": ["red", "blue"]}), right_choice({"answer": "blue"})
    (1, None)
    """
    choices = record.get("choices")
    answer_index = record.get("answer_index")
    if choices and answer_index is None and record.get("answer"):
        answer_index = choice_index(str(record["answer"]), choices)  # only the answer's letter or text was stored
    return answer_index if choices and isinstance(answer_index, int) and 0 <= answer_index < len(choices) else None


def answer_matches(final: str, record: dict[str, Any]) -> bool:
    """Whether a final answer is the record's answer (by choice for multiple choice); ``False`` without a truth.

    >>> answer_matches("2 apples", {"answer": "2 Apples."}), answer_matches("2apples", {"answer": "2 apples"})
    (True, False)
    >>> answer_matches("(B) blue", {"answer": "blue", "choices": ["red", "blue"], "answer_index": 1})
    True
    >>> answer_matches("blue", {"answer": "B", "choices": ["red", "blue"]})  # the index read from the answer
    True
    """
    right = right_choice(record)
    if right is not None:
        return choice_index(final, record["choices"]) == right
    expected = normalize_answer(str(record.get("answer") or ""))
    return bool(expected) and normalize_answer(final) == expected


def is_correct(response: str, record: dict[str, Any]) -> bool:
    """Whether ``response``'s final answer is the record's answer (how evaluate scores a response)."""
    return answer_matches(extract_answer(response), record)


def contains_answer(final: str, truth: str, *, max_extra_words: int = 3) -> bool:
    """Whether a short verbose answer states the truth: its normalized words contain the truth's as a run.

    For a teacher's wordy final line (``"It is red."``); refused when it negates, or is more than
    ``max_extra_words`` longer than the truth.

    >>> contains_answer("It is red.", "red"), contains_answer("not red", "red"), contains_answer("no", "no")
    (True, False, True)
    >>> contains_answer("a red car and a blue one behind it", "red car", max_extra_words=3)
    False
    """
    final_words, truth_words = normalize_answer(final).split(), normalize_answer(truth).split()
    if not truth_words or len(final_words) > len(truth_words) + max_extra_words:
        return False
    if (_NEGATIONS & set(final_words)) - set(truth_words):
        return False
    size = len(truth_words)
    return any(final_words[i : i + size] == truth_words for i in range(len(final_words) - size + 1))
