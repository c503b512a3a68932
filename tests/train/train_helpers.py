"""Helpers the train tests share."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_until_killed(argv: list[str], kill_at_step: int) -> tuple[int, str]:
    """Start vcot-train in a subprocess, SIGTERM it once it logged ``kill_at_step``; returns (code, stderr)."""
    env = {**os.environ, "VCOT_LOG_FORMAT": "json"}
    process = subprocess.Popen(
        [sys.executable, "-m", "jobs.train", *argv],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    assert process.stderr is not None
    for line in process.stderr:
        lines.append(line)
        if line.startswith("{") and '"train_log"' in line and json.loads(line).get("step", 0) >= kill_at_step:
            process.send_signal(signal.SIGTERM)
            break
    try:
        _, rest = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("vcot-train did not stop within 120 s of SIGTERM:\n" + "".join(lines)[-3000:]) from None
    return process.returncode, "".join(lines) + rest
