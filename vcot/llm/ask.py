"""Many questions to one OpenAI-compatible model, each asked once: evaluate's judge and its served model share it.

:func:`ask_all` sends every request through :class:`~vcot.llm.chat.CachedChat` (at most ``concurrency`` in
flight, retries with backoff honouring Retry-After, identical requests sent once), keeps every answer in the
answer cache as it arrives (a rerun, or a run resumed after a kill, asks only for what is missing), and writes the
run's ledger beside the cache. A refusal (401, 404, ...) or a request that keeps failing stops the run with an
:class:`~vcot.llm.chat.LLMError`; the answers so far are kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vcot.io import storage
from vcot.llm.chat import Completion
from vcot.log import get_logger
from vcot.progress import Progress

log = get_logger(__name__)

Request = tuple[str, Callable[[], "list[dict[str, Any]] | None"]] | tuple[
    str, Callable[[], "list[dict[str, Any]] | None"], dict[str, Any]
]
"""``(record id, build[, params])``: the record a question is about (kept in the cache for audits), what builds its
messages when its turn comes (``None``: nothing to ask), so that a split's images are not all held at once, and
parameters of this request alone, added to the endpoint's (a sample's seed)."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to ask (the API key is passed separately: it is never a setting)."""

    model: str
    cache: str
    params: dict[str, Any]
    """Sent with every request and part of its cache key (temperature, max_tokens, ...)."""
    base_url: str | None = None
    concurrency: int = 8
    max_attempts: int = 6
    timeout: float = 60.0
    backoff_base: float = 1.0
    backoff_max: float = 30.0


@dataclass(frozen=True)
class Asked:
    """What :func:`ask_all` got: the completions in the order asked (``None`` where nothing was asked), and what the
    run spent (for metrics.json)."""

    completions: list[Completion | None]
    spent: dict[str, Any]
    rejected: list[str] = dataclasses.field(default_factory=list)
    """The record ids of requests the endpoint refused (HTTP 400/413/422), with ``skip_rejected`` (else they stop
    the run); their completions are ``None``."""


def default_cache(output: str, name: str) -> str:
    """``name`` beside the output (so ``--overwrite`` never deletes answers already paid for).

    >>> default_cache("s3://b/runs/eval1", "_judge_cache"), default_cache("s3://b", "_judge_cache")
    ('s3://b/runs/_judge_cache', 's3://b/_judge_cache')
    """
    output = output.rstrip("/")
    if storage.is_s3(output) and not storage.split_s3(output)[1]:
        return storage.join(output, name)  # a bucket root has no parent
    return storage.join(storage.parent(output), name)


def ask_all(
    endpoint: Endpoint, api_key: str, requests: Sequence[Request], *, role: str, flags: str, skip_rejected: bool = False
) -> Asked:
    """Ask every request; ``role`` names the caller in logs, errors, the cache and the progress bar (``judge``),
    ``flags`` the options a user turns when the endpoint keeps failing. ``skip_rejected``: a request the endpoint
    refuses as invalid fails alone (:attr:`Asked.rejected`) unless every one is refused, which stops the run."""
    return asyncio.run(_ask_all(endpoint, api_key, requests, role=role, flags=flags, skip_rejected=skip_rejected))


async def _ask_all(
    endpoint: Endpoint, api_key: str, requests: Sequence[Request], *, role: str, flags: str, skip_rejected: bool
) -> Asked:
    from vcot.llm.cache import AnswerCache, stored_while_running
    from vcot.llm.chat import CachedChat, LiveBackend, LLMError, RequestRejected, RetryPolicy, make_client
    from vcot.llm.ledger import Ledger

    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
    writer = f"evaluate-{run_id}"
    ledger = Ledger(endpoint.model, run_id)
    cache = AnswerCache(endpoint.cache, writer)
    await asyncio.to_thread(cache.load)
    cached_before = len(cache.entries)
    client = make_client(endpoint.base_url, api_key, endpoint.timeout)
    policy = RetryPolicy(endpoint.max_attempts, endpoint.backoff_base, endpoint.backoff_max)
    backend = LiveBackend(client, policy, endpoint.concurrency, ledger, secret=api_key, role=role, flags=flags,
                          skip_rejected=skip_rejected)  # fmt: skip
    rejected: list[tuple[str, RequestRejected]] = []  # (record id, refusal)
    chat = CachedChat(endpoint.model, endpoint.params, cache, ledger, backend)
    ledger_uri = storage.join(endpoint.cache, "ledger", f"{writer}.json")
    progress = Progress(f"{role}_progress", len(requests), unit="answer")
    window = asyncio.Semaphore(2 * endpoint.concurrency)  # requests whose messages (images) are held at once

    async def ask(
        record_id: str, build: Callable[[], list[dict[str, Any]] | None], params: dict[str, Any] | None = None
    ) -> Completion | None:
        async with window:
            messages = await asyncio.to_thread(build)
            try:
                completion = None if messages is None else await chat.ask(messages, record_id=record_id, purpose=role,
                                                                          params=params)  # fmt: skip
            except RequestRejected as refused:
                if not skip_rejected:
                    raise
                log.warning(f"{role}_request_rejected", record_id=record_id, error=str(refused)[:300])
                rejected.append((record_id, refused))
                completion = None
        progress.update()
        return completion

    with progress:
        async with stored_while_running(cache, ledger, ledger_uri, client, every=cache.flush_seconds):
            outcomes = await asyncio.gather(*(ask(*request) for request in requests), return_exceptions=True)
    errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if rejected and not any(isinstance(outcome, Completion) for outcome in outcomes):
        errors.append(rejected[0][1])  # every request refused: the endpoint's problem, not the records'
    if errors:  # a stop (SIGTERM) first, else the refusal or persistent failure that stopped the rest
        raise min(errors, key=lambda e: (isinstance(e, Exception), not isinstance(e, LLMError)))
    spent = {"model": endpoint.model, "cache": endpoint.cache, "ledger": ledger.to_dict(),
             "cache_answers": {"before": cached_before, "after": len(cache.entries)}}  # fmt: skip
    log.info(f"{role}_done", answers=len(requests), requests=ledger.requests, cache_hits=ledger.cache_hits,
             cost_usd=ledger.estimated_cost_usd())  # fmt: skip
    return Asked(outcomes, spent, [record_id for record_id, _ in rejected])  # type: ignore[arg-type]  # no exception is left among them
