"""The LLM judge against a local OpenAI-protocol server: scores parsed, faults retried, a rerun sends nothing,
the key never logged or stored, a malformed reply counted (not crashed on, not scored as wrong)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.evaluate import main
from vcot.dev.fake_openai import FakeOpenAI
from vcot.evaluate.judge import judge_messages, parse_score, verdict
from vcot.grounding.answers import normalize_answer
from vcot.io import manifest, shards

API_KEY = "sk-judge-SECRET-0123456789abcdef"
_FIELDS = re.compile(r"question: (.*)\nstandard answer: (.*)\nmodel's answer: (.*)\n")

PREDICTIONS = {  # record (tests/evaluate KNOWN_RECORDS) -> the model's response
    "test:gqa:0": "<ref>a</ref><box>[100, 100, 300, 300]</box> Answer: red",  # exact match, judge 1
    "test:gqa:1": "<ref>a</ref><box>[100, 100, 300, 300]</box> Answer: light blue",  # judge 0.5, exact match 0
    "test:gqa:2": "Answer: two",  # judge 0.5 (no exact match)
    "test:docvqa:3": "Answer: total",  # judge 1
    "test:docvqa:4": "Answer: GARBLE",  # the judge's reply has no score: counted, not a 0
    "test:docvqa:5": "Answer: SILENT",  # the judge replies nothing: counted
}


def judge_answer(text: str) -> str:
    """A scripted judge: 1 for the same answer, 0.5 for one that contains it or a number word, 0 otherwise."""
    question, reference, prediction = _FIELDS.search(text).groups()  # type: ignore[union-attr]
    if prediction == "GARBLE":
        return "The model's answer looks reasonable to me."
    if prediction == "SILENT":
        return ""
    if normalize_answer(prediction) == normalize_answer(reference):
        return "score: 1.0"
    if reference in prediction or (reference, prediction) == ("2", "two"):
        return "Close enough in meaning.\nscore: 0.5"
    return "score: 0"


@pytest.fixture
def judge_server() -> Iterator[Callable[..., FakeOpenAI]]:
    started: list[FakeOpenAI] = []

    def start(**kwargs: Any) -> FakeOpenAI:
        server = FakeOpenAI(answer=judge_answer, api_key=API_KEY, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return API_KEY


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """``run_stage`` binds logging to the stderr of the moment; a test's captured stream dies with it."""
    yield
    import structlog

    structlog.reset_defaults()


def _predictions(tmp_path: Path) -> str:
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps({"id": key, "prediction": text}) + "\n" for key, text in PREDICTIONS.items()))
    return str(path)


def _argv(data: str, tmp_path: Path, server: FakeOpenAI, *extra: str) -> list[str]:
    return [
        "--predictions", _predictions(tmp_path), "--data", data, "--output", str(tmp_path / "eval"),
        "--judge-model", "gpt-4o-mini", "--judge-base-url", server.base_url, "--judge-concurrency", "3",
        "--judge-backoff-base", "0.01", "--judge-backoff-max", "0.2", "--judge-max-attempts", "4", *extra,
    ]


def _metrics(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "eval" / "metrics.json").read_text())


def _all_bytes(root: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file())


def test_scores_are_parsed_beside_exact_match(
    known_data: tuple[str, list], tmp_path: Path, api_key: str, judge_server: Callable[..., FakeOpenAI]
) -> None:
    data, _ = known_data
    server = judge_server()
    assert main(_argv(data, tmp_path, server)) == 0
    metrics = _metrics(tmp_path)
    overall, gqa, docvqa = metrics["overall"], metrics["subsets"]["gqa"], metrics["subsets"]["docvqa"]
    assert overall["judge_score"] == pytest.approx((1 + 0.5 + 0.5 + 1) / 4)  # the failures are not zeros
    assert overall["judge_scored"] == 4
    assert overall["judge_failures"] == {"empty_reply": 1, "malformed_reply": 1}
    assert overall["answer_accuracy"] == pytest.approx(2 / 6)  # exact match is still the default number
    assert gqa["judge_score"] == pytest.approx(2 / 3) and docvqa["judge_score"] == 1.0
    assert docvqa["judge_failures"] == {"empty_reply": 1, "malformed_reply": 1}
    judge = metrics["details"]["judge"]
    assert judge["ledger"]["requests"] == 6 and judge["ledger"]["estimated_cost_usd"] is not None
    assert judge["cache"] == str(tmp_path / "_judge_cache")
    files = manifest.committed_files(str(tmp_path / "eval"), "predictions/")
    rows = {row["id"]: row for row in shards.read_jsonl(files[0])}
    assert rows["test:gqa:1"]["judge_score"] == 0.5 and rows["test:gqa:1"]["answer_correct"] is False
    assert rows["test:docvqa:4"]["judge_score"] is None and rows["test:docvqa:4"]["judge_failure"] == "malformed_reply"
    # the judge saw the question, the reference and the final answer only (not the boxes of the reasoning)
    asked = next(text for text in server.answered if "light blue" in text)
    assert "standard answer: blue\nmodel's answer: light blue" in asked and "<box>" not in asked
    report = (tmp_path / "eval" / "report.html").read_text()
    assert 'id="judge"' in report and "malformed_reply: 1" in report


def test_faults_are_retried_and_a_rerun_sends_no_request(
    known_data: tuple[str, list], tmp_path: Path, api_key: str, judge_server: Callable[..., FakeOpenAI]
) -> None:
    data, _ = known_data
    faults = {1: "429", 2: "500"}  # every request rate limited, then a server error, then answered; one gets
    server = judge_server(  # a 200 that is not JSON twice instead
        fault=lambda text, attempt: "garbage" if "SILENT" in text and attempt < 3 else faults.get(attempt)
    )
    assert main(_argv(data, tmp_path, server)) == 0
    first = _metrics(tmp_path)
    assert (server.statuses["429"], server.statuses["500"], server.statuses["garbage"]) == (5, 5, 2)
    assert len(server.answered) == 6
    assert first["details"]["judge"]["ledger"]["retries"] == 12
    assert first["overall"]["judge_scored"] == 4

    sent = server.chat_requests
    assert main([*_argv(data, tmp_path, server), "--overwrite"]) == 0
    again = _metrics(tmp_path)
    assert server.chat_requests == sent  # every answer came from the cache
    ledger = again["details"]["judge"]["ledger"]
    assert ledger["cache_hits"] == 6 and ledger["requests"] == 0
    for name in ("judge_score", "judge_scored", "judge_failures"):
        assert again["overall"][name] == first["overall"][name]


def test_the_key_never_appears_in_logs_or_outputs(
    known_data: tuple[str, list],
    tmp_path: Path,
    api_key: str,
    judge_server: Callable[..., FakeOpenAI],
    capfd: pytest.CaptureFixture[str],
) -> None:
    data, _ = known_data
    server = judge_server(fault=lambda text, attempt: "500" if attempt == 1 else None)
    assert main(_argv(data, tmp_path, server)) == 0
    out, err = capfd.readouterr()
    assert "judge_retry" in out + err  # retries were logged...
    assert API_KEY not in out + err  # ...without the key
    assert API_KEY.encode() not in _all_bytes(tmp_path)  # nor in metrics, predictions, report, cache, ledger


def test_refused_key_and_missing_key_are_one_line_errors(
    known_data: tuple[str, list],
    tmp_path: Path,
    judge_server: Callable[..., FakeOpenAI],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    data, _ = known_data
    server = judge_server()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(_argv(data, tmp_path, server)) == 2  # a setting: before any work
    assert "--judge-model needs OPENAI_API_KEY" in capfd.readouterr().err
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-0123456789")
    assert main(_argv(data, tmp_path, server)) == 1
    err = capfd.readouterr().err
    assert "judge returned HTTP 401" in err and "check OPENAI_API_KEY" in err
    assert server.statuses["401"] <= 3 and not manifest.is_committed(str(tmp_path / "eval"))


def test_reply_parsing() -> None:
    assert [verdict(reply) for reply in ("score: 0.7", "Score = 1", "", "  ", "no number", "score: 1.5")] == [
        (0.7, None), (1.0, None), (None, "empty_reply"), (None, "empty_reply"),
        (None, "malformed_reply"), (None, "malformed_reply"),
    ]
    assert parse_score("score: 0.5\nFinal score: 0.5") == 0.5 and parse_score("score: 0.5, score: 0.6") is None
    messages = judge_messages("What color?", "red", "Red.")
    assert [m["role"] for m in messages] == ["system", "user"] and '"score: <score>"' in messages[0]["content"]


@pytest.mark.integration
def test_the_cache_on_s3_serves_another_output(
    known_data: tuple[str, list], tmp_path: Path, api_key: str, judge_server: Callable[..., FakeOpenAI], real_s3: str
) -> None:
    """The judge cache in object storage (the real local server): a second output asks nothing again."""
    data, _ = known_data
    server = judge_server()
    cache = f"{real_s3}/_judge_cache"
    assert main([*_argv(data, tmp_path, server), "--judge-cache", cache]) == 0
    sent = server.chat_requests
    other = [*_argv(data, tmp_path, server), "--judge-cache", cache, "--output", f"{real_s3}/eval2"]
    assert main(other) == 0 and server.chat_requests == sent == 6
