"""The distill stage: committed records in, canonical grounded records out (train/, val/, rejected/, quality).

Input: the ``train/`` and ``val/`` files of a committed output (convert's), in manifest order; this shard owns
every ``num_shards``-th record. A record is *distilled* when it has ``needs_distillation`` (or is not a
usable grounded record yet). Records that are already grounded are **passed through unchanged**: distill's
output is then the complete training set for tokenize, and nobody pays a teacher for a rationale the
source already has. So ``accepted (distilled + passed through) + rejected == input`` for every shard.

A distilled record keeps every input field and gets ``rationale`` (house format, last line
``Answer: <answer>``), ``objects`` (its own, else the teacher's boxes), ``needs_distillation = false`` and
``provenance.distill``. A record whose answer stays invalid after the corrective retry, or whose image is
missing or unreadable, goes to ``rejected/`` with a reason code.

Stopping is safe at any time: SIGTERM and errors flush the answer cache and the ledger first and commit
nothing; the rerun asks only for what is not cached, and skips a committed output.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import secrets
import signal
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError

from vcot.config import redacted
from vcot.distill import prompts
from vcot.distill.batch import BatchCollector, BatchRunner, Deferred
from vcot.distill.config import DistillConfig, parse_price_overrides
from vcot.distill.direct import direct_rationale
from vcot.distill.validate import accepted_record
from vcot.distill.zoom import zoom_and_verify
from vcot.errors import ConfigError, VcotError
from vcot.grounding.records import (
    RAW_LIMIT,
    Rejection,
    grounding_problem,
    merge_counts,
    record_problem,
    top_reasons,
    truncate_raw,
)
from vcot.io import manifest, storage
from vcot.io.manifest import ShardSpec
from vcot.io.shards import ShardFile, SplitWriters, read_verified, write_file
from vcot.llm.cache import AnswerCache, stored_while_running
from vcot.llm.chat import CachedChat, LiveBackend, LLMError, RetryPolicy, make_client
from vcot.llm.ledger import DEFAULT_PRICES, Ledger
from vcot.log import get_logger

log = get_logger("vcot.distill")

STAGE = "distill"
QUALITY = "quality.json"
MAX_BATCH_ROUNDS = 12


@dataclass
class Result:
    """One input record's fate: ``record`` (accepted) or ``rejected`` (the rejected line), and its counters."""

    kind: str  # distilled | passed_through | rejected
    record: dict[str, Any] | None = None
    rejected: dict[str, Any] | None = None
    stats: dict[str, int] = field(default_factory=dict)


def needs_teacher(record: dict[str, Any]) -> bool:
    """Whether a record must be distilled (else it is passed through as it is).

    >>> needs_teacher({"needs_distillation": True})
    True
    """
    return bool(record.get("needs_distillation")) or grounding_problem(record) is not None


def owned_records(input_uri: str, shard: ShardSpec) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(position, record)`` of this shard's records, in the input manifest's order."""
    for position, record in enumerate(manifest.committed_records(input_uri, expect_stage=manifest.RECORD_STAGES)):
        if shard.owns(position):
            yield position, record


def rejected_line(record: dict[str, Any], position: int, reason: str, detail: str, answer: str = "") -> dict[str, Any]:
    """The ``rejected/`` line of docs/records.md (as convert writes it), plus the teacher's last answer."""
    extra = {"answer": truncate_raw(answer)} if answer else {}
    rejection = Rejection(
        reason, detail[:RAW_LIMIT], position, id=record.get("id"), subset=record.get("subset") or "unknown", raw=record,
        extra=extra,
    )
    return rejection.to_dict()


def _load_image(uri: str, max_side: int) -> tuple[bytes, str]:
    data = storage.read_bytes(uri)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    return data, prompts.image_data_url(data, max_side=max_side)


class Distiller:
    """Turns one record into a :class:`Result` with the configured strategy."""

    def __init__(self, config: DistillConfig, teacher: CachedChat) -> None:
        self.config = config
        self.teacher = teacher

    async def __call__(self, item: tuple[int, dict[str, Any]]) -> Result:
        position, record = item
        if not needs_teacher(record):
            return Result("passed_through", record=record)
        image_uri = str(record.get("image") or "")
        if not image_uri or not await asyncio.to_thread(storage.exists, image_uri):
            return Result(
                "rejected", rejected=rejected_line(record, position, "image_missing", f"no image at {image_uri!r}")
            )
        problem = record_problem(record)
        if problem is not None:  # before any request: no rationale fixes it
            return Result("rejected", rejected=rejected_line(record, position, problem, "no rationale can fix it"))
        try:
            image, image_url = await asyncio.to_thread(_load_image, image_uri, self.config.max_image_side)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
            return Result("rejected", rejected=rejected_line(record, position, "image_unreadable", str(exc)))
        config = self.config
        if config.strategy == "zoom":
            outcome = await zoom_and_verify(
                self.teacher,
                record,
                image,
                image_url,
                hint_answer=config.hint_answer,
                max_branches=config.max_branches,
                zoom_size=config.zoom_size,
            )
        else:
            outcome = await direct_rationale(self.teacher, record, image_url, hint_answer=config.hint_answer)
        stats = {**outcome.stats, "corrected": int(outcome.corrected)}
        if outcome.verdict.problem is not None:
            line = rejected_line(record, position, outcome.verdict.problem, outcome.verdict.detail, outcome.text)
            return Result("rejected", rejected=line, stats=stats)
        info = {"model": config.model, "strategy": config.strategy, "corrected": outcome.corrected}
        accepted = accepted_record(record, outcome.text, distill_info=info)
        problem = grounding_problem(accepted)
        if problem is not None:
            line = rejected_line(record, position, problem, "the distilled record is not grounded", outcome.text)
            return Result("rejected", rejected=line, stats=stats)
        return Result("distilled", record=accepted, stats=stats)


async def in_order(
    work: Callable[[Any], Awaitable[Result]],
    items: Sequence[Any],
    window: int,
    *,
    on_failure: Callable[[], None] = lambda: None,
) -> AsyncIterator[Result]:
    """Run ``work`` on ``items`` with at most ``window`` running, yielding results in input order.

    Ordered output keeps shards deterministic. The first exception of *any* item stops the run without
    waiting for slower records ahead of it: ``on_failure`` (stop sending), then the running items are
    drained (answers already paid for are cached) and the exception raised.
    """
    failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def watch(task: asyncio.Task[Result]) -> None:
        if not task.cancelled() and task.exception() is not None and not failed.done():
            failed.set_exception(task.exception())  # type: ignore[arg-type]

    pending: deque[asyncio.Task[Result]] = deque()
    position = 0
    try:
        while position < len(items) or pending:
            while position < len(items) and len(pending) < window:
                task = asyncio.create_task(work(items[position]))
                task.add_done_callback(watch)
                pending.append(task)
                position += 1
            head = pending[0]
            await asyncio.wait([head, failed], return_when=asyncio.FIRST_COMPLETED)
            if failed.done():
                on_failure()
                await asyncio.gather(*pending, return_exceptions=True)
                failed.result()
            yield await pending.popleft()
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if failed.done() and not failed.cancelled():
            failed.exception()  # retrieved: no "exception never retrieved" warning


async def _batch_results(
    work: Distiller, items: Sequence[tuple[int, dict[str, Any]]], teacher: CachedChat, runner: BatchRunner
) -> list[Result]:
    """Rounds of batches until no record waits (see batch.py)."""
    await runner.resume(teacher.waiting)

    async def step(item: tuple[int, dict[str, Any]]) -> Result | None:
        try:
            return await work(item)
        except Deferred:
            return None

    for round_number in range(1, MAX_BATCH_ROUNDS + 1):
        collector = BatchCollector()
        teacher.backend = collector
        teacher.waiting.clear()
        results = await asyncio.gather(*(step(item) for item in items))
        if not collector.requests:
            return [result for result in results if result is not None]
        log.info("batch_round", round=round_number, requests=len(collector.requests), waiting=results.count(None))
        await runner.run(collector.requests, dict(teacher.waiting))
    raise LLMError(f"records still waiting after {MAX_BATCH_ROUNDS} batch rounds; rerun to continue")


class _Outputs:
    """The three record shards of this pod plus the counters of the quality report."""

    def __init__(self, output: str, shard: ShardSpec) -> None:
        self.shards = SplitWriters(output, shard.name)
        self.counts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.details: Counter[str] = Counter()

    def add(self, result: Result) -> None:
        self.counts["input"] += 1
        self.counts[result.kind] += 1
        self.details.update(result.stats)
        if result.rejected is not None:
            self.reasons[result.rejected["reason"]] += 1
            self.shards.write("rejected", result.rejected)
        else:
            assert result.record is not None
            split = "val" if result.record.get("split") == "val" else "train"
            self.shards.write(split, result.record)

    def close(self) -> list[ShardFile]:
        return self.shards.close()

    def abort(self) -> None:
        self.shards.abort()


SIGTERM_DRAIN_SECONDS = 20.0
"""How long the requests already on the wire may finish after SIGTERM (their answers are paid for): inside
Kubernetes' default grace period of 30 s, with time left to store them."""


@dataclass
class Sigterm:
    """Whether SIGTERM came, and the timer that will cancel the run if its drain outlasts the grace period."""

    received: bool = False
    timer: asyncio.TimerHandle | None = None

    def disarm(self) -> None:
        """The drain is over: no cancel may land in the cleanup that follows (the cache's last flush)."""
        if self.timer is not None:
            self.timer.cancel()


@contextlib.contextmanager
def _sigterm_stops(task: asyncio.Task[Any] | None, stop_sending: Callable[[], None] | None) -> Iterator[Sigterm]:
    """On SIGTERM (a pod being stopped): ``stop_sending``, let the requests on the wire finish for at most
    :data:`SIGTERM_DRAIN_SECONDS` (their answers reach the cache, so the rerun does not pay for them again), then
    cancel ``task`` so cleanup runs. Without ``stop_sending`` (batch mode, whose requests run on the provider's side)
    at once."""
    sigterm = Sigterm()
    loop = asyncio.get_running_loop()

    def stop() -> None:
        sigterm.received = True
        if task is None:
            return
        if stop_sending is None:
            task.cancel()
            return
        stop_sending()
        sigterm.timer = loop.call_later(SIGTERM_DRAIN_SECONDS, task.cancel)

    try:
        loop.add_signal_handler(signal.SIGTERM, stop)
        installed = True
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
        installed = False
    try:
        yield sigterm
    finally:
        sigterm.disarm()
        if installed:
            loop.remove_signal_handler(signal.SIGTERM)


def merge_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One quality report for a sharded run: counters summed (:func:`vcot.grounding.records.merge_counts`, as convert's), the
    slowest shard's time, the total cost.

    >>> a = {"shard": "00000-of-00002", "counts": {"input": 2, "distilled": 2}, "accepted": 2, "rejected_reasons": {},
    ...      "details": {}, "ledger": {"model": "m", "run": "r0", "requests": 2, "estimated_cost_usd": 0.5},
    ...      "elapsed_s": 3.0}
    >>> b = {**a, "shard": "00001-of-00002", "counts": {"input": 1, "rejected": 1}, "accepted": 0,
    ...      "rejected_reasons": {"missing_image": 1}, "ledger": {**a["ledger"], "run": "r1", "requests": 0}}
    >>> merged = merge_reports([a, b])
    >>> merged["counts"], merged["rejected_reasons"]
    ({'distilled': 2, 'input': 3, 'rejected': 1}, {'missing_image': 1})
    >>> merged["ledger"]["runs"], merged["ledger"]["requests"], merged["ledger"]["estimated_cost_usd"]
    (['r0', 'r1'], 2, 1.0)
    """
    summed = merge_counts(reports)
    ledgers = [report.get("ledger", {}) for report in reports]
    costs = [entry.get("estimated_cost_usd") for entry in ledgers]
    ledger: dict[str, Any] = {
        "model": ledgers[0].get("model") if ledgers else None,
        "runs": [entry.get("run") for entry in ledgers],
        **summed.get("ledger", {}),
        "estimated_cost_usd": None if None in costs else round(sum(costs), 6),
    }
    return {
        "stage": STAGE,
        "shards": [report.get("shard") for report in reports],
        **{key: summed.get(key, {}) for key in ("counts", "rejected_reasons", "details")},
        "accepted": summed.get("accepted", 0),
        "ledger": ledger,
        "elapsed_s": max((float(report.get("elapsed_s", 0.0)) for report in reports), default=0.0),
    }


def _write_merged_quality(output: str, shard_manifests: list[dict[str, Any]]) -> ShardFile:
    """``quality.json`` of the whole output from every shard's ``quality/<shard>.json``, before the merged manifest."""
    reports = [
        json.loads(read_verified(storage.join(output, entry["path"]), ShardFile(**entry)))
        for part in shard_manifests
        for entry in part["files"]
        if entry["path"].startswith("quality/")
    ]
    return write_file(output, QUALITY, storage.dumps_json(merge_reports(reports)).encode("utf-8"))


def distill(config: DistillConfig) -> dict[str, Any] | None:
    """Run the stage for this shard; returns its manifest (the quality report, ledger and cache counts in ``stats``),
    or ``None`` when it was already committed."""
    shard = manifest.shard_of(config)
    ready = manifest.prepare_output(
        config.output,
        stage=STAGE,
        inputs=[config.input],
        overwrite=config.overwrite,
        shard=shard,
        finalize=lambda parts: [_write_merged_quality(config.output, parts)],
    )
    if not ready:
        log.info("already_committed", output=config.output, shard=shard.name)
        return None
    api_key = os.environ.get("OPENAI_API_KEY", "")
    if not api_key:
        raise ConfigError(
            "OPENAI_API_KEY is not set: export it (in a cluster, from a Secret); any value for a keyless endpoint"
        )
    items = list(owned_records(config.input, shard))
    if not items and next(manifest.committed_records(config.input), None) is None:
        raise ConfigError(
            f"{config.input} holds no records: expected a committed convert output with records in train/ or val/; "
            "check --input (nothing was committed)"
        )
    log.info("input", records=len(items), shard=shard.name, strategy=config.strategy, mode=config.mode)
    return asyncio.run(_distill(config, shard, items, api_key))


def batch_state_uri(cache: str, output: str, shard: ShardSpec) -> str:
    """Where one shard of one output keeps its submitted batch ids: in the cache (``--overwrite`` keeps it), under
    the output's hash, so runs sharing a cache never resume, or overwrite, each other's batches.

    >>> shard = ShardSpec(0, 1)
    >>> a, b = (batch_state_uri("s3://b/_teacher_cache", f"s3://b/runs/{run}/distilled", shard) for run in ("r1", "r2"))
    >>> a.startswith("s3://b/_teacher_cache/batches/") and a.endswith("-00000-of-00001.json") and a != b
    True
    """
    digest = hashlib.sha256(output.rstrip("/").encode("utf-8")).hexdigest()[:12]
    return storage.join(cache, "batches", f"{digest}-{shard.name}.json")


async def _distill(
    config: DistillConfig, shard: ShardSpec, items: list[tuple[int, dict[str, Any]]], api_key: str
) -> dict[str, Any]:
    """The shard's run in one event loop: answers are cached and the ledger stored while it runs, so a stop
    (SIGTERM, an error) loses nothing paid for and commits nothing."""
    started = time.monotonic()
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
    writer = f"{shard.name}-{run_id}"
    prices = {**DEFAULT_PRICES, **(parse_price_overrides(config.prices) if config.prices else {})}
    ledger = Ledger(config.model, run_id, prices)
    cache = AnswerCache(
        config.cache_uri, writer, flush_every=config.cache_flush_every, flush_seconds=config.cache_flush_seconds
    )
    await asyncio.to_thread(cache.load)
    cached_before = len(cache.entries)
    policy = RetryPolicy(config.max_attempts, config.backoff_base, config.backoff_max)
    client = make_client(config.base_url, api_key, config.request_timeout)
    live = LiveBackend(client, policy, config.concurrency, ledger, secret=api_key)
    teacher = CachedChat(config.model, config.request_params, cache, ledger, backend=live)
    work = Distiller(config, teacher)
    outputs = _Outputs(config.output, shard)
    ledger_uri = storage.join(config.cache_uri, "ledger", f"{writer}.json")
    every = max(1.0, config.cache_flush_seconds)
    stop_sending = None if config.mode == "batch" else live.stopped.set
    with _sigterm_stops(asyncio.current_task(), stop_sending) as sigterm:
        async with stored_while_running(cache, ledger, ledger_uri, client, every=every):
            try:
                if config.mode == "batch":
                    runner = BatchRunner(
                        client,
                        cache,
                        ledger,
                        policy,
                        state_uri=batch_state_uri(config.cache_uri, config.output, shard),
                        poll_seconds=config.batch_poll_seconds,
                        max_hours=config.batch_max_hours,
                        secret=api_key,
                    )
                    for result in await _batch_results(work, items, teacher, runner):
                        outputs.add(result)
                else:
                    window = max(64, 8 * config.concurrency)
                    async for result in in_order(work, items, window, on_failure=live.stopped.set):
                        outputs.add(result)
            except BaseException:  # a SIGTERM's drain ends as the requests it stopped fail ("not sent")
                sigterm.disarm()
                outputs.abort()
                if sigterm.received:
                    raise _stopped_by_sigterm(cache, cached_before) from None
                raise
            sigterm.disarm()
    if sigterm.received:  # the drain finished every record: still a stop, which commits nothing (the rerun does)
        outputs.abort()
        raise _stopped_by_sigterm(cache, cached_before)
    if outputs.counts["input"] and not outputs.counts["distilled"] + outputs.counts["passed_through"]:
        outputs.abort()
        refuse_nothing_accepted(config, shard, outputs)
    files = outputs.close()
    report = _shard_report(config, shard, outputs, ledger, cache, cached_before, started)
    return _commit_shard(config, shard, files, report, ledger)


def _stopped_by_sigterm(cache: AnswerCache, cached_before: int) -> VcotError:
    return VcotError(f"stopped by SIGTERM: {len(cache.entries) - cached_before} new answers are cached; rerun to resume")


def refuse_nothing_accepted(config: DistillConfig, shard: ShardSpec, outputs: _Outputs) -> None:
    """Fail, committing nothing, when this shard had records and accepted none: committed, the empty output would be
    skipped by every rerun and fail tokenize later. The answers paid for stay cached, so a rerun with the same
    settings costs nothing; a shard dealt no record at all commits its empty part (docs/records.md)."""
    top = top_reasons(outputs.reasons)
    where = "" if shard.count == 1 else f" (shard {shard.index} of {shard.count})"
    raise ConfigError(
        f"none of the {outputs.counts['input']} records of {config.input}{where} was accepted: {top}; check the "
        f"teacher (--model {config.model}, --base-url) for answer problems, that the records' images can be read "
        "from here for image_missing/image_unreadable, and the rejected reasons in docs/distill.md; nothing was "
        "committed (the answers are cached)"
    )


def _shard_report(
    config: DistillConfig,
    shard: ShardSpec,
    outputs: _Outputs,
    ledger: Ledger,
    cache: AnswerCache,
    cached_before: int,
    started: float,
) -> dict[str, Any]:
    """The shard's quality report (what was accepted, why the rest was rejected, what it cost, what the cache
    saved): its ``quality.json`` and the manifest's stats."""
    return {
        "stage": STAGE,
        "shard": shard.name,
        "counts": dict(outputs.counts),
        "accepted": outputs.counts["distilled"] + outputs.counts["passed_through"],
        "rejected_reasons": dict(sorted(outputs.reasons.items())),
        "details": dict(sorted(outputs.details.items())),
        "ledger": ledger.to_dict(),
        "cache": {"uri": config.cache_uri, "answers_before": cached_before, "answers_after": len(cache.entries)},
        "elapsed_s": round(time.monotonic() - started, 3),
    }


def _commit_shard(
    config: DistillConfig, shard: ShardSpec, files: list[ShardFile], report: dict[str, Any], ledger: Ledger
) -> dict[str, Any]:
    """Write the report beside the records and commit them; the last shard of a sharded run to commit merges
    every shard's report into ``quality.json``."""
    quality_path = QUALITY if shard.count == 1 else f"quality/{shard.name}.json"
    files.append(write_file(config.output, quality_path, storage.dumps_json(report).encode("utf-8")))
    committed = manifest.commit(
        config.output,
        stage=STAGE,
        files=files,
        config=redacted(config),
        inputs=[config.input],
        stats={k: v for k, v in report.items() if k not in ("stage", "shard")},
        shard=shard,
        finalize=lambda parts: [_write_merged_quality(config.output, parts)],
    )
    log.info(
        "done",
        **{k: report[k] for k in ("counts", "rejected_reasons", "elapsed_s")},
        cost_usd=ledger.estimated_cost_usd(),
    )
    return committed
