"""Boxes written the way tokenize renders them are read back to the same house boxes, in one interpretation."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from vcot.boxes import norm1000_to_qwen25, smart_resize
from vcot.evaluate.readback import Readback
from vcot.prompts import rationale_in_coords


@st.composite
def house_boxes(draw: st.DrawFn) -> list[int]:
    x1, y1 = draw(st.integers(0, 980)), draw(st.integers(0, 980))
    return [x1, y1, draw(st.integers(x1 + 20, 1000)), draw(st.integers(y1 + 20, 1000))]


@given(house_boxes(), st.integers(200, 3000), st.integers(200, 3000), st.sampled_from([(3136, 12544), (3136, 1003520)]))
def test_tokenize_rendering_reads_back(box: list[int], width: int, height: int, budget: tuple[int, int]) -> None:
    min_pixels, max_pixels = budget
    x1, y1, x2, y2 = norm1000_to_qwen25(box, width, height, min_pixels=min_pixels, max_pixels=max_pixels)
    assume(x2 > x1 and y2 > y1)  # a box thinner than a resized pixel has no area in these coordinates
    record = {"width": width, "height": height, "rationale": f"<ref>x</ref><box>{box}</box> Answer: y"}
    text = rationale_in_coords(record, "qwen2.5-absolute", min_pixels=min_pixels, max_pixels=max_pixels)
    parsed = Readback("qwen2.5-absolute", min_pixels=min_pixels, max_pixels=max_pixels).read(text, record)
    resized_h, resized_w = smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
    tolerance = [0.5 + 500 / side for side in (resized_w, resized_h, resized_w, resized_h)]
    assert not parsed.invalid and len(parsed.boxes) == 1
    assert all(abs(a - b) <= t for a, b, t in zip(parsed.boxes[0].box, box, tolerance))
    assert Readback("norm1000").read(record["rationale"], record).boxes[0].box == tuple(box)


def test_other_box_formats() -> None:
    record = {"width": 100, "height": 100}
    text = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|>"
    assert [b.box for b in Readback(fmt="qwen").read(text, record).boxes] == [(10, 20, 30, 40)]
    assert Readback().read(text, record).boxes == []  # not the house format: no box, nothing guessed
