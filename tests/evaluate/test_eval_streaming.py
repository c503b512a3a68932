"""stream_grounded yields the text so far and only the boxes that are complete."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vcot.boxes import parse_grounded, render_grounded
from vcot.evaluate.streaming import stream_grounded

TEXT = (
    "First the <ref>red gear</ref><box>[100, 200, 300, 400]</box>, then the "
    "<ref>blue gear</ref><box>[500, 500, 900, 950]</box>. Answer: red"
)


@given(st.lists(st.integers(1, len(TEXT) - 1), max_size=12, unique=True).map(sorted))
def test_boxes_appear_only_when_complete(cuts: list[int]) -> None:
    bounds = [0, *cuts, len(TEXT)]
    chunks = [TEXT[a:b] for a, b in zip(bounds, bounds[1:])]
    seen: list = []
    for (partial, boxes), end in zip(stream_grounded(chunks), bounds[1:]):
        assert partial == TEXT[:end]
        assert boxes[: len(seen)] == seen  # never retracts a box
        closed = partial.count("</box>")
        assert [b.box for b in boxes] == [(100, 200, 300, 400), (500, 500, 900, 950)][:closed]
        seen = boxes
    assert [b.ref for b in seen] == ["red gear", "blue gear"]


def test_character_by_character_in_another_format() -> None:
    text = "look: " + render_grounded("dog", (1, 2, 3, 4), "qwen")
    counts = [len(boxes) for _, boxes in stream_grounded(iter(text), fmt="qwen")]
    assert counts[-1] == 1 and counts[:-1] == [0] * (len(text) - 1)
    assert parse_grounded(text, "qwen").boxes == list(stream_grounded([text], fmt="qwen"))[0][1]


def test_invalid_boxes_are_not_streamed() -> None:
    assert list(stream_grounded(["<box>[30, 20, 10, 40]</box>"])) == [("<box>[30, 20, 10, 40]</box>", [])]
