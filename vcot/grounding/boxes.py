"""Grounded boxes: the one implementation every stage uses.

The house format names an object and its box inline in reasoning text::

    <ref>red gear</ref><box>[100, 200, 300, 400]</box>

Boxes are ``[x1, y1, x2, y2]`` integers in 0-1000 of the *original* image, (0, 0) top-left.
Other formats and coordinate conventions are converted to and from it explicitly here, never guessed
elsewhere. Every function is pure; parsers never raise on arbitrary text.

>>> render_grounded("red gear", (100, 200, 300, 400))
'<ref>red gear</ref><box>[100, 200, 300, 400]</box>'
>>> [b.box for b in parse_grounded("a <ref>cat</ref><box>[1,2,3,4]</box> and <box>[5, 6").boxes]
[(1, 2, 3, 4)]
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

Box = tuple[float, float, float, float]
"""``(x1, y1, x2, y2)`` in whatever unit the function says."""
IntBox = tuple[int, int, int, int]

NORM = 1000
"""Side of the house coordinate space."""

IOU_EPS = 1e-6

BoxFormat = Literal["house", "obj", "qwen", "json"]
BOX_FORMATS: tuple[BoxFormat, ...] = ("house", "obj", "qwen", "json")

# Qwen2.5-VL image processor defaults (preprocessor_config.json of the released checkpoints).
QWEN_PATCH_FACTOR = 28
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 28 * 28 * 16384


# --------------------------------------------------------------------------------------------------
# Parsing and rendering
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroundedBox:
    """One valid box found in text: ``box`` in 0-1000 integers, ``span`` the characters it came from."""

    ref: str | None
    box: IntBox
    span: tuple[int, int]


@dataclass(frozen=True)
class InvalidBox:
    """A complete box tag whose content is not a usable box, with a reason code (see ``validate_box``)."""

    ref: str | None
    raw: str
    reason: str
    span: tuple[int, int]


@dataclass(frozen=True)
class ParseResult:
    boxes: list[GroundedBox]
    invalid: list[InvalidBox]

    @property
    def refs(self) -> list[str]:
        return [b.ref for b in self.boxes if b.ref]


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER_RE = re.compile(_NUMBER)


@dataclass(frozen=True)
class MentionTags:
    """How a tag syntax writes one mention: ``{ref_open}label{ref_close}{box_open}coordinates{box_close}``."""

    ref_open: str
    ref_close: str
    box_open: str
    box_close: str
    coordinates: str = "[{x1}, {y1}, {x2}, {y2}]"
    """How the four integers are printed between the box tags."""


BOX_TAGS: dict[BoxFormat, MentionTags] = {
    "house": MentionTags("<ref>", "</ref>", "<box>", "</box>"),
    "obj": MentionTags("<obj>", "</obj>", "<bbox>", "</bbox>"),
    "qwen": MentionTags(
        "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "({x1},{y1}),({x2},{y2})"
    ),
}
"""The tag syntaxes, spelled out once: parsing, rendering, streaming and the box-aware penalty read this table.
``json`` has no tags: its box is the value of the :data:`JSON_BOX_KEY` key of an object."""
JSON_BOX_KEY = "bbox_2d"


def _mention_pattern(tags: MentionTags) -> re.Pattern[str]:
    """The regex of one complete mention of ``tags``: optional ref, then the box; groups (ref, box content).

    Only *complete* tags match, so a stream cut mid-tag yields only the finished boxes; ``[^<]`` keeps a match
    from spanning other tags. The characters both opening tags begin with stand outside the optional ref group
    (``<(?:ref>...</ref>\\s*<)?box>``), so the regex engine skips to the next ``<`` instead of trying every
    position: 3-4x faster on rationale text, same matches.

    >>> _mention_pattern(BOX_TAGS["house"]).pattern
    '<(?:ref>([^<]*)</ref>\\\\s*<)?box>([^<]*)</box>'
    """
    shared = os.path.commonprefix([tags.ref_open, tags.box_open])
    ref_rest, box_rest = tags.ref_open[len(shared) :], tags.box_open[len(shared) :]
    return re.compile(
        f"{re.escape(shared)}(?:{re.escape(ref_rest)}([^<]*){re.escape(tags.ref_close)}\\s*{re.escape(shared)})?"
        f"{re.escape(box_rest)}([^<]*){re.escape(tags.box_close)}"
    )


_PATTERNS: dict[BoxFormat, re.Pattern[str]] = {fmt: _mention_pattern(tags) for fmt, tags in BOX_TAGS.items()}


def validate_box(values: Sequence[float], *, upper: float = NORM) -> str | None:
    """Return ``None`` for a usable box in ``[0, upper]``, else a reason code.

    Reason codes: ``wrong_arity``, ``not_a_number`` (a value that is text, ``None``, a list...: data written by
    hand), ``not_finite``, ``out_of_range``, ``inverted``, ``zero_area``.

    >>> validate_box([10, 10, 5, 20])
    'inverted'
    >>> validate_box([0, 0, 1000, 1000]) is None
    True
    >>> validate_box([None, 0, "10", 10]), validate_box(5)
    ('not_a_number', 'wrong_arity')
    """
    if not hasattr(values, "__len__") or len(values) != 4:
        return "wrong_arity"
    x1, y1, x2, y2 = values
    try:
        if 0 <= x1 < x2 <= upper and 0 <= y1 < y2 <= upper:  # the usual case, one comparison chain (NaN fails it)
            return None
        if not all(math.isfinite(v) for v in values):
            return "not_finite"
    except TypeError:  # free in the usual case: a non-number only costs when it is there
        return "not_a_number"
    if min(values) < 0 or max(values) > upper:
        return "out_of_range"
    if x2 < x1 or y2 < y1:
        return "inverted"
    if x2 == x1 or y2 == y1:
        return "zero_area"
    return None


_PLAIN_BOX_CHARS = "0123456789.,-[] "


def _numbers(raw: str) -> list[float]:
    """Every number in ``raw``. A plain ``[x1, y1, x2, y2]`` (digits, signs, points, commas, brackets, spaces)
    is split on commas, several times faster than the regex and the same numbers; anything else uses the regex.
    """
    if not raw.strip(_PLAIN_BOX_CHARS):
        try:
            return [float(part) for part in raw.strip(" []").split(",")]
        except ValueError:  # "1 2", "1,,2", "[1, 2], [3": not one number per comma-separated part
            pass
    return [float(m) for m in _NUMBER_RE.findall(raw)]


def _to_house_box(values: list[float], upper: float = NORM) -> tuple[IntBox | None, str | None]:
    """Round parsed values to integers and validate them in ``[0, upper]`` (rounding first, so 999.6 is valid)."""
    if len(values) != 4:
        return None, "wrong_arity"
    try:
        box = (round(values[0]), round(values[1]), round(values[2]), round(values[3]))
    except (ValueError, OverflowError):  # round() of NaN / infinity
        return None, "not_finite"
    reason = validate_box(box, upper=upper)
    return (box, None) if reason is None else (None, reason)  # type: ignore[return-value]


def parse_grounded(text: str, fmt: BoxFormat = "house", *, upper: float = NORM) -> ParseResult:
    """Find every complete box in ``text`` written in ``fmt``; values are read as 0-1000 house coordinates.

    Tolerates spacing, float values and missing brackets; a box that is not usable is reported in
    ``invalid`` with its reason, never repaired. Never raises on arbitrary text. ``upper`` widens the
    valid range for text in other coordinates (Qwen2.5-VL's absolute pixels can exceed 1000); the
    caller converts such boxes to house coordinates itself.

    >>> parse_grounded("<ref>a</ref> <box>[ 10.4 ,20, 30 ,40 ]</box>").boxes[0].box
    (10, 20, 30, 40)
    >>> parse_grounded("<ref>a</ref><box>[30, 20, 10, 40]</box>").invalid[0].reason
    'inverted'
    """
    if not isinstance(text, str):
        return ParseResult([], [])
    return scan_grounded(text, fmt, upper=upper).result


@dataclass(frozen=True)
class Scan:
    """The mentions :func:`scan_grounded` read, and where to scan again once the text has grown."""

    result: ParseResult
    resume: int


# A whole mention holds at most this many ``<``: one that more text could still complete starts at one of the
# text's last few ``<``.
_TAGS_PER_MENTION = 4
_TOKEN_TAIL = re.compile(r"[-+.\w]*")


def scan_grounded(
    text: str, fmt: BoxFormat = "house", *, upper: float = NORM, start: int = 0, final: bool = True
) -> Scan:
    """:func:`parse_grounded` from ``start`` on, for text that may still grow (a stream) when ``final`` is false.

    Then only mentions that no appended text can change are reported, and ``resume`` is where the first one
    that more text could still complete begins (``len(text)`` when there is none): scanning the grown text
    from there finds exactly what :func:`parse_grounded` finds in it after the mentions already reported.

    >>> scan = scan_grounded("<box>[1, 2, 3, 4]</box> then <ref>b</ref><bo", final=False)
    >>> [b.box for b in scan.result.boxes], scan.resume
    ([(1, 2, 3, 4)], 29)
    """
    if fmt == "json":
        return _scan_json(text, upper, start, final)
    boxes: list[GroundedBox] = []
    invalid: list[InvalidBox] = []
    end = start
    for match in _PATTERNS[fmt].finditer(text, start):
        ref = match.group(1).strip() if match.group(1) is not None else None
        raw = match.group(2)
        box, reason = _to_house_box(_numbers(raw), upper)
        if box is None:
            invalid.append(InvalidBox(ref or None, raw, reason or "invalid", match.span()))
        else:
            boxes.append(GroundedBox(ref or None, box, match.span()))
        end = match.end()
    return Scan(ParseResult(boxes, invalid), len(text) if final else _open_mention(text, fmt, end))


def _open_mention(text: str, fmt: BoxFormat, start: int) -> int:
    """Where a mention that more text could complete begins after ``start``: the earliest of the last
    :data:`_TAGS_PER_MENTION` ``<`` that begins (or is cut inside) an opening tag; ``len(text)`` if none."""
    tags = (BOX_TAGS[fmt].ref_open, BOX_TAGS[fmt].box_open)
    longest = max(map(len, tags))
    candidates: list[int] = []
    pos = len(text)
    while len(candidates) < _TAGS_PER_MENTION:
        pos = text.rfind("<", start, pos)
        if pos < 0:
            break
        candidates.append(pos)
    for pos in reversed(candidates):
        head = text[pos : pos + longest]
        if any(tag.startswith(head) or head.startswith(tag) for tag in tags):
            return pos
    return len(text)


def _scan_json(text: str, upper: float, start: int, final: bool) -> Scan:
    """Parse Qwen-style JSON: objects with ``bbox_2d`` (and ``label``), bare or in a list, anywhere in text."""
    boxes: list[GroundedBox] = []
    invalid: list[InvalidBox] = []
    decoder = json.JSONDecoder()
    pos = start
    while True:
        begin = _next_json_start(text, pos)
        if begin < 0:
            break
        try:
            value, end = decoder.raw_decode(text, begin)
        except json.JSONDecodeError as exc:
            if not final and _more_text_could_fix(text, exc):
                return Scan(ParseResult(boxes, invalid), begin)
            pos = begin + 1
            continue
        except (ValueError, RecursionError):
            pos = begin + 1
            continue
        _json_items(value, (begin, end), upper, boxes, invalid)
        pos = end
    return Scan(ParseResult(boxes, invalid), len(text))


def _more_text_could_fix(text: str, error: json.JSONDecodeError) -> bool:
    """Whether a failed decode may succeed once text is appended: it failed at the end of the text, in an
    unterminated string or ``\\u`` escape, or in a number or literal that runs to the end (``[1.``, ``[tr``)."""
    if error.msg.startswith("Unterminated string"):
        return True
    if error.msg.startswith("Invalid \\uXXXX") and len(text) - error.pos < 6:
        return True
    return _TOKEN_TAIL.fullmatch(text, error.pos) is not None


def _json_items(
    value: object, span: tuple[int, int], upper: float, boxes: list[GroundedBox], invalid: list[InvalidBox]
) -> None:
    """The ``bbox_2d`` objects of one decoded JSON value, bare or in a list, as boxes or invalid boxes."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, dict) or JSON_BOX_KEY not in item:
            continue
        label = item.get("label")
        ref = str(label).strip() if label is not None else None
        raw = item[JSON_BOX_KEY]
        values = raw if isinstance(raw, list) else []
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            invalid.append(InvalidBox(ref or None, json.dumps(raw), "not_numeric", span))
            continue
        box, reason = _to_house_box([float(v) for v in values], upper)
        if box is None:
            invalid.append(InvalidBox(ref or None, json.dumps(raw), reason or "invalid", span))
        else:
            boxes.append(GroundedBox(ref or None, box, span))


def _next_json_start(text: str, pos: int) -> int:
    candidates = [i for i in (text.find("{", pos), text.find("[", pos)) if i >= 0]
    return min(candidates) if candidates else -1


def format_box(box: Sequence[int]) -> str:
    """``[x1, y1, x2, y2]`` exactly as the house format prints it."""
    return "[" + ", ".join(map(str, map(int, box))) + "]"


def render_grounded(ref: str | None, box: Sequence[int], fmt: BoxFormat = "house") -> str:
    """Render one grounded object in ``fmt``.

    >>> render_grounded("cat", (1, 2, 3, 4), "qwen")
    '<|object_ref_start|>cat<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>'
    >>> render_grounded("cat", (1, 2, 3, 4), "json")
    '{"bbox_2d": [1, 2, 3, 4], "label": "cat"}'
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    if fmt == "json":
        item: dict[str, object] = {JSON_BOX_KEY: [x1, y1, x2, y2]}
        if ref:
            item["label"] = ref
        return json.dumps(item)
    if fmt not in BOX_TAGS:
        raise ValueError(f"unknown box format {fmt!r}; use one of {BOX_FORMATS}")
    tags = BOX_TAGS[fmt]
    coordinates = tags.coordinates.format(x1=x1, y1=y1, x2=x2, y2=y2)
    return (f"{tags.ref_open}{ref}{tags.ref_close}" if ref else "") + f"{tags.box_open}{coordinates}{tags.box_close}"


def integer_regex(upper: int) -> str:
    """A regex of the integers 0..``upper`` written without leading zeros (0..1000 exactly; a larger bound: every
    integer of as many digits).

    >>> integer_regex(1000)
    '(?:1000|[1-9][0-9]{0,2}|0)'
    >>> [bool(re.fullmatch(integer_regex(1000), s)) for s in ("0", "7", "999", "1000", "1001", "07")]
    [True, True, True, True, False, False]
    """
    if upper == NORM:
        return "(?:1000|[1-9][0-9]{0,2}|0)"
    return f"(?:[1-9][0-9]{{0,{len(str(upper)) - 1}}}|0)"


def response_regex(fmt: BoxFormat, upper: int = NORM) -> str:
    """A regex every response whose mentions are well formed matches: free text, and mentions of ``fmt`` whose four
    coordinates are integers in 0..``upper`` (:func:`integer_regex`). For constrained decoding (vLLM's structured
    outputs): a model decoded under it cannot write a malformed box or a coordinate out of range; it can still
    write a box whose corners are swapped. The text outside mentions may not hold the syntax's opening character
    (``<``; for ``json``, ``{`` too).

    >>> pattern = re.compile(response_regex("house"))
    >>> bool(pattern.fullmatch("The <ref>cat</ref><box>[1, 2, 300, 1000]</box> sits. Answer: cat"))
    True
    >>> bool(pattern.fullmatch("<box>[1, 2, 3, 1001]</box>")), bool(pattern.fullmatch("<box>[1, 2, 3]</box>"))
    (False, False)
    >>> bool(re.fullmatch(response_regex("json"), 'I see {"bbox_2d": [1, 2, 3, 4], "label": "cat"}. Answer: cat'))
    True
    """
    free = "[^<{]" if fmt == "json" else "[^<]"
    return f"(?:{free}|{mention_regex(fmt, upper)})*"


def mention_regex(fmt: BoxFormat, upper: int = NORM) -> str:
    """A regex of one well-formed mention of ``fmt`` (optional label, then the box) with coordinates in 0..``upper``.
    The spacing the parser takes is taken too (``[1,2,3,4]``, a space between the label and the box), so a model
    trained on a teacher's spacing is not pushed off it; a json label is a JSON string as ``json.dumps`` writes it.

    >>> bool(re.fullmatch(mention_regex("obj"), "<obj>cup</obj> <bbox>[0,10, 20, 1000]</bbox>"))
    True
    >>> bool(re.fullmatch(mention_regex("json"), render_grounded('caf\u00e9 "b" {x}', (1, 2, 3, 4), "json")))
    True
    """
    number = integer_regex(upper)
    if fmt == "json":
        label = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4}){0,200}"'
        return rf'\{{"{JSON_BOX_KEY}": \[{number}, ?{number}, ?{number}, ?{number}\](?:, "label": {label})?\}}'
    if fmt not in BOX_TAGS:
        raise ValueError(f"unknown box format {fmt!r}; use one of {BOX_FORMATS}")
    tags = BOX_TAGS[fmt]
    coordinates = re.escape(tags.coordinates.format(x1="X", y1="X", x2="X", y2="X")).replace("\\ ", " ?")
    return (f"(?:{re.escape(tags.ref_open)}[^<]{{0,200}}{re.escape(tags.ref_close)} ?)?"
            f"{re.escape(tags.box_open)}{coordinates.replace('X', number)}{re.escape(tags.box_close)}")  # fmt: skip


def mention_example(fmt: BoxFormat) -> str:
    """One mention of ``fmt`` with placeholders for the label and coordinates: how an instruction shows it.

    >>> mention_example("house")
    '<ref>label</ref><box>[x1, y1, x2, y2]</box>'
    >>> mention_example("json")
    '{"bbox_2d": [x1, y1, x2, y2], "label": "label"}'
    """
    if fmt == "json":
        return f'{{"{JSON_BOX_KEY}": [x1, y1, x2, y2], "label": "label"}}'
    tags = BOX_TAGS[fmt]
    coordinates = tags.coordinates.format(x1="x1", y1="y1", x2="x2", y2="y2")
    return f"{tags.ref_open}label{tags.ref_close}{tags.box_open}{coordinates}{tags.box_close}"


def map_boxes(
    text: str,
    transform: Callable[[IntBox], Sequence[int]],
    *,
    src: BoxFormat = "house",
    dst: BoxFormat = "house",
) -> str:
    """Rewrite every valid box in ``text`` through ``transform`` and re-render it in ``dst``.

    Invalid boxes and all other text are left exactly as they were. This is how tokenize renders the
    house format in a model family's own coordinates, and how evaluate reads them back.

    >>> map_boxes("see <ref>a</ref><box>[0, 0, 500, 500]</box>.", lambda b: [v * 2 for v in b])
    'see <ref>a</ref><box>[0, 0, 1000, 1000]</box>.'
    """
    parsed = parse_grounded(text, src)
    out: list[str] = []
    cursor = 0
    for found in parsed.boxes:
        start, end = found.span
        out.append(text[cursor:start])
        out.append(render_grounded(found.ref, transform(found.box), dst))
        cursor = end
    out.append(text[cursor:])
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# Coordinate conventions
# --------------------------------------------------------------------------------------------------


def _check_size(width: float, height: float) -> None:
    if not (width > 0 and height > 0):
        raise ValueError(f"image size must be positive, got width={width} height={height}")


def clamp_box(box: Sequence[float], upper: float) -> Box:
    """Clamp every coordinate into ``[0, upper]``."""
    return tuple(min(max(float(v), 0.0), upper) for v in box)  # type: ignore[return-value]


def pixels_to_norm1000(box: Sequence[float], width: float, height: float) -> IntBox:
    """Absolute pixels of a ``width`` x ``height`` image to house integers (rounded, clamped to 0-1000).

    >>> pixels_to_norm1000((217, 343, 242, 393), 391, 500)
    (555, 686, 619, 786)
    """
    _check_size(width, height)
    x1, y1, x2, y2 = box
    x1, y1, x2, y2 = x1 / width * NORM, y1 / height * NORM, x2 / width * NORM, y2 / height * NORM
    return (  # clamp_box + round, written out: this runs for every converted record
        round(0.0 if x1 < 0.0 else NORM if x1 > NORM else x1),
        round(0.0 if y1 < 0.0 else NORM if y1 > NORM else y1),
        round(0.0 if x2 < 0.0 else NORM if x2 > NORM else x2),
        round(0.0 if y2 < 0.0 else NORM if y2 > NORM else y2),
    )


def pixel_box_problem(
    pixels: Sequence[float], width: float, height: float, *, slack: tuple[float, float] = (0.5, 0.5)
) -> str | None:
    """Why ``[x1, y1, x2, y2]`` in pixels of a ``width`` x ``height`` image cannot be a box of it (a reason code:
    ``wrong_arity_box``, ``not_a_number_box``, ``not_finite_box``, ``box_outside_image``, ``inverted_box``), or
    ``None``.

    ``slack``: how far (pixels, along x and y) past an edge a box may reach and still be clamped onto the image;
    annotations overrun by rounding (COCO's by half a pixel, VisCoT's by a few), further out the box or the size is
    wrong. Every converter that reads pixel boxes checks them here, each with its dataset's slack.

    >>> pixel_box_problem([0, 0, 100.4, 50], 100, 50), pixel_box_problem([0, 0, 102, 50], 100, 50)
    (None, 'box_outside_image')
    >>> pixel_box_problem([0, 0, 102, 50], 100, 50, slack=(2, 1)), pixel_box_problem([9, 9, 4, 13], 100, 50)
    (None, 'inverted_box')
    >>> pixel_box_problem([0, "a", 1, 2], 9, 9), pixel_box_problem([0, 0, float("nan"), 2], 9, 9)
    ('not_a_number_box', 'not_finite_box')
    """
    if len(pixels) != 4:
        return "wrong_arity_box"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pixels):
        return "not_a_number_box"
    x1, y1, x2, y2 = pixels
    if not all(math.isfinite(v) for v in pixels):
        return "not_finite_box"
    slack_x, slack_y = slack
    outside_x = min(x1, x2) < -slack_x or max(x1, x2) > width + slack_x
    if outside_x or min(y1, y2) < -slack_y or max(y1, y2) > height + slack_y:
        return "box_outside_image"
    return "inverted_box" if x2 < x1 or y2 < y1 else None


def pixel_box_to_house(
    pixels: Sequence[float], width: float, height: float, *, slack: tuple[float, float] = (0.5, 0.5)
) -> IntBox | str:
    """A pixel box of a ``width`` x ``height`` image as a house box (clamped onto the image), or why it cannot be
    one (:func:`pixel_box_problem`'s reasons, or :func:`validate_box`'s with ``_box`` appended).

    >>> pixel_box_to_house([10, 20, 200.3, 50], 200, 100), pixel_box_to_house([10, 20, 10.05, 50], 200, 100)
    ((50, 200, 1000, 500), 'zero_area_box')
    """
    problem = pixel_box_problem(pixels, width, height, slack=slack)
    if problem is not None:
        return problem
    box = pixels_to_norm1000(pixels, width, height)
    reason = validate_box(box)
    return box if reason is None else f"{reason}_box"


def norm1000_to_pixels(box: Sequence[float], width: float, height: float) -> Box:
    """House coordinates to absolute pixels (floats)."""
    _check_size(width, height)
    x1, y1, x2, y2 = box
    return (x1 * width / NORM, y1 * height / NORM, x2 * width / NORM, y2 * height / NORM)


def viscot_padding(width: int, height: int) -> tuple[int, int, int]:
    """VisCOT pads the image to a centered square: return ``(side, x_offset, y_offset)`` in pixels."""
    _check_size(width, height)
    side = max(width, height)
    if width > height:
        return side, 0, (width - height) // 2
    return side, (height - width) // 2, 0


def viscot_padded_to_pixels(box: Sequence[float], width: int, height: int) -> Box:
    """VisCOT's normalized string (0-1 of the padded square) to absolute pixels of the original image.

    >>> tuple(round(v) for v in viscot_padded_to_pixels((0.542, 0.686, 0.592, 0.786), 391, 500))
    (217, 343, 242, 393)
    """
    side, dx, dy = viscot_padding(width, height)
    x1, y1, x2, y2 = box
    return (x1 * side - dx, y1 * side - dy, x2 * side - dx, y2 * side - dy)


def pixels_to_viscot_padded(box: Sequence[float], width: int, height: int, *, decimals: int | None = 3) -> Box:
    """Absolute pixels to VisCOT's padded-square 0-1 string values (3 decimals, as VisCOT prints them).

    >>> pixels_to_viscot_padded((217, 343, 242, 393), 391, 500)
    (0.542, 0.686, 0.592, 0.786)
    """
    side, dx, dy = viscot_padding(width, height)
    x1, y1, x2, y2 = box
    values = ((x1 + dx) / side, (y1 + dy) / side, (x2 + dx) / side, (y2 + dy) / side)
    if decimals is None:
        return values
    return tuple(round(v, decimals) for v in values)  # type: ignore[return-value]


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN_PATCH_FACTOR,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> tuple[int, int]:
    """Qwen2-VL/2.5-VL's resize: ``(height, width)`` rounded to multiples of ``factor`` within the pixel budget.

    Same arithmetic as ``transformers.models.qwen2_vl.image_processing_pil_qwen2_vl.smart_resize``
    (checked against it in the tests), kept here so the CPU stages need no transformers.

    >>> smart_resize(500, 391)
    (504, 392)
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height} width={width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be below 200, got {max(height, width) / min(height, width):.1f}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# --------------------------------------------------------------------------------------------------
# Overlap and matching
# --------------------------------------------------------------------------------------------------


def iou(a: Sequence[float], b: Sequence[float], eps: float = IOU_EPS) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes in the same unit.

    >>> round(iou((0, 0, 10, 10), (5, 0, 15, 10)), 4)
    0.3333
    """
    ix1, iy1 = max(a[0], b[0]), max(a[1], b[1])
    ix2, iy2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, ix2 - ix1) * max(0.0, iy2 - iy1)
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    return inter / (area_a + area_b - inter + eps)


def best_match(pred: Sequence[float], truths: Sequence[Sequence[float]]) -> tuple[int, float]:
    """Index and IoU of the ground-truth box that overlaps ``pred`` most; ``(-1, 0.0)`` when there is none."""
    best_index, best_iou = -1, 0.0
    for index, truth in enumerate(truths):
        value = iou(pred, truth)
        if value > best_iou or best_index < 0:
            best_index, best_iou = index, value
    return best_index, best_iou


def match_one_to_one(
    preds: Sequence[Sequence[float]], truths: Sequence[Sequence[float]], *, min_iou: float = 0.0
) -> list[tuple[int, int, float]]:
    """Pair predictions with ground truths, each used at most once: ``(pred_index, truth_index, iou)``.

    Greedy by descending IoU (the COCO convention without scores), ties broken by index so results
    are deterministic. Pairs with IoU ``<= min_iou`` are not made. Flooding with boxes does not pay:
    extra predictions stay unmatched.

    >>> [(p, t) for p, t, _ in match_one_to_one([(0, 0, 10, 10), (0, 0, 10, 10)], [(0, 0, 10, 10)])]
    [(0, 0)]
    """
    candidates = sorted(
        ((iou(p, t), pi, ti) for pi, p in enumerate(preds) for ti, t in enumerate(truths)),
        key=lambda c: (-c[0], c[1], c[2]),
    )
    used_preds: set[int] = set()
    used_truths: set[int] = set()
    pairs: list[tuple[int, int, float]] = []
    for value, pi, ti in candidates:
        if value <= min_iou:
            break
        if pi in used_preds or ti in used_truths:
            continue
        used_preds.add(pi)
        used_truths.add(ti)
        pairs.append((pi, ti, value))
    return sorted(pairs)


def match_optimal(preds: Sequence[Sequence[float]], truths: Sequence[Sequence[float]]) -> list[tuple[int, int, float]]:
    """Pair predictions with ground truths one-to-one so the *total* IoU is the largest possible.

    Unlike :func:`match_one_to_one` (greedy), this is the optimal assignment (the Hungarian method), which a
    reward needs: greedy can pair the first box with the truth it overlaps most and leave a worse total.
    Returns ``(pred_index, truth_index, iou)`` for every pair, zero-IoU pairs included, sorted by prediction.

    >>> preds, truths = [(250, 0, 350, 100), (150, 0, 250, 100)], [(150, 0, 350, 100), (250, 0, 450, 100)]
    >>> [(p, t) for p, t, _ in match_one_to_one(preds, truths)], [(p, t) for p, t, _ in match_optimal(preds, truths)]
    ([(0, 0)], [(0, 1), (1, 0)])
    """
    if not preds or not truths:
        return []
    flip = len(preds) > len(truths)  # the solver wants no more rows than columns
    rows, cols = (truths, preds) if flip else (preds, truths)
    gains = [[iou(r, c) for c in cols] for r in rows]
    pairs = [(c, r) if flip else (r, c) for r, c in _assign(gains).items()]
    return sorted((p, t, gains[t][p] if flip else gains[p][t]) for p, t in pairs)


def _assign(gains: list[list[float]]) -> dict[int, int]:
    """Row -> column maximizing the summed gain, every row assigned (rows <= columns): the O(n^2 m)
    shortest-augmenting-path Hungarian method with potentials ``u`` (rows) and ``v`` (columns), 1-based inside."""
    n, m = len(gains), len(gains[0])
    u, v = [0.0] * (n + 1), [0.0] * (m + 1)
    owner, way = [0] * (m + 1), [0] * (m + 1)  # owner[j]: the row holding column j (0: free)
    for row in range(1, n + 1):
        owner[0], col = row, 0
        slack, used = [math.inf] * (m + 1), [False] * (m + 1)
        while owner[col]:  # grow the alternating tree until it reaches a free column
            used[col] = True
            i, delta, nxt = owner[col], math.inf, 0
            for j in range(1, m + 1):
                if not used[j]:
                    reduced = -gains[i - 1][j - 1] - u[i] - v[j]
                    if reduced < slack[j]:
                        slack[j], way[j] = reduced, col
                    if slack[j] < delta:
                        delta, nxt = slack[j], j
            for j in range(m + 1):
                if used[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                else:
                    slack[j] -= delta
            col = nxt
        while col:  # flip the augmenting path
            owner[col] = owner[way[col]]
            col = way[col]
    return {owner[j] - 1: j - 1 for j in range(1, m + 1) if owner[j]}
