"""The model behind the demo: loaded once, its format settled from the adapter's card, each answer streamed.

Generation runs in a thread and hands its text to transformers' ``TextIteratorStreamer``; the page reads the
chunks as they come. A question is bounded (:class:`QuestionLimits`: characters, then tokens) before anything is
tokenized with the image, and generation stops at the next layer once the reader is gone or the visitor left (the
``cancel`` event), the prompt's forward pass (the prefill) included: one model serves every visitor in turn.
The format (box frame, syntax, pixel budget) is the one the adapter's ``vcot-model.json``
records, or the ``--coords`` the user gives for a model without one: never guessed, as in evaluate.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer
from transformers.modeling_layers import GradientCheckpointingLayer

from vcot.errors import ConfigError, VcotError
from vcot.grounding.model_format import RATIONALE_ROLE, Coords, ModelFormat
from vcot.grounding.prompts import answer_cue, build_messages, turn_prefix
from vcot.io import storage
from vcot.io.images import load_rgb
from vcot.log import get_logger
from vcot.models.generation import ANSWER_TOKENS, BoxAwareRepetitionPenalty, sampled
from vcot.models.loading import (
    MODEL_CARD,
    adapter_format,
    check_base_model,
    load_model_and_processor,
    model_family,
    read_model_card,
    refuse_full_finetune,
    stop_token_ids,
    vision_token_ids,
)
from vcot.models.penalty import BOX_AWARE, REPETITION_PENALTY

log = get_logger(__name__)


@dataclass(frozen=True)
class Options:
    """How one answer is generated: the settings in the page's accordion."""

    max_new_tokens: int = 256
    repetition_penalty: float = REPETITION_PENALTY
    box_aware_penalty: bool = BOX_AWARE
    sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise VcotError("max new tokens must be at least 1")
        if self.repetition_penalty <= 0:
            raise VcotError("the repetition penalty must be above 0 (1.0 turns it off)")
        if self.sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise VcotError("sampling needs a temperature above 0 and a top-p in (0, 1]")


@dataclass(frozen=True)
class QuestionLimits:
    """The longest question the page takes: its prompt's forward pass runs before generation can be stopped, and
    a long one holds the one model (every other visitor waits) for as long as it takes."""

    chars: int = 2000
    tokens: int = 512

    def __post_init__(self) -> None:
        if self.chars < 1 or self.tokens < 1:
            raise ConfigError("the question limits must be at least 1 character and 1 token")

    def describe(self) -> str:
        """What the page says under the question box."""
        return f"Up to {self.chars:,} characters and {self.tokens:,} tokens."


@dataclass(frozen=True)
class Prepared:
    """An uploaded image, decoded, and what the page says about how the model sees it."""

    image: Image.Image
    model_size: tuple[int, int]
    note: str


def prepare_upload(path: str | None, fmt: ModelFormat) -> Prepared:
    """Decode an upload and say how a model of format ``fmt`` sees it; a missing, corrupt or oversized file is a
    :class:`VcotError` that says what to do."""
    if not path:
        raise VcotError("no image: upload one (PNG, JPEG, WebP) or pick an example below")
    name = Path(path).name
    try:
        image = load_rgb(path)
    except Image.DecompressionBombError as exc:
        raise VcotError(f"{name} is too large to open safely ({exc}): downscale it and upload it again") from exc
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the upload's: PIL raises many kinds
        why = "not a format it knows" if isinstance(exc, UnidentifiedImageError) else f"{type(exc).__name__}: {exc}"
        raise VcotError(f"{name} is not an image this demo can read ({why}): upload a PNG, JPEG or WebP") from exc
    width, height = image.size
    vision = fmt.vision
    try:
        model_w, model_h = vision.resized(width, height)
    except ValueError as exc:  # an aspect ratio the Qwen processors refuse (over 200:1)
        raise VcotError(f"{name} is {width}×{height}: the model cannot take it ({exc}): crop or pad it and upload "
                        "it again") from exc  # fmt: skip
    tokens = vision.image_tokens(width, height)
    note = f"{width}×{height} image: the model sees it at {model_w}×{model_h} ({tokens} image tokens)"
    if width * height > vision.max_pixels:
        note += f", downscaled to fit its pixel budget of {vision.max_pixels:,} pixels"
    elif width * height < vision.min_pixels:
        note += f", enlarged to its minimum of {vision.min_pixels:,} pixels"
    return Prepared(image=image, model_size=(model_w, model_h), note=note + ".")


def upload_record(prepared: Prepared, question: str) -> dict[str, Any]:
    """The record a page question is prompted as: with the upload's size, so that a box typed in the question (house
    coordinates, 0-1000 of the image) reaches the model in its own frame, as a record's question box does."""
    return {"image": "upload", "question": question, "width": prepared.image.width, "height": prepared.image.height}


def check_length(question: str | None, limits: QuestionLimits) -> str:
    """The question, stripped, or a :class:`VcotError` when it is empty or has more characters than ``limits``."""
    text = (question or "").strip()
    if not text:
        raise VcotError("no question: type one, e.g. 'What color is the circle?'")
    if len(text) > limits.chars:
        raise VcotError(f"the question has {len(text):,} characters: ask in at most {limits.chars:,}")
    return text


class DemoModel:
    """One model and its format, shared by every visitor (the page runs one request at a time)."""

    def __init__(self, model: Any, processor: Any, fmt: ModelFormat, *, model_uri: str, adapter_uri: str | None = None):
        self.model = model
        self.processor = processor
        self.fmt = fmt
        self.model_uri = model_uri
        self.adapter_uri = adapter_uri
        # The processor resizes images exactly as the boxes are read back (qwen2.5-absolute depends on it).
        processor.image_processor.size = {"shortest_edge": fmt.vision.min_pixels, "longest_edge": fmt.vision.max_pixels}
        tokenizer = processor.tokenizer
        self.stop_texts = tuple(tokenizer.convert_ids_to_tokens(sorted(stop_token_ids(model, tokenizer))))
        self._penalties: dict[float, Any] = {}

    def describe(self) -> str:
        """What is loaded and how its boxes are read, for the page."""
        vision = self.fmt.vision
        return (
            f"**Model** `{self.model_uri}`" + (f" + adapter `{self.adapter_uri}`" if self.adapter_uri else "")
            + f" · family {self.fmt.family} · boxes as `{self.fmt.box_syntax}` in `{self.fmt.coords}`"
            + f" · images {vision.min_pixels:,}-{vision.max_pixels:,} pixels · {self.fmt.mode} prompts"
        )

    def prepare(self, path: str | None) -> Prepared:
        """Decode an upload; a missing, corrupt or oversized file is a :class:`VcotError` that says what to do."""
        return prepare_upload(path, self.fmt)

    def check_question(self, question: str | None, limits: QuestionLimits) -> str:
        """The question, stripped, or a :class:`VcotError` when it is empty or over ``limits`` (characters first:
        counting them costs nothing, tokenizing a megabyte does)."""
        text = check_length(question, limits)
        tokens = len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokens > limits.tokens:
            raise VcotError(f"the question has {tokens:,} tokens: ask in at most {limits.tokens:,}")
        return text

    def stream(
        self, prepared: Prepared, question: str, options: Options, cancel: threading.Event | None = None
    ) -> Iterator[str]:
        """The answer's text as it is generated, up to the end-of-turn token. A ``rationale_turn`` model (LaCoT's
        layout, RGFN's runs) reasons in an Analyzer turn, then answers in the assistant turn, as evaluate asks it:
        both turns are streamed, one after the other.

        Closing the iterator early (the reader is gone) or setting ``cancel`` (the visitor left: the page's unload
        event, from any thread) stops generation at its next layer, in the prompt's forward pass too; nothing starts
        once ``cancel`` is set. An error in generation is raised here, in the caller's thread.
        """
        messages = build_messages(upload_record(prepared, question), self.fmt, with_answer=False)
        if self.fmt.layout != "rationale_turn":
            prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            yield from self._stream_turn(prepared, prompt, options, cancel)
            return
        prompt = turn_prefix(self.processor, messages, RATIONALE_ROLE)
        rationale: list[str] = []
        no_vision = {"suppress_tokens": vision_token_ids(self.processor.tokenizer)}  # re-read with the image next
        for chunk in self._stream_turn(prepared, prompt, options, cancel, **no_vision):
            rationale.append(chunk)
            yield chunk
        if cancel is not None and cancel.is_set():
            return
        answer_prompt = prompt + "".join(rationale) + answer_cue(self.processor, messages)
        greedy = Options(max_new_tokens=ANSWER_TOKENS, repetition_penalty=1.0, box_aware_penalty=False)
        yield " "
        yield from self._stream_turn(prepared, answer_prompt, greedy, cancel)

    def _stream_turn(
        self, prepared: Prepared, prompt: str, options: Options, cancel: threading.Event | None, **extra: Any
    ) -> Iterator[str]:
        """One turn's text as it is generated after ``prompt`` (chat-templated text), up to its end-of-turn token."""
        stop = threading.Event()
        gone = cancel if cancel is not None else threading.Event()
        if gone.is_set():
            return
        inputs = self._inputs(prepared, prompt)
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=False)
        failures: list[BaseException] = []
        hooks = _stop_between_layers(self.model, lambda: stop.is_set() or gone.is_set())

        def generate() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(
                        **inputs, streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop), _StopWhenSet(gone)]),
                        **self._generation_kwargs(options), **extra,
                    )
            except _Stopped:
                log.info("generation_stopped", reason="visitor left" if gone.is_set() else "reader closed")
                streamer.end()
            except Exception as exc:  # noqa: BLE001 - re-raised in the reading thread below
                failures.append(exc)
                streamer.end()  # else the reader waits forever

        thread = threading.Thread(target=generate, name="vcot-demo-generate", daemon=True)
        thread.start()
        try:
            for chunk in streamer:
                head, ended = cut_at_stop(chunk, self.stop_texts)
                if head:
                    yield head
                if ended:
                    break
        finally:
            stop.set()
            thread.join()
            for hook in hooks:
                hook.remove()
        if failures:
            raise failures[0]

    def _inputs(self, prepared: Prepared, prompt: str) -> Any:
        images = [prepared.image] if self.fmt.mode == "multimodal" else None
        return self.processor(text=[prompt], images=images, return_tensors="pt").to(self.model.device)

    def _generation_kwargs(self, options: Options) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": options.max_new_tokens, "do_sample": options.sample, "num_beams": 1}
        if options.sample:
            kwargs.update(sampled(options.temperature, options.top_p))
        if options.box_aware_penalty and options.repetition_penalty != 1.0:
            box_aware = self._box_aware(options.repetition_penalty)  # replaces the standard penalty
            kwargs.update(repetition_penalty=1.0, logits_processor=LogitsProcessorList([box_aware]))
        else:
            kwargs["repetition_penalty"] = options.repetition_penalty
        return kwargs

    def _box_aware(self, penalty: float) -> Any:
        """The box-aware penalty, built once per value (it scans the vocabulary)."""
        if penalty not in self._penalties:
            self._penalties[penalty] = BoxAwareRepetitionPenalty(penalty, self.processor.tokenizer, self.fmt.box_syntax)
        return self._penalties[penalty]


class _Stopped(Exception):
    """Raised between two layers of a forward pass whose reader is gone."""


def _stop_between_layers(model: Any, stopped: Callable[[], bool]) -> list[Any]:
    """Hooks that end a forward pass before its next layer (decoder layers, vision blocks) once ``stopped()``:
    a stopping criterion is only asked after a whole token, and the prompt's forward pass can take minutes."""

    def check(module: Any, args: Any) -> None:
        if stopped():
            raise _Stopped

    layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    return [layer.register_forward_pre_hook(check) for layer in layers]


class _StopWhenSet(StoppingCriteria):
    """Every row stops once ``event`` is set: the reader has gone."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def cut_at_stop(chunk: str, stop_texts: tuple[str, ...]) -> tuple[str, bool]:
    """``chunk`` up to the first end-of-turn token's text, and whether one was there.

    >>> cut_at_stop("Answer: red<|im_end|>", ("<|im_end|>",)), cut_at_stop("red", ("<|im_end|>",))
    (('Answer: red', True), ('red', False))
    """
    cuts = [chunk.index(stop) for stop in stop_texts if stop in chunk]
    return (chunk[: min(cuts)], True) if cuts else (chunk, False)


def load_demo_model(model_uri: str, adapter_uri: str | None = None, coords: Coords | None = None) -> DemoModel:
    """Load the model and settle its format, as evaluate does: the card's format, checked against the flags and
    the base model before any weight loads; an adapter from another base model is a one-line :class:`ConfigError`."""
    if adapter_uri:
        refuse_full_finetune(adapter_uri, flag="--adapter")
    if adapter_uri and not storage.exists(storage.join(adapter_uri, "adapter_config.json")):
        raise ConfigError(
            f"no adapter at {adapter_uri} (no adapter_config.json): pass the adapter/ folder of a train run"
        )
    card_home = adapter_uri or model_uri  # a full fine-tune's model/ carries its own card
    recorded = adapter_format(card_home)
    if recorded is None and coords is None:  # never guessed
        where = f"no {MODEL_CARD} next to adapter {adapter_uri}" if adapter_uri else "a base model records no box frame"
        raise ConfigError(f"{where}: pass --coords norm1000 or --coords qwen2.5-absolute")
    if recorded is not None and coords is not None and coords != recorded.coords:
        raise ConfigError(
            f"--coords {coords} contradicts the adapter's {MODEL_CARD} ({recorded.coords}): drop --coords"
        )
    family = model_family(model_uri)
    if recorded is not None:
        card = read_model_card(card_home)
        check_base_model(card, model_uri)  # the base's architecture, when train recorded it
        if recorded.family != family:  # an older card: another family's weights may even load without an error
            raise ConfigError(
                f"adapter {adapter_uri} was trained on a {recorded.family} model, but {model_uri} is a {family} model: "
                f"pass --model {card.get('base_model') or 'its base model'}"
            )
    model, processor = load_model_and_processor(model_uri, adapter_uri=adapter_uri)  # other shapes: ConfigError
    fmt = recorded or ModelFormat.for_processor(processor, family, coords=coords or "norm1000")
    described = {key: value for key, value in fmt.to_dict().items() if key != "vision"}
    log.info("demo_model", model=model_uri, adapter=adapter_uri, **described)
    return DemoModel(model, processor, fmt, model_uri=model_uri, adapter_uri=adapter_uri)
