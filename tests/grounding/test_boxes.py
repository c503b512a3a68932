"""Grounded boxes: parsing never raises, every conversion round-trips, IoU matches an independent formula."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vcot.grounding import boxes

sizes = st.integers(min_value=1, max_value=8000)


@st.composite
def house_boxes(draw: st.DrawFn) -> tuple[int, int, int, int]:
    x1 = draw(st.integers(0, 999))
    y1 = draw(st.integers(0, 999))
    x2 = draw(st.integers(x1 + 1, 1000))
    y2 = draw(st.integers(y1 + 1, 1000))
    return (x1, y1, x2, y2)


@st.composite
def pixel_boxes(draw: st.DrawFn) -> tuple[float, float, float, float, int, int]:
    width, height = draw(sizes), draw(sizes)
    x1 = draw(st.floats(0, width, allow_nan=False))
    x2 = draw(st.floats(x1, width, allow_nan=False))
    y1 = draw(st.floats(0, height, allow_nan=False))
    y2 = draw(st.floats(y1, height, allow_nan=False))
    return (x1, y1, x2, y2, width, height)


labels = st.text(
    st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)), min_size=1, max_size=20
).filter(lambda s: s.strip() == s and s.strip())


# ---- parse / render ------------------------------------------------------------------------------


@given(st.text())
def test_parser_never_raises_on_arbitrary_text(text: str) -> None:
    for fmt in boxes.BOX_FORMATS:
        result = boxes.parse_grounded(text, fmt)
        for found in result.boxes:
            assert boxes.validate_box(found.box) is None


@given(st.lists(st.tuples(labels, house_boxes()), max_size=5), st.sampled_from(boxes.BOX_FORMATS))
def test_render_parse_round_trip_in_every_format(items: list, fmt: str) -> None:
    text = " then ".join(boxes.render_grounded(label, box, fmt) for label, box in items)  # type: ignore[arg-type]
    parsed = boxes.parse_grounded(text, fmt)  # type: ignore[arg-type]
    assert [(b.ref, b.box) for b in parsed.boxes] == items
    assert parsed.invalid == []


@given(st.lists(st.tuples(labels, house_boxes()), min_size=1, max_size=4), st.data())
def test_stream_cut_anywhere_yields_only_complete_boxes(items: list, data: st.DataObject) -> None:
    text = "".join(f"Step: {boxes.render_grounded(label, box)}. " for label, box in items)
    cut = data.draw(st.integers(0, len(text)))
    prefix = text[:cut]
    parsed = boxes.parse_grounded(prefix)
    complete = prefix.count("</box>")
    assert [(b.ref, b.box) for b in parsed.boxes] == items[:complete]


def test_parser_tolerates_spacing_and_floats() -> None:
    text = "<ref> red gear </ref>  <box>[ 100.4 ,200,  300.6, 400 ]</box> and <box>5,6,7,8</box>"
    parsed = boxes.parse_grounded(text)
    assert [(b.ref, b.box) for b in parsed.boxes] == [("red gear", (100, 200, 301, 400)), (None, (5, 6, 7, 8))]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("[1, 2, 3]", "wrong_arity"),
        ("[30, 20, 10, 40]", "inverted"),
        ("[10, 20, 10, 40]", "zero_area"),
        ("[10, 20, 30, 1400]", "out_of_range"),
        ("[-5, 20, 30, 40]", "out_of_range"),
        ("[a, b, c, d]", "wrong_arity"),
    ],
)
def test_invalid_boxes_are_reported_not_guessed(content: str, reason: str) -> None:
    parsed = boxes.parse_grounded(f"<ref>x</ref><box>{content}</box>")
    assert parsed.boxes == []
    assert [(i.ref, i.reason) for i in parsed.invalid] == [("x", reason)]


def test_upper_widens_the_valid_range_for_absolute_pixels() -> None:
    text = "<ref>x</ref><box>[10, 20, 1300, 900]</box>"
    assert boxes.parse_grounded(text).invalid[0].reason == "out_of_range"
    assert boxes.parse_grounded(text, upper=1400).boxes[0].box == (10, 20, 1300, 900)
    assert boxes.parse_grounded('{"bbox_2d": [1, 2, 1300, 4]}', "json", upper=1400).boxes[0].box == (1, 2, 1300, 4)
    assert boxes.parse_grounded(text, upper=1200).invalid[0].reason == "out_of_range"


def test_other_formats_parse() -> None:
    assert boxes.parse_grounded("<obj>dog</obj><bbox>[1, 2, 3, 4]</bbox>", "obj").boxes[0].box == (1, 2, 3, 4)
    qwen = "<|object_ref_start|>dog<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|>"
    assert [(b.ref, b.box) for b in boxes.parse_grounded(qwen, "qwen").boxes] == [("dog", (10, 20, 30, 40))]
    js = 'Here: ```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 2, 8], "label": "b"}]\n```'
    parsed = boxes.parse_grounded(js, "json")
    assert [(b.ref, b.box) for b in parsed.boxes] == [("a", (1, 2, 3, 4))]
    assert [(i.ref, i.reason) for i in parsed.invalid] == [("b", "inverted")]


@given(st.lists(st.tuples(labels, house_boxes()), max_size=4), st.sampled_from(boxes.BOX_FORMATS))
def test_map_boxes_converts_between_formats_and_back(items: list, fmt: str) -> None:
    text = "Look: " + " and ".join(boxes.render_grounded(label, box) for label, box in items) + ". Done."
    there = boxes.map_boxes(text, lambda b: b, dst=fmt)  # type: ignore[arg-type]
    back = boxes.map_boxes(there, lambda b: b, src=fmt)  # type: ignore[arg-type]
    assert back == text


# ---- coordinate conventions ----------------------------------------------------------------------


@given(pixel_boxes())
def test_pixels_norm1000_round_trip_within_half_unit(item: tuple) -> None:
    *box, width, height = item
    norm = boxes.pixels_to_norm1000(box, width, height)
    back = boxes.norm1000_to_pixels(norm, width, height)
    for value, original, side in zip(back, box, (width, height, width, height)):
        assert abs(value - original) <= side / 1000 * 0.5 + 1e-6


@given(house_boxes(), sizes, sizes)
def test_norm1000_pixels_round_trip_is_exact(box: tuple, width: int, height: int) -> None:
    assert boxes.pixels_to_norm1000(boxes.norm1000_to_pixels(box, width, height), width, height) == box


@given(pixel_boxes())
def test_viscot_padded_round_trip(item: tuple) -> None:
    *box, width, height = item
    unit = boxes.pixels_to_viscot_padded(box, width, height, decimals=None)
    back = boxes.viscot_padded_to_pixels(unit, width, height)
    assert all(math.isclose(a, b, abs_tol=1e-6 * max(width, height)) for a, b in zip(back, box))
    # With VisCOT's 3 printed decimals the error is at most half a thousandth of the padded side.
    printed = boxes.pixels_to_viscot_padded(box, width, height)
    back = boxes.viscot_padded_to_pixels(printed, width, height)
    assert all(abs(a - b) <= 0.0005 * max(width, height) + 1e-6 for a, b in zip(back, box))


def test_viscot_padding_matches_the_documented_example() -> None:
    assert boxes.pixels_to_viscot_padded((217, 343, 242, 393), 391, 500) == (0.542, 0.686, 0.592, 0.786)
    # Wide image: y shifted by (W - H) // 2.
    assert boxes.viscot_padding(500, 374) == (500, 0, 63)


@settings(max_examples=200)
@given(
    st.integers(10, 6000),
    st.integers(10, 6000),
    st.sampled_from([(56 * 56, 28 * 28 * 16384), (3136, 200704), (28 * 28 * 4, 28 * 28 * 16), (65536, 16777216)]),
    st.sampled_from([28, 32]),  # Qwen2.5-VL: 14 px patches merged 2x2; Qwen3-VL: 16 px
)
def test_smart_resize_matches_transformers(height: int, width: int, budget: tuple[int, int], factor: int) -> None:
    reference = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    if max(height, width) / min(height, width) > 200:
        return
    min_pixels, max_pixels = budget
    expected = reference.smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    ours = boxes.smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    assert ours == tuple(expected)


# ---- IoU and matching ----------------------------------------------------------------------------


def _iou_by_area_sampling(a: tuple, b: tuple) -> float:
    """Independent IoU on integer boxes: count unit cells in each box (no interval arithmetic)."""
    cells_a = {(x, y) for x in range(a[0], a[2]) for y in range(a[1], a[3])}
    cells_b = {(x, y) for x in range(b[0], b[2]) for y in range(b[1], b[3])}
    union = len(cells_a | cells_b)
    return len(cells_a & cells_b) / union if union else 0.0


small_boxes = st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(1, 20), st.integers(1, 20)).map(
    lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3])
)


@given(small_boxes, small_boxes)
def test_iou_matches_cell_counting(a: tuple, b: tuple) -> None:
    assert math.isclose(boxes.iou(a, b), _iou_by_area_sampling(a, b), abs_tol=1e-5)


@given(small_boxes, small_boxes)
def test_iou_is_symmetric_and_bounded(a: tuple, b: tuple) -> None:
    value = boxes.iou(a, b)
    assert 0.0 <= value < 1.0
    assert math.isclose(value, boxes.iou(b, a))


def test_best_match_and_empty_truths() -> None:
    truths = [(0, 0, 10, 10), (100, 100, 200, 200)]
    index, value = boxes.best_match((110, 110, 200, 200), truths)
    assert index == 1 and math.isclose(value, 0.81, abs_tol=1e-6)
    assert boxes.best_match((0, 0, 1, 1), []) == (-1, 0.0)


@given(st.lists(small_boxes, max_size=6), st.lists(small_boxes, max_size=6))
def test_one_to_one_matching_uses_each_box_once(preds: list, truths: list) -> None:
    pairs = boxes.match_one_to_one(preds, truths)
    assert len({p for p, _, _ in pairs}) == len(pairs) == len({t for _, t, _ in pairs})
    assert len(pairs) <= min(len(preds), len(truths))
    assert all(value > 0 for _, _, value in pairs)


def test_one_to_one_matching_does_not_reward_flooding() -> None:
    truth = [(0, 0, 100, 100)]
    flood = [(0, 0, 100, 100)] * 10
    assert len(boxes.match_one_to_one(flood, truth, min_iou=0.5)) == 1


# ---- fast paths agree with the plain definitions ---------------------------------------------------

any_values = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.integers(-5, 1005)


def _validate_box_by_definition(values: list, upper: float = boxes.NORM) -> str | None:
    if len(values) != 4:
        return "wrong_arity"
    if not all(math.isfinite(v) for v in values):
        return "not_finite"
    x1, y1, x2, y2 = values
    if min(values) < 0 or max(values) > upper:
        return "out_of_range"
    if x2 < x1 or y2 < y1:
        return "inverted"
    if x2 == x1 or y2 == y1:
        return "zero_area"
    return None


@settings(max_examples=500)
@given(st.lists(any_values, min_size=3, max_size=5))
def test_validate_box_gives_the_reason_of_its_definition(values: list) -> None:
    assert boxes.validate_box(values) == _validate_box_by_definition(values)


@settings(max_examples=300)
@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=4, max_size=4), sizes, sizes)
def test_pixels_to_norm1000_rounds_the_clamped_scaled_box(box: list, width: int, height: int) -> None:
    scaled = (box[0] / width * 1000, box[1] / height * 1000, box[2] / width * 1000, box[3] / height * 1000)
    assert boxes.pixels_to_norm1000(box, width, height) == tuple(int(round(v)) for v in boxes.clamp_box(scaled, 1000))


_PLAIN_PATTERNS = {  # the patterns as first written: optional ref group first
    "house": r"(?:<ref>([^<]*)</ref>\s*)?<box>([^<]*)</box>",
    "obj": r"(?:<obj>([^<]*)</obj>\s*)?<bbox>([^<]*)</bbox>",
    "qwen": r"(?:<\|object_ref_start\|>([^<]*)<\|object_ref_end\|>\s*)?<\|box_start\|>([^<]*)<\|box_end\|>",
}
_FRAGMENTS = st.sampled_from(
    ["<ref>", "</ref>", "<box>", "</box>", "<obj>", "</obj>", "<bbox>", "</bbox>", "<|object_ref_start|>",
     "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<", ">", " ", "\n", "cat", "[1, 2, 3, 4]", "(1,2),(3,4)"]
)  # fmt: skip


@settings(max_examples=500)
@given(st.lists(_FRAGMENTS, max_size=14).map("".join), st.sampled_from(["house", "obj", "qwen"]))
def test_tag_patterns_match_what_the_plain_patterns_match(text: str, fmt: str) -> None:
    import re

    plain = [(m.span(), m.groups()) for m in re.finditer(_PLAIN_PATTERNS[fmt], text)]
    assert [(m.span(), m.groups()) for m in boxes._PATTERNS[fmt].finditer(text)] == plain


@settings(max_examples=300)
@given(st.lists(st.sampled_from(list("0123456789.,-[] ") + ["1", "25", "-3.5", ", ", "1e3", "+", "x"]), max_size=20))
def test_numbers_fast_path_finds_what_the_regex_finds(parts: list) -> None:
    text = "".join(parts)
    assert boxes._numbers(text) == [float(m) for m in boxes._NUMBER_RE.findall(text)]
