"""The package's import rules, read from the source (function-level imports included).

vcot/ is layered, and imports only run down:

- the entrypoint frame at the root (``cli``, ``config``, ``errors``, ``log``, ``progress``) imports only itself;
- concept packages (``io``, ``grounding``, ``scoring``, ``models``, ``pages``, ``cluster``, ``llm``) import the frame
  and the concept packages :data:`CONCEPTS` lists for them, never a stage;
- stages (and the demo) import the frame and any concept package, never another stage's insides;
- the development tools (``vcot.dev``) may import anything, and nothing but tests, benchmarks and the Makefile
  imports them.

No import cycle anywhere in vcot/.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FRAME = ("cli", "config", "errors", "log", "progress")
"""The root modules every entrypoint runs in: logging, config, a clean error line, an exit code."""
CONCEPTS: dict[str, tuple[str, ...]] = {
    "io": (),
    "grounding": (),
    "llm": ("io",),
    "cluster": ("io",),
    "scoring": ("grounding",),
    "models": ("grounding", "io"),
    "pages": ("grounding", "io"),
}
"""Each concept package and the other concept packages it may import (the frame it may always import)."""
STAGES = ("convert", "distill", "tokenize", "train", "evaluate", "export", "demo")
DEV_TOOLS = ("vcot.dev",)
"""Development tools (tiny models, the local S3 server, synthetic data, the local-run summary, the fake OpenAI
server): tests, benchmarks and the Makefile use them; nothing a stage runs in a container may."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``{module: {vcot modules it imports}}`` for every module under vcot/, at any nesting level."""
    graph: dict[str, set[str]] = {}
    for path in sorted((REPO_ROOT / "vcot").rglob("*.py")):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        graph[name] = {target for target in found if target.startswith("vcot")}
    modules = set(graph)
    return {name: {t for t in targets if t in modules and t != name} for name, targets in graph.items()}


def _home(module: str) -> str:
    """The layer a module lives in: ``frame``, a concept package's name, a stage's name or ``dev``.

    >>> _home("vcot.log"), _home("vcot.io.storage"), _home("vcot.train.grpo"), _home("vcot")
    ('frame', 'io', 'train', 'frame')
    """
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in FRAME:
        return "frame"
    return parts[1]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import in ``graph`` that runs against the layering above, as ``"module -> target (why)"``."""
    found = []
    for module, targets in sorted(graph.items()):
        home = _home(module)
        for target in sorted(targets):
            there = _home(target)
            if there in (home, "frame"):
                continue
            if home == "frame":
                why = "the frame imports only itself"
            elif home in CONCEPTS and there in STAGES:
                why = "a concept package never imports a stage"
            elif home in CONCEPTS:
                why = "" if there in CONCEPTS[home] else f"{home} may import {list(CONCEPTS[home]) or 'no concept package'}"
            elif home in STAGES:
                why = "" if there in CONCEPTS else "a stage imports concept packages, never another stage or a tool"
            elif home == "dev":
                why = ""
            else:
                why = f"vcot.{home} is in no layer: add it to CONCEPTS or STAGES"
            if why:
                found.append(f"{module} -> {target} ({why})")
    return found


def test_imports_run_down_the_layers() -> None:
    assert layer_violations(import_graph()) == []


def test_a_planted_stage_import_in_a_concept_package_is_caught() -> None:
    graph = import_graph()
    graph["vcot.grounding.boxes"] = {*graph["vcot.grounding.boxes"], "vcot.train.sft"}
    graph["vcot.io.storage"] = {*graph["vcot.io.storage"], "vcot.grounding.boxes"}
    graph["vcot.log"] = {*graph["vcot.log"], "vcot.io.storage"}
    assert layer_violations(graph) == [
        "vcot.grounding.boxes -> vcot.train.sft (a concept package never imports a stage)",
        "vcot.io.storage -> vcot.grounding.boxes (io may import no concept package)",
        "vcot.log -> vcot.io.storage (the frame imports only itself)",
    ]


def test_every_package_of_vcot_has_a_layer() -> None:
    packages = {path.parent.name for path in (REPO_ROOT / "vcot").glob("*/__init__.py")}
    assert packages == {*CONCEPTS, *STAGES, "dev"}


def test_nothing_outside_the_dev_tools_imports_them() -> None:
    def is_dev(module: str) -> bool:
        return any(module == tool or module.startswith(tool + ".") for tool in DEV_TOOLS)

    offenders = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if is_dev(target) and not is_dev(module)
    ]
    assert offenders == []


def test_no_import_cycle_in_vcot() -> None:
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            # a package's __init__ importing its own submodules is how packages re-export, not a cycle
            if module.startswith(target + "."):
                continue
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target] if target in path else [module, target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_training_and_in_process_evaluation_need_no_distill_extra() -> None:
    """The train extra alone (``pip install -e '.[train]'``) trains, evaluates and exports: only a teacher, a judge
    or a served model needs the openai package, and asking for one without it says what to install."""
    import subprocess
    import sys

    script = (
        "import sys; sys.modules['openai'] = None\n"
        "import jobs.train, jobs.evaluate, jobs.export\n"
        "from vcot.errors import ConfigError\n"
        "from vcot.llm.chat import make_client\n"
        "try:\n"
        "    make_client(None, 'key', 1.0)\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pip install -e '.[distill]'" in done.stdout
