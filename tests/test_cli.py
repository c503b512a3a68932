"""Entrypoint behaviour shared by every stage: JSON logs with redacted config, one error line, exit codes."""

from __future__ import annotations

import json
from dataclasses import dataclass

from vcot.cli import run_stage
from vcot.config import option
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
