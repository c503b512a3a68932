"""The one place a record becomes a chat: tokenize trains on it, evaluate prompts with it.

The user turn is the image (multimodal mode) and the question with its choices; the assistant turn is the
record's grounded rationale with its boxes rendered in the model's coordinates:

- ``norm1000``: the house format as stored (integers 0-1000 of the original image);
- ``qwen2.5-absolute``: absolute pixels of the image as Qwen2.5-VL's processor resizes it (``smart_resize``
  within the processor's min/max pixels), which is how Qwen2.5-VL was pretrained to ground.

:func:`vcot.evaluate.readback.read_boxes` is the one inverse: it reads a model's text back into house
coordinates (a Qwen2.5 box beyond the resized image is ``out_of_range`` there, not clamped).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any, Literal

from vcot.boxes import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS, map_boxes, norm1000_to_qwen25

Mode = Literal["multimodal", "text"]
Coords = Literal["norm1000", "qwen2.5-absolute"]
MODES: tuple[Mode, ...] = ("multimodal", "text")
COORDS: tuple[Coords, ...] = ("norm1000", "qwen2.5-absolute")

_COORD_HINTS: dict[str, str] = {
    "norm1000": "coordinates are integers 0-1000 of the image width and height",
    "qwen2.5-absolute": "coordinates are absolute pixels of the image",
}


def instruction(coords: Coords) -> str:
    """What we ask for: grounded reasoning in our tag format, ending with the answer."""
    return (
        "Think step by step. Name each region you rely on as <ref>label</ref><box>[x1, y1, x2, y2]</box> "
        f"({_COORD_HINTS[coords]}), then end with 'Answer: <answer>'."
    )


def format_choices(choices: Sequence[str]) -> str:
    """
    >>> format_choices(["cat", "dog"])
    '(A) cat\\n(B) dog'
    """
    return "\n".join(f"({string.ascii_uppercase[i]}) {choice}" for i, choice in enumerate(choices))


def question_text(record: dict[str, Any], coords: Coords = "norm1000") -> str:
    """The question, its choices when it has some, and the instruction."""
    parts = [str(record["question"]).strip()]
    if record.get("choices"):
        parts.append("Options:\n" + format_choices(record["choices"]))
    parts.append(instruction(coords))
    return "\n".join(parts)


def _check_coords(coords: str) -> None:
    if coords not in COORDS:
        raise ValueError(f"coords={coords!r} is not one of {', '.join(COORDS)}")


def rationale_in_coords(
    record: dict[str, Any],
    coords: Coords,
    *,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> str:
    """The record's rationale with every house box rewritten in ``coords``.

    >>> rec = {"width": 200, "height": 100, "rationale": "<ref>a</ref><box>[0, 0, 500, 500]</box> Answer: a"}
    >>> rationale_in_coords(rec, "qwen2.5-absolute")
    '<ref>a</ref><box>[0, 0, 98, 56]</box> Answer: a'
    """
    _check_coords(coords)
    text = str(record.get("rationale") or "")
    if coords == "norm1000":
        return text
    width, height = int(record["width"]), int(record["height"])
    return map_boxes(
        text, lambda box: norm1000_to_qwen25(box, width, height, min_pixels=min_pixels, max_pixels=max_pixels)
    )


def build_messages(
    record: dict[str, Any],
    *,
    mode: Mode,
    coords: Coords = "norm1000",
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
    with_answer: bool = True,
) -> list[dict[str, Any]]:
    """The chat for ``record``: a user turn (image + question) and, ``with_answer``, the assistant's rationale.

    ``text`` mode is the seed's: no image at all in the chat. Evaluate calls this with ``with_answer=False``
    and the chat template's generation prompt.

    >>> rec = {"image": "s3://b/x.png", "width": 10, "height": 10, "question": "Q?", "rationale": "R"}
    >>> [m["role"] for m in build_messages(rec, mode="multimodal")]
    ['user', 'assistant']
    >>> build_messages(rec, mode="multimodal")[0]["content"][0]
    {'type': 'image', 'image': 's3://b/x.png'}
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {', '.join(MODES)}")
    _check_coords(coords)
    user: list[dict[str, Any]] = []
    if mode == "multimodal":
        user.append({"type": "image", "image": record["image"]})
    user.append({"type": "text", "text": question_text(record, coords)})
    messages: list[dict[str, Any]] = [{"role": "user", "content": user}]
    if with_answer:
        target = rationale_in_coords(record, coords, min_pixels=min_pixels, max_pixels=max_pixels)
        messages.append({"role": "assistant", "content": [{"type": "text", "text": target}]})
    return messages
