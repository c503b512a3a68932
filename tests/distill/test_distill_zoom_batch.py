"""The zoom strategy with its verifier, and Batch API mode, against the scripted server."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.distill.distill_helpers import commit_input, fast_config, good_answer, make_record, question_number
from vcot.distill import distill
from vcot.distill.batch import BatchRunner
from vcot.distill.stage import batch_state_uri
from vcot.io import manifest, shards
from vcot.io.manifest import ShardSpec
from vcot.llm.chat import LLMError

_FINAL = re.compile(r"Answer: answer(\d+)")


def _zoom_teacher(text: str) -> str:
    """Captions two animals; the draft adds a hallucinated unicorn and misnames the dog; the verifier fixes both."""
    if "Describe this image in detail" in text:
        return "A <ref>cat</ref><box>[100, 100, 400, 400]</box> and a <ref>dog</ref><box>[500, 500, 900, 900]</box>."
    if "Write no coordinates" in text:
        return "A dog lying down." if "[500, 500, 900, 900]" in text else "A cat sitting."
    if "fact checker" in text:
        number = _FINAL.search(text).group(1)  # type: ignore[union-attr]
        return (
            "The <ref>cat</ref><box>[100, 100, 400, 400]</box> sits near the "
            f"<ref>dog</ref><box>[500, 500, 900, 900]</box>.\nAnswer: answer{number}"
        )
    number = question_number(text)
    return (
        "The <ref>cat</ref><box>[100, 100, 400, 400]</box> sits near a "
        "<ref>unicorn</ref><box>[600, 50, 700, 150]</box> "
        f"and a <ref>wolf</ref><box>[500, 500, 900, 900]</box>.\nAnswer: answer{number}"
    )


def test_zoom_merges_branch_captions_and_the_verifier_drops_hallucinations(
    tmp_path: Path, api_key: str, teacher_server: Callable[..., Any]
) -> None:
    data = tmp_path / "data"
    records = [
        make_record(data, 0),
        make_record(data, 1),
        make_record(data, 2, objects=[{"ref": "ball", "box": [10, 10, 200, 200]}]),
    ]
    input_uri = commit_input(str(tmp_path / "convert"), records)
    server = teacher_server(answer=_zoom_teacher)
    output = str(tmp_path / "out")

    report = distill(fast_config(input_uri, output, server, strategy="zoom"))["stats"]

    assert report["counts"] == {"input": 3, "distilled": 3}
    details = report["details"]
    # Records 0 and 1 zoom into the two boxes of their caption; record 2 into its one known object.
    assert details["branches"] == 5
    assert (details["verifier_claimed"], details["verifier_kept"]) == (9, 3)
    assert (details["verifier_dropped"], details["verifier_rewritten"], details["verifier_added"]) == (3, 3, 0)
    assert server.chat_requests == 3 * 3 + 5  # caption + merge + verify per record, plus one per branch
    branch_prompts = [text for text in server.answered if "Write no coordinates" in text]
    assert sum("where the full image shows: ball" in text for text in branch_prompts) == 1
    rationales = [
        r["rationale"]
        for uri in manifest.committed_files(output, "")
        if "rejected" not in uri and uri.endswith(".gz")
        for r in shards.read_jsonl(uri)
    ]
    assert len(rationales) == 3 and not any("unicorn" in r or "wolf" in r for r in rationales)


def _batch_faults(text: str, attempt: int) -> str | None:
    return "500" if question_number(text) == 2 and attempt == 1 else None


def _boxless_first(text: str) -> str:
    if question_number(text) == 3 and "Your answer does not follow the rules" not in text:
        return "A square.\nAnswer: answer3"
    return good_answer(text)


def test_batch_mode_rounds_retry_failures_and_corrections(
    input_records: Callable[..., str], tmp_path: Path, api_key: str, teacher_server: Callable[..., Any]
) -> None:
    input_uri = input_records(6)
    server = teacher_server(answer=_boxless_first, fault=_batch_faults)
    report = distill(fast_config(input_uri, str(tmp_path / "a"), server, mode="batch"))["stats"]

    assert report["counts"] == {"input": 6, "distilled": 6}
    assert server.chat_requests == 0
    # Round 1: six requests (Q2 fails with a 500, Q3 has no box); round 2: Q2 again and Q3's correction.
    assert len(server.batches) == 2 and server.batch_lines == 8
    assert report["ledger"]["batch_requests"] == 7 and report["ledger"]["requests"] == 0
    assert report["ledger"]["cache_hits"] == 0  # round 2 reads round 1's answers again: bought, not saved
    assert report["ledger"]["estimated_cost_usd"] > 0

    again = distill(fast_config(input_uri, str(tmp_path / "b"), server, mode="batch"))["stats"]
    assert len(server.batches) == 2 and server.batch_lines == 8  # nothing submitted again
    assert again["ledger"]["cache_hits"] == 7 and again["ledger"]["batch_requests"] == 0


def test_batch_mode_resumes_a_submitted_batch_after_a_kill(
    input_records: Callable[..., str],
    tmp_path: Path,
    api_key: str,
    teacher_server: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    input_uri = input_records(5)
    server = teacher_server()
    real_wait = BatchRunner._wait_and_ingest

    async def killed(self: BatchRunner, batch_id: str, labels: dict[str, tuple[str, str]]) -> int:
        raise LLMError("pod killed while polling")

    monkeypatch.setattr(BatchRunner, "_wait_and_ingest", killed)
    with pytest.raises(LLMError, match="killed"):
        distill(fast_config(input_uri, str(tmp_path / "out"), server, mode="batch"))
    state = Path(batch_state_uri(str(tmp_path / "_distill_cache"), str(tmp_path / "out"), ShardSpec(0, 1)))
    assert len(server.batches) == 1 and state.exists()

    monkeypatch.setattr(BatchRunner, "_wait_and_ingest", real_wait)
    report = distill(fast_config(input_uri, str(tmp_path / "out"), server, mode="batch"))["stats"]
    assert report["counts"] == {"input": 5, "distilled": 5}
    assert len(server.batches) == 1 and server.batch_lines == 5  # the stored batch was picked up, not paid again
    assert not state.exists()


def test_zoom_in_batch_mode_takes_one_round_per_step(
    tmp_path: Path, api_key: str, teacher_server: Callable[..., Any]
) -> None:
    records = [make_record(tmp_path / "data", i) for i in range(2)]
    input_uri = commit_input(str(tmp_path / "convert"), records)
    server = teacher_server(answer=_zoom_teacher)
    report = distill(fast_config(input_uri, str(tmp_path / "out"), server, strategy="zoom", mode="batch"))["stats"]
    assert report["counts"] == {"input": 2, "distilled": 2}
    assert len(server.batches) == 4  # caption, branches, merge, verify
    assert server.batch_lines == 2 * 5 and server.chat_requests == 0


def test_a_batch_creation_retried_after_a_late_response_does_not_create_a_second_batch(
    input_records: Callable[..., str], tmp_path: Path, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server made the batch but answered after the client's timeout: retried blindly, the creation made a
    second batch over the same requests, which the provider would run and bill again."""
    import asyncio

    from vcot.dev.fake_openai import FakeOpenAI

    real_create = FakeOpenAI._create_batch
    late = [True]

    async def made_then_late(self: FakeOpenAI, request: Any) -> Any:
        response = await real_create(self, request)
        if late[0]:
            late[0] = False
            await asyncio.sleep(2)  # past the client's 1 s timeout: it retries
        return response

    monkeypatch.setattr(FakeOpenAI, "_create_batch", made_then_late)
    with FakeOpenAI(answer=good_answer, api_key=api_key) as server:
        config = fast_config(input_records(3), str(tmp_path / "out"), server, mode="batch", request_timeout=1.0)
        report = distill(config)["stats"]
    assert report["counts"] == {"input": 3, "distilled": 3}
    assert [batch["input_file_id"] for batch in server.batches.values()] == ["file-1"]  # one batch, picked up
    assert report["ledger"]["batch_requests"] == 3 and report["ledger"]["retries"] == 1
