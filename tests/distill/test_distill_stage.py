"""The distill stage end to end against a local OpenAI-compatible server with scripted answers and faults."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LogMode
from tests.distill.distill_helpers import (
    commit_input,
    fast_config,
    good_answer,
    make_record,
    question_number,
)
from vcot.distill import distill
from vcot.errors import ConfigError, VcotError
from vcot.grounding.records import grounding_problem
from vcot.io import manifest, shards
from vcot.llm.cache import AnswerCache
from vcot.llm.chat import LLMError
from vcot.log import configure_logging


def _read(output: str, prefix: str) -> list[dict[str, Any]]:
    return [record for uri in manifest.committed_files(output, prefix) for record in shards.read_jsonl(uri)]


def _answer_with_problems(text: str) -> str:
    """Q9 never grounds anything, Q10 is fixed by the corrective message, Q11 keeps answering wrong."""
    number = question_number(text)
    corrected = "Your answer does not follow the rules" in text
    if number == 9:
        return "It is a blue square.\nAnswer: answer9"
    if number == 10 and not corrected:
        return "The <ref>square<box>[100, 150, 600, 700]</box> <box>[1, 2\nAnswer: answer10"
    if number == 11:
        return "The <ref>square</ref><box>[100, 150, 600, 700]</box> is red.\nAnswer: something else"
    return good_answer(text)


def test_direct_accepts_valid_rejects_invalid_and_passes_grounded_through(
    tmp_path: Path, api_key: str, teacher_server: Callable[..., Any]
) -> None:
    data = tmp_path / "data"
    records = [make_record(data, i) for i in range(12)] + [make_record(data, 12, grounded=True)]
    missing = make_record(data, 13)
    missing["image"] = str(data / "images" / "nope.png")
    records.append(missing)
    input_uri = commit_input(str(tmp_path / "convert"), records)
    server = teacher_server(answer=_answer_with_problems)
    output = str(tmp_path / "distill")

    report = distill(fast_config(input_uri, output, server))["stats"]

    train, val, rejected = _read(output, "train/"), _read(output, "val/"), _read(output, "rejected/")
    assert len(train) + len(val) + len(rejected) == len(records) == report["counts"]["input"]
    assert sorted(r["reason"] for r in rejected) == ["image_missing", "no_boxes", "wrong_answer"]
    assert {r["id"] for r in rejected} == {"synthetic:train:9", "synthetic:train:11", "synthetic:train:13"}
    assert report["counts"] == {"input": 14, "distilled": 10, "passed_through": 1, "rejected": 3}
    assert report["details"]["corrected"] == 3  # Q9, Q10 and Q11 each got one corrective retry
    accepted = {r["id"]: r for r in train + val}
    for record in accepted.values():
        assert grounding_problem(record) is None and record["needs_distillation"] is False
        assert record["rationale"].endswith(f"Answer: {record['answer']}")
        assert record["split"] == ("val" if record in val else "train")
    assert accepted["synthetic:train:12"] == records[12]  # passed through unchanged
    distilled = accepted["synthetic:train:10"]
    assert distilled["objects"] == [{"ref": "blue square", "box": [100, 150, 600, 700]}]
    assert distilled["provenance"]["distill"] == {
        "model": "gpt-4o",
        "strategy": "direct",
        "corrected": True,
        "objects_from": "teacher",
    }
    # Paid requests: 12 first answers + 3 corrections (the passthrough and the missing image cost nothing).
    assert server.chat_requests == 15
    assert report["ledger"]["requests"] == 15 and report["ledger"]["estimated_cost_usd"] > 0
    assert json.loads((tmp_path / "distill" / "quality.json").read_text())["counts"] == report["counts"]
    _assert_listed(str(tmp_path / "distill"), "quality.json")


def _assert_listed(output: str, path: str) -> None:
    """``path`` is in the output's manifest, with the sha256 and size of the bytes stored."""
    entry = next(f for f in manifest.read_manifest(output)["files"] if f["path"] == path)
    data = (Path(output) / path).read_bytes()
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)


def _flaky(text: str, attempt: int) -> str | None:
    faults = {1: ["429"], 2: ["500", "500"], 3: ["garbage"], 4: ["nochoices"], 5: ["timeout"], 6: ["429", "500"]}
    script = faults.get(question_number(text), [])
    return script[attempt - 1] if attempt <= len(script) else None


def test_answers_given_inline_on_the_last_line_are_accepted_without_a_correction(
    input_records: Callable[..., str], tmp_path: Path, api_key: str, teacher_server: Callable[..., Any]
) -> None:
    def inline(text: str) -> str:  # the form convert writes: "... Answer: x" ending the last sentence
        return good_answer(text).replace("\nAnswer:", " Answer:")

    server = teacher_server(answer=inline)
    output = str(tmp_path / "out")
    report = distill(fast_config(input_records(6), output, server))["stats"]
    assert report["counts"] == {"input": 6, "distilled": 6}
    assert report["details"].get("corrected", 0) == 0 and server.chat_requests == 6
    for record in _read(output, "train/") + _read(output, "val/"):
        assert grounding_problem(record) is None
        assert record["rationale"].endswith(f"shows it.\nAnswer: {record['answer']}")


def test_records_no_rationale_can_fix_are_rejected_before_any_request(
    tmp_path: Path, api_key: str, teacher_server: Callable[..., Any]
) -> None:
    """A record without its answer or size, or whose question names an invalid box, was sent to the teacher (paid
    for) and rejected afterwards as not grounded."""
    good, no_answer, no_width, bad_region = (make_record(tmp_path / "data", i) for i in range(4))
    no_answer["answer"], no_width["width"] = "", None
    bad_region["question"] = "What is in <box>[800, 200, 100, 900]</box>?"
    server = teacher_server()
    output = str(tmp_path / "out")
    report = distill(fast_config(commit_input(str(tmp_path / "in"), [good, no_answer, no_width, bad_region]), output,
                                 server))["stats"]  # fmt: skip
    assert server.chat_requests == 1  # the good record's alone
    assert report["rejected_reasons"] == {"missing_answer": 1, "missing_width": 1, "question_invalid_box": 1}
    assert {line["reason"] for line in _read(output, "rejected/")} == set(report["rejected_reasons"])


def test_a_sigterm_whose_drain_finishes_every_record_still_commits_nothing(
    input_records: Callable[..., str], tmp_path: Path, api_key: str, teacher_server: Callable[..., Any]
) -> None:
    """SIGTERM while the last records are on the wire: they finish and are cached, and the stop is still a stop
    (exit 1, nothing committed); the rerun commits from the cache without a request."""
    import os
    import signal

    def stopped_at_the_last(text: str) -> str:
        if question_number(text) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # the pod is stopped while every record's request is on the wire
        return good_answer(text)

    server = teacher_server(answer=stopped_at_the_last, latency=0.3)
    input_uri, output = input_records(4), str(tmp_path / "out")
    with pytest.raises(VcotError, match="stopped by SIGTERM: 4 new answers are cached"):
        distill(fast_config(input_uri, output, server))
    assert not manifest.is_committed(output) and server.chat_requests == 4
    report = distill(fast_config(input_uri, output, server))["stats"]
    assert report["counts"] == {"input": 4, "distilled": 4} and server.chat_requests == 4


def test_transient_faults_are_retried_and_nothing_is_lost(
    input_records: Callable[..., str],
    tmp_path: Path,
    api_key: str,
    teacher_server: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The client's timeout leaves room for a loaded CI machine: at 0.5 s, first requests that the server had
    # not yet read timed out too and were counted as unscripted retries. The scripted timeout sleeps past it.
    server = teacher_server(fault=_flaky, retry_after="0.3", timeout_sleep=4.0)
    config = fast_config(
        input_records(8), str(tmp_path / "out"), server, request_timeout=3.0, backoff_base=0.001, backoff_max=1.0
    )
    configure_logging("json")
    report = distill(config)["stats"]
    assert report["counts"] == {"input": 8, "distilled": 8}
    assert server.statuses == {"200": 8, "429": 2, "500": 3, "garbage": 1, "nochoices": 1, "timeout": 1}
    assert report["ledger"]["retries"] == 8 and report["ledger"]["requests"] == 8
    retries = LogMode.lines(capsys.readouterr().err, "teacher_retry")
    waits = [line["wait_s"] for line in retries if "RateLimitError" in line["error"]]
    assert len(waits) == 2 and min(waits) >= 0.3  # Retry-After was honoured (backoff alone would be ~1 ms)


def test_retries_give_up_with_a_clear_error_and_commit_nothing(
    input_records: Callable[..., str], tmp_path: Path, api_key: str, teacher_server: Callable[..., Any]
) -> None:
    server = teacher_server(fault=lambda text, attempt: "500" if question_number(text) == 2 else None)
    output = str(tmp_path / "out")
    with pytest.raises(LLMError, match="still failing after 3 attempts"):
        distill(fast_config(input_records(6), output, server, max_attempts=3))
    assert not manifest.is_committed(output)


def test_concurrency_never_exceeds_the_limit(
    input_records: Callable[..., str], tmp_path: Path, api_key: str, teacher_server: Callable[..., Any]
) -> None:
    server = teacher_server(
        latency=0.3,  # long enough that three requests overlap on a busy machine
        fault=lambda text, attempt: "429" if attempt == 1 and question_number(text) % 3 == 0 else None,
        retry_after="0.01",
    )
    report = distill(fast_config(input_records(30), str(tmp_path / "out"), server, concurrency=3))["stats"]
    assert report["counts"]["distilled"] == 30
    assert server.max_in_flight == 3  # reached, never exceeded


def test_rerun_sends_zero_requests(
    input_records: Callable[..., str], tmp_path: Path, api_key: str, teacher_server: Callable[..., Any]
) -> None:
    input_uri = input_records(10)
    server = teacher_server()
    first = fast_config(input_uri, str(tmp_path / "a"), server)
    committed = distill(first)  # its manifest: the report (ledger, cache) in stats
    assert committed["stage"] == "distill" and committed["stats"]["ledger"]["requests"] == 10
    sent = server.chat_requests
    assert sent == 10
    assert distill(first) is None  # committed: a no-op, like every stage
    # A fresh output (or --overwrite) redoes the work from the cache: the same bytes, no request.
    second = distill(fast_config(input_uri, str(tmp_path / "b"), server))["stats"]
    overwritten = distill(fast_config(input_uri, str(tmp_path / "a"), server, overwrite=True))["stats"]
    assert server.chat_requests == sent
    assert second["ledger"]["requests"] == 0 and second["ledger"]["cache_hits"] == 10
    assert overwritten["ledger"]["requests"] == 0
    for split in ("train", "val", "rejected"):
        name = f"{split}/00000-of-00001.jsonl.gz"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_fatal_bad_request_stops_at_once(
    input_records: Callable[..., str], tmp_path: Path, api_key: str, teacher_server: Callable[..., Any]
) -> None:
    server = teacher_server(fault=lambda text, attempt: "400", latency=0.02)
    output = str(tmp_path / "out")
    with pytest.raises(LLMError, match="HTTP 400"):
        distill(fast_config(input_records(40), output, server, concurrency=2))
    assert server.chat_requests <= 2  # the requests already in flight, none after the first 400, no retry
    assert not manifest.is_committed(output)


def test_answers_received_before_a_fatal_error_are_kept(
    input_records: Callable[..., str], tmp_path: Path, api_key: str, teacher_server: Callable[..., Any]
) -> None:
    server = teacher_server(fault=lambda text, attempt: "400" if question_number(text) == 20 else None)
    input_uri = input_records(30)
    with pytest.raises(LLMError):
        distill(fast_config(input_uri, str(tmp_path / "out"), server, concurrency=2))
    answered = server.statuses["200"]
    assert AnswerCache(str(tmp_path / "_distill_cache"), "reader").load() == answered > 0
    server.fault = None
    report = distill(fast_config(input_uri, str(tmp_path / "out"), server, concurrency=2))["stats"]
    assert report["ledger"]["requests"] == 30 - answered and report["ledger"]["cache_hits"] == answered


def test_sharded_runs_split_the_input_and_merge(
    input_records: Callable[..., str], tmp_path: Path, api_key: str, teacher_server: Callable[..., Any]
) -> None:
    input_uri = input_records(9)
    server = teacher_server()
    output = str(tmp_path / "out")
    reports = [distill(fast_config(input_uri, output, server, shard_index=i, num_shards=3))["stats"] for i in range(3)]
    assert [r["counts"]["input"] for r in reports] == [3, 3, 3]
    merged = manifest.read_manifest(output)
    assert merged["shard_count"] == 3 and merged["records"] == 9
    ids = {r["id"] for r in _read(output, "train/") + _read(output, "val/")}
    assert ids == {f"synthetic:train:{i}" for i in range(9)}
    for index in range(3):
        _assert_listed(output, f"quality/{index:05d}-of-00003.json")
    _assert_listed(output, "quality.json")  # the whole run's report, written before the merged _SUCCESS
    quality = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert quality["counts"]["input"] == 9 and quality["accepted"] == sum(r["accepted"] for r in reports)
    assert quality["ledger"]["requests"] == sum(r["ledger"]["requests"] for r in reports)
    assert quality["shards"] == [f"{index:05d}-of-00003" for index in range(3)]


def test_a_run_that_accepts_no_record_is_never_committed(
    tmp_path: Path, api_key: str, teacher_server: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """A teacher whose answers never ground anything: exit 2 with the reasons, nothing committed (it used to commit an
    empty output that every rerun skipped); the answers stay cached, so the rerun asks the teacher nothing again."""
    from jobs.distill import main as distill_main

    input_uri = commit_input(str(tmp_path / "convert"), [make_record(tmp_path / "data", i) for i in range(3)])
    server = teacher_server(answer=lambda text: "A square.\nAnswer: no idea")
    output = str(tmp_path / "distill")
    config = fast_config(input_uri, output, server)
    argv = ["--input", input_uri, "--output", output, "--model", "gpt-4o", "--base-url", server.base_url,
            "--backoff-base", "0.01"]
    assert distill_main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vcot-distill: error:")]
    assert len(errors) == 1 and f"none of the 3 records of {input_uri} was accepted: " in errors[0]
    assert "check the teacher (--model gpt-4o, --base-url)" in errors[0] and "nothing was committed" in errors[0]
    assert not manifest.is_committed(output)
    requests = server.chat_requests
    with pytest.raises(ConfigError, match="was accepted: no_boxes 3"):
        distill(config)
    assert server.chat_requests == requests


def test_a_shard_that_accepts_none_of_its_records_is_refused_one_dealt_none_commits(
    tmp_path: Path, api_key: str, teacher_server: Callable[..., Any]
) -> None:
    """Round-robin: shard 0 of 2 gets records 0 and 2 (images missing), shard 1 records 1 and 3. Of a one-record
    input, shard 1 is dealt nothing: it commits its empty part so that the set completes."""
    records = [make_record(tmp_path / "data", i) for i in range(4)]
    for record in records[::2]:
        record["image"] = str(tmp_path / "data" / "images" / "gone.png")
    input_uri = commit_input(str(tmp_path / "convert"), records)
    server = teacher_server()
    output = str(tmp_path / "out")
    with pytest.raises(ConfigError, match=r"\(shard 0 of 2\) was accepted: image_missing 2"):
        distill(fast_config(input_uri, output, server, shard_index=0, num_shards=2))
    assert distill(fast_config(input_uri, output, server, shard_index=1, num_shards=2)) is not None
    assert not manifest.is_committed(output)

    one = commit_input(str(tmp_path / "one"), records[1:2])
    small = str(tmp_path / "small")
    for index in (1, 0):
        distill(fast_config(one, small, server, shard_index=index, num_shards=2))
    assert manifest.is_committed(small) and len(_read(small, "train/") + _read(small, "val/")) == 1
