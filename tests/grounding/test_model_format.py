"""The model contract: boxes rendered in a model's frame read back to the same house boxes and every stored
layout loads (image-token counts against the real processors: tests/train/test_tokenize_stage.py)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from vcot.grounding.boxes import render_grounded
from vcot.grounding.model_format import FAMILIES, HOUSE, ModelFormat, VisionGeometry, family_of_model_type

BUDGETS = [(56 * 56, 112 * 112), (56 * 56, 28 * 28 * 1280), (65536, 16777216)]


@st.composite
def house_boxes(draw: st.DrawFn) -> tuple[int, int, int, int]:
    x1, y1 = draw(st.integers(0, 980)), draw(st.integers(0, 980))
    return x1, y1, draw(st.integers(x1 + 20, 1000)), draw(st.integers(y1 + 20, 1000))


def _tolerance(fmt: ModelFormat, box: tuple[int, int, int, int], width: int, height: int) -> tuple[float, float]:
    """House units one rounding to a resized pixel can move a coordinate: half a pixel each way, plus rounding;
    a whole pixel on a side the box is thinner than a pixel on (it keeps one pixel there)."""
    if fmt.coords == "norm1000":
        return 0.0, 0.0
    resized_w, resized_h = fmt.vision.resized(width, height)
    pixels = [resized_w * (box[2] - box[0]) / 1000, resized_h * (box[3] - box[1]) / 1000]
    sides = (resized_w, resized_h)
    return tuple(0.5 + (1000 if extent < 1 else 500) / side for extent, side in zip(pixels, sides))  # type: ignore[return-value]


@given(
    house_boxes(),
    st.integers(16, 3000),
    st.integers(16, 3000),
    st.sampled_from(BUDGETS),
    st.sampled_from(FAMILIES),
    st.sampled_from(["norm1000", "qwen2.5-absolute"]),
    st.sampled_from(["house", "json", "qwen", "obj"]),
)
def test_render_then_read_lands_on_the_house_box(
    box: tuple[int, int, int, int], width: int, height: int, budget: tuple[int, int], family: str, coords: str, syntax: str
) -> None:
    assume(max(width, height) / min(width, height) < 200)
    fmt = ModelFormat.for_family(family, coords=coords, box_syntax=syntax, min_pixels=budget[0], max_pixels=budget[1])  # type: ignore[arg-type]
    model_box = fmt.to_model_box(box, width, height)
    assert model_box[2] > model_box[0] and model_box[3] > model_box[1]  # thinner than a resized pixel: still one
    text = fmt.render(f"First the {render_grounded('red gear', box)} is red. Answer: red", width, height)
    parsed = fmt.read(text, width, height)
    assert not parsed.invalid and len(parsed.boxes) == 1 and parsed.boxes[0].ref == "red gear"
    tol_x, tol_y = _tolerance(fmt, box, width, height)
    assert all(abs(a - b) <= t for a, b, t in zip(parsed.boxes[0].box, box, (tol_x, tol_y, tol_x, tol_y)))
    if coords == "qwen2.5-absolute" and min(fmt.vision.resized(width, height)) >= 1000:
        assert all(abs(a - b) <= 1 for a, b in zip(parsed.boxes[0].box, box))  # within 1 unit on a large image


def test_norm1000_house_is_the_identity_and_other_syntaxes_are_not_guessed() -> None:
    text = "<ref>a</ref><box>[1, 2, 30, 40]</box> Answer: a"
    assert HOUSE.render(text, 10, 10) == text
    assert HOUSE.read(text, 10, 10).boxes[0].box == (1, 2, 30, 40)
    native = ModelFormat.for_family("qwen3-vl", box_syntax="json")
    assert native.render(text, 10, 10) == '{"bbox_2d": [1, 2, 30, 40], "label": "a"} Answer: a'
    assert HOUSE.read(native.render(text, 10, 10), 10, 10).boxes == []  # one interpretation per run


def test_a_qwen25_box_beyond_the_resized_image_is_invalid_not_clamped() -> None:
    fmt = ModelFormat.for_family(coords="qwen2.5-absolute", min_pixels=56 * 56, max_pixels=112 * 112)
    resized_w, resized_h = fmt.vision.resized(200, 100)
    parsed = fmt.read(f"<box>[0, 0, {resized_w + 5}, {resized_h}]</box>", 200, 100)
    assert parsed.boxes == [] and [i.reason for i in parsed.invalid] == ["out_of_range"]


@given(st.sampled_from(FAMILIES), st.sampled_from(["norm1000", "qwen2.5-absolute"]), st.sampled_from(["multimodal", "text"]))
def test_serialization_round_trips(family: str, coords: str, mode: str) -> None:
    fmt = ModelFormat.for_family(family, coords=coords, mode=mode)  # type: ignore[arg-type]
    assert ModelFormat.from_dict(fmt.to_dict()) == fmt
    assert ModelFormat.from_dict({"base_model": "m", "model_format": fmt.to_dict()}) == fmt  # an adapter's card


def test_the_flat_layout_of_earlier_versions_loads_as_qwen25_house() -> None:
    old_card = {"base_model": "m", "coords": "qwen2.5-absolute", "mode": "multimodal", "min_pixels": 3136, "max_pixels": 12544}
    fmt = ModelFormat.from_dict(old_card)
    assert (fmt.family, fmt.coords, fmt.box_syntax, fmt.mode) == ("qwen2.5-vl", "qwen2.5-absolute", "house", "multimodal")
    assert fmt.vision == VisionGeometry(patch_size=14, merge_size=2, min_pixels=3136, max_pixels=12544)
    with pytest.raises(ValueError, match="re-run tokenize"):
        ModelFormat.from_dict({"mode": "text"})


def test_invalid_values_are_refused_with_what_to_use() -> None:
    with pytest.raises(ValueError, match="coords='pixels' is not one of norm1000, qwen2.5-absolute"):
        ModelFormat.for_family(coords="pixels")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_pixels .* is above max_pixels"):
        ModelFormat.for_family(min_pixels=20000, max_pixels=10000)
    with pytest.raises(ValueError, match="not a supported family"):
        family_of_model_type("llava")


@pytest.mark.parametrize(
    ("width", "height", "box"), [(1920, 1080, (100, 502, 400, 504)), (640, 480, (100, 500, 400, 501))]
)
def test_a_box_thinner_than_a_resized_pixel_renders_with_area_and_reads_back(width: int, height: int, box: tuple) -> None:
    fmt = ModelFormat.for_family("qwen2.5-vl", coords="qwen2.5-absolute", max_pixels=28 * 28 * 256)
    text = fmt.render(f"The {render_grounded('wire', box)}. Answer: wire", width, height)
    parsed = fmt.read(text, width, height)
    assert not parsed.invalid and len(parsed.boxes) == 1, text
    read_back = parsed.boxes[0].box
    assert all(got == pytest.approx(want, abs=4) for got, want in zip(read_back, box)), (read_back, box)
