"""Batch API mode: the same pipeline, answered in rounds of OpenAI batches (half the price, up to 24 h each).

Each round runs every record through the strategy with a :class:`BatchCollector` as the backend: cached
answers resolve at once, the first uncached request of each record is queued and the record waits
(:class:`Deferred`). The queued requests are written as a request JSONL file, uploaded (files API),
submitted (``/v1/chat/completions`` batch), polled, and their output is ingested into the answer cache with
the same parsing as live answers. The next round sees those answers and moves every record one step on
(direct: answer, then a corrective retry; zoom: caption, crops, merge, verify...). Rounds end when no
record queues anything.

Never paying twice holds across kills too: the ids of submitted batches are stored in
``CACHE/batches/<output hash>-<shard>.json`` before polling, and a rerun finishes (polls and ingests) those batches
before it submits anything new.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from vcot.io import storage
from vcot.llm.cache import AnswerCache
from vcot.llm.chat import (
    Completion,
    LLMError,
    MalformedResponse,
    RetryPolicy,
    answer_entry,
    call_with_retries,
)
from vcot.llm.ledger import Ledger
from vcot.log import get_logger

log = get_logger("vcot.distill.batch")

ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS_PER_BATCH = 50_000
MAX_BYTES_PER_BATCH = 190 * 1024 * 1024  # the API takes files up to 200 MB
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")


class Deferred(Exception):
    """The record's next request is queued for a batch; it continues in the next round."""


class BatchCollector:
    """A backend that queues requests instead of sending them."""

    def __init__(self) -> None:
        self.requests: dict[str, dict[str, Any]] = {}

    async def __call__(
        self, key: str, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> Completion:
        self.requests[key] = {
            "custom_id": key,
            "method": "POST",
            "url": ENDPOINT,
            "body": {"model": model, "messages": messages, **params},
        }
        raise Deferred(key)


def request_files(requests: list[dict[str, Any]]) -> list[bytes]:
    """Split request lines into JSONL files within the Batch API limits (requests and bytes per file).

    >>> len(request_files([{"custom_id": str(i)} for i in range(3)]))
    1
    """
    files: list[bytes] = []
    lines: list[bytes] = []
    size = 0
    for request in requests:
        line = (json.dumps(request, ensure_ascii=False) + "\n").encode("utf-8")
        if lines and (len(lines) >= MAX_REQUESTS_PER_BATCH or size + len(line) > MAX_BYTES_PER_BATCH):
            files.append(b"".join(lines))
            lines, size = [], 0
        lines.append(line)
        size += len(line)
    if lines:
        files.append(b"".join(lines))
    return files


class BatchRunner:
    """Submit, poll and ingest batches for one shard; remembers submitted batch ids in storage."""

    def __init__(
        self,
        client: Any,
        cache: AnswerCache,
        ledger: Ledger,
        policy: RetryPolicy,
        *,
        state_uri: str,
        poll_seconds: float,
        max_hours: float,
        secret: str = "",
    ) -> None:
        self.client = client
        self.cache = cache
        self.ledger = ledger
        self.policy = policy
        self.state_uri = state_uri
        self.poll_seconds = poll_seconds
        self.max_hours = max_hours
        self._secret = secret
        self.batches_submitted = 0

    async def _api(self, call: Callable[[], Any], what: str) -> Any:
        return await call_with_retries(call, self.policy, self.ledger, what=what, secret=self._secret)

    async def resume(self, labels: dict[str, tuple[str, str]]) -> int:
        """Finish batches a killed run submitted (so their answers are not paid again); returns answers ingested."""
        if not storage.exists(self.state_uri):
            return 0
        batch_ids = storage.read_json(self.state_uri).get("batches", [])
        log.info("batch_resume", batches=batch_ids)
        ingested = 0
        for batch_id in batch_ids:
            ingested += await self._wait_and_ingest(batch_id, labels)
        storage.delete(self.state_uri)
        return ingested

    async def run(self, requests: dict[str, dict[str, Any]], labels: dict[str, tuple[str, str]]) -> int:
        """Submit ``requests`` (custom_id = request key), wait, ingest the answers; returns how many were ingested."""
        batch_ids: list[str] = []
        for number, data in enumerate(request_files(list(requests.values())), start=1):
            uploaded = await self._api(
                lambda data=data, number=number: self.client.files.create(
                    file=(f"vcot-distill-{number}.jsonl", data, "application/jsonl"), purpose="batch"
                ),
                "file upload",
            )
            batch = await self._create(uploaded.id)
            batch_ids.append(batch.id)
            self.batches_submitted += 1
            storage.write_json(self.state_uri, {"batches": batch_ids})  # before waiting: a rerun resumes these
            log.info("batch_submitted", batch=batch.id, requests=data.count(b"\n"))
        ingested = 0
        for batch_id in batch_ids:
            ingested += await self._wait_and_ingest(batch_id, labels)
        storage.delete(self.state_uri)
        return ingested

    async def _create(self, file_id: str) -> Any:
        """The batch of ``file_id``. Creating one is not idempotent: a call that timed out or failed may have made it
        (and it would run and bill), so every retry first looks for a batch on this file among the newest."""
        tried = False

        async def create() -> Any:
            nonlocal tried
            if tried:
                made = await self._made_for(file_id)
                if made is not None:
                    log.info("batch_found", batch=made.id, file=file_id, why="the creation that made it was retried")
                    return made
            tried = True
            return await self.client.batches.create(completion_window="24h", endpoint=ENDPOINT, input_file_id=file_id)

        return await self._api(create, "batch creation")

    async def _made_for(self, file_id: str) -> Any | None:
        """The newest batch on ``file_id``, if any; ``None`` too from an endpoint that cannot list batches (it
        gets the creation retried as before)."""
        import openai

        try:
            listed = await self.client.batches.list(limit=100)
        except openai.APIStatusError as exc:
            if exc.status_code in (404, 405):
                return None
            raise
        return next((batch for batch in listed.data if batch.input_file_id == file_id), None)

    async def _wait_and_ingest(self, batch_id: str, labels: dict[str, tuple[str, str]]) -> int:
        deadline = time.monotonic() + self.max_hours * 3600
        while True:
            batch = await self._api(lambda: self.client.batches.retrieve(batch_id), "batch status")
            if batch.status not in ACTIVE:
                break
            if time.monotonic() > deadline:
                raise LLMError(
                    f"batch {batch_id} still {batch.status} after {self.max_hours} h; rerun later to pick it up "
                    "(its id is stored, nothing is submitted twice)"
                )
            await asyncio.sleep(self.poll_seconds)
        log.info("batch_done", batch=batch_id, status=batch.status, counts=str(getattr(batch, "request_counts", "")))
        ingested = 0
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = await self._api(lambda file_id=file_id: self.client.files.content(file_id), "batch download")
                ingested += self.ingest(content.content, labels)
        if batch.status == "failed" and not batch.output_file_id:
            errors = getattr(batch, "errors", None)
            raise LLMError(f"batch {batch_id} failed: {str(errors)[:300]}")
        return ingested

    def ingest(self, data: bytes, labels: dict[str, tuple[str, str]]) -> int:
        """Cache every successful answer in a batch output file; failed lines are left for the next round.

        A request the endpoint refuses as invalid (4xx other than 408/409/429) stops the run, as in live mode.
        """
        entries: list[dict[str, Any]] = []
        for line in data.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key = item.get("custom_id", "")
            response = item.get("response") or {}
            status = int(response.get("status_code") or 0)
            if status == 200:
                try:
                    completion = Completion.from_api(response.get("body") or {})
                except MalformedResponse:
                    continue
                purpose, record_id = labels.get(key, ("batch", ""))
                model = (response.get("body") or {}).get("model", self.ledger.model)
                entries.append(answer_entry(key, model, purpose, record_id, completion, batch=True))
                self.ledger.record(completion.prompt_tokens, completion.completion_tokens, batch=True)
            elif 400 <= status < 500 and status not in (408, 409, 429):
                raise LLMError(f"batch request {key[:12]} was refused with HTTP {status}: {str(item)[:300]}")
        self.cache.add_now(entries)
        return len(entries)
