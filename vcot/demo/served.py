"""The demo on a served model (``vcot-demo --server URL``): an OpenAI-compatible server (vLLM, SGLang) answers, and
the page draws the boxes from its token stream as it does from the in-process model's.

The model is asked exactly as :class:`~vcot.demo.engine.DemoModel` asks its own (the card's prompt and system turn,
the upload's pixels as a lossless PNG), with the page's settings: greedy or sampled, the most new tokens, and the
repetition penalty as the server's own parameter (vLLM and SGLang take ``repetition_penalty``; the box-aware penalty
is in-process only). The box frame is the served model's card (``--model-card``): never guessed. When the visitor
leaves, the stream is closed, and the server stops generating for it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from vcot.config import mask_url_credentials
from vcot.demo.engine import Options, Prepared, QuestionLimits, check_length, prepare_upload, upload_record
from vcot.errors import ConfigError, require
from vcot.grounding.model_format import ModelFormat
from vcot.grounding.prompts import build_messages
from vcot.log import get_logger
from vcot.models.served import (
    api_key,
    card_folder,
    image_data_url,
    openai_messages,
    served_model_name,
    with_structured_boxes,
)

log = get_logger(__name__)


class ServedModel:
    """A model behind an OpenAI-compatible server, with the page's interface of :class:`~vcot.demo.engine.DemoModel`."""

    def __init__(
        self, base_url: str, model: str, fmt: ModelFormat, *, params: dict[str, Any] | None = None,
        timeout: float = 300.0,
    ) -> None:  # fmt: skip
        openai = require("openai", "distill")

        self.client = openai.OpenAI(base_url=base_url, api_key=api_key(), timeout=timeout, max_retries=2)
        self.server = mask_url_credentials(base_url)
        self.model = model
        self.fmt = fmt
        self.params = dict(params or {})

    def describe(self) -> str:
        """What answers and how its boxes are read, for the page."""
        vision = self.fmt.vision
        return (
            f"**Served model** `{self.model}` at `{self.server}` · family {self.fmt.family} · boxes as "
            f"`{self.fmt.box_syntax}` in `{self.fmt.coords}` · images {vision.min_pixels:,}-{vision.max_pixels:,} "
            f"pixels · {self.fmt.mode} prompts · the box-aware penalty is in-process only: with it on, the server is "
            "asked for none"
        )

    def prepare(self, path: str | None) -> Prepared:
        return prepare_upload(path, self.fmt)

    def check_question(self, question: str | None, limits: QuestionLimits) -> str:
        """Characters only: the server counts the tokens (and refuses a prompt over its context)."""
        return check_length(question, limits)

    def request(self, prepared: Prepared, question: str, options: Options) -> dict[str, Any]:
        """The chat completion request for one answer (streamed)."""
        chat = build_messages(upload_record(prepared, question), self.fmt, with_answer=False)
        extra = {**self.params, "repetition_penalty": served_penalty(options)}
        request: dict[str, Any] = {
            "model": self.model,
            "messages": openai_messages(chat, lambda _: image_data_url(prepared.image)),  # type: ignore[arg-type]
            "max_tokens": options.max_new_tokens,
            "temperature": options.temperature if options.sample else 0.0,
            "stream": True,
        }
        if options.sample:
            request["top_p"] = options.top_p
        if extra:
            request["extra_body"] = extra
        return request

    def stream(
        self, prepared: Prepared, question: str, options: Options, cancel: threading.Event | None = None
    ) -> Iterator[str]:
        """The answer's text as the server streams it. Closing the iterator early or setting ``cancel`` closes the
        connection (the server then stops generating); nothing is asked once ``cancel`` is set."""
        if cancel is not None and cancel.is_set():
            return
        response = self.client.chat.completions.create(**self.request(prepared, question, options))
        try:
            for chunk in response:
                if cancel is not None and cancel.is_set():
                    log.info("generation_stopped", reason="visitor left")
                    break
                text = chunk.choices[0].delta.content if chunk.choices else None
                if text:
                    yield text
        finally:
            response.close()


def served_penalty(options: Options) -> float:
    """The ``repetition_penalty`` a server is asked for. Always sent: left out, vLLM takes the exported
    ``generation_config.json``'s (Qwen's own set one). A server has no box-aware penalty, and a plain one pushes the
    coordinate digits away from the right numbers (docs/evaluate.md), so with box-aware on none is applied.

    >>> served_penalty(Options(repetition_penalty=1.2))
    1.0
    >>> served_penalty(Options(repetition_penalty=1.2, box_aware_penalty=False))
    1.2
    """
    return 1.0 if options.box_aware_penalty else options.repetition_penalty


def connect_served(
    base_url: str, card: str | None, *, served_model: str | None = None, params: dict[str, Any] | None = None,
    timeout: float = 300.0, structured_boxes: bool = False,
) -> ServedModel:
    """The served model and its format, from its card (the export's folder, or its ``vcot-model.json``);
    ``structured_boxes``: every answer decoded under the format's regex (vLLM's structured outputs)."""
    from vcot.models.loading import MODEL_CARD, adapter_format

    if not card:
        raise ConfigError("--server reads boxes in the served model's frame: pass --model-card (the folder of its "
                          f"{MODEL_CARD}: the export, or the run's adapter/)")  # fmt: skip
    home = card_folder(card)
    fmt = adapter_format(home)
    if fmt is None:
        raise ConfigError(f"no {MODEL_CARD} at {home}: pass the export's folder (vcot-export writes one)")
    if fmt.layout != "two_turn":  # as served evaluate refuses it
        raise ConfigError(f"the model answers in the {fmt.layout} layout (a rationale turn, then the answer): a "
                          "server is asked for one answer turn; run the demo in process (--model, --adapter)")  # fmt: skip
    if fmt.box_syntax == "qwen" and (params or {}).get("skip_special_tokens") is not False:
        log.warning("special_tokens_dropped", hint='the qwen box syntax is written in special tokens a server drops '
                    'by default, so no box would be drawn: on vLLM pass --server-params \'{"skip_special_tokens": '
                    'false}\'')  # fmt: skip
    name = served_model or served_model_name(base_url, timeout=timeout)
    log.info("demo_served_model", server=mask_url_credentials(base_url), model=name, coords=fmt.coords)
    if structured_boxes:
        params = with_structured_boxes(dict(params or {}), fmt)
    return ServedModel(base_url, name, fmt, params=params, timeout=timeout)
