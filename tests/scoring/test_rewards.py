"""GRPO rewards: hand-computed cases, plain == conversational, bbox_reward against a brute-force assignment,
bad input counted and never raising."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vcot.errors import ConfigError, VcotError
from vcot.grounding.boxes import iou
from vcot.scoring.rewards import (
    accuracy_reward,
    bbox_reward,
    dual_iou_reward,
    format_reward,
    guarded,
    reward_setup,
)
from vcot.train.recipe import load_recipe

GEAR = [100, 200, 300, 400]
OBJECTS = [{"ref": "red gear", "box": GEAR}]
RIGHT = "<ref>red gear</ref><box>[100, 200, 300, 400]</box>"
REWARDS = (format_reward, accuracy_reward, bbox_reward, dual_iou_reward)

# name: (completion, (format, accuracy, bbox, dual IoU)), against answer "blue" and the one object OBJECTS.
CASES: dict[str, tuple[str, tuple[float, float, float, float]]] = {
    "exact copy": (f"I find the {RIGHT}.\nAnswer: blue", (1, 1, 1, 1)),
    "answer on the reasoning's line": (f"I find the {RIGHT} and read it. Answer: blue", (1, 1, 1, 1)),
    # x shifted by 20: intersection 180 x 200, union 2 * 40000 - 36000 -> 36000 / 44000
    "jittered": ("The <ref>red gear</ref><box>[120, 200, 320, 400]</box>.\nAnswer: blue", (1, 1, 9 / 11, 9 / 11)),
    "flooding": (f"{RIGHT} {RIGHT} {RIGHT}\nAnswer: blue", (1, 1, 1 / 3, 1)),
    "extra box": (f"{RIGHT} <ref>sky</ref><box>[600, 600, 700, 700]</box>\nAnswer: blue", (1, 1, 1 / 2, 3 / 4)),
    "no box": ("The gear is blue.\nAnswer: blue", (0, 1, 0, 0)),
    "bare box, no ref": ("The <box>[100, 200, 300, 400]</box>.\nAnswer: blue", (0, 1, 1, 1)),
    "malformed tag": ("The <ref>red gear</ref><box>[100, 200, 300]</box>.\nAnswer: blue", (0, 1, 0, 0)),
    "right box and a malformed one": (f"{RIGHT} <ref>x</ref><box>[a, b]</box>\nAnswer: blue", (0, 1, 1 / 2, 3 / 4)),
    "right box and an unclosed one": (f"{RIGHT} <ref>x</ref><box>[10, 20\nAnswer: blue", (0, 1, 1 / 2, 3 / 4)),
    "inverted box": ("<ref>red gear</ref><box>[300, 400, 100, 200]</box>\nAnswer: blue", (0, 1, 0, 0)),
    "wrong answer": (f"I find the {RIGHT}.\nAnswer: red", (1, 0, 1, 1)),
    "case, punctuation, article": (f"I find the {RIGHT}.\nAnswer:  The BLUE! ", (1, 1, 1, 1)),
    "no Answer line": (f"I find the {RIGHT}; it is blue", (0, 0, 1, 1)),
    # the text after the last Answer: runs to the end, reasoning included: not the answer
    "Answer not on the last line": (f"Answer: blue\nI find the {RIGHT}", (0, 0, 1, 1)),
    "empty answer": (f"I find the {RIGHT}.\nAnswer:", (0, 0, 1, 1)),
    "empty completion": ("", (0, 0, 0, 0)),
}


def _columns(n: int, **extra: Any) -> dict[str, Any]:
    """TRL's call: every column as a list per completion, plus its own extras."""
    return {
        "answer": ["blue"] * n,
        "objects": [OBJECTS] * n,
        "width": [640] * n,
        "height": [480] * n,
        "prompts": ["What color is the gear?"] * n,
        "completion_ids": [[1, 2]] * n,
        "trainer_state": None,
        **extra,
    }


def _scores(completions: list[Any], **extra: Any) -> list[tuple[float | None, ...]]:
    columns = _columns(len(completions), **extra)
    return list(zip(*(reward(completions, **columns) for reward in REWARDS), strict=True))


@pytest.mark.parametrize("name", list(CASES))
def test_hand_computed_cases(name: str) -> None:
    completion, expected = CASES[name]
    assert _scores([completion])[0] == pytest.approx(expected, abs=1e-6)


def test_conversational_and_plain_completions_score_the_same() -> None:
    texts = [text for text, _ in CASES.values()]
    conversational = [[{"role": "assistant", "content": text}] for text in texts]
    blocks = [[{"role": "assistant", "content": [{"type": "text", "text": text}]}] for text in texts]
    plain = _scores(texts)
    assert _scores(conversational) == plain
    assert _scores(blocks) == plain


def test_bbox_reward_is_the_optimal_assignment_not_the_greedy_one() -> None:
    # Every overlap is 0.5 but one: greedy pairs prediction 0 with truth 0 and is left with 0 + 0.5 in total;
    # the best assignment crosses them for 1.0. Over max(2, 2) boxes: 0.5 (greedy would give 0.25).
    truths = [{"ref": "a", "box": [150, 0, 350, 100]}, {"ref": "b", "box": [250, 0, 450, 100]}]
    text = "<ref>p</ref><box>[250, 0, 350, 100]</box> <ref>q</ref><box>[150, 0, 250, 100]</box>"
    assert bbox_reward([text], objects=[truths]) == [pytest.approx(0.5, abs=1e-6)]


def test_multiple_choice_by_letter_or_text() -> None:
    completions = ["Answer: (B)", "Answer: b.", "Answer: B. Blue", "Answer: the blue", "Answer: A", "Answer: (A) blue"]
    n = len(completions)
    expected = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    with_index = {"choices": [["red", "blue"]] * n, "answer_index": [1] * n}
    assert accuracy_reward(completions, answer=["blue"] * n, **with_index) == expected
    # Records that store only the text of the right choice: the letter still counts.
    assert accuracy_reward(completions, answer=["blue"] * n, choices=[["red", "blue"]] * n) == expected


# Boxes crowded into one corner overlap often, which is where an assignment can go wrong.
_side = st.integers(1, 300)
_box = st.builds(lambda x, y, w, h: (x, y, x + w, y + h), st.integers(0, 300), st.integers(0, 300), _side, _side)


def _brute_force(preds: list[tuple[int, ...]], truths: list[tuple[int, ...]]) -> float:
    """Every one-to-one assignment of the smaller side into the larger: the largest total IoU."""
    if len(preds) <= len(truths):
        options = (zip(preds, chosen) for chosen in itertools.permutations(truths, len(preds)))
    else:
        options = (zip(chosen, truths) for chosen in itertools.permutations(preds, len(truths)))
    return max((sum(iou(p, t) for p, t in pairs) for pairs in options), default=0.0)


@settings(max_examples=300, deadline=None)
@given(st.lists(_box, max_size=6), st.lists(_box, min_size=1, max_size=5), st.integers(0, 2))
def test_bbox_reward_matches_a_brute_force_assignment(
    preds: list[tuple[int, ...]], truths: list[tuple[int, ...]], unparsable: int
) -> None:
    mentions = [f"<ref>o</ref><box>[{', '.join(map(str, p))}]</box>" for p in preds]
    text = " ".join(mentions + ["<box>[1, 2]</box>"] * unparsable)
    objects = [{"ref": "t", "box": list(t)} for t in truths]
    predicted = len(preds) + unparsable
    expected = _brute_force(preds, truths) / max(predicted, len(truths)) if predicted else 0.0
    assert bbox_reward([text], objects=[objects]) == [pytest.approx(expected, abs=1e-9)]


_pieces = st.sampled_from(
    ["<ref>", "</ref>", "<box>", "</box>", "[", "]", ", ", "1", "250", "1000", "-3", "1e9", "nan", "inf", ".",
     "Answer:", "blue", "\n", " ", "<", ">", "\x00", "é"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=40) | st.lists(_pieces, max_size=30).map("".join), max_size=4))
def test_any_text_scores_between_0_and_1_and_never_raises(completions: list[str]) -> None:
    for row in _scores(completions):
        assert all(value is not None and 0.0 <= value <= 1.0 for value in row)


def test_bad_records_are_none_and_every_problem_is_counted() -> None:
    metrics: dict[str, float] = {}
    completions = ["", f"{RIGHT} <box>[1, 2]</box>\nAnswer: blue", f"{RIGHT}\nAnswer: blue", "Answer: x"]
    objects = [OBJECTS, OBJECTS, [], [{"ref": "bad", "box": [5, 5, float("nan"), 9]}]]
    columns = {"answer": ["blue", "blue", "", None], "objects": objects, "log_metric": metrics.__setitem__}
    assert bbox_reward(completions, **columns) == [0.0, pytest.approx(0.5, abs=1e-6), None, None]
    assert metrics["problems/bbox_reward/empty"] == 0.25
    assert metrics["problems/bbox_reward/unparsable_box"] == 0.25
    assert metrics["problems/bbox_reward/bad_record"] == 0.5
    assert accuracy_reward(completions, **columns) == [0.0, 1.0, None, None]
    assert metrics["problems/accuracy_reward/bad_record"] == 0.5
    assert "problems/accuracy_reward/unparsable_box" not in metrics  # boxes are not its business
    assert format_reward(completions, **columns) == [0.0, 0.0, 1.0, 0.0]
    assert metrics["problems/format_reward/unparsable_box"] == 0.25


def test_nan_rewards_become_none_and_are_counted() -> None:
    def shaky_reward(completions: list[str], **_: Any) -> list[float | None]:
        return [float("nan"), math.inf, 0.5, None]

    metrics: dict[str, float] = {}
    reward = guarded(shaky_reward)
    assert reward(["a", "b", "c", "d"], log_metric=metrics.__setitem__) == [None, None, 0.5, None]
    assert metrics == {"problems/shaky_reward/not_finite": 0.5}
    assert reward.__name__ == "shaky_reward"  # TRL logs rewards/<name>/mean


def test_missing_columns_are_a_one_line_error() -> None:
    with pytest.raises(VcotError, match="'objects' column"):
        bbox_reward(["x"])
    with pytest.raises(VcotError, match="'answer' column"):
        accuracy_reward(["x"], objects=[OBJECTS])
    with pytest.raises(VcotError, match="'width' column"):
        format_reward(["x"], model_format=object())


def test_reward_weights_from_the_recipe() -> None:
    funcs, weights = reward_setup(load_recipe("tiny-cpu").reward_weights)
    assert [f.__name__ for f in funcs] == ["format_reward", "accuracy_reward", "bbox_reward", "dual_iou_reward"]
    assert weights == [0.5, 1.0, 1.0, 0.0]
    assert funcs[2]([f"{RIGHT} {RIGHT}"], objects=[OBJECTS]) == [pytest.approx(0.5, abs=1e-6)]
    assert load_recipe("tiny-cpu", "reward_weights={bbox: 2}").reward_weights == {"bbox": 2}
    for bad, message in (("{iou: 1}", "unknown rewards"), ("{bbox: 0}", "non-zero"), ("{bbox: x}", "finite number")):
        with pytest.raises(VcotError, match=message):
            load_recipe("tiny-cpu", f"reward_weights={bad}")


@pytest.mark.parametrize("weights", ["{bbox: 1, format: -0.5}", "{accuracy: -1}", "{bbox: -.inf}", "{bbox: .nan}"])
def test_negative_or_non_finite_reward_weights_are_refused(weights: str) -> None:
    """A negative weight would train the policy away from the reward: refused (exit 2), never silently used."""
    with pytest.raises(ConfigError, match=r"is negative, which would train against that reward|finite number"):
        load_recipe("tiny-cpu-grpo", f"reward_weights={weights}")


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_boxes_in_the_models_frame_score_as_their_house_boxes(family: str) -> None:
    """A completion written in the run's frame (pixels of the resized image, Qwen's JSON) is read back through the
    model format before scoring: the same numbers as the house completion; read as house boxes they would score 0."""
    from vcot.grounding.model_format import ModelFormat

    fmt = ModelFormat.for_family(family, coords="qwen2.5-absolute", box_syntax="json")  # type: ignore[arg-type]
    house = f"I find the {RIGHT}.\nAnswer: blue"
    native = fmt.render(house, 640, 480)
    assert native != house and '"bbox_2d"' in native
    columns = _columns(1)
    for reward in (bbox_reward, dual_iou_reward):
        in_frame = reward([native], model_format=fmt, **columns)[0]
        assert in_frame == pytest.approx(reward([house], **columns)[0], abs=0.02) and in_frame > 0.95
        assert reward([native], **columns)[0] == 0.0  # the wrong frame never matches: no box at all
