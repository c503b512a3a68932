"""Batched greedy generation (model mode): prompts built by ``vcot.prompts``, left padded, decoded raw.

Greedy decoding with the seed's repetition penalty (1.2 by default; optionally box-aware), many samples
per forward pass. Left padding keeps every prompt's last token at the end of the batch, where generation
continues. Responses are decoded with special tokens kept (Qwen's native ``<|box_start|>`` tags are
special tokens) and cut at the end-of-turn token.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessorList

from vcot.evaluate.penalty import BoxAwareRepetitionPenalty
from vcot.images import load_rgb
from vcot.log import get_logger
from vcot.prompts import Coords, Mode, build_messages

log = get_logger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    """How responses are generated: the same for every sample of a run."""

    mode: Mode = "multimodal"
    coords: Coords = "norm1000"
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 16384
    max_new_tokens: int = 512
    batch_size: int = 16
    repetition_penalty: float = 1.2
    box_aware_penalty: bool = False


def prompt_text(processor: Any, record: dict[str, Any], settings: GenerationSettings) -> str:
    """The chat-templated prompt for one record, ending with the assistant's generation prompt."""
    messages = build_messages(
        record,
        mode=settings.mode,
        coords=settings.coords,
        min_pixels=settings.min_pixels,
        max_pixels=settings.max_pixels,
        with_answer=False,
    )
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    ids.update(i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None)
    return ids


def decode_responses(tokenizer: Any, new_tokens: torch.Tensor, stop_ids: set[int]) -> list[str]:
    """Decode each row up to its first stop token, keeping special tokens such as ``<|box_start|>``."""
    texts = []
    for row in new_tokens.tolist():
        end = next((i for i, token in enumerate(row) if token in stop_ids), len(row))
        texts.append(tokenizer.decode(row[:end], skip_special_tokens=False))
    return texts


def penalty_processors(settings: GenerationSettings, tokenizer: Any) -> LogitsProcessorList:
    """The box-aware penalty as a logits processor (built once per run: it scans the vocabulary), else none."""
    processors = LogitsProcessorList()
    if settings.box_aware_penalty and settings.repetition_penalty != 1.0:
        processors.append(BoxAwareRepetitionPenalty(settings.repetition_penalty, tokenizer))
    return processors


def generate_batch(
    model: Any,
    processor: Any,
    records: Sequence[dict[str, Any]],
    settings: GenerationSettings,
    processors: LogitsProcessorList | None = None,
) -> list[str | None]:
    """Greedy responses for one batch of records; ``None`` for a record whose image cannot be read."""
    if processors is None:
        processors = penalty_processors(settings, processor.tokenizer)
    images: list[Any] = []
    usable: list[int] = []  # positions of the records that can be prompted
    for position, record in enumerate(records):
        try:
            images.append(load_rgb(record["image"]) if settings.mode == "multimodal" else None)
            usable.append(position)
        except Exception as exc:  # noqa: BLE001 - a bad image skips its record, counted by the caller
            log.warning("image unreadable, sample skipped", id=record.get("id"), image=record.get("image"), error=str(exc))
    responses: list[str | None] = [None] * len(records)
    if not usable:
        return responses
    processor.tokenizer.padding_side = "left"
    inputs = processor(
        text=[prompt_text(processor, records[position], settings) for position in usable],
        images=images if settings.mode == "multimodal" else None,
        padding=True,
        return_tensors="pt",
    ).to(model.device)
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            do_sample=False,
            num_beams=1,
            max_new_tokens=settings.max_new_tokens,
            repetition_penalty=1.0 if processors else settings.repetition_penalty,  # box-aware replaces standard
            logits_processor=processors,
        )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    texts = decode_responses(processor.tokenizer, new_tokens, _stop_ids(model, processor.tokenizer))
    for position, text in zip(usable, texts):
        responses[position] = text
    return responses


def generate_responses(
    model: Any, processor: Any, records: Sequence[dict[str, Any]], settings: GenerationSettings
) -> tuple[list[str | None], dict[str, float]]:
    """Responses for every record (in order; ``None`` where the image was unreadable) and timing stats."""
    from tqdm.auto import tqdm

    processors = penalty_processors(settings, processor.tokenizer)
    responses: list[str | None] = []
    started = time.perf_counter()
    batches = range(0, len(records), settings.batch_size)
    for start in tqdm(batches, desc="generate", unit="batch", disable=not sys.stderr.isatty()):
        batch = records[start : start + settings.batch_size]
        responses.extend(generate_batch(model, processor, batch, settings, processors))
    seconds = time.perf_counter() - started
    stats = {"seconds": round(seconds, 3), "samples_per_second": round(len(records) / seconds, 3) if seconds else 0.0}
    log.info("generated", samples=len(records), **stats)
    return responses, stats
