"""Batched greedy generation (model mode): prompts built by ``vcot.grounding.prompts``, left padded, decoded raw.

Greedy decoding with the seed's repetition penalty (1.2 by default; optionally box-aware:
:class:`BoxAwareRepetitionPenalty`, what it spares defined in :mod:`vcot.models.penalty`), many samples
per forward pass. Left padding keeps every prompt's last token at the end of the batch, where generation
continues. Responses are decoded with special tokens kept (Qwen's native ``<|box_start|>`` tags are
special tokens) and cut at the end-of-turn token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from vcot.grounding.boxes import BoxFormat
from vcot.grounding.model_format import HOUSE, RATIONALE_ROLE, ModelFormat
from vcot.grounding.prompts import PromptStyle, answer_cue, build_messages, turn_prefix
from vcot.io.images import load_rgb_or_error
from vcot.log import get_logger
from vcot.models.loading import stop_token_ids, vision_token_ids
from vcot.models.penalty import (
    BOX_AWARE,
    BOX_MARKERS,
    REPETITION_PENALTY,
    TAIL_TOKENS,
    coordinate_token_ids,
    inside_open_box,
)
from vcot.progress import Progress

log = get_logger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    """How responses are generated: the same for every sample of a run."""

    fmt: ModelFormat = HOUSE
    max_new_tokens: int = 512
    batch_size: int = 16
    repetition_penalty: float = REPETITION_PENALTY
    box_aware_penalty: bool = BOX_AWARE
    prompt_style: PromptStyle = "cot"
    temperature: float = 0.0
    """0: greedy (the default); above 0: sampled, with ``top_p`` (seed torch first for reproducible samples)."""
    top_p: float = 1.0


ANSWER_TOKENS = 32  # the answer turn of the rationale_turn layout: a word or a short phrase after "Answer:"


def sampling(settings: GenerationSettings) -> dict[str, Any]:
    """``generate``'s sampling arguments: greedy at temperature 0, else :func:`sampled`.

    >>> sampling(GenerationSettings())
    {'do_sample': False}
    """
    if settings.temperature <= 0:
        return {"do_sample": False}
    return sampled(settings.temperature, settings.top_p)


def sampled(temperature: float, top_p: float) -> dict[str, Any]:
    """``generate``'s arguments to sample at ``temperature`` with a nucleus cut at ``top_p`` and no top-k cut.

    ``top_k`` is set to 0 (none) because ``generate`` keeps every setting of the model's ``generation_config.json``
    that its arguments leave out, and Qwen2.5-VL's sets ``top_k: 1``: sampling would silently be greedy decoding
    (unset, transformers cuts at 50). Other cuts a base could set (``min_p``, ``typical_p``) are left: Qwen's set none.

    >>> sampled(0.7, 0.9)
    {'do_sample': True, 'temperature': 0.7, 'top_p': 0.9, 'top_k': 0}
    """
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}


def two_phase(settings: GenerationSettings) -> bool:
    """A rationale_turn model reasons in an Analyzer turn, then answers in the assistant turn: two generations."""
    return settings.fmt.layout == "rationale_turn" and settings.prompt_style == "cot"


def prompt_text(processor: Any, record: dict[str, Any], settings: GenerationSettings) -> str:
    """The chat-templated prompt for one record, ending with the assistant's generation prompt (the Analyzer's
    for a rationale_turn model asked to reason)."""
    messages = build_messages(record, settings.fmt, with_answer=False, style=settings.prompt_style)
    if two_phase(settings):
        return turn_prefix(processor, messages, RATIONALE_ROLE)
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def decode_responses(tokenizer: Any, new_tokens: torch.Tensor, stop_ids: set[int]) -> list[str]:
    """Decode each row up to its first stop token, keeping special tokens such as ``<|box_start|>``."""
    texts = []
    for row in new_tokens.tolist():
        end = next((i for i, token in enumerate(row) if token in stop_ids), len(row))
        texts.append(tokenizer.decode(row[:end], skip_special_tokens=False))
    return texts


class BoxAwareRepetitionPenalty(LogitsProcessor):
    """``RepetitionPenaltyLogitsProcessor(penalty)`` that spares coordinate tokens inside an open box of
    ``box_syntax`` (the run's ``ModelFormat.box_syntax``)."""

    def __init__(self, penalty: float, tokenizer: Any, box_syntax: BoxFormat = "house") -> None:
        if penalty <= 0:
            raise ValueError(f"penalty must be positive, got {penalty}")
        if box_syntax not in BOX_MARKERS:
            raise ValueError(f"box_syntax must be one of {sorted(BOX_MARKERS)}, got {box_syntax!r}")
        self.penalty = penalty
        self.tokenizer = tokenizer
        self.box_syntax = box_syntax
        self.coordinate_mask = torch.zeros(len(tokenizer), dtype=torch.bool)
        self.coordinate_mask[coordinate_token_ids(tokenizer)] = True

    def rows_inside_box(self, input_ids: torch.LongTensor) -> torch.Tensor:
        tails = self.tokenizer.batch_decode(input_ids[:, -TAIL_TOKENS:], skip_special_tokens=False)
        return torch.tensor([inside_open_box(text, self.box_syntax) for text in tails], dtype=torch.bool)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        seen = torch.gather(scores, 1, input_ids)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        penalized = scores.scatter(1, input_ids, seen)
        inside = self.rows_inside_box(input_ids).to(scores.device)
        if not inside.any():
            return penalized
        mask = self.coordinate_mask.to(scores.device)
        if mask.shape[0] < scores.shape[1]:  # the model's vocabulary may be padded beyond the tokenizer's
            mask = torch.nn.functional.pad(mask, (0, scores.shape[1] - mask.shape[0]))
        spare = inside[:, None] & mask[None, : scores.shape[1]]
        return torch.where(spare, scores, penalized)


def penalty_processors(settings: GenerationSettings, tokenizer: Any) -> LogitsProcessorList:
    """The box-aware penalty as a logits processor (built once per run: it scans the vocabulary), else none."""
    processors = LogitsProcessorList()
    if settings.box_aware_penalty and settings.repetition_penalty != 1.0:
        processors.append(BoxAwareRepetitionPenalty(settings.repetition_penalty, tokenizer, settings.fmt.box_syntax))
    return processors


@dataclass(frozen=True)
class Skipped:
    """A record that gets no response, and why: ``image_unreadable`` or ``grid_mismatch`` (counted in metrics)."""

    reason: str


def _readable_images(records: Sequence[dict[str, Any]], multimodal: bool) -> dict[int, Any]:
    """Position of each record that can be prompted -> its image (``None`` in text mode): a bad image skips its
    record instead of failing the batch."""
    images: dict[int, Any] = {}
    for position, record in enumerate(records):
        image, error = load_rgb_or_error(record["image"]) if multimodal else (None, None)
        if error is not None:  # a bad image skips its record, counted by the caller
            log.warning("image_unreadable", id=record.get("id"), image=record.get("image"), error=str(error))
            continue
        images[position] = image
    return images


def _grid_mismatches(
    records: Sequence[dict[str, Any]], positions: list[int], grids: list[list[int]], fmt: ModelFormat
) -> set[int]:
    """The positions whose image gives another patch grid than the record's ``width``/``height``."""
    return {position for position, grid in zip(positions, grids, strict=True)
            if grid_mismatch(records[position], grid, fmt)}


def grid_mismatch(record: dict[str, Any], grid: Sequence[int], fmt: ModelFormat) -> bool:
    """Whether an image whose patch grid is ``grid`` is another size than its record says (logged): its
    ``qwen2.5-absolute`` boxes would be read back with the wrong resize, so it is not scored."""
    if list(grid) == list(fmt.vision.grid(int(record["width"]), int(record["height"]))):
        return False
    log.warning("grid_mismatch", id=record.get("id"), image=record.get("image"), grid=list(grid),
                width=record.get("width"), height=record.get("height"),
                hint="the record's width/height do not match its image: fix the data (convert)")
    return True


def _with_answers(
    model: Any,
    processor: Any,
    record: dict[str, Any],
    fmt: ModelFormat,
    encode: Callable[[list[int], dict[int, str]], Any],
    positions: list[int],
    texts: list[str],
) -> list[str]:
    """Each rationale followed by the answer turn a two-phase model gives after it (greedy, without a repetition
    penalty whatever the base's ``generation_config.json`` sets, as BiN and the demo answer), as one response;
    ``record``: any record of the batch (the answer cue is the same for all)."""
    cue = answer_cue(processor, build_messages(record, fmt, with_answer=False))
    inputs = encode(positions, {p: text + cue for p, text in zip(positions, texts, strict=True)}).to(model.device)
    with torch.no_grad():  # not inference_mode (see generate_batch)
        output = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=ANSWER_TOKENS,
                                repetition_penalty=1.0)
    answers = decode_responses(processor.tokenizer, output[:, inputs["input_ids"].shape[1] :],
                               stop_token_ids(model, processor.tokenizer))
    return [f"{text.strip()} {answer.strip()}" for text, answer in zip(texts, answers, strict=True)]


STAND_IN_SIDE = 56
"""Side of the gray image a rank of a sharded model answers when it has nothing readable (two patches of 28)."""


def generates_in_lockstep(model: Any) -> bool:
    """Whether every rank must run the same ``generate`` calls: a model sharded by FSDP over several ranks (each
    forward pass gathers every rank's shards), as transformers decides it for ``synced_gpus``."""
    import torch.distributed as dist

    sharded = any(getattr(module, "_is_fsdp_managed_module", False) for module in model.modules())  # fully_shard's
    return sharded and dist.is_initialized() and dist.get_world_size() > 1


def generate_batch(
    model: Any,
    processor: Any,
    records: Sequence[dict[str, Any]],
    settings: GenerationSettings,
    processors: LogitsProcessorList | None = None,
) -> list[str | Skipped]:
    """Greedy responses for one batch of records; :class:`Skipped` for a record that cannot be scored honestly.

    With ``qwen2.5-absolute`` boxes the model answers in pixels of the image as the processor resized it,
    and they are read back with the resize of the record's ``width``/``height``: a record whose image gives
    another patch grid than its metadata would be mis-scored, so it is skipped (``grid_mismatch``), as
    train refuses it. On a model sharded over several ranks a rank with nothing to answer still makes the
    generation passes, on a gray image, answered by no one: the others' passes gather its shards.
    """
    if processors is None:
        processors = penalty_processors(settings, processor.tokenizer)
    multimodal = settings.fmt.mode == "multimodal"
    responses: list[str | Skipped] = [Skipped("image_unreadable")] * len(records)
    images = _readable_images(records, multimodal)
    prompts = {position: prompt_text(processor, records[position], settings) for position in images}

    def encode(positions: list[int], after: dict[int, str] | None = None) -> Any:
        return processor(
            text=[prompts[position] + (after or {}).get(position, "") for position in positions],
            images=[images[position] for position in positions] if multimodal else None,
            padding=True,
            return_tensors="pt",
        )

    usable = list(images)
    processor.tokenizer.padding_side = "left"
    inputs = encode(usable) if usable else None
    if inputs is not None and multimodal and settings.fmt.coords == "qwen2.5-absolute":
        mismatched = _grid_mismatches(records, usable, inputs["image_grid_thw"].tolist(), settings.fmt)
        for position in mismatched:
            responses[position] = Skipped("grid_mismatch")
        if mismatched:  # grids are per image: encoding the rest again cannot mismatch
            usable = [p for p in usable if p not in mismatched]
            inputs = encode(usable) if usable else None
    stand_in = inputs is None and generates_in_lockstep(model)
    if stand_in:  # the other ranks' passes gather this rank's shards: it makes the same ones, on a gray image
        images, usable = {0: Image.new("RGB", (STAND_IN_SIDE, STAND_IN_SIDE), "gray") if multimodal else None}, [0]
        prompts[0] = prompt_text(processor, records[0], settings)
        inputs = encode(usable)
    if inputs is None:
        return responses
    inputs = inputs.to(model.device)
    # The rationale of a two-phase model is prompted again with the image: it must not hold vision placeholders.
    suppress = {"suppress_tokens": vision_token_ids(processor.tokenizer)} if two_phase(settings) else {}
    # no_grad, not inference_mode: a sharded model (the held-out evaluation of an FSDP2 run) gathers its layers into
    # buffers it reuses when training, which inference tensors would forbid
    with torch.no_grad():
        output = model.generate(
            **inputs,
            **suppress,
            **sampling(settings),
            num_beams=1,
            max_new_tokens=settings.max_new_tokens,
            repetition_penalty=1.0 if processors else settings.repetition_penalty,  # box-aware replaces standard
            logits_processor=processors,
        )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    texts = decode_responses(processor.tokenizer, new_tokens, stop_token_ids(model, processor.tokenizer))
    if two_phase(settings):  # the answer turn after each rationale turn, greedy
        texts = _with_answers(model, processor, records[usable[0]], settings.fmt, encode, usable, texts)
    if stand_in:
        return responses  # its answer to the gray image is nobody's
    for position, text in zip(usable, texts, strict=True):
        responses[position] = text
    return responses


def generate_responses(
    model: Any, processor: Any, records: Sequence[dict[str, Any]], settings: GenerationSettings
) -> tuple[list[str | Skipped], dict[str, float]]:
    """Responses for every record (in order; :class:`Skipped` where none could be made) and timing stats."""
    processors = penalty_processors(settings, processor.tokenizer)
    responses: list[str | Skipped] = []
    started = time.perf_counter()
    with Progress("generate_progress", len(records), unit="sample", prompt_style=settings.prompt_style) as progress:
        for start in range(0, len(records), settings.batch_size):
            batch = records[start : start + settings.batch_size]
            responses.extend(generate_batch(model, processor, batch, settings, processors))
            progress.update(len(batch))
    seconds = time.perf_counter() - started
    stats = {"seconds": round(seconds, 3), "samples_per_second": round(len(records) / seconds, 3) if seconds else 0.0}
    log.info("generated", samples=len(records), **stats)
    return responses, stats
