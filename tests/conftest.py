"""Shared fixtures: a moto S3 server for fast tests, the real local S3 server for integration tests.

The suite runs on two busy cores, where a test can lose the CPU for seconds: no test may depend on how fast the
machine is. Move a module's clock instead of sleeping (:func:`moved_clock`); give a client's timeout
seconds of room, and a scripted fault's sleep more; count only what a late, abandoned request cannot change; send a
signal steps before the run would end.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from hypothesis import settings

from vcot.dev.vllm_server import vllm_venv, vllm_venv_ready
from vcot.train.distributed import free_port

# Shared CI machines have noisy timing: judge properties, not per-example speed.
settings.register_profile("vcot", deadline=None, print_blob=True)
settings.load_profile("vcot")

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"
"""Every file a test reads lives in the repository (tests/test_build_files.py checks it): small samples here."""


def built_vllm_venv() -> Path:
    """``make vllm-env``'s venv, or a loud skip where it could not be built (``make test`` tries first)."""
    venv = vllm_venv()
    if not vllm_venv_ready(venv):
        pytest.skip(f"NO vLLM ENVIRONMENT at {venv}: `make vllm-env` builds it (make test tries first)")
    return venv


def moved_clock(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> list[float]:
    """``module``'s ``time.monotonic`` replaced by a clock the test moves (``clock[0] += seconds``), from 0: what the
    module does after N seconds no longer depends on how fast a busy machine sleeps."""
    now = [0.0]
    monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def live_process_stat(pid: int) -> list[str] | None:
    """``[state, ppid, ...]`` of a live process from /proc, ``None`` once it is gone (a zombie counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def _use_s3(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def s3_bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on moto with the environment pointing at it; returns ``s3://bucket``."""
    import boto3

    _use_s3(
        monkeypatch,
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL_S3": moto_endpoint,
            "AWS_REGION": "us-east-1",
            "VCOT_S3_ADDRESSING_STYLE": "path",
            "VCOT_S3_MAX_ATTEMPTS": "2",
        },
    )
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def local_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The real local S3 server (SeaweedFS or MinIO), started unless `make test` already did."""
    from vcot.dev import local_s3

    server = local_s3.LocalS3.from_env()
    if not os.environ.get("VCOT_LOCAL_S3_DIR"):  # the repo's folder, wherever pytest was started from
        server = dataclasses.replace(server, root=REPO_ROOT / ".local-s3")
    started = local_s3.up(server)
    yield server
    if started:
        local_s3.down(server)


@pytest.fixture
def real_s3(local_s3_server: object, monkeypatch: pytest.MonkeyPatch) -> str:
    """Environment pointing at the real local server; returns a unique ``s3://bucket/prefix`` for this test."""
    server = local_s3_server
    _use_s3(monkeypatch, server.env())  # type: ignore[attr-defined]
    return f"s3://{server.bucket}/tests/{uuid.uuid4().hex[:12]}"  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, for the browser tests (`make test` installs it; Playwright's own browsers are not used)."""
    found = shutil.which("chromium")
    assert found, "no chromium on PATH: run make test as root (it installs Debian's chromium), or apt-get install chromium"
    return found


# --- logs and progress: the two formats a stage writes in -------------------------------------------------


@dataclasses.dataclass
class LogMode:
    """The log format a test runs a stage in (``main()`` reads ``VCOT_LOG_FORMAT``), with readers for what it wrote."""

    fmt: str

    @staticmethod
    def lines(err: str, event: str) -> list[dict]:
        """JSON mode: the log lines of ``event``."""
        import json

        found = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        return [line for line in found if line.get("event") == event]

    @staticmethod
    def bars(err: str, event: str) -> list[str]:
        """Console mode: every state the bar of ``event`` was drawn in (tqdm redraws a line with carriage returns)."""
        return [part.strip() for part in re.split(r"[\r\n]", err) if part.strip().startswith(f"{event}:")]


@pytest.fixture(params=["console", "json"])
def log_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[LogMode]:
    """Each format in turn for a stage run with ``main()``; every JSON progress update logged
    (``VCOT_PROGRESS_SECONDS=0``). Afterwards logging is JSON again, as ``main()`` configures it under pytest."""
    from vcot.log import configure_logging

    monkeypatch.setenv("VCOT_LOG_FORMAT", request.param)
    monkeypatch.setenv("VCOT_PROGRESS_SECONDS", "0")
    yield LogMode(request.param)
    configure_logging("json")


# --- train: the tiny offline models (vcot.dev.tiny_model), built once per test session --------------------


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub-like tiny Qwen2.5-VL folder (tokenizer, processor, config, random weights), seed 0."""
    from vcot.dev.tiny_model import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny-qwen25vl"), seed=0)


@pytest.fixture(scope="session")
def tiny_qwen3vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same for the second family: a hub-like tiny Qwen3-VL folder, seed 0."""
    from vcot.dev.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen3vl"), family="qwen3-vl", seed=0)


QWEN25_VL_GENERATION = {"do_sample": True, "temperature": 0.01, "top_p": 0.001, "top_k": 1, "repetition_penalty": 1.05}
"""Qwen2.5-VL-Instruct's generation_config.json, which ``generate`` keeps for whatever its arguments leave out: the
tests that sample put it on the tiny model."""
