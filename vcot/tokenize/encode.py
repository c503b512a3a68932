"""One record -> one training row: token ids, labels on the assistant turn only, and the image's grid.

Pre-tokenizing keeps training cheap and stable (the seed's trick); in multimodal mode the row also keeps
the image URI, and the image placeholder is expanded here to exactly as many image tokens as the
processor will produce for that image, so the collator only has to load pixels.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from vcot.grounding.model_format import IGNORE_INDEX, IMAGE_PAD, RATIONALE_ROLE, ModelFormat
from vcot.grounding.prompts import build_messages, prompt_turns, turn_prefix


class Encoder:
    """Turns canonical records into token rows with one processor's chat template and tokenizer."""

    def __init__(self, processor: Any, fmt: ModelFormat) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.fmt = fmt
        self.image_pad_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)

    def chat_texts(self, record: dict[str, Any]) -> tuple[str, str]:
        """``(prompt, assistant)``: the rendered chat up to the assistant cue, and the assistant turn after it
        (``rationale_turn``: up to the ``Analyzer`` cue, and both turns after it)."""
        messages = build_messages(record, self.fmt)
        if self.fmt.layout == "rationale_turn":
            prompt = turn_prefix(self.processor, prompt_turns(messages), RATIONALE_ROLE)
        else:
            prompt = self.processor.apply_chat_template(prompt_turns(messages), tokenize=False, add_generation_prompt=True)
        full = self.processor.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template does not render the prompt as a prefix of the full chat")
        return prompt, full[len(prompt) :]

    def encode(self, record: dict[str, Any]) -> dict[str, Any]:
        """The Parquet row for ``record`` (columns: ``docs/train.md``)."""
        prompt, assistant = self.chat_texts(record)
        # Tokenized apart, as at inference where the model continues the prompt's tokens.
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = self.tokenizer(assistant, add_special_tokens=False)["input_ids"]
        grid: tuple[int, int, int] | None = None
        if self.fmt.mode == "multimodal":
            width, height = int(record["width"]), int(record["height"])
            grid = self.fmt.vision.grid(width, height)
            prompt_ids = expand_image_tokens(prompt_ids, self.image_pad_id, self.fmt.vision.image_tokens(width, height))
        input_ids = prompt_ids + answer_ids
        return {
            "id": record["id"],
            "image": record["image"] if grid else None,
            "width": int(record["width"]),
            "height": int(record["height"]),
            "image_grid_thw": list(grid) if grid else None,
            "input_ids": input_ids,
            "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
            "length": len(input_ids),
        }


    def fit(self, record: dict[str, Any], length: int, max_length: int) -> dict[str, Any] | None:
        """The row of ``record`` (``length`` tokens at this encoder's budget) with the image's pixel budget
        lowered until the row fits ``max_length`` tokens (``--fit-to-budget``), its budget in the row's
        ``min_pixels``/``max_pixels``; ``None`` when not even the smallest image leaves room for the text.

        The image-token count of a budget is the vision geometry's; the row is encoded again at the new
        budget (a ``qwen2.5-absolute`` target's numbers are pixels of the resized image, so they change too).
        """
        vision = self.fmt.vision
        if self.fmt.mode != "multimodal":
            return None
        width, height = int(record["width"]), int(record["height"])
        room = max_length - (length - vision.image_tokens(width, height))
        step = vision.factor**2
        max_pixels = min(room * step, vision.max_pixels)
        while max_pixels >= step and room > 0:
            fitted = replace(vision, min_pixels=min(vision.min_pixels, max_pixels), max_pixels=max_pixels)
            if fitted.image_tokens(width, height) <= room:
                row = Encoder(self.processor, replace(self.fmt, vision=fitted)).encode(record)
                if row["length"] <= max_length:
                    return {**row, "min_pixels": fitted.min_pixels, "max_pixels": fitted.max_pixels}
                room -= row["length"] - max_length  # the target's text grew at this frame: shrink further
            max_pixels -= step
        return None


def expand_image_tokens(ids: list[int], image_pad_id: int, count: int) -> list[int]:
    """Replace the one image placeholder with ``count`` copies (exactly one placeholder is expected).

    >>> expand_image_tokens([1, 9, 2], 9, 3)
    [1, 9, 9, 9, 2]
    """
    positions = [i for i, token in enumerate(ids) if token == image_pad_id]
    if len(positions) != 1:
        raise ValueError(f"expected one image placeholder in the prompt, found {len(positions)}")
    at = positions[0]
    return ids[:at] + [image_pad_id] * count + ids[at + 1 :]
