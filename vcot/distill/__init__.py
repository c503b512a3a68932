"""The distill stage: an OpenAI-compatible teacher writes grounded rationales (``vcot-distill``).

Modules, one concern each, in the order a request flows:

- ``config``: the stage's knobs (``DistillConfig``);
- ``prompts``: the house-format system prompt, per-record messages, images as data URLs, zoom crops;
- ``vcot.llm`` (shared with evaluate's judge): the ``openai`` async client, concurrency limit and retry
  policy, the answer cache (never pay twice) and the token/cost ledger;
- ``validate``: is an answer a valid grounded rationale with the right answer; the accepted record;
- ``direct`` / ``zoom``: the two strategies (seed 000, and seed 003's zoom-in + verifier);
- ``batch``: Batch API mode (request file, upload, submit, poll, ingest);
- ``stage``: the stage itself (``distill(config)``).

Tests and benchmarks run it against ``vcot.dev.fake_openai``, a local OpenAI-compatible server.
"""

from __future__ import annotations

from typing import Any

from vcot.distill.config import DistillConfig

__all__ = ["DistillConfig", "distill"]


def distill(config: DistillConfig) -> dict[str, Any] | None:
    """The stage (:func:`vcot.distill.stage.distill`), imported when called: ``vcot-distill --help`` and a bad flag
    answer without loading the ``openai`` client."""
    from vcot.distill.stage import distill as run

    return run(config)
