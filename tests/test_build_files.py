"""The repository's build files and docs: package clients are used as configured, no index is hard-wired."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Spelled in parts so that this file does not hold what it looks for.
REGISTRY_HOSTS = [".".join(parts) for parts in (("pypi", "org"), ("pytorch", "org"), ("files", "pythonhosted"))]
NOT_OURS = {".git", "build", "__pycache__", ".cache", ".local-s3", ".pytest_cache", ".hypothesis", "runs"}


def repo_files() -> list[Path]:
    """Every file of the checkout, without virtualenvs, caches, build outputs and generated k8s runs."""
    found = []
    for folder, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if d not in NOT_OURS and not d.startswith(".venv") and not d.endswith(".egg-info")]
        found += [Path(folder) / name for name in files]
    return found


def test_no_package_registry_host_is_written_in_the_repo() -> None:
    """A user points pip elsewhere with a variable (TORCH_CPU_INDEX, TORCH_INDEX_URL), described in words."""
    files = repo_files()
    assert REPO_ROOT / "Makefile" in files and REPO_ROOT / "Dockerfile" in files
    hits = [
        f"{path.relative_to(REPO_ROOT)}: {host}"
        for path in files
        for host in REGISTRY_HOSTS
        if host in path.read_bytes().decode("utf-8", "replace")
    ]
    assert not hits
