"""The image as the page shows it, with each complete mention's box drawn: one colour and label per mention.

Boxes arrive in house coordinates (0-1000 of the original image, read through the model's format), so they
are drawn on any copy of the image by scaling to its size: the shown copy is enlarged or shrunk for reading.
The same colour marks the mention in the streamed text.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from vcot.grounding.boxes import GroundedBox, InvalidBox, norm1000_to_pixels

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#0fa5b8", "#f032e6", "#9a6324")
"""Distinct, legible colours, cycled over the mentions in the order they are written."""
DISPLAY_SIDES = (512, 1024)
"""The shown image's longer side is brought into this range: small images enlarged, huge ones shrunk."""
UNREADABLE = "unreadable box"


def colour(index: int) -> str:
    """
    >>> colour(0), colour(len(PALETTE))
    ('#e6194b', '#e6194b')
    """
    return PALETTE[index % len(PALETTE)]


def label(index: int, found: GroundedBox) -> str:
    """
    >>> label(0, GroundedBox("red gear", (1, 2, 3, 4), (0, 9))), label(1, GroundedBox(None, (1, 2, 3, 4), (0, 9)))
    ('1 red gear', '2')
    """
    return f"{index + 1} {found.ref}" if found.ref else str(index + 1)


def display_copy(image: Image.Image) -> Image.Image:
    """A copy whose longer side lies in :data:`DISPLAY_SIDES`.

    >>> display_copy(Image.new("RGB", (160, 120))).size, display_copy(Image.new("RGB", (4000, 3000))).size
    ((512, 384), (1024, 768))
    """
    low, high = DISPLAY_SIDES
    side = max(image.size)
    scale = low / side if side < low else high / side if side > high else 1.0
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS) if scale != 1.0 else image.copy()


def outline_corners(box: Sequence[int], width: int, height: int) -> tuple[int, int, int, int]:
    """The pixel corners an outline of the 0-1000 ``box`` is drawn on: inside the image (its outer edge on the box's
    edge) and never inverted, so a box along the edge of a thin image is a line on that edge.

    >>> outline_corners((0, 0, 1000, 1000), 200, 100)
    (0, 0, 199, 99)
    >>> outline_corners((100, 995, 400, 1000), 1024, 77)  # y1 rounds to 77, past the last row
    (102, 76, 410, 76)
    """
    x1, y1, x2, y2 = (round(v) for v in norm1000_to_pixels(box, width, height))
    x1, x2 = (min(max(v, 0), width - 1) for v in (x1, x2))
    y1, y2 = (min(max(v, 0), height - 1) for v in (y1, y2))
    return x1, y1, max(x1, x2), max(y1, y2)


def draw_boxes(image: Image.Image, boxes: Sequence[GroundedBox]) -> Image.Image:
    """A copy of ``image`` with every box outlined in its colour and labelled (above the box when there is room)."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 200))
    font = ImageFont.load_default(size=max(12, width * 6))
    for index, found in enumerate(boxes):
        x1, y1, x2, y2 = outline_corners(found.box, out.width, out.height)
        fill = colour(index)
        draw.rectangle((x1, y1, x2, y2), outline=fill, width=width)
        text = label(index, found)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font, anchor="lt")
        pad = width
        tag_h = bottom - top + 2 * pad
        tag_y = y1 - tag_h if y1 >= tag_h else y1
        draw.rectangle((x1, tag_y, x1 + right - left + 2 * pad, tag_y + tag_h), fill=fill)
        draw.text((x1 + pad, tag_y + pad), text, fill="white", font=font, anchor="lt")
    return out


def highlighted(
    text: str, boxes: Sequence[GroundedBox], invalid: Sequence[InvalidBox]
) -> tuple[list[tuple[str, str | None]], dict[str, str]]:
    """The streamed text as ``(segment, label)`` pairs, each mention labelled as on the image, and label -> colour.

    Boxes of one JSON list share its span: it gets their labels joined. An unreadable box is labelled grey.

    >>> highlighted("a <box>[1, 2, 3, 4]</box>.", [GroundedBox(None, (1, 2, 3, 4), (2, 25))], [])
    ([('a ', None), ('<box>[1, 2, 3, 4]</box>', '1'), ('.', None)], {'1': '#e6194b'})
    """
    names: dict[tuple[int, int], list[tuple[str, str]]] = {}
    for index, found in enumerate(boxes):
        names.setdefault(found.span, []).append((label(index, found), colour(index)))
    for bad in invalid:
        names.setdefault(bad.span, []).append((f"{UNREADABLE}: {bad.reason}", "#9e9e9e"))
    segments: list[tuple[str, str | None]] = []
    colours: dict[str, str] = {}
    cursor = 0
    for start, end in sorted(names):
        if start < cursor:  # inside a span already shown
            continue
        if start > cursor:
            segments.append((text[cursor:start], None))
        name = " + ".join(part for part, _ in names[(start, end)])
        colours[name] = names[(start, end)][0][1]
        segments.append((text[start:end], name))
        cursor = end
    if cursor < len(text):
        segments.append((text[cursor:], None))
    return segments, colours
