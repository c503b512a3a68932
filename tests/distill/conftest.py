"""Fixtures for the distill tests (helpers live in distill_helpers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.distill.distill_helpers import API_KEY, commit_input, good_answer, make_record
from vcot.dev.fake_openai import FakeOpenAI


@pytest.fixture
def input_records(tmp_path: Path) -> Callable[..., str]:
    def build(count: int, **kwargs: Any) -> str:
        records = [make_record(tmp_path / "data", i, **kwargs) for i in range(count)]
        return commit_input(str(tmp_path / "convert"), records)

    return build


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return API_KEY


@pytest.fixture
def teacher_server() -> Iterator[Callable[..., FakeOpenAI]]:
    """Start scripted fake servers (stopped after the test): ``teacher_server(answer=..., fault=..., latency=...)``."""
    started: list[FakeOpenAI] = []

    def start(**kwargs: Any) -> FakeOpenAI:
        kwargs.setdefault("answer", good_answer)
        kwargs.setdefault("api_key", API_KEY)
        server = FakeOpenAI(**kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """``vcot.cli.run_stage`` binds logging to the stderr of the moment; a test's captured stream dies with it."""
    yield
    import structlog

    structlog.reset_defaults()
