"""What we say to the teacher: the house-format system prompt, the per-record messages, and images as data URLs.

Messages are plain OpenAI chat dicts so they go unchanged to the live API, into a Batch API request file,
and (with images replaced by their hash) into the request key.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

from PIL import Image

from vcot.grounding.boxes import format_box, norm1000_to_pixels
from vcot.io.images import orientation, to_rgb, upright

Message = dict[str, Any]

GROUNDING_RULES = """\
Grounding rule: immediately after EVERY physical object, person, animal, piece of text or place that you \
mention, write where it is in the image as
<ref>short name</ref><box>[x1, y1, x2, y2]</box>
where (x1, y1) is the top-left and (x2, y2) the bottom-right corner, in integers from 0 to 1000 relative \
to the width and height of the original image: (0, 0) is its top-left corner, (1000, 1000) its bottom-right.
Example: The <ref>red gear</ref><box>[100, 200, 300, 400]</box> sits left of the \
<ref>blue cup</ref><box>[520, 210, 700, 430]</box>.
Never mention an object without its box and never write a box without its <ref>. \
No markdown, no JSON, no other tags."""

SYSTEM_PROMPT = f"""\
You are a careful visual reasoning teacher. Answer the question about the image by reasoning step by \
step in a few plain sentences that look at the relevant parts of the image.
{GROUNDING_RULES}
End with one last line, exactly: Answer: <short answer>
For a multiple-choice question the short answer is the text of the chosen option."""

CAPTION_PROMPT = """\
Describe this image in detail for someone who cannot see it: the main objects, their attributes, any \
text, and how they are arranged."""

BRANCH_SYSTEM_PROMPT = """\
You describe zoomed-in crops of images precisely. Say only what is visible; never guess."""

ANSWER_HINT = "The correct answer is: {answer}. Explain how the image shows it."
"""The hint of ``--hint-answer``: the teacher explains a known answer instead of guessing one."""

VERIFY_SYSTEM_PROMPT = """\
You are a strict fact checker of grounded visual rationales. You only remove or rename objects that the \
evidence does not support; you never invent new ones."""

PROBLEM_HINTS = {
    "empty_answer": "the answer was empty",
    "no_boxes": "it mentions objects without any <ref>name</ref><box>[x1, y1, x2, y2]</box>",
    "only_question_box": "it boxes only the region the question gives: also box what you see in it",
    "invalid_box": "a box is not four integers 0-1000 with x1 < x2 and y1 < y2",
    "box_without_ref": "a <box> is not preceded by its <ref>name</ref>",
    "malformed_tag": "a <ref> or <box> tag is unclosed or misplaced",
    "no_final_answer": "it does not end with 'Answer: <short answer>'",
    "wrong_answer": "the final answer is not correct; look at the image again",
}


def image_data_url(data: bytes, *, max_side: int = 0) -> str:
    """``data:image/<fmt>;base64,...`` for image bytes.

    Formats the API may not take are re-encoded as PNG; with ``max_side``, a larger image is shrunk to fit
    (PNG, deterministic), which costs fewer tokens and changes no box: boxes are relative to the image. An image
    stored turned (EXIF orientation) is sent upright, as the records and the model see it.

    >>> image_data_url(_tiny_png())[:22]
    'data:image/png;base64,'
    """
    with Image.open(io.BytesIO(data)) as image:
        fmt = (image.format or "").lower()
        too_big = max_side > 0 and max(image.size) > max_side
        turned = orientation(image) != 1  # sent upright: the boxes are of the image as displayed (vcot.io.images)
        if too_big or turned or fmt not in ("png", "jpeg", "webp", "gif"):
            converted = to_rgb(upright(image))
            if too_big:
                converted.thumbnail((max_side, max_side), Image.LANCZOS)
            buffer = io.BytesIO()
            converted.save(buffer, format="PNG")
            data, fmt = buffer.getvalue(), "png"
    return f"data:image/{fmt};base64,{base64.b64encode(data).decode('ascii')}"


def _tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, format="PNG")
    return buffer.getvalue()


def crop_zoom(data: bytes, box: Sequence[int], *, size: int, margin: float = 0.1) -> bytes:
    """PNG of the house-coordinate ``box`` (plus a ``margin`` of its size), resized so its longer side is ``size``.

    >>> from PIL import Image
    >>> crop = Image.open(io.BytesIO(crop_zoom(_tiny_png(), (0, 0, 500, 1000), size=64)))
    >>> crop.size
    (32, 64)
    """
    with Image.open(io.BytesIO(data)) as image:
        image = to_rgb(upright(image))
        width, height = image.size
        x1, y1, x2, y2 = norm1000_to_pixels(box, width, height)
        dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
        left, top = max(0, int(x1 - dx)), max(0, int(y1 - dy))
        right, bottom = min(width, max(left + 1, round(x2 + dx))), min(height, max(top + 1, round(y2 + dy)))
        crop = image.crop((left, top, right, bottom))
        scale = size / max(crop.size)
        crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.BICUBIC)
        buffer = io.BytesIO()
        crop.save(buffer, format="PNG")
        return buffer.getvalue()


def _image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def question_text(record: dict[str, Any], *, hint_answer: bool) -> str:
    """The question, its options, and (with ``hint_answer``) the answer to explain.

    >>> question_text({"question": "Color?", "choices": ["red", "blue"], "answer": "blue"}, hint_answer=True)
    'Question: Color?\\nOptions: (A) red (B) blue\\nThe correct answer is: blue. Explain how the image shows it.'
    """
    lines = [f"Question: {record['question'].strip()}"]
    choices = record.get("choices") or []
    if choices:
        lines.append("Options: " + " ".join(f"({chr(65 + i)}) {choice}" for i, choice in enumerate(choices)))
    if hint_answer and record.get("answer"):
        lines.append(ANSWER_HINT.format(answer=record["answer"]))
    return "\n".join(lines)


def direct_messages(record: dict[str, Any], image_url: str, *, hint_answer: bool) -> list[Message]:
    """Seed 000: one grounded answer from the image and the question."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": [
                _image_part(image_url),
                {"type": "text", "text": question_text(record, hint_answer=hint_answer)},
            ],
        },
    ]


def corrective_messages(messages: list[Message], answer: str, problem: str) -> list[Message]:
    """The conversation so far plus one message saying what was wrong: the single retry an invalid answer gets."""
    hint = PROBLEM_HINTS.get(problem, problem)
    correction = (
        f"Your answer does not follow the rules: {hint}. Write the whole answer again, following every rule: "
        "<ref>name</ref><box>[x1, y1, x2, y2]</box> (integers 0-1000 of the original image) right after every "
        "physical object, and a last line 'Answer: <short answer>'."
    )
    return [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": correction}]


def caption_messages(image_url: str) -> list[Message]:
    """Zoom step 1: a grounded caption of the whole image."""
    system = f"You describe images precisely.\n{GROUNDING_RULES}"
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": [_image_part(image_url), {"type": "text", "text": CAPTION_PROMPT}]},
    ]


def branch_messages(crop_url: str, ref: str | None, box: Sequence[int]) -> list[Message]:
    """Zoom step 2: a caption of one upscaled crop (no boxes: the crop has its own coordinates)."""
    expected = f", where the full image shows: {ref}" if ref else ""
    text = (
        f"This is a zoomed-in crop of a larger image (region {format_box(box)} in 0-1000 coordinates of the full "
        f"image{expected}). Describe precisely what is visible in this crop in one to three sentences: objects, "
        "colors, text. Write no coordinates."
    )
    return [
        {"role": "system", "content": BRANCH_SYSTEM_PROMPT},
        {"role": "user", "content": [_image_part(crop_url), {"type": "text", "text": text}]},
    ]


def evidence_text(caption: str, branches: Sequence[tuple[str | None, Sequence[int], str]]) -> str:
    """The main caption and the branch captions, each labelled with its region."""
    lines = [
        "Description of the whole image:",
        caption.strip(),
        "",
        "Zoomed-in views (boxes in 0-1000 of the full image):",
    ]
    for ref, box, text in branches:
        lines.append(f"- {format_box(box)}{f' ({ref})' if ref else ''}: {text.strip()}")
    if not branches:
        lines.append("- (none)")
    return "\n".join(lines)


def merge_messages(record: dict[str, Any], image_url: str, evidence: str, *, hint_answer: bool) -> list[Message]:
    """Zoom step 3: one grounded rationale from the image, the question and the captions."""
    text = (
        f"{question_text(record, hint_answer=hint_answer)}\n\nNotes from a first look and from zoomed-in views:\n"
        f"{evidence}\n\nUse the image and these notes to answer, following every rule."
    )
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [_image_part(image_url), {"type": "text", "text": text}]},
    ]


def verify_messages(draft: str, evidence: str) -> list[Message]:
    """Zoom step 4 (text only): check each claimed object against the captions; drop or rename the unsupported."""
    text = (
        f"Evidence about an image:\n{evidence}\n\nDraft rationale:\n{draft.strip()}\n\n"
        "Check every <ref>object</ref><box>[...]</box> in the draft against the evidence; the zoomed-in views are "
        "the most reliable. If an object is not supported, remove it with its box and rewrite the sentence so it "
        "still reads well. If it is there but misnamed, rename it and keep its box. Do not add objects, do not "
        "change any box, and keep the last line 'Answer: ...'. Reply with the corrected rationale only."
    )
    return [{"role": "system", "content": VERIFY_SYSTEM_PROMPT}, {"role": "user", "content": text}]
