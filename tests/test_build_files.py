"""The repository's build files and docs: package clients are used as configured, no index is hard-wired."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
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


_SOURCE_SUFFIXES = {".py", ".pyc"}
_NAMED_MODULE = re.compile(r"(?:\bfrom|\bimport|-m,?)\s+(vcot(?:\.\w+)*)(?:\s+import\s+(\w+(?:\s*,\s*\w+)*))?")


def _exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_every_vcot_module_a_build_file_or_doc_names_exists() -> None:
    """The Makefile, manifests, scripts and docs run ``python -m vcot...`` and ``from vcot... import ...``: after a
    module moves, each of those still names a real module (or a name the module has)."""
    missing = []
    for path in repo_files():
        if path.suffix in _SOURCE_SUFFIXES or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for match in _NAMED_MODULE.finditer(text):
            module, names = match.group(1), match.group(2)
            ok = _exists(module) and all(
                _exists(f"{module}.{name}") or hasattr(importlib.import_module(module), name)
                for name in (names or "").replace(" ", "").split(",")
                if name
            )
            if not ok:
                missing.append(f"{path.relative_to(REPO_ROOT)}: {match.group(0)}")
    assert missing == []
