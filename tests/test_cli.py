"""Entrypoint behaviour shared by every stage: JSON logs with redacted config, one error line, exit codes."""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from vcot import cli
from vcot.cli import run_stage
from vcot.config import option
from vcot.errors import VcotError
from vcot.io import storage


@dataclass
class EchoConfig:
    output: str = option(help="Where to write.")
    token: str = option("", help="A secret token.")


def _write(config: EchoConfig) -> None:
    storage.check_access(config.output)
    storage.write_text(storage.join(config.output, "out.txt"), "hello")


def test_success_logs_json_with_secrets_redacted(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("VCOT_LOG_FORMAT", "json")
    assert run_stage("echo", EchoConfig, _write, ["--output", str(tmp_path), "--token", "s3cr3t"]) == 0
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    config_line = next(line for line in lines if line["event"] == "config")
    assert config_line["token"] == "***" and config_line["stage"] == "echo"
    assert "s3cr3t" not in err
    assert (tmp_path / "out.txt").read_text() == "hello"


def test_unreachable_storage_is_one_line_and_exit_1(s3_bucket, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("VCOT_LOG_FORMAT", "json")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("VCOT_S3_MAX_ATTEMPTS", "1")
    assert run_stage("echo", EchoConfig, _write, ["--output", f"{s3_bucket}/x"]) == 1
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vcot-echo: error:")]
    assert len(err_lines) == 1
    assert "http://127.0.0.1:9" in err_lines[0] and s3_bucket.removeprefix("s3://") in err_lines[0]


def test_bugs_keep_their_traceback(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    def boom(config: EchoConfig) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setenv("VCOT_LOG_FORMAT", "json")
    assert run_stage("echo", EchoConfig, boom, ["--output", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    crashed = [json.loads(line) for line in err.splitlines() if '"crashed"' in line]
    assert len(crashed) == 1 and "Traceback" in crashed[0]["exception"]
    assert "RuntimeError: a bug" in crashed[0]["exception"]
    assert all(line.startswith("{") for line in err.splitlines() if line)  # logged once, inside the JSON line


class _Writes:
    """``sys.stderr`` that keeps each ``write`` apart."""

    def __init__(self) -> None:
        self.chunks: list[str] = []

    def write(self, text: str) -> int:
        self.chunks.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _refuse(config: EchoConfig) -> None:
    raise VcotError("nothing to do here: pass --output elsewhere")


def test_a_failure_is_written_a_whole_line_at_a_time(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Under torchrun the ranks write unbuffered to one pipe: a line in two writes can be split by another rank's.
    monkeypatch.setenv("VCOT_LOG_FORMAT", "json")
    stderr = _Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert run_stage("echo", EchoConfig, _refuse, ["--output", str(tmp_path)]) == 1
    assert stderr.chunks and all(chunk.endswith("\n") and chunk.count("\n") == 1 for chunk in stderr.chunks)
    assert stderr.chunks[-1] == "vcot-echo: error: nothing to do here: pass --output elsewhere\n"


def _crash(config: EchoConfig) -> None:
    raise RuntimeError("a bug")


@pytest.mark.parametrize(("main", "event", "logged"), [
    (_refuse, "failed", "nothing to do here: pass --output elsewhere"),
    (_crash, "crashed", "RuntimeError: a bug"),
])  # fmt: skip
def test_a_sigterm_while_a_failure_is_reported_does_not_cut_it_short(  # type: ignore[no-untyped-def]
    main, event, logged, tmp_path, monkeypatch, capsys
) -> None:
    # torchrun sends SIGTERM to the ranks left once one has exited: the others may be reporting the same failure.
    real_get_logger = cli.get_logger

    class TerminatedWhileLogging:
        def __init__(self, log: Any) -> None:
            self.log = log

        def __getattr__(self, name: str) -> Any:
            return getattr(self.log, name)

        def error(self, *args: Any, **kwargs: Any) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            self.log.error(*args, **kwargs)

        def exception(self, *args: Any, **kwargs: Any) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            self.log.exception(*args, **kwargs)

    monkeypatch.setenv("VCOT_LOG_FORMAT", "json")
    monkeypatch.setattr(cli, "get_logger", lambda *a, **k: TerminatedWhileLogging(real_get_logger(*a, **k)))
    before = signal.getsignal(signal.SIGTERM)
    assert run_stage("echo", EchoConfig, main, ["--output", str(tmp_path)]) == 1
    assert signal.getsignal(signal.SIGTERM) == before
    err = capsys.readouterr().err
    reported = [json.loads(line) for line in err.splitlines() if f'"{event}"' in line]
    assert len(reported) == 1 and logged in json.dumps(reported[0])
    assert "terminated" not in err and "_Terminated" not in err
