"""The run layout has one home (vcot/io/layout.py); the manifests that must spell it out use exactly its names."""

from __future__ import annotations

import re
from pathlib import Path

from vcot.io.layout import HISTORY, POINTER, RUN_FOLDERS, SCHEDULED_EVALS, TEACHER_CACHE

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_every_job_and_component_writes_into_the_layouts_folders() -> None:
    found: set[str] = set()
    for path in sorted((REPO_ROOT / "k8s").rglob("*.yaml")):
        if "runs" in path.relative_to(REPO_ROOT / "k8s").parts[:1]:
            continue  # make k8s-run's generated copies
        text = path.read_text(encoding="utf-8")
        found.update(re.findall(r"\$\(RUN_ROOT\)/\$\([A-Z_]+\)/([a-z-]+)", text))
        for name in re.findall(r"\$\(RUN_ROOT\)/([a-z_][a-z._-]*)", text):
            assert name in (POINTER, SCHEDULED_EVALS, TEACHER_CACHE, HISTORY), (
                f"{path}: $(RUN_ROOT)/{name} is not in vcot/io/layout.py"
            )
    assert found and found <= set(RUN_FOLDERS), f"folders outside vcot.io.layout.RUN_FOLDERS: {found - set(RUN_FOLDERS)}"


def test_the_makefiles_local_runs_use_the_layouts_folders() -> None:
    """make local-train and the targets after it write runs in the same folders as the Jobs (records, tokenized, ...)."""
    text = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    found = set(re.findall(r"\$\(LOCAL_[A-Z_]*RUN\)/([a-z][a-z.-]*)", text))
    assert "train" in found and "tokenized" in found
    assert found - {"synthetic", POINTER} <= set(RUN_FOLDERS), f"not in vcot.io.layout: {found - {'synthetic', POINTER} - set(RUN_FOLDERS)}"
