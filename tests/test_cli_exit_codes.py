"""run_stage turns the outcome of a stage into an exit code: 2 for every configuration error, on one line."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from vcot.cli import run_stage
from vcot.config import option
from vcot.errors import ConfigError, VcotError, require

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class _Config:
    value: int = option(1, help="A number.")


class _Flagged(VcotError):
    exit_code = 3


def _raise(error: Exception | None) -> object:
    def main(config: _Config) -> None:
        if error is not None:
            raise error

    return main


def test_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_stage("x", _Config, _raise(None), []) == 0
    assert run_stage("x", _Config, _raise(VcotError("set --value")), []) == 1
    assert run_stage("x", _Config, _raise(ConfigError("set --value")), []) == 2
    assert run_stage("x", _Config, _raise(_Flagged("regression")), []) == 3
    assert "vcot-x: error: regression" in capsys.readouterr().err
    assert run_stage("x", _Config, _raise(RuntimeError("bug")), []) == 1  # logged with its traceback
    assert "RuntimeError: bug" in capsys.readouterr().err


def _one_error_line(err: str, prog: str) -> str:
    """The stderr of a configuration error: one line, no usage dump, no traceback (log lines aside)."""
    lines = [line for line in err.splitlines() if line and not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err[-3000:]
    assert "Traceback" not in err
    return lines[0]


def test_an_invalid_flag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.convert import main

    with pytest.raises(SystemExit) as info:
        main(["--source", "nope", "--input", "x", "--output", "y"])
    assert info.value.code == 2
    assert "invalid choice: 'nope'" in _one_error_line(capsys.readouterr().err, "vcot-convert")


def test_recipe_and_override_yaml_errors_exit_2_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.train import main

    broken = tmp_path / "recipe.yaml"
    broken.write_text("lora_r: 8\nlora_target_modules: [q_proj\nlearning_rate: 1e-4\n")
    argv = ["--data", str(tmp_path / "d"), "--model", str(tmp_path / "m"), "--output", str(tmp_path / "o")]
    for flags, message in (
        (["--recipe", str(broken)], f"recipe '{broken}' is not valid YAML"),
        (["--recipe", "tiny-cpu", "--set", "lora_r=[8,"], "recipe override 'lora_r=[8,' is not valid YAML"),
    ):
        with pytest.raises(SystemExit) as info:
            main([*argv, *flags])
        assert info.value.code == 2
        line = _one_error_line(capsys.readouterr().err, "vcot-train")
        assert message in line and " at line " in line


@pytest.mark.parametrize(
    ("name", "value"), [("VCOT_S3_MAX_ATTEMPTS", "many"), ("VCOT_S3_ADDRESSING_STYLE", "sideways")]
)
def test_invalid_s3_settings_exit_2(
    name: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.convert import main

    monkeypatch.setenv(name, value)
    data = tmp_path / "viscot.json"
    data.write_text("[]")
    assert main(["--source", "viscot", "--input", str(data), "--output", "s3://bucket/out"]) == 2
    assert f"{name}={value!r} is not valid" in _one_error_line(capsys.readouterr().err, "vcot-convert")


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_a_malformed_endpoint_url_is_one_line_without_secrets(fmt: str, tmp_path: Path) -> None:
    """It used to crash in botocore, and console logs printed the S3 secret from the client cache's locals."""
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": secret, "AWS_ENDPOINT_URL_S3": "not a url", "VCOT_LOG_FORMAT": fmt}
    data = tmp_path / "viscot.json"
    data.write_text("[]")
    command = [sys.executable, "-m", "jobs.convert", "--source", "viscot", "--input", str(data), "--output", "s3://b/o"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert secret not in result.stdout + result.stderr and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("vcot-convert: error:")]
    expected = "vcot-convert: error: AWS_ENDPOINT_URL_S3='not a url' is not a URL: set it to http(s)://host[:port]"
    assert errors == [expected]


def test_a_missing_extra_is_a_config_error_but_a_broken_package_keeps_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``require`` names the extra to install only when the package itself is missing: an installed package that
    fails on a missing import of its own is a bug to see, not an extra to install."""
    (tmp_path / "vcot_broken_package.py").write_text("import vcot_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"the vcot_absent package: .*'\.\[demo\]'") as missing:
        require("vcot_absent.sub", "demo")
    assert missing.value.exit_code == 2
    with pytest.raises(ModuleNotFoundError, match="vcot_no_such_dependency"):
        require("vcot_broken_package", "demo")
