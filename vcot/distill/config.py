"""Every knob of the distill stage, as flags ``--kebab-case`` with ``VCOT_<NAME>`` env fallbacks.

The teacher's API key is deliberately *not* a field: it is read from ``OPENAI_API_KEY`` only (a Kubernetes
Secret in the cluster), so it never reaches the logged config, the manifest or a command line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from vcot.config import option
from vcot.io import manifest, storage
from vcot.io.manifest import ShardSpec

Strategy = Literal["direct", "zoom"]
Mode = Literal["live", "batch"]


@dataclass
class DistillConfig:
    """Distill grounded rationales from an OpenAI-compatible teacher into canonical grounded records."""

    input: str = option(help="Committed records to distill (convert's output: s3://bucket/prefix or a local path).")
    output: str = option(help="Where to write train/, val/, rejected/, quality.json and _SUCCESS.")
    model: str = option("gpt-4o", help="Teacher model name, as the endpoint knows it.")
    base_url: str | None = option(
        None, help="OpenAI-compatible endpoint (e.g. http://vllm:8000/v1); default: OpenAI (or OPENAI_BASE_URL)."
    )
    strategy: Strategy = option(
        "direct", help="direct: one grounded answer per record; zoom: caption, zoomed crops, merge, then verify."
    )
    mode: Mode = option("live", help="live: chat completions now; batch: the Batch API (half price, hours).")
    concurrency: int = option(10, help="Most teacher requests in flight at once.")
    temperature: float = option(0.2, help="Sampling temperature of the teacher.")
    max_tokens: int = option(1024, help="Most completion tokens per teacher answer.")
    hint_answer: bool = option(
        False, help="Tell the teacher the ground-truth answer (rationalization) instead of letting it answer."
    )
    request_timeout: float = option(120.0, help="Seconds before one teacher request counts as timed out.")
    max_attempts: int = option(8, help="Attempts per request on 429, 5xx and timeouts before the run stops.")
    backoff_base: float = option(1.0, help="First retry delay in seconds; doubles each attempt (with jitter).")
    backoff_max: float = option(60.0, help="Longest retry delay in seconds (Retry-After is honoured up to this).")
    max_image_side: int = option(
        2048, help="Images with a longer side are shrunk to it before sending (0: send as stored)."
    )
    max_branches: int = option(6, help="zoom: most object crops captioned per image.")
    zoom_size: int = option(448, help="zoom: crops are resized so that their longer side has this many pixels.")
    cache: str | None = option(
        None,
        help="Where teacher answers are kept so no request is paid twice; default: _distill_cache beside --output.",
    )
    cache_flush_every: int = option(32, help="Answers buffered before the cache writes a new part object.")
    cache_flush_seconds: float = option(10.0, help="Longest time an answer waits in memory before being stored.")
    prices: str = option(
        "",
        help='Override USD prices per million tokens as JSON: {"model": [input, output]} (see vcot/llm/ledger.py).',
    )
    batch_poll_seconds: float = option(60.0, help="batch: seconds between status checks of a submitted batch.")
    batch_max_hours: float = option(26.0, help="batch: give up waiting on one batch after this many hours.")
    shard_index: int | None = option(None, help="Which shard this pod writes; default: $JOB_COMPLETION_INDEX or 0.")
    num_shards: int = option(1, help="How many pods split the input (an Indexed Job's completions).")
    run_id: str | None = option(None, help=manifest.RUN_ID_HELP)
    overwrite: bool = option(False, help="Rewrite a committed output (the cache is kept: nothing is paid twice).")

    def __post_init__(self) -> None:
        self.shard_index = ShardSpec.resolve(self.shard_index, self.num_shards).index  # raises saying what to set
        if self.concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
        if self.max_attempts < 1:
            raise ValueError("--max-attempts must be at least 1")
        if self.max_tokens < 1:
            raise ValueError("--max-tokens must be at least 1")
        if self.request_timeout <= 0 or self.backoff_base < 0 or self.backoff_max < 0:
            raise ValueError("--request-timeout must be positive and --backoff-base/--backoff-max not negative")
        if self.max_image_side < 0:
            raise ValueError("--max-image-side must be 0 (off) or a positive number of pixels")
        if self.max_branches < 0 or self.zoom_size < 16:
            raise ValueError("--max-branches must be >= 0 and --zoom-size >= 16")
        if self.cache_flush_every < 1 or self.cache_flush_seconds < 0:
            raise ValueError("--cache-flush-every must be >= 1 and --cache-flush-seconds >= 0")
        if self.prices:
            parse_price_overrides(self.prices)
        if self.input.rstrip("/") == self.output.rstrip("/"):
            raise ValueError("--output must differ from --input")

    @property
    def cache_uri(self) -> str:
        """The answer cache: beside the output by default, so ``--overwrite`` never deletes paid answers."""
        if self.cache:
            return self.cache.rstrip("/")
        output = self.output.rstrip("/")
        if storage.is_s3(output) and not storage.split_s3(output)[1]:
            return storage.join(output, "_distill_cache")  # a bucket root has no parent
        return storage.join(storage.parent(output), "_distill_cache")

    @property
    def request_params(self) -> dict[str, float | int]:
        """Sampling parameters sent with every request (part of the request key)."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}


def parse_price_overrides(raw: str) -> dict[str, tuple[float, float]]:
    """``'{"m": [2.5, 10]}'`` -> ``{"m": (2.5, 10.0)}``; raises ``ValueError`` saying what to write.

    >>> parse_price_overrides('{"my-model": [1, 2]}')
    {'my-model': (1.0, 2.0)}
    """
    try:
        value = json.loads(raw)
        prices = {str(model): (float(pair[0]), float(pair[1])) for model, pair in value.items()}
    except (ValueError, TypeError, AttributeError, IndexError, KeyError):
        raise ValueError(
            f'--prices={raw!r} is not valid: write JSON like {{"gpt-4o": [2.5, 10]}} (USD per 1M input, output tokens)'
        ) from None
    return prices
