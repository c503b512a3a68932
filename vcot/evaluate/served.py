"""Served mode of ``vcot-evaluate`` (``--server URL``): the answers of a model that an OpenAI-compatible endpoint
serves (vLLM, SGLang, TGI, a hosted API), scored exactly as model mode scores its own.

Each record is asked as the model was trained (:func:`vcot.grounding.prompts.build_messages`: the card's system turn,
the image, the question and instruction), the image inline as a PNG data URL of the pixels model mode decodes, greedy
(``temperature`` 0, or ``--temperature`` with a seed per sample) with ``--max-new-tokens``, plus ``--server-params``
(vLLM: ``{"repetition_penalty": 1.0}``).
Every answer goes through :mod:`vcot.llm` as the judge's do: ``--server-concurrency`` requests in flight, retries
with backoff, and the answer cache (``--server-cache``, by default ``_served_cache`` beside the output), so a rerun,
or a run resumed after a kill, asks only for what is missing. The box frame is the served model's card
(``--model-card``) or ``--coords``: never guessed.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from vcot.config import mask_url_credentials
from vcot.errors import ConfigError, MissingError
from vcot.evaluate.config import EvaluateConfig
from vcot.grounding.model_format import ModelFormat
from vcot.grounding.prompts import build_messages
from vcot.llm.ask import Endpoint, ask_all, default_cache
from vcot.log import get_logger
from vcot.models.served import api_key, image_data_url, openai_messages, served_model_name, with_structured_boxes

log = get_logger(__name__)


def image_url(uri: str) -> str:
    """The image at ``uri`` as model mode sees it (decoded to RGB), as a lossless PNG data URL."""
    from vcot.io.images import load_rgb

    return image_data_url(load_rgb(uri))


def served_messages(record: dict[str, Any], fmt: ModelFormat, style: str = "cot") -> list[dict[str, Any]]:
    """The chat model mode prompts ``record`` with, in the OpenAI protocol: the image as an ``image_url`` part, a
    system turn as plain text.

    >>> fmt = ModelFormat.for_family("qwen2.5-vl", mode="text")
    >>> [(m["role"], [part["type"] for part in m["content"]]) for m in served_messages({"question": "Q?"}, fmt)]
    [('user', ['text'])]
    """
    return openai_messages(build_messages(record, fmt, with_answer=False, style=style), image_url)  # type: ignore[arg-type]


def _messages_or_none(
    record: dict[str, Any], fmt: ModelFormat, style: str, unreadable: set[str]
) -> list[dict[str, Any]] | None:
    """:func:`served_messages`, or ``None`` (the record's id added to ``unreadable``) when its image cannot be read."""
    try:
        return served_messages(record, fmt, style)
    except (MissingError, OSError, ValueError) as exc:  # a missing image, or PIL's errors on a broken one
        if str(record["id"]) not in unreadable:
            log.warning("image_unreadable", id=record["id"], image=record.get("image"), error=str(exc)[:200])
        unreadable.add(str(record["id"]))
        return None


def served_endpoint(config: EvaluateConfig, output: str, model: str, fmt: ModelFormat) -> Endpoint:
    """The endpoint every answer is asked through (:func:`sample_params` adds a sampled answer's seed);
    ``--structured-boxes`` adds the format's regex."""
    params: dict[str, Any] = {"temperature": config.temperature, "max_tokens": config.max_new_tokens}
    if config.temperature:
        params.update(top_p=config.top_p)
    extra = with_structured_boxes(config.server_params, fmt) if config.structured_boxes else config.server_params
    if extra:
        params["extra_body"] = extra  # the openai client sends them as they are
    return Endpoint(
        model=model,
        cache=(config.server_cache or default_cache(output, "_served_cache")).rstrip("/"),
        params=params,
        base_url=config.server,
        concurrency=config.server_concurrency,
        max_attempts=config.server_max_attempts,
        timeout=config.server_timeout,
    )


def sample_params(config: EvaluateConfig, sample: int) -> dict[str, Any]:
    """What answer ``sample`` of a question adds to the request: its seed when sampling, so a rerun draws, and the
    cache keeps, each answer apart (vLLM honours a request's seed); nothing when greedy.

    >>> from vcot.evaluate.config import EvaluateConfig
    >>> config = EvaluateConfig(data="d", server="http://s/v1", output="o", samples=3, temperature=1.0, seed=10)
    >>> sample_params(config, 2), sample_params(EvaluateConfig(data="d", server="http://s/v1", output="o"), 0)
    ({'seed': 12}, {})
    """
    return {"seed": config.seed + sample} if config.temperature else {}


def served_responses(
    config: EvaluateConfig, asked: list[list[dict[str, Any]]], fmt: ModelFormat, output: str
) -> tuple[list[dict[str, dict[str, str]]], dict[str, Any]]:
    """Ask the server with each prompt style, once per sample (``asked``: the records as each sample asks them):
    ``[{style: {id: response}}]`` per sample and the details for metrics.json.

    A record whose image cannot be read gets no response (``skipped_samples``), as in model mode. Images are read
    and encoded as their requests' turns come, a few at a time.
    """
    if fmt.layout != "two_turn":
        raise ConfigError(f"the model answers in the {fmt.layout} layout (a rationale turn, then the answer): "
                          "served mode asks for one answer turn; evaluate it in process with --model")  # fmt: skip
    if fmt.box_syntax == "qwen" and config.server_params.get("skip_special_tokens") is not False:
        log.warning("special_tokens_dropped", box_syntax=fmt.box_syntax, hint='the qwen box syntax is written in '
                    'special tokens a server drops by default: on vLLM pass --server-params \'{"skip_special_tokens": '
                    'false}\'')  # fmt: skip
    model = config.served_model or served_model_name(str(config.server), timeout=config.server_timeout)
    started = time.perf_counter()
    unreadable: set[str] = set()
    asking = [(sample, style, str(record["id"]), functools.partial(_messages_or_none, record, fmt, style, unreadable))
              for sample, records in enumerate(asked)
              for style in config.prompt_styles for record in records]  # fmt: skip
    # Every sample and prompt style in one run: one cache load and one ledger; each sample with its own seed.
    got = ask_all(served_endpoint(config, output, model, fmt), api_key(),
                  [(record_id, build, sample_params(config, sample)) for sample, _, record_id, build in asking],
                  role="served", flags="--server-max-attempts / lower --server-concurrency",
                  skip_rejected=True)  # fmt: skip
    answers: list[dict[str, dict[str, str]]] = [{style: {} for style in config.prompt_styles} for _ in asked]
    for (sample, style, record_id, _), answer in zip(asking, got.completions, strict=True):
        if answer is not None:
            answers[sample][style][record_id] = answer.text
    seconds = time.perf_counter() - started
    answered = sum(len(by_id) for responses in answers for by_id in responses.values())
    generation = {"temperature": config.temperature, "top_p": config.top_p, "max_new_tokens": config.max_new_tokens,
                  "samples": config.samples, "server_params": config.server_params,
                  "structured_boxes": config.structured_boxes}  # fmt: skip
    details = {
        "server": mask_url_credentials(str(config.server)),
        "served_model": model,
        "generation": generation,
        "timing": {
            "seconds": round(seconds, 3),
            "samples_per_second": round(answered / seconds, 3) if seconds else 0.0,
        },
        "skipped_samples": {reason: count for reason, count in (("image_unreadable", len(unreadable)),
                                                                ("server_rejected", len(set(got.rejected)))) if count},
        "served": got.spent,
    }
    return answers, details
