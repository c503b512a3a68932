"""Record helpers: a deterministic split, the grounded-training-example check, the one quality merge."""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from vcot.grounding.boxes import parse_grounded, validate_box
from vcot.grounding.records import box_tags_match_objects, grounding_problem, merge_counts, split_for

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
    assert grounding_problem({**GOOD, "question": "What is in <box>[9, 9, 1, 1]</box>?"}) == "question_invalid_box"
    assert grounding_problem({**GOOD, "question": "What is in <box>[1, 1, 9, 9]</box>?"}) is None
    assert grounding_problem({**GOOD, "question": "Reply as <box>[x1, y1, x2, y2]</box>."}) is None  # a template


def _full_parse_problem(record: dict) -> str | None:
    """grounding_problem with the shortcut turned off: what the parse alone decides."""
    parsed = parse_grounded(record["rationale"])
    return "rationale_invalid_box" if parsed.invalid else None if parsed.boxes else "rationale_without_box"


boxes = st.lists(st.integers(-5, 1005), min_size=4, max_size=4)
pieces = st.one_of(
    st.text(alphabet="ab <>/[],0123456789", max_size=12),
    boxes.map(lambda b: f"<box>[{b[0]}, {b[1]}, {b[2]}, {b[3]}]</box>"),
    boxes.map(lambda b: f"<ref>x</ref><box>[{b[0]},{b[1]},{b[2]},{b[3]}]</box>"),
    st.sampled_from(["<box>", "</box>", "<ref>", "<box>[1, 2, 3, 4]", "<box>[1, 2, 3, 4]</box>"]),
)


sides = st.lists(st.integers(0, 1000), min_size=2, max_size=2, unique=True).map(sorted)
valid_boxes = st.builds(lambda xs, ys: [xs[0], ys[0], xs[1], ys[1]], sides, sides)


@settings(max_examples=300)
@given(st.lists(valid_boxes | boxes, min_size=1, max_size=3), st.data())
def test_the_box_tag_shortcut_only_accepts_what_the_parse_accepts(object_boxes: list, data: st.DataObject) -> None:
    objects = [{"ref": "x", "box": box} for box in object_boxes]
    own_tags = st.sampled_from([f"<box>[{b[0]}, {b[1]}, {b[2]}, {b[3]}]</box>" for b in object_boxes])
    rationale = "".join(data.draw(st.lists(own_tags | pieces, max_size=4)))
    if all(validate_box(box) is None for box in object_boxes) and box_tags_match_objects(rationale, objects):
        assert _full_parse_problem({"rationale": rationale}) is None
        event("shortcut taken")


def test_the_box_tag_shortcut_takes_converted_records() -> None:
    assert box_tags_match_objects(GOOD["rationale"], GOOD["objects"])
    assert not box_tags_match_objects(GOOD["rationale"], [{"ref": "c", "box": [10.0, 20, 300, 400]}])


def test_one_merge_adds_up_convert_and_distill_shard_reports() -> None:
    """convert's per-subset counts and distill's reports are added up by the same function (issue 13)."""
    from vcot.convert.quality import QualityStats
    from vcot.distill.stage import merge_reports

    shards = []
    for subsets in (["gqa", "gqa", "docvqa"], ["gqa"]):
        stats = QualityStats()
        for subset in subsets:
            stats.rejected(subset, "no_objects")
        shards.append(stats.to_dict())
    merged = merge_counts(shards)["subsets"]
    assert merged["gqa"]["input"] == 3 and merged["gqa"]["reasons"] == {"no_objects": 3}
    assert merged["docvqa"]["rejected"] == 1 and merged["docvqa"]["accepted"] == 0  # zero counters kept

    reports = [
        {"counts": {"input": 2, "distilled": 1}, "accepted": 1, "details": {"retry": 1}, "elapsed_s": 2.0, "flag": True},
        {"counts": {"input": 1, "rejected": 1}, "accepted": 0, "rejected_reasons": {"no_box": 1}, "elapsed_s": 5.0},
    ]
    summed = merge_counts(reports)
    assert summed == {
        "accepted": 1,
        "counts": {"distilled": 1, "input": 3, "rejected": 1},
        "details": {"retry": 1},
        "rejected_reasons": {"no_box": 1},
    }  # floats and booleans are the caller's to combine
    distilled = merge_reports(reports)
    assert {key: distilled[key] for key in summed} == summed and distilled["elapsed_s"] == 5.0
