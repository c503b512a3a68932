"""vcot.grounding.answers: the one answer normalization and judgement, used by evaluate (scoring) and distill (acceptance)."""

from __future__ import annotations

import pytest

from vcot.distill.validate import check_answer
from vcot.grounding.answers import (
    answer_matches,
    choice_index,
    contains_answer,
    extract_answer,
    is_correct,
    normalize_answer,
)

PRESIDENTS = {"answer": "A. Lincoln", "choices": ["G. Washington", "A. Lincoln"], "answer_index": 1}
GROUNDED = "The <ref>cup</ref><box>[10, 20, 300, 400]</box> is on the table.\nAnswer: {}"


@pytest.mark.parametrize(
    ("response", "record", "correct"),
    [
        ("The <ref>sign</ref><box>[1, 2, 3, 4]</box> says stop. Answer: Stop.", {"answer": "stop"}, True),
        ("answer: the window", {"answer": "Window"}, True),
        ("Answer: door", {"answer": "window"}, False),
        ("Blue", {"answer": "blue"}, True),
        ("", {"answer": "blue"}, False),
        ("Answer: (B)", {"answer": "dog", "choices": ["cat", "dog"], "answer_index": 1}, True),
        ("Answer: dog", {"answer": "dog", "choices": ["cat", "dog"], "answer_index": 1}, True),
        ("Answer: A", {"answer": "dog", "choices": ["cat", "dog"], "answer_index": 1}, False),
        ("Answer: C", {"answer": "dog", "choices": ["cat", "dog"], "answer_index": 1}, False),
        ("Answer: (B) dog", {"answer": "dog", "choices": ["cat", "dog"], "answer_index": 1}, True),
        ("Answer: (A) dog", {"answer": "dog", "choices": ["cat", "dog"], "answer_index": 1}, False),
        ("Answer: 2 apples", {"answer": "2 Apples"}, True),
        ("Answer: 2apples", {"answer": "2 apples"}, False),
        ("Answer: the <ref>red car</ref><box>[1, 2, 3, 4]</box>", {"answer": "red car"}, True),
        ("Answer: anything", {"answer": ""}, False),
        # a letter as the answer itself (no choices), not read as the article "a"
        ("Answer: A", {"answer": "A"}, True),
        ("Answer: B", {"answer": "A"}, False),
        # numbers keep their decimal point, fraction bar and sign
        ("Answer: 3.5", {"answer": "3.5"}, True),
        ("Answer: 35", {"answer": "3.5"}, False),
        ("Answer: -3", {"answer": "3"}, False),
        ("Answer: 1/4", {"answer": "14"}, False),
        ("Answer: 2-3", {"answer": "23"}, False),
        ("Answer: 1,000", {"answer": "1000"}, True),
        ("Answer: 3.", {"answer": "3"}, True),
        ("Answer: .5", {"answer": "0.5"}, False),
        ("Answer: -.5", {"answer": "5"}, False),
        ("Answer: .5", {"answer": ".5"}, True),
        # choices without an answer_index: the index is read from the stored answer, as the GRPO reward reads it
        ("Answer: dog", {"answer": "B", "choices": ["cat", "dog"]}, True),
        ("Answer: (B) dog", {"answer": "B", "choices": ["cat", "dog"]}, True),
        ("Answer: cat", {"answer": "B", "choices": ["cat", "dog"]}, False),
        ("Answer: B", {"answer": "dog", "choices": ["cat", "dog"]}, True),
        # a choice whose own text starts like a letter and its text
        ("Answer: E. coli", {"answer": "E. coli", "choices": ["E. coli", "Salmonella"], "answer_index": 0}, True),
        ("Answer: A. Lincoln", PRESIDENTS, True),
        ("Answer: (B) A. Lincoln", PRESIDENTS, True),
        ("Answer: A", PRESIDENTS, False),
    ],
)
def test_answer_judging(response: str, record: dict, correct: bool) -> None:
    assert is_correct(response, record) is correct


def test_answer_helpers() -> None:
    assert extract_answer("x Answer: a\nAnswer: b") == "b"
    assert normalize_answer("<ref>The</ref> Cat!") == "cat"
    assert choice_index("e", ["a", "b"]) is None


@pytest.mark.parametrize(
    ("final", "truth", "contained"),
    [
        ("It is red.", "red", True),
        ("The blue one", "blue", True),
        ("not red", "red", False),
        ("red, definitely not blue", "red", False),
        ("no", "no", True),
        ("it is probably a large red one there", "red", False),  # 5 extra words
        ("redish", "red", False),
        ("anything", "", False),
    ],
)
def test_contains_answer(final: str, truth: str, contained: bool) -> None:
    assert contains_answer(final, truth) is contained


@pytest.mark.parametrize(
    ("final", "record"),
    [
        ("2 apples", {"answer": "2 Apples."}),
        ("2apples", {"answer": "2 apples"}),
        ("the <ref>red car</ref><box>[1, 2, 3, 4]</box>", {"answer": "red car"}),
        ("(B) dog", {"answer": "dog", "choices": ["cat", "dog"], "answer_index": 1}),
        ("(A) dog", {"answer": "dog", "choices": ["cat", "dog"], "answer_index": 1}),
        ("A", {"answer": "dog", "choices": ["cat", "dog"], "answer_index": 1}),
        ("window", {"answer": "Window"}),
        # choices without answer_index: a multiple-choice record all the same, never a verbose answer naming both
        ("red or blue", {"answer": "blue", "choices": ["red", "blue"]}),
        ("(B)", {"answer": "blue", "choices": ["red", "blue"]}),
        ("A", {"answer": "A"}),
    ],
)
def test_distill_accepts_every_answer_evaluate_scores_correct_and_no_exact_answer_it_scores_wrong(
    final: str, record: dict
) -> None:
    """Distill's acceptance and evaluate's score agree wherever the final answer is not a wordy sentence."""
    accepted = check_answer(GROUNDED.format(final), record).problem is None
    assert accepted is answer_matches(final, record) is is_correct(f"Answer: {final}", record)
