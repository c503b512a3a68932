"""run_stage turns the outcome of a stage into an exit code."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from vcot.cli import run_stage
from vcot.config import option
from vcot.errors import VcotError


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
    assert run_stage("x", _Config, _raise(_Flagged("regression")), []) == 3
    assert "vcot-x: error: regression" in capsys.readouterr().err
    with pytest.raises(RuntimeError):
        run_stage("x", _Config, _raise(RuntimeError("bug")), [])
