"""The table bench/gpu_pipeline.sh prints at its end: each run's steps and last loss, each evaluation's scores, and
the checks between runs (data parallel vs FSDP2 loss, a resumed run vs an uninterrupted one).

``python bench/gpu_pipeline_summary.py RUN_FOLDER [--json OUTPUT]`` (the script's ``$WORK/run``); missing runs are
shown as such.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

TRAIN_RUNS = ("sft", "grpo", "rgfn", "dp", "fsdp", "resume", "qwen3")
EVALUATIONS = ("sft-eval", "export-eval", "grpo-eval", "rgfn-eval", "qwen3-eval")


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def losses(metrics: dict[str, Any]) -> dict[int, float]:
    """The logged training loss by step.

    >>> losses({"log_history": [{"step": 10, "loss": 2.0}, {"step": 10, "eval_loss": 1.0}, {"step": 20, "loss": 1.5}]})
    {10: 2.0, 20: 1.5}
    """
    return {entry["step"]: entry["loss"] for entry in metrics.get("log_history", []) if "loss" in entry}


def largest_gap(a: dict[int, float], b: dict[int, float]) -> tuple[float, int]:
    """The largest relative difference of two loss curves over their common steps, and how many steps they share.

    >>> largest_gap({10: 2.0, 20: 1.0}, {10: 2.0, 20: 1.1, 30: 0.5})
    (0.1, 2)
    """
    steps = sorted(set(a) & set(b))
    gaps = [abs(a[s] - b[s]) / max(abs(a[s]), 1e-12) for s in steps]
    return (round(max(gaps), 6) if gaps else float("nan")), len(steps)


def train_row(name: str, run: Path) -> str:
    metrics, manifest = _read(run / "metrics.json"), _read(run / "_SUCCESS")
    if metrics is None:
        return f"| {name} | not committed | | | |"
    curve = losses(metrics)
    last = f"{curve[max(curve)]:.4f}" if curve else ""
    stats = (manifest or {}).get("stats", {})
    recipe = (manifest or {}).get("config", {}).get("recipe_values", {})
    runtime = metrics.get("train", {}).get("train_runtime", "")
    where = f"world {stats.get('world_size', '?')}, {recipe.get('sharding') or 'data parallel'}"
    return f"| {name} | {metrics.get('global_step')} | {last} | {runtime} | {where} |"


def eval_row(name: str, evaluation: Path) -> list[str]:
    metrics = _read(evaluation / "metrics.json")
    if metrics is None:
        return [f"| {name} | not committed | | | |"]
    rows = [_scores(name, metrics["overall"], metrics["details"].get("timing", {}).get("seconds", ""))]
    for style, scored in metrics.get("prompt_styles", {}).get("metrics", {}).items():
        rows.append(_scores(f"{name} ({style})", scored["overall"], ""))
    return rows


def _scores(name: str, overall: dict[str, Any], seconds: Any) -> str:
    return (f"| {name} | {overall.get('samples', overall.get('grounded_samples'))} | {overall['mean_iou']:.3f} | "
            f"{overall['acc_at_50']:.3f} | {overall['answer_accuracy']:.3f} | {seconds} |")


def summary(root: Path) -> dict[str, list[str]]:
    """The tables' rows and the checks' lines."""
    curves = {name: losses(_read(root / name / "metrics.json") or {}) for name in ("dp", "fsdp", "resume")}
    checks = []
    for a, b in (("dp", "fsdp"), ("fsdp", "resume")):
        gap, shared = largest_gap(curves[a], curves[b])
        checks.append(f"{a} vs {b}: largest relative loss gap {gap} over {shared} logged steps")
    return {
        "train": [train_row(name, root / name) for name in TRAIN_RUNS],
        "evaluations": [row for name in EVALUATIONS for row in eval_row(name, root / name)],
        "checks": checks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_folder", type=Path, help="bench/gpu_pipeline.sh's $WORK/run")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    result = summary(args.run_folder)
    print("| run | steps | last logged loss | train s | world |\n|---|---|---|---|---|")
    print("\n".join(result["train"]))
    print("\n| evaluation | records | mean IoU | Acc@0.5 | answers | s |\n|---|---|---|---|---|---|")
    print("\n".join(result["evaluations"]))
    print("\n" + "\n".join(result["checks"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
