"""Boxes of a response, read in the coordinate convention the model was trained on, in house coordinates.

There is exactly one interpretation per run: the convention recorded by tokenize/train (the adapter's
``vcot-model.json``) or given by ``--coords``. We never try several and keep the best.

- ``norm1000``: the house format, integers 0-1000 of the original image.
- ``qwen2.5-absolute``: absolute pixels of the image as Qwen2.5-VL's ``smart_resize`` resized it (within
  the run's min/max pixels); mapped back with ``vcot.boxes.qwen25_to_norm1000``. A box beyond the resized
  image is invalid (``out_of_range``), not clamped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vcot.boxes import (
    QWEN_MAX_PIXELS,
    QWEN_MIN_PIXELS,
    BoxFormat,
    GroundedBox,
    InvalidBox,
    ParseResult,
    parse_grounded,
    qwen25_to_norm1000,
    smart_resize,
    validate_box,
)
from vcot.prompts import COORDS, Coords


def read_boxes(
    text: str,
    record: dict[str, Any],
    *,
    coords: Coords = "norm1000",
    fmt: BoxFormat = "house",
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> ParseResult:
    """Parse ``text`` and return its boxes in house coordinates of ``record``'s original image.

    >>> record = {"width": 391, "height": 500}
    >>> read_boxes("<box>[217, 343, 242, 393]</box>", record, coords="qwen2.5-absolute").boxes[0].box
    (554, 681, 617, 780)
    """
    if coords == "norm1000":
        return parse_grounded(text, fmt)
    if coords != "qwen2.5-absolute":
        raise ValueError(f"unknown coordinate convention {coords!r}; use one of {COORDS}")
    width, height = int(record["width"]), int(record["height"])
    resized_h, resized_w = smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
    parsed = parse_grounded(text, fmt, upper=max(resized_w, resized_h))
    boxes: list[GroundedBox] = []
    invalid = list(parsed.invalid)
    for found in parsed.boxes:
        _, _, x2, y2 = found.box
        house = qwen25_to_norm1000(found.box, width, height, min_pixels=min_pixels, max_pixels=max_pixels)
        reason = "out_of_range" if x2 > resized_w or y2 > resized_h else validate_box(house)
        if reason is None:
            boxes.append(GroundedBox(found.ref, house, found.span))
        else:
            invalid.append(InvalidBox(found.ref, text[found.span[0] : found.span[1]], reason, found.span))
    invalid.sort(key=lambda item: item.span)
    return ParseResult(boxes, invalid)


@dataclass(frozen=True)
class Readback:
    """The one way a run reads boxes back: convention, text format and (for qwen2.5-absolute) pixel budget."""

    coords: Coords = "norm1000"
    fmt: BoxFormat = "house"
    min_pixels: int = QWEN_MIN_PIXELS
    max_pixels: int = QWEN_MAX_PIXELS

    def read(self, text: str, record: dict[str, Any]) -> ParseResult:
        return read_boxes(
            text, record, coords=self.coords, fmt=self.fmt, min_pixels=self.min_pixels, max_pixels=self.max_pixels
        )
