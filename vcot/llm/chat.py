"""Cached, deduplicated chat completions against an OpenAI-compatible endpoint, with our retry policy.

Shared by distill (the teacher) and evaluate (the judge); ``role`` names the caller in messages and logs.
The ``openai`` client is built with ``max_retries=0`` so the policy here is the one in force (and testable):

- at most ``concurrency`` requests in flight (an ``asyncio.Semaphore``; backoff waits outside it);
- 429, 408, 409, 5xx, timeouts, connection errors and malformed responses are retried with exponential
  backoff and jitter, honouring ``Retry-After`` / ``retry-after-ms``, up to ``max_attempts``;
- 401/403 (credentials), 400/404/422 (a request or model the endpoint refuses) stop the run at once (400, 413
  and 422 only fail their own record where the caller says so: served evaluation), and so
  does a request that keeps failing: an :class:`LLMError` (a ``VcotError``: one clear line, exit 1).
  Nothing more is sent or retried; requests already on the wire finish so their answers reach the cache,
  and a rerun resumes where this one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

try:
    import openai
except ImportError:  # the distill extra: training and in-process evaluation run without it (make_client says so)
    openai = None  # type: ignore[assignment]

from vcot.errors import VcotError, require
from vcot.llm.cache import AnswerCache, request_key
from vcot.llm.ledger import Ledger
from vcot.log import get_logger

log = get_logger("vcot.llm.chat")

FATAL_STATUS_HINTS = {
    400: "the endpoint rejected the request as invalid (does this model take images? check --model)",
    401: "authentication failed: check OPENAI_API_KEY",
    403: "the key is not allowed to use this model or endpoint: check OPENAI_API_KEY and --model",
    404: "unknown model or endpoint: check --model and --base-url",
    422: "the endpoint could not process the request: check --model and --max-tokens",
}
RETRYABLE_STATUS = {408, 409, 429}


class LLMError(VcotError):
    """The endpoint refused us or kept failing: the run stops; answers received so far are cached."""


class RequestRejected(LLMError):
    """The endpoint refused this request's content (HTTP 400, 413 or 422: a prompt over the server's context, an
    image it cannot take). Where the caller allows it (``LiveBackend(skip_rejected=True)``), one such request is
    that record's failure, not the run's."""


REJECTED_REQUEST_STATUS = {400, 413, 422}


class MalformedResponse(Exception):
    """A 200 response that is not a chat completion (retried like a transient error)."""


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None

    @classmethod
    def from_api(cls, body: Any) -> Completion:
        """From a ``ChatCompletion`` (live) or its JSON dict (batch output); raises :class:`MalformedResponse`."""
        data = body.model_dump() if hasattr(body, "model_dump") else body
        choices = data.get("choices") if isinstance(data, dict) else None
        if not choices or not isinstance(choices[0], dict) or not isinstance(choices[0].get("message"), dict):
            raise MalformedResponse(f"no choices[0].message in the response: {str(data)[:200]}")
        usage = data.get("usage") or {}
        content = choices[0]["message"].get("content")
        return cls(
            text=content if isinstance(content, str) else "",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=choices[0].get("finish_reason"),
        )

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> Completion:
        return cls(
            entry["text"], entry.get("prompt_tokens", 0), entry.get("completion_tokens", 0), entry.get("finish_reason")
        )


Backend = Callable[[str, str, list[dict[str, Any]], dict[str, Any]], Awaitable[Completion]]
"""``backend(key, model, messages, params)``: where uncached requests go (live API or a batch collector)."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base: float = 1.0
    cap: float = 60.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed ``attempt`` (1-based): Retry-After if given, else exponential, with jitter.

        >>> RetryPolicy(base=1.0, cap=60.0).delay(3, None, random.Random(0)) <= 4.0 * 1.5
        True
        >>> RetryPolicy(cap=60.0).delay(1, 2.0, random.Random(0)) >= 2.0
        True
        """
        rng = rng or random.Random()
        if retry_after is not None:
            wait = min(retry_after, self.cap)
            return wait + rng.uniform(0, 0.1 * wait)
        return min(self.cap, self.base * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.5)


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date); ``None`` if absent.

    >>> retry_after_seconds({"retry-after": "1.5"})
    1.5
    >>> retry_after_seconds({"retry-after-ms": "250"})
    0.25
    """
    if headers is None:
        return None
    get = headers.get
    raw_ms = get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(raw) if raw else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def is_retryable(error: BaseException) -> bool:
    if isinstance(error, (openai.APIConnectionError, MalformedResponse, openai.APIResponseValidationError)):
        return True  # APITimeoutError is an APIConnectionError
    if isinstance(error, openai.APIStatusError):
        return error.status_code in RETRYABLE_STATUS or error.status_code >= 500
    return False


def _describe(error: BaseException, secret: str) -> str:
    text = f"{type(error).__name__}: {error}"
    return text.replace(secret, "***") if secret else text


async def call_with_retries(
    attempt: Callable[[], Awaitable[Any]],
    policy: RetryPolicy,
    ledger: Ledger,
    *,
    what: str,
    secret: str = "",
    stop: asyncio.Event | None = None,
    role: str = "teacher",
    flags: str = "--max-attempts / lower --concurrency",
) -> Any:
    """Run ``attempt`` until it succeeds, retrying transient failures; fatal ones raise :class:`LLMError` at once.

    ``secret`` (the API key) is only used to scrub it from error messages; a set ``stop`` ends a backoff wait;
    ``role`` (``teacher``, ``judge``) names the caller in messages and in the ``<role>_retry`` log event, and
    ``flags`` the caller's settings a user can change.
    """
    for number in range(1, policy.max_attempts + 1):
        try:
            return await attempt()
        except (openai.OpenAIError, MalformedResponse) as raised:
            error: BaseException = raised
        if isinstance(error, openai.APIStatusError) and not is_retryable(error):
            hint = FATAL_STATUS_HINTS.get(error.status_code, "the endpoint refused the request")
            refused = RequestRejected if error.status_code in REJECTED_REQUEST_STATUS else LLMError
            raise refused(
                f"{role} returned HTTP {error.status_code} for {what}: {hint} ({_describe(error, secret)[:300]})"
            ) from None
        if not is_retryable(error):
            raise LLMError(f"{role} request for {what} failed: {_describe(error, secret)[:300]}; check that the "
                           "endpoint answers (its URL, key and model name), then rerun") from None
        if number == policy.max_attempts:
            break
        response_headers = getattr(getattr(error, "response", None), "headers", None)
        wait = policy.delay(number, retry_after_seconds(response_headers))
        ledger.retries += 1
        log.warning(
            f"{role}_retry", what=what, attempt=number, wait_s=round(wait, 3), error=_describe(error, secret)[:200]
        )
        if stop is None:
            await asyncio.sleep(wait)
            continue
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)
        if stop.is_set():
            raise LLMError(f"{what}: not retried, the run is stopping after a fatal error")
    raise LLMError(
        f"{role} request for {what} still failing after {policy.max_attempts} attempts "
        f"({_describe(error, secret)[:300]}); answers so far are cached: rerun to resume, or raise {flags}"
    )


class LiveBackend:
    """Chat completions now: at most ``concurrency`` in flight (backoff waits release the slot), retried as above.

    After a fatal error (``stopped``) nothing more is sent or retried; requests already on the wire finish,
    so the answers they paid for reach the cache.
    """

    def __init__(
        self,
        client: Any,
        policy: RetryPolicy,
        concurrency: int,
        ledger: Ledger,
        *,
        secret: str = "",
        role: str = "teacher",
        flags: str = "--max-attempts / lower --concurrency",
        skip_rejected: bool = False,
    ) -> None:
        self.client = client
        self.policy = policy
        self.semaphore = asyncio.Semaphore(concurrency)
        self.ledger = ledger
        self._secret = secret
        self.role = role
        self.flags = flags
        self.skip_rejected = skip_rejected
        self.stopped = asyncio.Event()

    def _fatal(self, error: BaseException) -> bool:
        """Whether ``error`` stops the run (else it is one request's: :class:`RequestRejected` when skipped)."""
        if isinstance(error, openai.APIStatusError):
            one_request = self.skip_rejected and error.status_code in REJECTED_REQUEST_STATUS
            return not is_retryable(error) and not one_request
        return not (self.skip_rejected and isinstance(error, RequestRejected))

    async def __call__(
        self, key: str, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> Completion:
        async def attempt() -> Completion:
            async with self.semaphore:
                if self.stopped.is_set():
                    raise LLMError("not sent: the run is stopping after a fatal error")
                try:
                    response = await self.client.chat.completions.create(model=model, messages=messages, **params)
                except ValueError as exc:  # a 200 whose body is not JSON
                    raise MalformedResponse(f"response body is not JSON: {exc}") from exc
                except openai.APIStatusError as exc:
                    # Decided before the slot is released, so no waiting request goes out after a fatal error.
                    if self._fatal(exc):
                        self.stopped.set()
                    raise
            return Completion.from_api(response)

        try:
            return await call_with_retries(
                attempt,
                self.policy,
                self.ledger,
                what=f"model {model!r}",
                secret=self._secret,
                stop=self.stopped,
                role=self.role,
                flags=self.flags,
            )
        except LLMError as exc:
            if self._fatal(exc):
                self.stopped.set()
            raise


def make_client(base_url: str | None, api_key: str, timeout: float) -> Any:
    """The async ``openai`` client with its own retries off (ours apply)."""
    client = require("openai", "distill").AsyncOpenAI
    return client(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)


class CachedChat:
    """Ask the model: from the cache when the key is known, else from the backend, then store the answer.

    Identical requests in flight at the same time share one call (duplicate records pay once).
    """

    def __init__(
        self, model: str, params: dict[str, Any], cache: AnswerCache, ledger: Ledger, backend: Backend
    ) -> None:
        self.model = model
        self.params = params
        self.cache = cache
        self.ledger = ledger
        self.backend = backend
        self._in_flight: dict[str, asyncio.Future[Completion]] = {}
        self.waiting: dict[str, tuple[str, str]] = {}
        """``key -> (purpose, record_id)`` of requests the backend has not answered yet (batch mode)."""

    async def ask(
        self, messages: list[dict[str, Any]], *, record_id: str, purpose: str, params: dict[str, Any] | None = None
    ) -> Completion:
        """The answer to ``messages``; ``params`` adds to (or replaces) the chat's own for this request alone (a
        sample's seed), in its cache key too."""
        params = {**self.params, **params} if params else self.params
        key = request_key(self.model, messages, params)
        entry = self.cache.get(key)
        if entry is not None:
            self.ledger.cache_hits += key not in self.cache.added  # stored before this run: a request not paid
            return Completion.from_entry(entry)
        if key in self._in_flight:
            return await asyncio.shield(self._in_flight[key])
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        self.waiting[key] = (purpose, record_id)
        try:
            completion = await self.backend(key, self.model, messages, params)
            del self.waiting[key]
            self.ledger.record(completion.prompt_tokens, completion.completion_tokens)
            await self.cache.add(answer_entry(key, self.model, purpose, record_id, completion))
            future.set_result(completion)
            return completion
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else has to
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            del self._in_flight[key]


def answer_entry(
    key: str, model: str, purpose: str, record_id: str, completion: Completion, *, batch: bool = False
) -> dict[str, Any]:
    """One cache line: the answer and its usage, with what asked for it (for audits)."""
    return {
        "key": key,
        "model": model,
        "purpose": purpose,
        "record_id": record_id,
        "text": completion.text,
        "finish_reason": completion.finish_reason,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "batch": batch,
    }
