"""The model contract: everything tokenize, train, evaluate and the demo must agree on for one trained model.

The frame a model writes its boxes in is the most consequential fact of a run: a mismatch anywhere trains or
scores boxes in the wrong place while every loss curve looks fine. So it lives here, in one frozen value,
written once by tokenize (its manifest), copied next to the adapter by train (``vcot-model.json``) and read
back by every later stage:

- ``family``: a key of :data:`~vcot.grounding.families.FAMILIES` (``qwen2.5-vl``, ``qwen3-vl``), found from the
  model's ``config.json`` ``model_type``, never typed by hand;
- ``coords``: the frame of the assistant's boxes. ``norm1000`` is the house frame (integers 0-1000 of the
  original image), which is also Qwen3-VL's native frame; ``qwen2.5-absolute`` is absolute pixels of the image
  as the processor resizes it (``smart_resize``), how Qwen2.5-VL was pretrained to ground;
- ``box_syntax``: how a box is written (house ``<ref>/<box>`` by default; the family's native JSON
  ``{"bbox_2d": [...], "label": ...}`` where asked);
- ``vision``: the image geometry (patch size, merge size, pixel budget), which decides both the image-token
  count of a prompt and the resized frame of ``qwen2.5-absolute``;
- ``mode``: prompt with the image (``multimodal``) or the question alone (``text``);
- ``system_prompt`` and ``instruction_text``: the prompt's wording (a system turn; the instruction after the
  question), set at tokenize (``--system-prompt``, ``--instruction``) so evaluate asks exactly as training did.
  Empty: no system turn (the chat template's own default) and :data:`DEFAULT_INSTRUCTION`.

:meth:`ModelFormat.render` turns a house rationale into the model's text and :meth:`ModelFormat.read` is the
one inverse. Nothing here knows a family by name: what differs between families (``model_type`` names, released
image geometry) is read from the one table, :data:`vcot.grounding.families.FAMILIES`, so adding a family is one
row there (docs/models.md, "Adding a model family").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from vcot.grounding.boxes import (
    BOX_FORMATS,
    NORM,
    BoxFormat,
    GroundedBox,
    IntBox,
    InvalidBox,
    ParseResult,
    map_boxes,
    mention_example,
    norm1000_to_pixels,
    parse_grounded,
    pixels_to_norm1000,
    response_regex,
    smart_resize,
    validate_box,
)
from vcot.grounding.families import DEFAULT_FAMILY, FAMILIES, Family

Coords = Literal["norm1000", "qwen2.5-absolute"]
Mode = Literal["multimodal", "text"]
COORDS: tuple[Coords, ...] = ("norm1000", "qwen2.5-absolute")
MODES: tuple[Mode, ...] = ("multimodal", "text")
Layout = Literal["two_turn", "rationale_turn"]
LAYOUTS: tuple[Layout, ...] = ("two_turn", "rationale_turn")
"""two_turn: the assistant turn holds the rationale and ``Answer: ...``; rationale_turn (LaCoT's, for RGFN): the
rationale is a turn of its own (role :data:`RATIONALE_ROLE`) and the assistant turn holds ``Answer: ...`` alone."""
RATIONALE_ROLE = "Analyzer"
IMAGE_PAD = "<|image_pad|>"
"""The image placeholder token of both families: tokenize expands it to the image's token count."""
IGNORE_INDEX = -100
"""Label of tokens that carry no loss (everything but the assistant turn): tokenize writes it, train pads with it."""


@dataclass(frozen=True)
class VisionGeometry:
    """How the image processor cuts an image into tokens (Qwen2-VL-style processors: resize, patch, merge)."""

    patch_size: int
    merge_size: int
    min_pixels: int
    max_pixels: int

    def __post_init__(self) -> None:
        if min(self.patch_size, self.merge_size, self.min_pixels, self.max_pixels) <= 0:
            raise ValueError(f"vision geometry needs positive sizes, got {self}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} is above max_pixels {self.max_pixels}: lower --min-pixels")

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this: one merged token covers ``factor`` x ``factor`` pixels."""
        return self.patch_size * self.merge_size

    def resized(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` of the image as the processor resizes it.

        >>> VisionGeometry(14, 2, 56 * 56, 28 * 28 * 16384).resized(391, 500)
        (392, 504)
        """
        resized_h, resized_w = smart_resize(
            int(height), int(width), factor=self.factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels
        )
        return resized_w, resized_h

    def grid(self, width: int, height: int) -> tuple[int, int, int]:
        """``(t, h, w)`` patch grid of one image, as the processor's ``image_grid_thw`` reports it.

        >>> VisionGeometry(14, 2, 56 * 56, 112 * 112).grid(640, 480)
        (1, 6, 8)
        """
        resized_w, resized_h = self.resized(width, height)
        return 1, resized_h // self.patch_size, resized_w // self.patch_size

    def image_tokens(self, width: int, height: int) -> int:
        """Image tokens in the language model's input: the grid's patches merged ``merge_size`` x ``merge_size``.

        >>> VisionGeometry(14, 2, 56 * 56, 112 * 112).image_tokens(640, 480)
        12
        """
        t, h, w = self.grid(width, height)
        return t * h * w // (self.merge_size * self.merge_size)


_COORD_HINTS: dict[Coords, str] = {
    "norm1000": "coordinates are integers 0-1000 of the image width and height",
    "qwen2.5-absolute": "coordinates are absolute pixels of the image",
}
DEFAULT_INSTRUCTION = (
    "Think step by step. Name each region you rely on as {box_pattern} ({coords_hint}), "
    "then end with 'Answer: <answer>'."
)
"""The instruction after the question. ``{box_pattern}`` and ``{coords_hint}`` are filled in from the format (a
custom ``instruction_text`` may use them too; other braces are left alone)."""


def family_of_model_type(model_type: str) -> Family:
    """The family of a model from its ``config.json`` ``model_type``; refuses one vcot does not know.

    >>> family_of_model_type("qwen3_vl_moe")
    'qwen3-vl'
    """
    for name, row in FAMILIES.items():
        if model_type in row.model_types:
            return name
    known = sorted(known_type for row in FAMILIES.values() for known_type in row.model_types)
    raise ValueError(
        f"model_type {model_type!r} is not a supported family ({', '.join(known)}): see docs/models.md for adding one"
    )


@dataclass(frozen=True)
class ModelFormat:
    """One trained model's contract. Build it with :meth:`for_family` or :meth:`from_dict`; never edit fields."""

    family: Family
    coords: Coords
    box_syntax: BoxFormat
    mode: Mode
    vision: VisionGeometry
    layout: Layout = "two_turn"
    system_prompt: str = ""
    instruction_text: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.system_prompt, str) or not isinstance(self.instruction_text, str):
            raise TypeError("system_prompt and instruction_text must be strings")
        for name, value, allowed in (
            ("layout", self.layout, LAYOUTS),
            ("family", self.family, FAMILIES),
            ("coords", self.coords, COORDS),
            ("box_syntax", self.box_syntax, BOX_FORMATS),
            ("mode", self.mode, MODES),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")

    @classmethod
    def for_family(
        cls,
        family: Family = DEFAULT_FAMILY,
        *,
        coords: Coords = "norm1000",
        box_syntax: BoxFormat = "house",
        mode: Mode = "multimodal",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        patch_size: int | None = None,
        merge_size: int | None = None,
    ) -> ModelFormat:
        """A format with the family's released geometry unless a value is given.

        >>> ModelFormat.for_family("qwen3-vl").vision.factor
        32
        """
        if family not in FAMILIES:
            raise ValueError(f"family={family!r} is not one of {', '.join(FAMILIES)}")
        base = FAMILIES[family]
        vision = VisionGeometry(
            patch_size=patch_size or base.patch_size,
            merge_size=merge_size or base.merge_size,
            min_pixels=min_pixels or base.min_pixels,
            max_pixels=max_pixels or base.max_pixels,
        )
        return cls(family=family, coords=coords, box_syntax=box_syntax, mode=mode, vision=vision)

    @classmethod
    def for_processor(
        cls,
        processor: Any,
        family: Family,
        *,
        coords: Coords = "norm1000",
        box_syntax: BoxFormat = "house",
        mode: Mode = "multimodal",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> ModelFormat:
        """The format of a model whose image processor is ``processor.image_processor`` (its saved budget)."""
        image_processor = processor.image_processor
        size = image_processor.size
        saved_min = size["shortest_edge"] if isinstance(size, Mapping) else size.shortest_edge
        saved_max = size["longest_edge"] if isinstance(size, Mapping) else size.longest_edge
        return cls.for_family(
            family,
            coords=coords,
            box_syntax=box_syntax,
            mode=mode,
            min_pixels=min_pixels or int(saved_min),
            max_pixels=max_pixels or int(saved_max),
            patch_size=int(image_processor.patch_size),
            merge_size=int(image_processor.merge_size),
        )

    # --- the prompt ---------------------------------------------------------------------------------

    def instruction(self) -> str:
        """What we ask for: grounded reasoning in this format's syntax and frame, ending with the answer (the
        format's own ``instruction_text`` when it has one).

        >>> ModelFormat.for_family(box_syntax="json").instruction().startswith('Think step by step. Name each region you rely on as {"bbox_2d"')
        True
        """
        text = self.instruction_text or DEFAULT_INSTRUCTION
        return text.replace("{box_pattern}", mention_example(self.box_syntax)).replace(
            "{coords_hint}", _COORD_HINTS[self.coords]
        )

    # --- boxes: house -> model -> house -------------------------------------------------------------

    def to_model_box(self, box: IntBox, width: int, height: int) -> IntBox:
        """One house box in this model's frame.

        A box thinner than a resized pixel keeps one pixel of width and height: rounded alone, both of its edges
        would land on the same pixel, a zero-area box the model would be taught and :meth:`read` refuses.

        >>> ModelFormat.for_family(coords="qwen2.5-absolute").to_model_box((0, 0, 500, 500), 391, 500)
        (0, 0, 196, 252)
        >>> ModelFormat.for_family(coords="qwen2.5-absolute").to_model_box((100, 500, 400, 501), 640, 480)
        (64, 238, 258, 239)
        """
        if self.coords == "norm1000":
            return tuple(int(v) for v in box)  # type: ignore[return-value]
        resized_w, resized_h = self.vision.resized(width, height)
        x1, y1, x2, y2 = norm1000_to_pixels(box, resized_w, resized_h)
        (x1, x2), (y1, y2) = _pixel_edges(x1, x2, resized_w), _pixel_edges(y1, y2, resized_h)
        return x1, y1, x2, y2

    def render(self, house_text: str, width: int, height: int) -> str:
        """A house rationale (boxes 0-1000 of the original image) as this model writes it.

        >>> fmt = ModelFormat.for_family(coords="qwen2.5-absolute", min_pixels=56 * 56, max_pixels=112 * 112)
        >>> fmt.render("<ref>a</ref><box>[0, 0, 500, 500]</box> Answer: a", 200, 100)
        '<ref>a</ref><box>[0, 0, 70, 28]</box> Answer: a'
        """
        if self.coords == "norm1000" and self.box_syntax == "house":
            return house_text
        return map_boxes(
            house_text, lambda box: self.to_model_box(box, width, height), src="house", dst=self.box_syntax
        )

    def read(self, text: str, width: int, height: int) -> ParseResult:
        """The one inverse: the boxes of a model's ``text`` in house coordinates of the original image.

        A ``qwen2.5-absolute`` box beyond the resized image is invalid (``out_of_range``), never clamped.

        >>> ModelFormat.for_family(coords="qwen2.5-absolute").read("<box>[217, 343, 242, 393]</box>", 391, 500).boxes[0].box
        (554, 681, 617, 780)
        """
        parsed = parse_grounded(text, self.box_syntax, upper=self.read_upper(width, height))
        return self.to_house(parsed, text, width, height)

    def read_upper(self, width: int, height: int) -> int:
        """The largest coordinate this model writes for a ``width`` x ``height`` image: parse its text with it."""
        return NORM if self.coords == "norm1000" else max(self.vision.resized(width, height))

    def to_house(self, parsed: ParseResult, text: str, width: int, height: int) -> ParseResult:
        """Boxes parsed from this model's ``text`` (with :meth:`read_upper`) in house coordinates: the second
        half of :meth:`read`, for a reader that parses by itself (a stream, ``vcot.grounding.streaming``)."""
        if self.coords == "norm1000":
            return parsed
        resized_w, resized_h = self.vision.resized(width, height)
        boxes: list[GroundedBox] = []
        invalid = list(parsed.invalid)
        for found in parsed.boxes:
            _, _, x2, y2 = found.box
            house = pixels_to_norm1000(found.box, resized_w, resized_h)
            reason = "out_of_range" if x2 > resized_w or y2 > resized_h else validate_box(house)
            if reason is None:
                boxes.append(GroundedBox(found.ref, house, found.span))
            else:
                invalid.append(InvalidBox(found.ref, text[found.span[0] : found.span[1]], reason, found.span))
        invalid.sort(key=lambda item: item.span)
        return ParseResult(boxes, invalid)

    def response_regex(self) -> str:
        """The regex of this model's well-formed responses, for constrained decoding (``--structured-boxes``): its
        box syntax, coordinates in its frame's range (0-1000; in pixels, as many digits as the longest side its pixel
        budget allows: a bound on digits, not the image's size). See :func:`vcot.grounding.boxes.response_regex`.

        >>> ModelFormat.for_family().response_regex().count("1000|")
        4
        """
        if self.box_syntax == "qwen":
            raise ValueError("the qwen box syntax is written in special tokens, which a regex over text cannot "
                             "constrain: constrain a model trained in the house, obj or json syntax")  # fmt: skip
        # the longest side a resized image can have: its area is at most max_pixels, its aspect at most 200
        longest = max(self.vision.max_pixels // self.vision.factor, math.isqrt(200 * self.vision.max_pixels))
        upper = NORM if self.coords == "norm1000" else longest + self.vision.factor
        return response_regex(self.box_syntax, upper)

    def other_frame(self) -> ModelFormat:
        """This format reading boxes in the other frame (0-1000 <-> pixels of the resized image): what a harness that
        reads a box both ways and keeps the better one (lmms-eval's RefCOCO) would also have counted.

        >>> ModelFormat.for_family().other_frame().coords
        'qwen2.5-absolute'
        """
        return dataclasses.replace(self, coords=COORDS[1 - COORDS.index(self.coords)])

    # --- storage ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """
        >>> ModelFormat.from_dict(ModelFormat.for_family("qwen3-vl").to_dict()) == ModelFormat.for_family("qwen3-vl")
        True
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelFormat:
        """Read a stored format: the current layout (alone or as the ``model_format`` key of a tokenize manifest's
        config or an adapter's ``vcot-model.json``), or the flat one of earlier versions (Qwen2.5-VL, house syntax).

        >>> ModelFormat.from_dict({"mode": "text", "coords": "norm1000", "min_pixels": 3136, "max_pixels": 12544}).vision
        VisionGeometry(patch_size=14, merge_size=2, min_pixels=3136, max_pixels=12544)
        """
        if isinstance(data.get("model_format"), Mapping):
            data = data["model_format"]
        if "vision" in data:
            return cls(
                family=data["family"],
                coords=data["coords"],
                box_syntax=data.get("box_syntax", "house"),
                mode=data["mode"],
                vision=VisionGeometry(**data["vision"]),
                layout=data.get("layout", "two_turn"),  # stored before layouts existed: two turns
                system_prompt=data.get("system_prompt", ""),  # stored before the wording was: today's default
                instruction_text=data.get("instruction_text", ""),
            )
        missing = [key for key in ("mode", "coords", "min_pixels", "max_pixels") if key not in data]
        if missing:
            raise ValueError(f"no model format here (lacks {', '.join(missing)}): re-run tokenize with this version")
        return cls.for_family(
            "qwen2.5-vl",  # the only family of those versions, whatever the default is now
            coords=data["coords"],
            mode=data["mode"],
            min_pixels=int(data["min_pixels"]),
            max_pixels=int(data["max_pixels"]),
            patch_size=int(data.get("patch_size") or 0) or None,
            merge_size=int(data.get("merge_size") or 0) or None,
        )

    def differences(self, other: ModelFormat) -> dict[str, tuple[Any, Any]]:
        """``{field: (mine, theirs)}`` for every field that differs (flattened vision fields), for warnings.

        >>> a = ModelFormat.for_family()
        >>> a.differences(dataclasses.replace(a, coords="qwen2.5-absolute"))
        {'coords': ('norm1000', 'qwen2.5-absolute')}
        """
        mine, theirs = _flat(self.to_dict()), _flat(other.to_dict())
        return {key: (mine[key], theirs[key]) for key in mine if mine[key] != theirs[key]}


def _flat(data: dict[str, Any]) -> dict[str, Any]:
    vision = data.pop("vision")
    return {**data, **vision}


HOUSE = ModelFormat.for_family()
"""The house format on the default family: what a record's boxes are when nothing else is said."""


def _pixel_edges(low: float, high: float, side: int) -> tuple[int, int]:
    """One side's two edges rounded to pixels, at least one pixel apart within ``[0, side]``: a box thinner than a
    pixel gets the pixel nearer its middle on that side.

    >>> _pixel_edges(100.2, 300.7, 336), _pixel_edges(238.0, 238.3, 336), _pixel_edges(237.7, 238.0, 336)
    ((100, 301), (238, 239), (237, 238))
    >>> _pixel_edges(335.8, 336.0, 336), _pixel_edges(0.0, 0.2, 336)
    ((335, 336), (0, 1))
    """
    rounded_low, rounded_high = int(round(low)), int(round(high))
    if rounded_high > rounded_low:
        return rounded_low, rounded_high
    below = (low + high) / 2 < rounded_low
    start = rounded_low - 1 if (below and rounded_low > 0) or rounded_low >= side else rounded_low
    return start, start + 1
