"""A model behind an OpenAI-compatible server (vLLM, SGLang, TGI, a hosted API), asked as vcot asks its own.

Evaluate's served mode and the demo's ``--server`` share it: the prompt vcot builds
(:func:`vcot.grounding.prompts.build_messages`: the card's system turn, the image, the question and instruction) in the
protocol's shape, the image as a lossless PNG data URL of the pixels vcot decodes, and the served model's name.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from vcot.config import mask_url_credentials
from vcot.errors import ConfigError, require
from vcot.grounding.families import is_vision
from vcot.grounding.model_format import ModelFormat

NO_KEY = "EMPTY"
"""Sent when ``OPENAI_API_KEY`` is unset: a server started without a key (vLLM's default) takes any."""


def api_key() -> str:
    """``OPENAI_API_KEY``, or :data:`NO_KEY` (never a flag: it would land in a manifest)."""
    return os.environ.get("OPENAI_API_KEY") or NO_KEY


STRUCTURED_BOXES_HELP = (
    "Constrain decoding to well-formed boxes (vLLM's structured outputs, a regex of the card's box syntax and frame: "
    "no malformed box; coordinates within 0-1000, or for pixels within a bound on digits; corners may still be "
    "swapped). A server that ignores the field (not vLLM 0.10 or later) decodes unconstrained."
)


def with_structured_boxes(params: dict[str, Any], fmt: ModelFormat) -> dict[str, Any]:
    """``params`` (the request's extra fields) with vLLM's structured outputs set to ``fmt``'s response regex
    (:meth:`vcot.grounding.model_format.ModelFormat.response_regex`); a ``structured_outputs`` already given wins.

    >>> from vcot.grounding.model_format import ModelFormat
    >>> sorted(with_structured_boxes({"seed": 1}, ModelFormat.for_family())["structured_outputs"])
    ['regex']
    """
    try:
        regex = fmt.response_regex()
    except ValueError as exc:
        raise ConfigError(f"--structured-boxes: {exc}") from exc
    return {"structured_outputs": {"regex": regex}, **params}


def card_folder(card: str) -> str:
    """The folder of a served model's card, given as that folder (the export) or its ``vcot-model.json``.

    >>> card_folder("s3://b/models/r1/vcot-model.json"), card_folder("s3://b/models/r1/")
    ('s3://b/models/r1', 's3://b/models/r1/')
    """
    from vcot.io import storage

    return storage.parent(card) if card.rstrip("/").endswith(".json") else card


def image_data_url(image: Image.Image) -> str:
    """``image`` as a lossless PNG data URL: the server sees the pixels vcot would.

    >>> image_data_url(Image.new("RGB", (1, 1))).startswith("data:image/png;base64,")
    True
    """
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def openai_messages(messages: list[dict[str, Any]], image_url: Callable[[Any], str]) -> list[dict[str, Any]]:
    """vcot's chat (``build_messages``) in the OpenAI protocol: each image part an ``image_url`` part (``image_url``
    maps the part's image to its URL), a system turn as plain text.

    >>> chat = [{"role": "system", "content": [{"type": "text", "text": "S"}]},
    ...         {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "Q?"}]}]
    >>> [m["content"] if m["role"] == "system" else [p["type"] for p in m["content"]]
    ...  for m in openai_messages(chat, lambda image: "data:,")]
    ['S', ['image_url', 'text']]
    """
    converted = []
    for message in messages:
        parts = [
            {"type": "image_url", "image_url": {"url": image_url(part["image"])}} if part["type"] == "image" else part
            for part in message["content"]
        ]
        content: Any = "\n".join(part["text"] for part in parts) if message["role"] == "system" else parts
        converted.append({"role": message["role"], "content": content})
    return converted


def served_model_name(base_url: str, *, timeout: float) -> str:
    """The one model the server lists (``GET /v1/models``); none reachable, or several, is a :class:`ConfigError`
    that says to pass ``--served-model``."""
    openai = require("openai", "distill")

    client = openai.OpenAI(base_url=base_url, api_key=api_key(), timeout=timeout, max_retries=2)
    server = mask_url_credentials(base_url)  # what an error may name
    try:
        names = [model.id for model in client.models.list()]
    except openai.OpenAIError as exc:
        raise ConfigError(f"cannot list the models of {server} ({exc}): is the server up? Or pass "
                          "--served-model NAME") from exc  # fmt: skip
    if len(names) != 1:
        listed = ", ".join(names) or "none"
        raise ConfigError(f"{server} serves {len(names)} models ({listed}): pass --served-model NAME")
    return names[0]


def lora_serving_problem(adapter: Path) -> str | None:
    """Why vLLM (the tests' release) cannot serve ``adapter`` as a LoRA on its base model, or ``None`` when nothing
    vcot knows of stops it. vLLM loads the LoRA matrices of the language model's layers: not whole saved modules
    (``modules_to_save``), not a vision-tower LoRA for any Qwen2.5-VL (Qwen3-VL's ``--enable-tower-connector-lora``
    is experimental), not DoRA or LoRA biases (a recipe's ``peft:`` extras). Such an adapter is served merged:
    ``vcot-export`` writes the model."""
    from safetensors import safe_open

    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("modules_to_save"):
        return f"it trains whole modules ({', '.join(config['modules_to_save'])}), which vLLM's LoRA does not load"
    if config.get("use_dora") or config.get("lora_bias") or config.get("bias", "none") != "none":
        return "it uses DoRA or trains biases, which vLLM's LoRA refuses"
    weights = adapter / "adapter_model.safetensors"
    if weights.exists():
        with safe_open(str(weights), "numpy") as names:
            if any(is_vision(name) for name in names.keys()):
                return "it adapts the vision tower, which vLLM serves as a LoRA for no Qwen-VL model"
    return None
