"""Drawing: a box the model wrote lands where it points on the shown image, in both coordinate frames."""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image

from vcot.demo.drawing import PALETTE, display_copy, draw_boxes, highlighted
from vcot.grounding.boxes import parse_grounded
from vcot.grounding.model_format import HOUSE, ModelFormat

WIDTH, HEIGHT = 400, 200
HOUSE_TEXT = "The <ref>sign</ref><box>[250, 250, 750, 750]</box> and <ref>door</ref><box>[50, 100, 150, 900]</box>."
ABSOLUTE = ModelFormat.for_family(coords="qwen2.5-absolute", min_pixels=56 * 56, max_pixels=112 * 112)


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


@pytest.mark.parametrize("fmt", [HOUSE, ABSOLUTE], ids=["norm1000", "qwen2.5-absolute"])
def test_each_box_is_drawn_where_the_model_points_in_its_own_frame(fmt: ModelFormat) -> None:
    model_text = fmt.render(HOUSE_TEXT, WIDTH, HEIGHT)  # what a model trained in this frame writes
    boxes = fmt.read(model_text, WIDTH, HEIGHT).boxes
    shown = display_copy(Image.new("RGB", (WIDTH, HEIGHT), "white"))
    drawn = draw_boxes(shown, boxes)
    # The sign is the middle half of the image whatever size it is shown at: 512x256 here.
    assert shown.size == (512, 256)
    sign = _rgb(PALETTE[0])
    assert [drawn.getpixel(xy) for xy in [(128, 128), (384, 128), (256, 192)]] == [sign] * 3
    assert drawn.getpixel((256, 128)) == (255, 255, 255)  # an outline: the inside stays visible
    assert drawn.getpixel((26, 128)) == _rgb(PALETTE[1])  # the door, in the next colour
    assert shown.getpixel((128, 128)) == (255, 255, 255)  # drawn on a copy


def test_the_absolute_frame_is_not_the_house_frame() -> None:
    """Read as house boxes, Qwen2.5-VL's pixels of the resized image would point elsewhere: the frame matters."""
    model_text = ABSOLUTE.render(HOUSE_TEXT, WIDTH, HEIGHT)
    assert ABSOLUTE.vision.resized(WIDTH, HEIGHT) == (140, 56)
    assert [b.box for b in parse_grounded(model_text).boxes][0] == (35, 14, 105, 42)
    assert [b.box for b in ABSOLUTE.read(model_text, WIDTH, HEIGHT).boxes][0] == (250, 250, 750, 750)


def test_a_box_along_the_edge_of_a_thin_image_is_drawn_on_that_edge() -> None:
    """A 4000x300 upload is shown 1024x77: a valid box ending at the bottom rounded to an inverted outline, and PIL's
    error stopped the answer's stream."""
    shown = display_copy(Image.new("RGB", (4000, 300), "white"))
    (box,) = parse_grounded("<ref>rail</ref><box>[100, 995, 400, 1000]</box>").boxes
    drawn = draw_boxes(shown, [box])
    assert shown.size == (1024, 77) and drawn.getpixel((250, 76)) == _rgb(PALETTE[0])


def test_labels_sit_above_a_box_or_inside_one_at_the_top() -> None:
    shown = Image.new("RGB", (512, 512), "white")
    text = "<ref>a</ref><box>[100, 0, 300, 200]</box><ref>b</ref><box>[500, 500, 900, 900]</box>"
    top, low = parse_grounded(text).boxes
    drawn = draw_boxes(shown, [top, low])
    assert drawn.getpixel((53, 3)) == _rgb(PALETTE[0])  # no room above: the tag is inside, at the top
    assert drawn.getpixel((258, 250)) == _rgb(PALETTE[1])  # room above: the tag sits on the box's top edge


def test_the_text_marks_each_mention_in_its_box_colour_and_json_lists_share_one_span() -> None:
    text = ('See [{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8], "label": "b"}] '
            'and {"bbox_2d": [9, 9, 1, 1]}')
    parsed = dataclasses.replace(HOUSE, box_syntax="json").read(text, WIDTH, HEIGHT)
    segments, colours = highlighted(text, parsed.boxes, parsed.invalid)
    assert "".join(part for part, _ in segments) == text
    assert [name for _, name in segments if name] == ["1 a + 2 b", "unreadable box: inverted"]
    assert colours == {"1 a + 2 b": PALETTE[0], "unreadable box: inverted": "#9e9e9e"}


def test_the_shown_copy_is_sized_for_reading() -> None:
    assert display_copy(Image.new("RGB", (112, 84))).size == (512, 384)
    assert display_copy(Image.new("RGB", (8000, 2000))).size == (1024, 256)
    assert display_copy(Image.new("RGB", (700, 500))).size == (700, 500)
