"""The run layout has one home (vcot/layout.py); the manifests that must spell it out use exactly its names."""

from __future__ import annotations

import re
from pathlib import Path

from vcot.layout import POINTER, RUN_FOLDERS, SCHEDULED_EVALS, TEACHER_CACHE

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_every_job_and_component_writes_into_the_layouts_folders() -> None:
    found: set[str] = set()
    for path in sorted((REPO_ROOT / "k8s").rglob("*.yaml")):
        if "runs" in path.relative_to(REPO_ROOT / "k8s").parts[:1]:
            continue  # make k8s-run's generated copies
        text = path.read_text(encoding="utf-8")
        found.update(re.findall(r"\$\(RUN_ROOT\)/\$\([A-Z_]+\)/([a-z-]+)", text))
        for name in re.findall(r"\$\(RUN_ROOT\)/([a-z_][a-z._-]*)", text):
            assert name in (POINTER, SCHEDULED_EVALS, TEACHER_CACHE), f"{path}: $(RUN_ROOT)/{name} is not in vcot/layout.py"
    assert found and found <= set(RUN_FOLDERS), f"folders outside vcot.layout.RUN_FOLDERS: {found - set(RUN_FOLDERS)}"
