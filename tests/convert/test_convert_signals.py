"""A stopped vcot-convert leaves no worker process behind: SIGTERM is logged and unwinds, SIGKILL is noticed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import live_process_stat
from vcot.dev.synthetic import write_synthetic_viscot

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = live_process_stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _wait_until(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(condition())  # type: ignore[operator]


def _open_for_writing(fifo: Path, process: subprocess.Popen[str]) -> int:
    """The pipe's write end, once convert has opened it to read (``None`` if convert exits first)."""
    while process.poll() is None:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # fails (ENXIO) until there is a reader
        except OSError:
            time.sleep(0.05)
            continue
        os.set_blocking(fd, True)
        return fd
    raise AssertionError(f"convert exited before reading its input: {process.communicate()[1][-3000:]}")


def _wait_feeding(process: subprocess.Popen[str], fd: int, element: bytes, seconds: float = 60) -> None:
    """Wait for ``process`` to exit while a trickle of input keeps coming, as it does from any real input.

    Python runs a signal's handler in the main thread. When the kernel hands SIGTERM to another thread (the
    worker pool's, under load) while the main thread is blocked reading this endless pipe, the handler runs
    once that read returns: a real file or S3 stream returns within its timeout, a silent pipe never does
    (and a buffered read of a chunk returns only once the whole chunk came: hence blocks of elements).
    """
    os.set_blocking(fd, False)
    deadline = time.monotonic() + seconds
    while process.poll() is None and time.monotonic() < deadline:
        try:
            os.write(fd, element)
        except (BlockingIOError, BrokenPipeError):
            pass
        time.sleep(0.2)
    process.wait(timeout=1)


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_stopped_convert_leaves_no_worker_behind(tmp_path: Path, sig: int) -> None:
    synthetic = write_synthetic_viscot(str(tmp_path / "data"), num_records=40, seed=1)
    items = json.loads(Path(synthetic["json"]).read_text())
    body = ("[" + ",".join(json.dumps(item) for item in items * 100) + ",").encode()  # three 512 KiB chunks at least
    fifo = tmp_path / "viscot.json"  # a pipe that never ends: convert is mid-run whenever it is stopped
    os.mkfifo(fifo)
    command = [sys.executable, "-m", "jobs.convert", "--source", "viscot", "--input", str(fifo),
               "--images", synthetic["images"], "--metadata", synthetic["metadata"],
               "--output", str(tmp_path / "out"), "--workers", "2"]  # fmt: skip
    env = {**os.environ, "VCOT_LOG_FORMAT": "json"}
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    workers: list[int] = []
    try:
        fd = _open_for_writing(fifo, process)
        try:
            with open(fd, "wb", closefd=False) as pipe:
                pipe.write(body)  # returns once convert has read it: its pool is working on the chunks
            assert _wait_until(lambda: _children(process.pid), 30), "no worker process started"
            workers = _children(process.pid)
            process.send_signal(sig)
            _wait_feeding(process, fd, (json.dumps(items[0]) + ",").encode() * 200)
        finally:
            os.close(fd)
        workers_gone = _wait_until(lambda: all(live_process_stat(pid) is None for pid in workers), 10)
    finally:
        process.kill()
        for pid in workers:  # what the unfixed code left blocked forever (holding convert's stderr open)
            if live_process_stat(pid) is not None:
                os.kill(pid, signal.SIGKILL)
    err = process.communicate(timeout=60)[1]
    assert workers_gone, f"workers {workers} outlived convert"
    if sig == signal.SIGTERM:
        assert process.returncode == 1, err[-3000:]
        events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
        assert "terminated" in events and "crashed" not in events
        errors = [line for line in err.splitlines() if line.startswith("vcot-convert: error:")]
        assert errors == ["vcot-convert: error: stopped by SIGTERM before finishing: run the same command again"]
    else:
        assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "out" / "_SUCCESS").exists()
