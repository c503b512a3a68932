"""The repository's build files and docs: package clients are used as configured (no index hard-wired), `make test`
does its own set-up, every file a test reads is in the repository, and the docs' commands run as written from a clone."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import subprocess
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


# --- the repository is self-contained: every file a test reads is in it -----------------------------------------


def _anchored_path(node: ast.AST, file: Path, names: dict[str, Path]) -> Path | None:
    """The path ``node`` builds from ``Path(__file__)`` or a name bound to one (``.parent``, ``.parents[n]``,
    ``.resolve()``, ``/ "part"``), or ``None`` when it builds none."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Path" and node.args:
        first = node.args[0]
        return file if isinstance(first, ast.Name) and first.id == "__file__" else None
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "resolve":
        return _anchored_path(node.func.value, file, names)
    if isinstance(node, ast.Attribute) and node.attr == "parent":
        base = _anchored_path(node.value, file, names)
        return base.parent if base else None
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "parents":
        base = _anchored_path(node.value.value, file, names)
        if base and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, int):
            return Path(os.path.normpath(base / "/".join([".."] * (node.slice.value + 1))))
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant):
        base = _anchored_path(node.left, file, names)
        return base / str(node.right.value) if base else None
    return None


def paths_outside_the_repo(source: str, file: Path) -> list[str]:
    """``"line: path"`` for each path ``source`` (the test file ``file``) builds from its own location that lies
    outside the repository, such as ``REPO_ROOT.parent / "shared"``."""
    names: dict[str, Path] = {}
    inner: set[int] = set()  # the parts of a path already judged whole
    found = []
    for node in ast.walk(ast.parse(source)):  # breadth first: module-level names are bound before functions use them
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            bound = _anchored_path(node.value, file, names)
            if bound is not None:
                names[node.targets[0].id] = bound
        if not isinstance(node, ast.expr) or id(node) in inner or isinstance(getattr(node, "ctx", None), ast.Store):
            continue
        path = _anchored_path(node, file, names)
        if path is None:
            continue
        inner.update(id(part) for part in ast.walk(node))
        if not Path(os.path.normpath(path)).is_relative_to(REPO_ROOT):
            found.append(f"{node.lineno}: {os.path.relpath(os.path.normpath(path), REPO_ROOT)}")
    return found


def test_no_test_reads_a_path_outside_the_repository() -> None:
    """A fresh clone runs every test: samples are copied into tests/fixtures/, never read from beside the checkout."""
    escapes = [
        f"{path.relative_to(REPO_ROOT)}:{hit}"
        for path in sorted((REPO_ROOT / "tests").rglob("*.py"))
        for hit in paths_outside_the_repo(path.read_text(encoding="utf-8"), path)
    ]
    assert escapes == []


def test_an_escaping_path_is_caught() -> None:
    """The check finds what it is for: the shared-data folder beside the checkout, and a ``parents[n]`` too far up."""
    conftest = REPO_ROOT / "tests" / "conftest.py"
    source = 'ROOT = Path(__file__).resolve().parent.parent\nDATA = ROOT.parent / "shared" / "data"\nOK = ROOT / "x"\n'
    assert paths_outside_the_repo(source, conftest) == ["2: ../shared/data"]
    nested = REPO_ROOT / "tests" / "evaluate" / "test_x.py"
    source = "A = Path(__file__).parents[3] / 'x'\nB = Path(__file__).parents[2]\n"
    assert paths_outside_the_repo(source, nested) == ["1: ../x"]


def test_fixtures_are_small_files_in_the_repository() -> None:
    """Samples only: a test fixture stays under 100 kB (a whole dataset belongs on storage, not in git)."""
    large = [f"{p.relative_to(REPO_ROOT)}: {p.stat().st_size} B" for p in (REPO_ROOT / "tests" / "fixtures").rglob("*")
             if p.is_file() and p.stat().st_size > 100_000]
    assert large == []


# --- make test does its own set-up: Debian's chromium for the browser tests ------------------------------------


def _make_with_stubs(tmp_path: Path, *args: str, uid: int) -> tuple[subprocess.CompletedProcess[str], str]:
    """``make ARGS`` with ``apt-get`` and ``id -u`` answered by stubs first on PATH: what the Makefile asks apt-get
    to do is recorded, not done. Returns make's result and the apt-get calls."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    calls = tmp_path / "apt-get.calls"
    for name, body in {"apt-get": f'echo "apt-get $*" >> {calls}', "id": f"echo {uid}"}.items():
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["make", "-s", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    return result, calls.read_text() if calls.exists() else ""


def test_make_test_installs_chromium_when_it_is_missing(tmp_path: Path) -> None:
    missing = "CHROMIUM=vcot-no-such-browser"
    result, calls = _make_with_stubs(tmp_path, "chromium", missing, uid=0)
    assert result.returncode == 0, result.stderr
    assert calls.splitlines() == ["apt-get update -qq", "apt-get install -y -qq chromium"]

    dry_run = subprocess.run(["make", "-n", "test", missing], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert "apt-get install -y -qq chromium" in dry_run.stdout  # `make test` runs that step first


def test_make_chromium_says_in_one_line_when_it_cannot_install(tmp_path: Path) -> None:
    result, calls = _make_with_stubs(tmp_path, "chromium", "CHROMIUM=vcot-no-such-browser", uid=1000)
    assert result.returncode == 0 and calls == ""  # the rest of the suite still runs
    assert len(result.stdout.splitlines()) == 1
    assert "needs root and apt-get" in result.stdout and "sudo apt-get install chromium" in result.stdout

    result, calls = _make_with_stubs(tmp_path, "chromium", "CHROMIUM=sh", uid=0)  # present: nothing to do
    assert (result.returncode, result.stdout, calls) == (0, "", "")


def test_ci_runs_only_make_targets() -> None:
    """CI is what a developer runs: every set-up step lives in a make target, none in .ci/run alone."""
    lines = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert [c for c in commands if not c.startswith(("make ", "set ", "cd "))] == []
    assert "make test" in commands


def test_make_help_shows_values_not_variable_names() -> None:
    shown = subprocess.run(["make", "-s", "help", "IMAGE_TAG=9.9.9"], cwd=REPO_ROOT, capture_output=True, text=True,
                           check=True).stdout
    assert "$(" not in shown
    assert "localhost/vcot-cpu:9.9.9" in shown and "localhost/vcot-cpu-train:9.9.9" in shown


def test_make_local_rgfn_trains_its_three_turn_sft_for_15_epochs_as_rl_bench_does() -> None:
    """The three-turn SFT of ``make local-rgfn`` gets ``num_train_epochs=15`` (docs/train.md, "The three-turn SFT
    trained for 15 epochs"), and ``bench/rl_bench.py --prepare`` trains it with the same override."""
    dry_run = subprocess.run(["make", "-n", "local-rgfn", "LOCAL_RGFN_RUN=/tmp/vcot-rgfn"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout.replace("\\\n", " ")
    sft = [line for line in dry_run.splitlines() if "-m jobs.train --data /tmp/vcot-rgfn/tokenized" in line]
    assert len(sft) == 1 and '--set "num_train_epochs=15"' in sft[0]

    assert importlib.import_module("bench.rl_bench").THREE_TURN_SFT_SET == "num_train_epochs=15"


# --- the docs' commands run as written from a clone ----------------------------------------------------------------


def test_installs_are_from_the_clone_not_from_the_package_index() -> None:
    """vcot is not on the package index: ``pip install 'vcot[demo]'`` fails; ``pip install -e '.[demo]'`` from the
    repository root (or ``make install``) works. Docs, docstrings and error messages alike."""
    sources = [REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md"), *(REPO_ROOT / "vcot").rglob("*.py"),
               *(REPO_ROOT / "jobs").glob("*.py")]
    wrong = re.compile(r"install\s+['\"]?vcot\[")
    hits = [f"{path.relative_to(REPO_ROOT)}:{number}" for path in sources
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if wrong.search(line)]
    assert hits == []


def test_the_virtualenv_is_activated_before_the_first_vcot_command() -> None:
    """The console scripts are in .venv/bin: a doc says so before its first ``vcot-...`` command line."""
    for doc in ("README.md", "docs/first-week.md"):
        text = (REPO_ROOT / doc).read_text(encoding="utf-8")
        first = re.search(r"^vcot-[a-z]+ ", text, re.MULTILINE)
        assert first is not None, doc
        assert "source .venv/bin/activate" in text[: first.start()], doc
