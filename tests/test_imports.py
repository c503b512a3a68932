"""The package's import rules, read from the source: no stage imports another stage, no stage or library module
imports a development tool, and no import cycle in vcot/ (function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGES = ("convert", "distill", "tokenize", "train", "evaluate", "export")
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


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_no_stage_imports_another_stage() -> None:
    crossings = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if _stage(module) and _stage(target) and _stage(module) != _stage(target)
    ]
    assert crossings == []


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
