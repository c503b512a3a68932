"""Never pay twice: request keys, and an append-only answer cache in object storage.

Layout (``CACHE`` is distill's ``--cache``, by default ``_distill_cache`` beside the output, or evaluate's
``--judge-cache``, by default ``_judge_cache`` beside it)::

    CACHE/parts/<writer>-<seq>.jsonl.gz    answers, one small immutable object per flush
    CACHE/ledger/<writer>.json             tokens and estimated cost of that run (see ledger.py), rewritten
                                           every flush interval (:func:`stored_while_running`) and at exit

``<writer>`` is ``<shard>-<run id>``, so pods and restarts never write the same object. Why this layout:
S3 objects cannot be appended to, and one object per answer costs a PUT (and a GET on every restart) per
answer. Batches of ``flush_every`` answers (or whatever arrived within ``flush_seconds``)
written as new whole objects are cheap, each write is atomic (a killed pod never leaves half an object),
and a ``SIGKILL`` loses at most one unflushed batch (SIGTERM and errors flush first). On start every part
is read into a dict, so a rerun sends no request whose answer was stored, whatever shard asked for it.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from vcot.errors import MissingError
from vcot.io import storage
from vcot.io.shards import dumps_record
from vcot.llm.ledger import Ledger
from vcot.log import get_logger

log = get_logger("vcot.llm.cache")

_DATA_URL_PREFIX = "data:"


def _image_digest(url: str) -> str:
    """``sha256:<hex>`` of the image bytes inside a base64 data URL (other URLs are kept as they are)."""
    if not url.startswith(_DATA_URL_PREFIX) or ";base64," not in url:
        return url
    payload = url.split(";base64,", 1)[1]
    return "sha256:" + hashlib.sha256(base64.b64decode(payload)).hexdigest()


def _key_material(value: Any) -> Any:
    """The messages with every inline image replaced by the hash of its bytes."""
    if isinstance(value, dict):
        if value.get("type") == "image_url" and isinstance(value.get("image_url"), dict):
            image = dict(value["image_url"])
            image["url"] = _image_digest(str(image.get("url", "")))
            return {**value, "image_url": image}
        return {k: _key_material(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_key_material(v) for v in value]
    return value


def request_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """sha256 of (model, prompt messages with image bytes hashed, sampling params): one key per paid answer.

    >>> a = request_key("m", [{"role": "user", "content": "hi"}], {"temperature": 0})
    >>> a == request_key("m", [{"role": "user", "content": "hi"}], {"temperature": 0})
    True
    >>> a == request_key("m", [{"role": "user", "content": "hi"}], {"temperature": 1})
    False
    """
    material = {"model": model, "messages": _key_material(messages), "params": params}
    text = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class AnswerCache:
    """Answers by request key, loaded from every stored part and appended to in small immutable parts."""

    def __init__(self, uri: str, writer: str, *, flush_every: int = 32, flush_seconds: float = 10.0) -> None:
        self.uri = uri.rstrip("/")
        self.writer = writer
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.entries: dict[str, dict[str, Any]] = {}
        self.added: set[str] = set()
        """Keys of the answers this run bought: read again (batch mode replays its records each round), no saving."""
        self.stored_parts = 0
        self._pending: list[dict[str, Any]] = []
        self._oldest_pending = 0.0
        self._seq = 0
        self._lock = asyncio.Lock()

    @property
    def parts_uri(self) -> str:
        return storage.join(self.uri, "parts")

    def load(self) -> int:
        """Read every stored part; returns how many answers are known. A corrupt part is skipped with a warning;
        storage that cannot be reached stops the run (skipping the parts it holds would pay for them again)."""
        uris = storage.list_uris(self.parts_uri, suffix=".jsonl.gz")
        with ThreadPoolExecutor(max_workers=8) as pool:
            for uri, entries in zip(uris, pool.map(_read_part, uris)):
                if entries is None:
                    log.warning("cache_part_unreadable", part=uri)
                    continue
                for entry in entries:
                    self.entries.setdefault(entry["key"], entry)
        log.info("cache_loaded", uri=self.uri, parts=len(uris), answers=len(self.entries))
        return len(self.entries)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    async def add(self, entry: dict[str, Any]) -> None:
        """Keep one answer; store the buffered answers when the batch is full or the oldest has waited too long."""
        self.entries[entry["key"]] = entry
        self.added.add(entry["key"])
        if not self._pending:
            self._oldest_pending = time.monotonic()
        self._pending.append(entry)
        await self.flush_due(force=len(self._pending) >= self.flush_every)

    async def flush_due(self, *, force: bool = False) -> None:
        """Store the buffered answers if the oldest has waited ``flush_seconds`` (or ``force``), off the event loop.

        Called on every ``add`` and by the stage's keeper task, so a quiet spell (long backoffs) flushes too.
        """
        if not self._pending or not (force or time.monotonic() - self._oldest_pending >= self.flush_seconds):
            return
        async with self._lock:
            batch, self._pending = self._pending, []
            if batch:
                await asyncio.to_thread(self._write_part, batch, self._next_part())

    def add_now(self, entries: list[dict[str, Any]]) -> None:
        """Store answers at once (batch-API ingest): they are already paid for."""
        for entry in entries:
            self.entries[entry["key"]] = entry
            self.added.add(entry["key"])
        if entries:
            self._write_part(entries, self._next_part())

    def flush(self) -> None:
        """Store whatever is buffered (called on every exit path, including SIGTERM and fatal errors)."""
        batch, self._pending = self._pending, []
        if batch:
            self._write_part(batch, self._next_part())

    def _next_part(self) -> str:
        """The next part's name, taken on the event loop: a write still running in a thread never shares it."""
        self._seq += 1
        return f"{self.writer}-{self._seq:06d}.jsonl.gz"

    def _write_part(self, batch: list[dict[str, Any]], name: str) -> None:
        data = "".join(dumps_record(entry) + "\n" for entry in batch).encode("utf-8")
        uri = storage.join(self.parts_uri, name)
        storage.write_bytes(uri, gzip.compress(data, mtime=0))  # one atomic write: never half an object
        self.stored_parts += 1


def _read_part(uri: str) -> list[dict[str, Any]] | None:
    """A part's answers; ``None`` when it is corrupt or was deleted since it was listed."""
    try:
        data = storage.read_bytes(uri)
    except MissingError:
        return None
    try:
        return [json.loads(line) for line in gzip.decompress(data).splitlines() if line.strip()]
    except (OSError, EOFError, ValueError):
        return None


@asynccontextmanager
async def stored_while_running(
    cache: AnswerCache, ledger: Ledger, ledger_uri: str, client: Any, *, every: float
) -> AsyncIterator[None]:
    """Keep the answers and the ledger on storage while requests run (every ``every`` seconds: a SIGKILL loses
    little) and once more when they end, however they end; then close the client. Distill and the judge run
    their requests inside it."""
    keeper = asyncio.create_task(_keep_stored(cache, ledger, ledger_uri, every))
    try:
        yield
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        cache.flush()
        storage.write_json(ledger_uri, ledger.to_dict())
        await client.close()


async def _keep_stored(cache: AnswerCache, ledger: Ledger, ledger_uri: str, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        await cache.flush_due()
        await asyncio.to_thread(storage.write_json, ledger_uri, ledger.to_dict())
