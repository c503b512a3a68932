"""The judge when its server never answers well: timing out on every attempt, a 500 on every attempt, garbage
on every attempt. The run stops with one line and exit 1 (a rerun may get past it), commits nothing, and what
the judge did answer before stays cached for that rerun."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from jobs.evaluate import main
from tests.evaluate.test_eval_judge import _argv, api_key, judge_server  # noqa: F401 - fixtures
from vcot.dev.fake_openai import FakeOpenAI
from vcot.io import manifest


@pytest.mark.parametrize("fault", ["timeout", "500", "garbage"])
def test_a_judge_that_never_answers_stops_the_run_with_one_line(
    fault: str,
    known_data: tuple[str, list],
    tmp_path: Path,
    api_key: str,  # noqa: F811
    judge_server: Callable[..., FakeOpenAI],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, _ = known_data
    server = judge_server(fault=lambda text, attempt: fault if "light blue" in text else None, timeout_sleep=5.0)
    # A timeout with room for a loaded CI machine, so that only the scripted fault times out.
    code = main([*_argv(data, tmp_path, server, "--judge-timeout", "3.0", "--judge-max-attempts", "2")])
    err = capsys.readouterr().err
    assert code == 1, err[-2000:]
    assert "still failing after 2 attempts" in err and "rerun to resume" in err
    assert "Traceback" not in err
    assert not manifest.is_committed(str(tmp_path / "eval"))
    # The other answers were judged (and cached for the rerun). The server also answers an abandoned request once it
    # wakes: only the others count.
    assert sum("light blue" not in text for text in server.answered) == 5
