"""``vcot-distill`` as a user runs it: exit codes, fatal errors, kills and reruns, and the key never leaking."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.distill.distill_helpers import API_KEY, commit_input, make_record, question_number
from vcot.distill import distill
from vcot.distill.config import DistillConfig
from vcot.io import manifest, storage
from vcot.io.manifest import ShardSpec
from vcot.llm.cache import AnswerCache

REPO_ROOT = Path(__file__).resolve().parents[2]


def _flags(input_uri: str, output: str, base_url: str, *extra: str) -> list[str]:
    return [
        "--input", input_uri, "--output", output, "--model", "gpt-4o", "--base-url", base_url,
        "--backoff-base", "0.01", "--backoff-max", "0.2", "--request-timeout", "5", *extra,
    ]  # fmt: skip


def _all_bytes(root: Path) -> bytes:
    """Every file under ``root``, gzip members decompressed."""
    blobs = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            blobs.append(gzip.decompress(data) if path.name.endswith(".gz") else data)
    return b"\n".join(blobs)


def test_wrong_key_stops_at_once_with_a_clear_message_and_no_key_in_logs(
    input_records: Callable[..., str],
    tmp_path: Path,
    api_key: str,
    teacher_server: Callable[..., Any],
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobs.distill import main

    monkeypatch.setenv("VCOT_LOG_LEVEL", "DEBUG")
    server = teacher_server(api_key="the-key-the-server-expects", latency=0.02)
    output = str(tmp_path / "out")
    rc = main(_flags(input_records(20), output, server.base_url, "--concurrency", "3"))
    out, err = capfd.readouterr()
    assert rc == 1
    assert "HTTP 401" in err and "check OPENAI_API_KEY" in err
    assert server.statuses["401"] <= 3  # only what was already in flight; no retries
    assert API_KEY not in out + err
    assert not manifest.is_committed(output)


def test_key_never_appears_in_logs_or_outputs(
    input_records: Callable[..., str],
    tmp_path: Path,
    api_key: str,
    teacher_server: Callable[..., Any],
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobs.distill import main

    monkeypatch.setenv("VCOT_LOG_LEVEL", "DEBUG")
    server = teacher_server(fault=lambda text, attempt: "429" if attempt == 1 else None, retry_after="0.01")
    rc = main(_flags(input_records(5), str(tmp_path / "out"), server.base_url))
    out, err = capfd.readouterr()
    assert rc == 0
    assert "teacher_retry" in out + err  # retries were logged...
    assert API_KEY not in out + err  # ...without the key
    assert API_KEY.encode() not in _all_bytes(tmp_path)


def test_missing_key_is_a_clear_error(
    input_records: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from jobs.distill import main

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(_flags(input_records(1), str(tmp_path / "out"), "http://127.0.0.1:9/v1")) == 2  # a setting: no retry
    assert "OPENAI_API_KEY is not set" in capfd.readouterr().err


def test_input_without_records_exits_2_and_commits_nothing(
    input_records: Callable[..., str],
    tmp_path: Path,
    api_key: str,
    teacher_server: Callable[..., Any],
    capfd: pytest.CaptureFixture[str],
) -> None:
    from jobs.distill import main

    server = teacher_server()
    empty = input_records(0)  # a committed convert output whose train/ and val/ hold nothing
    for shard in ("0", "1"):
        output = str(tmp_path / "out")
        rc = main(_flags(empty, output, server.base_url, "--num-shards", "2", "--shard-index", shard))
        errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("vcot-distill: error:")]
        assert rc == 2 and len(errors) == 1 and f"{empty} holds no records: expected a committed convert" in errors[0]
        assert not manifest.is_committed(output) and server.chat_requests == 0
    # A shard that owns none of a small input is fine: shard 1 of 2 over one record commits its empty part.
    one = commit_input(str(tmp_path / "one"), [make_record(tmp_path / "data", 0)])
    assert main(_flags(one, str(tmp_path / "small"), server.base_url, "--num-shards", "2", "--shard-index", "1")) == 0
    assert storage.exists(manifest.shard_manifest_uri(str(tmp_path / "small"), ShardSpec(1, 2)))


_CRASHING_DISTILL = """
import sys
import vcot.distill.stage as stage_module

def unreadable(*args):  # a bug deep in the stage, called where the API key is a local variable
    raise RuntimeError("planted bug")

stage_module.owned_records = unreadable
from jobs.distill import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_a_crash_logs_its_traceback_once_and_no_secret(
    input_records: Callable[..., str], tmp_path: Path, fmt: str
) -> None:
    """Console logs (a terminal, make local-train) used to print every frame's locals: the key among them."""
    aws_secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    env = {**os.environ, "OPENAI_API_KEY": API_KEY, "AWS_SECRET_ACCESS_KEY": aws_secret, "VCOT_LOG_FORMAT": fmt}
    base_url = "http://teacher:pw-SECRET-in-url@127.0.0.1:9/v1"  # credentials in --base-url are masked too
    command = [sys.executable, "-c", _CRASHING_DISTILL, *_flags(input_records(1), str(tmp_path / "out"), base_url)]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    logs = result.stdout + result.stderr
    assert result.returncode == 1, logs[-3000:]
    assert logs.count("RuntimeError: planted bug") == 1 and "unreadable" in logs  # the traceback, once
    for secret in (API_KEY, aws_secret, "pw-SECRET-in-url"):
        assert secret not in logs
    assert "http://***@127.0.0.1:9/v1" in logs  # the logged config still says which endpoint
    if fmt == "json":
        assert all(line.startswith("{") for line in result.stderr.splitlines() if line), result.stderr[-3000:]


def _kill_mid_run(
    input_uri: str, output: str, server: Any, sig: int, *extra: str
) -> tuple[subprocess.CompletedProcess[str] | None, int]:
    env = {**os.environ, "OPENAI_API_KEY": API_KEY, "VCOT_LOG_FORMAT": "json"}
    command = [
        sys.executable,
        "-m",
        "jobs.distill",
        *_flags(input_uri, output, server.base_url, "--concurrency", "2", *extra),
    ]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while server.statuses["200"] < 8 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, process.communicate()
    process.send_signal(sig)
    _, err = process.communicate(timeout=30)
    while server.in_flight and time.monotonic() < deadline:  # requests the dead client left on the wire
        time.sleep(0.01)
    return err, process.returncode  # type: ignore[return-value]


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_kill_mid_run_then_rerun_sends_only_the_missing_requests(
    input_records: Callable[..., str], tmp_path: Path, api_key: str, teacher_server: Callable[..., Any], sig: int
) -> None:
    total = 30
    input_uri = input_records(total)
    server = teacher_server(latency=0.1)
    output = str(tmp_path / "out")
    # SIGTERM flushes the cache on the way out; SIGKILL gives no chance, so store every answer as it arrives.
    extra = () if sig == signal.SIGTERM else ("--cache-flush-every", "1")
    err, returncode = _kill_mid_run(input_uri, output, server, sig, *extra)
    if sig == signal.SIGTERM:
        assert returncode == 1 and "stopped by SIGTERM" in err
    else:
        assert returncode == -signal.SIGKILL
    assert not manifest.is_committed(output)
    cache = AnswerCache(str(tmp_path / "_distill_cache"), "reader")
    cache.load()
    cached = {entry["record_id"] for entry in cache.entries.values()}
    answered_before_kill = server.statuses["200"]
    if sig == signal.SIGTERM:  # nothing more sent, the requests on the wire finished and every answer was stored
        assert len(cached) == answered_before_kill
    else:  # SIGKILL also loses answers queued behind a part write, as many as arrived during it on a loaded machine
        assert 0 < len(cached) <= answered_before_kill

    sent_before = len(server.answered)
    config = DistillConfig(input=input_uri, output=output, model="gpt-4o", base_url=server.base_url, shard_index=0)
    report = distill(config)["stats"]
    rerun = {f"synthetic:train:{question_number(text)}" for text in server.answered[sent_before:]}
    assert len(server.answered) - sent_before == total - len(cached) == report["ledger"]["requests"]
    assert rerun.isdisjoint(cached) and rerun | cached == {f"synthetic:train:{i}" for i in range(total)}
    assert report["counts"] == {"input": total, "distilled": total}


def _tokenize_output(root: Path) -> str:
    """A committed tokenize output (Parquet rows): what distill must not read as records."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vcot.io import shards
    local = root / "rows.parquet"
    pq.write_table(pa.table({"id": ["a"], "input_ids": [[1, 2, 3]]}), local)
    tokens = str(root / "tokens")
    files = [shards.write_file(tokens, "train/00000-of-00001.parquet", local.read_bytes())]
    manifest.commit(tokens, stage="tokenize", files=files, config={})
    return tokens


def test_a_tokenize_output_as_input_is_refused_in_one_line(
    tmp_path: Path, api_key: str, capfd: pytest.CaptureFixture[str]
) -> None:
    from jobs.distill import main

    tokens = _tokenize_output(tmp_path)
    assert main(_flags(tokens, str(tmp_path / "out"), "http://127.0.0.1:9/v1")) == 2
    assert f"vcot-distill: error: {tokens} is a tokenize output; expected records" in capfd.readouterr().err
    assert not manifest.is_committed(str(tmp_path / "out"))


def test_an_output_that_holds_the_input_is_refused(
    input_records: Callable[..., str], tmp_path: Path, api_key: str, capfd: pytest.CaptureFixture[str]
) -> None:
    from jobs.distill import main

    records = input_records(1)  # tmp_path/convert
    assert main(_flags(records, str(tmp_path), "http://127.0.0.1:9/v1", "--overwrite")) == 2
    assert "same place or one holds the other" in capfd.readouterr().err
    assert manifest.is_committed(records)
