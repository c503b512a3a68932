"""Record helpers: a deterministic split and the grounded-training-example check."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vcot.records import grounding_problem, split_for

GOOD = {
    "id": "synthetic:0",
    "source": "synthetic",
    "subset": "shapes",
    "split": "train",
    "image": "s3://vcot/images/0.png",
    "width": 320,
    "height": 200,
    "question": "What is left of the square?",
    "answer": "circle",
    "objects": [{"ref": "circle", "box": [10, 20, 300, 400]}],
    "rationale": "The <ref>circle</ref><box>[10, 20, 300, 400]</box> is left. Answer: circle",
}


@given(st.text(min_size=1))
def test_split_is_a_pure_function_of_the_id(record_id: str) -> None:
    assert split_for(record_id, 0.1) == split_for(record_id, 0.1)
    assert split_for(record_id, 0.0) == "train" and split_for(record_id, 1.0) == "val"


def test_split_fraction_is_respected() -> None:
    share = sum(split_for(f"id-{i}", 0.1) == "val" for i in range(20000)) / 20000
    assert 0.09 < share < 0.11


def test_grounding_problem_reasons() -> None:
    assert grounding_problem(GOOD) is None
    assert grounding_problem({**GOOD, "answer": ""}) == "missing_answer"
    assert grounding_problem({**GOOD, "objects": []}) == "no_objects"
    assert grounding_problem({**GOOD, "objects": [{"ref": "x", "box": [5, 5, 5, 9]}]}) == "invalid_object_box"
    assert grounding_problem({**GOOD, "rationale": "Answer: circle"}) == "rationale_without_box"
    assert grounding_problem({**GOOD, "rationale": "<box>[9, 9, 1, 1]</box>"}) == "rationale_invalid_box"
