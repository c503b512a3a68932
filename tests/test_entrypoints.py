"""The console scripts as a user runs them (``python -m jobs.<stage>``, what ``vcot-<stage>`` calls): ``--help``
answers without loading the heavy libraries, names every flag's variable by the ``VCOT_<FLAG>`` rule, and lists
what the user can choose (every shipped recipe)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from vcot.train.recipe import recipe_names

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGES = sorted(path.stem for path in (REPO_ROOT / "jobs").glob("*.py") if path.stem != "__init__")
HEAVY = {"torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "gradio"}
"""What takes seconds to import (torch and transformers alone: 10-30 s on a busy machine): loaded when a stage runs."""


@cache
def help_of(stage: str) -> tuple[str, set[str]]:
    """``python -X importtime -m jobs.<stage> --help``: its output and every top-level package it imported."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "1000"}  # one line per flag: no name is cut at a hyphen
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", f"jobs.{stage}", "--help"], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0]
                for line in result.stderr.splitlines() if line.startswith("import time:") and "|" in line}
    return result.stdout, imported


def test_every_stage_is_checked() -> None:
    assert {"convert", "distill", "tokenize", "train", "evaluate", "export", "demo", "preview"} <= set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_help_imports_no_heavy_library(stage: str) -> None:
    text, imported = help_of(stage)
    assert text.startswith(f"usage: vcot-{stage}")
    assert "vcot" in imported  # the import log was read
    assert sorted(imported & HEAVY) == []


@pytest.mark.parametrize("stage", STAGES)
def test_every_flag_has_the_variable_of_its_name(stage: str) -> None:
    """``--some-flag`` is ``VCOT_SOME_FLAG``, with no exception (README, Configuration)."""
    text, _ = help_of(stage)
    options = " ".join(text.split("options:", 1)[1].split()).replace("-h, --help show this help message and exit", "")
    pairs = re.findall(r"--([a-z0-9-]+).*?\[env: (\w+)\]", options)
    assert pairs
    assert [(flag, env) for flag, env in pairs if env != "VCOT_" + flag.upper().replace("-", "_")] == []


def test_train_help_lists_every_shipped_recipe() -> None:
    text = " ".join(help_of("train")[0].split())
    names = recipe_names()
    assert {"tiny-cpu-rgfn", "qwen2.5-vl-7b-rgfn", "qwen2.5-vl-7b-qlora"} <= set(names)
    assert [name for name in names if name not in text] == []
