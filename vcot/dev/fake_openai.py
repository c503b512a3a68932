"""A local OpenAI-compatible server for tests and benchmarks: chat completions, files and batches.

Answers are scripted (``answer(text) -> str`` from the request's text; a request with a ``seed``, a sampled one,
by ``sampled(text, seed) -> str`` when given) and faults injected per request
(``fault(text, attempt) -> name | None``, ``attempt`` counting identical requests from 1):
``"429"`` (with Retry-After), ``"500"``, ``"timeout"`` (answers after ``timeout_sleep``), ``"garbage"``
(a 200 whose body is not JSON), ``"nochoices"`` (a 200 without choices), ``"400"``, ``"401"``.
It counts requests and the most in flight at once, and checks the bearer key like the real API.

    with FakeOpenAI(latency=0.2) as server:   # server.base_url -> http://127.0.0.1:PORT/v1
        ...

``python -m vcot.dev.fake_openai --port 8000 --latency 0.2`` runs one standalone (GET /stats for counters);
``--served-model-name NAME --api-key ''`` makes it answer as ``vllm serve`` does: for that model name only, no key.
Needs ``aiohttp`` (a test dependency, not one of the stage's).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

from vcot.distill import prompts

Answer = Callable[[str], str]
Sampled = Callable[[str, int], str]
Fault = Callable[[str, int], "str | None"]

_HINT = re.compile(re.escape(prompts.ANSWER_HINT).replace(re.escape("{answer}"), "(.+?)"))


def _draft_pattern() -> re.Pattern[str]:
    """Where the draft sits in distill's verify message, read from the message itself (never retyped here)."""
    text = prompts.verify_messages("\x00", "\x01")[1]["content"]
    draft = text.index("\x00")
    before, after = text[text.index("\x01") + 1 : draft], text[draft + 1 :][:12]
    return re.compile(re.escape(before) + "(.*?)" + re.escape(after), re.DOTALL)


_DRAFT = _draft_pattern()


def request_text(body: dict[str, Any]) -> str:
    """Every text part of every message, joined (images left out)."""
    parts: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "\n".join(parts)


def echo_answer(text: str) -> str:
    """A well-behaved teacher: grounded answers (with the hinted answer, if any), captions, verification."""
    if prompts.BRANCH_SYSTEM_PROMPT in text:
        return "A close view of a small round object."
    if prompts.VERIFY_SYSTEM_PROMPT in text:
        match = _DRAFT.search(text)
        return match.group(1) if match else ""
    if prompts.CAPTION_PROMPT in text:
        return "The scene shows a <ref>object</ref><box>[100, 100, 400, 400]</box> on a plain background."
    match = _HINT.search(text)
    answer = match.group(1) if match else "unknown"
    return f"I look at the <ref>object</ref><box>[100, 100, 400, 400]</box> in the image.\nAnswer: {answer}"


def _completion(model: str, text: str) -> dict[str, Any]:
    prompt_tokens, completion_tokens = 100, max(1, len(text) // 4)
    return {
        "id": f"chatcmpl-{hashlib.sha1(text.encode()).hexdigest()[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "fake_error", "code": str(status)}}
    return web.json_response(body, status=status, headers=headers)


class FakeOpenAI:
    def __init__(
        self,
        *,
        answer: Answer = echo_answer,
        sampled: Sampled | None = None,
        fault: Fault | None = None,
        latency: float = 0.0,
        api_key: str = "test-key",
        retry_after: str = "0.05",
        timeout_sleep: float = 2.0,
        port: int = 0,
        served_models: tuple[str, ...] = (),
        stream_chunk: int = 4,
    ) -> None:
        self.answer = answer
        self.sampled = sampled
        self.seeds: Counter[int | None] = Counter()  # chat requests by their seed (None: none sent)
        self.fault = fault
        self.latency = latency
        self.api_key = api_key
        self.retry_after = retry_after
        self.timeout_sleep = timeout_sleep
        self.port = port
        self.served_models = served_models  # as vLLM: chat for another model name is a 404 (empty: any name)
        self.stream_chunk = stream_chunk  # characters per streamed chunk (``"stream": true``)
        self.streamed_chunks = 0
        self.stream_disconnects = 0
        self.chat_requests = 0
        self.answered: list[str] = []  # request texts answered with a 200 completion
        self.last_request: dict[str, Any] = {}  # the body of the last chat request
        self.statuses: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.attempts: Counter[str] = Counter()
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_lines = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ---------------------------------------------------------------------------------------- app

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3, middlewares=[self._auth])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{file_id}/content", self._file_content)
        app.router.add_get("/v1/files/{file_id}", self._file)
        app.router.add_post("/v1/batches", self._create_batch)
        app.router.add_get("/v1/batches", self._list_batches)
        app.router.add_get("/v1/batches/{batch_id}", self._batch)
        app.router.add_get("/stats", self._stats)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        if (
            self.api_key  # vLLM's default: no key checked
            and request.path.startswith("/v1/")
            and request.headers.get("Authorization") != f"Bearer {self.api_key}"
        ):
            self.statuses["401"] += 1
            return _error(401, "Incorrect API key provided.")
        return await handler(request)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.chat_requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await request.json()
            self.last_request = body
            if self.served_models and body.get("model") not in self.served_models:
                self.statuses["404"] += 1
                return _error(404, f"The model `{body.get('model')}` does not exist.")
            text = request_text(body)
            digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
            self.attempts[digest] += 1
            fault = self.fault(text, self.attempts[digest]) if self.fault else None
            self.statuses[fault or "200"] += 1
            if self.latency:
                await asyncio.sleep(self.latency)
            if fault == "timeout":
                await asyncio.sleep(self.timeout_sleep)
            if fault == "429":
                return _error(429, "Rate limit reached.", {"Retry-After": self.retry_after})
            if fault in ("500", "400", "401"):
                return _error(int(fault), f"injected {fault}")
            if fault == "garbage":
                return web.Response(text="<html>upstream hiccup</html>", content_type="application/json")
            if fault == "nochoices":
                return web.json_response({"id": "x", "object": "chat.completion"})
            self.answered.append(text)
            seed = body.get("seed")
            self.seeds[seed] += 1
            answer = self.sampled(text, seed) if self.sampled and seed is not None else self.answer(text)
            if body.get("stream"):
                return await self._stream(request, body.get("model", ""), answer)
            return web.json_response(_completion(body.get("model", ""), answer))
        finally:
            self.in_flight -= 1

    async def _stream(self, request: web.Request, model: str, text: str) -> web.StreamResponse:
        """The answer as server-sent events, a few characters a chunk (``stream_chunk``, every ``latency`` s), then
        ``[DONE]``, as vLLM streams; stops when the client goes (``stream_disconnects`` counts it)."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        base = {"id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        pieces = [text[i : i + self.stream_chunk] for i in range(0, len(text), self.stream_chunk)]
        try:
            for piece in pieces:
                choice = {"index": 0, "delta": {"role": "assistant", "content": piece}, "finish_reason": None}
                await response.write(f"data: {json.dumps({**base, 'choices': [choice]})}\n\n".encode())
                self.streamed_chunks += 1
                if self.latency:
                    await asyncio.sleep(self.latency)
            end = {"index": 0, "delta": {}, "finish_reason": "stop"}
            await response.write(f"data: {json.dumps({**base, 'choices': [end]})}\n\ndata: [DONE]\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            self.stream_disconnects += 1
            raise
        return response

    async def _models(self, request: web.Request) -> web.Response:
        """The served models, as vLLM lists them (``fake-model`` when any name is answered)."""
        names = self.served_models or ("fake-model",)
        return web.json_response({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "vcot"}
                                                             for name in names]})  # fmt: skip

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        data = upload.file.read() if hasattr(upload, "file") else str(upload).encode()
        return web.json_response(
            self._store_file(data, getattr(upload, "filename", "upload"), str(form.get("purpose", "")))
        )

    def _store_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        file_id = f"file-{len(self.files) + 1}"
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[file_id] = {"meta": meta, "data": data}
        return meta

    async def _file(self, request: web.Request) -> web.Response:
        found = self.files.get(request.match_info["file_id"])
        return web.json_response(found["meta"]) if found else _error(404, "no such file")

    async def _file_content(self, request: web.Request) -> web.Response:
        found = self.files.get(request.match_info["file_id"])
        return web.Response(body=found["data"]) if found else _error(404, "no such file")

    async def _create_batch(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("input_file_id") not in self.files:
            return _error(400, "unknown input_file_id")
        batch_id = f"batch-{len(self.batches) + 1}"
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body.get("endpoint"),
            "input_file_id": body["input_file_id"],
            "completion_window": body.get("completion_window", "24h"),
            "status": "validating",
            "created_at": int(time.time()),
            "output_file_id": None,
            "error_file_id": None,
            "errors": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }
        return web.json_response(self.batches[batch_id])

    async def _list_batches(self, request: web.Request) -> web.Response:
        """Newest first, as the real service lists them (one page: ``has_more`` false)."""
        data = list(reversed(self.batches.values()))[: int(request.query.get("limit", 20))]
        return web.json_response({"object": "list", "data": data, "has_more": False,
                                  "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})

    async def _batch(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, "no such batch")
        if batch["status"] == "validating":
            batch["status"] = "in_progress"
        elif batch["status"] == "in_progress":
            self._run_batch(batch)
        return web.json_response(batch)

    def _run_batch(self, batch: dict[str, Any]) -> None:
        """Answer every line (faults ``"500"``/``"429"`` become error-file lines), as the real service does later."""
        outputs, errors = [], []
        for line in self.files[batch["input_file_id"]]["data"].splitlines():
            item = json.loads(line)
            self.batch_lines += 1
            text = request_text(item["body"])
            digest = hashlib.sha256(json.dumps(item["body"], sort_keys=True).encode()).hexdigest()
            self.attempts[digest] += 1
            fault = self.fault(text, self.attempts[digest]) if self.fault else None
            if fault in ("500", "429"):
                errors.append(
                    {
                        "id": f"req-{self.batch_lines}",
                        "custom_id": item["custom_id"],
                        "response": {"status_code": int(fault), "body": {"error": {"message": "injected"}}},
                        "error": None,
                    }
                )
                continue
            self.answered.append(text)
            response = {
                "status_code": 200,
                "request_id": f"req-{self.batch_lines}",
                "body": _completion(item["body"].get("model", ""), self.answer(text)),
            }
            outputs.append(
                {"id": f"req-{self.batch_lines}", "custom_id": item["custom_id"], "response": response, "error": None}
            )
        encode = lambda rows: "".join(json.dumps(row) + "\n" for row in rows).encode()  # noqa: E731
        batch["output_file_id"] = (
            self._store_file(encode(outputs), "output.jsonl", "batch_output")["id"] if outputs else None
        )
        batch["error_file_id"] = (
            self._store_file(encode(errors), "errors.jsonl", "batch_output")["id"] if errors else None
        )
        batch["request_counts"] = {
            "total": len(outputs) + len(errors),
            "completed": len(outputs),
            "failed": len(errors),
        }
        batch["status"] = "completed"

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    def stats(self) -> dict[str, Any]:
        return {
            "chat_requests": self.chat_requests,
            "max_in_flight": self.max_in_flight,
            "statuses": dict(self.statuses),
            "batch_lines": self.batch_lines,
        }

    # ------------------------------------------------------------------------------ run in a thread

    def start(self) -> FakeOpenAI:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def serve() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._runner = web.AppRunner(self.app(), access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            self._loop.run_until_complete(site.start())
            self.port = self._runner.addresses[0][1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="fake-openai", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A local OpenAI-compatible server that answers in the house format.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each chat answer")
    parser.add_argument("--api-key", default="test-key", help="the bearer key it checks ('': none, as vLLM)")
    parser.add_argument(
        "--served-model-name", action="append", default=[], help="answer only for this model (repeatable; as vLLM)"
    )
    args = parser.parse_args(argv)
    server = FakeOpenAI(
        latency=args.latency, api_key=args.api_key, port=args.port, served_models=tuple(args.served_model_name)
    )
    web.run_app(server.app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
