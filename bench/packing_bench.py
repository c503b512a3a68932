"""Padded batches vs length-grouped batches vs packed rows (recipe ``packing``), SFT on the tiny Qwen2.5-VL, CPU.

The records are a mix like a VisCoT + LLaVA-CoT mixture (``bench.train_bench.write_records``): 70% short grounded
answers (one box and the answer, as VisCoT's) and 30% long rationales (8-24 sentences before the box, as
LLaVA-CoT's), on images of 96-448 px (so image tokens differ too). Each mode trains ``tiny-cpu`` for ``--steps``
steps on the same tokenized rows and seed, with about the same tokens a step: ``--batch`` rows padded to the longest
(``padded``), the same with ``group_by_length`` (``grouped``), and ``packed, R x N``: R packed rows of N = ``--batch``
x the mean row length / R tokens, for each R of ``--pack-rows``. Reports the trainer's tokens/s (non-padding input
tokens, as every run's throughput counts them), each run's ``padding_share``, the final eval loss of each mode (the
same task: where the loss ends), and the fastest of ``--repeats`` interleaved runs.

    PYTHONPATH=. .venv/bin/python bench/packing_bench.py [--records 400] [--steps 40] [--batch 8] [--repeats 2]
        [--pack-rows 1,2,3] [--output results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.train_bench import write_records
from vcot.dev.tiny_model import build_tiny_model
from vcot.tokenize import TokenizeConfig, tokenize
from vcot.train import TrainConfig, train
from vcot.train.data import TokenizedDataset


def run(tokens: str, model: Path, output: Path, steps: int, settings: str) -> dict[str, Any]:
    """One SFT run; its throughput, its training loss curve (8 points: the mean since the last) and final eval loss."""
    every = max(1, steps // 8)
    common = f"max_steps={steps},num_train_epochs=1000,logging_steps={every},save_steps={steps},eval_steps={steps}"
    train(TrainConfig(data=tokens, model=str(model), output=str(output), recipe="tiny-cpu", set=f"{common},{settings}",
                      threads=1))  # fmt: skip
    metrics = json.loads((output / "metrics.json").read_text())
    throughput = metrics["throughput"]
    curve = {entry["step"]: round(entry["loss"], 3) for entry in metrics["log_history"] if "loss" in entry}
    return {"tokens_per_second": throughput["tokens_per_second"], "tokens": throughput["tokens"],
            "padding_share": throughput["padding_share"], "seconds": throughput["wall_seconds"],
            "eval_loss": round(metrics["eval"]["eval_loss"], 4), "loss_curve": curve}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pack-rows", default="1,2,3", help="packed rows a step (each of batch x mean / rows tokens)")
    parser.add_argument("--output", type=Path, default=Path("packing_bench.json"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="packing-bench-"))
    model = build_tiny_model(work / "model", size="local")
    tokens = str(work / "tokens")
    records = write_records(work / "records", args.records, max_side=448, long_share=0.3)  # the mixture's lengths
    tokenize(TokenizeConfig(input=[records], output=tokens, model=str(model)))
    rows = TokenizedDataset(tokens, "train")
    lengths = rows.lengths()
    capacity = round(args.batch * sum(lengths) / len(lengths))
    modes = {
        "padded": f"per_device_train_batch_size={args.batch}",
        "grouped": f"per_device_train_batch_size={args.batch},group_by_length=true",
        **{f"packed, {rows} x {capacity // rows}": f"per_device_train_batch_size={rows},packing={capacity // rows}"
           for rows in (int(value) for value in args.pack_rows.split(","))},
    }  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for repeat in range(args.repeats):  # interleaved: a load change on the shared machine hits every mode
        for mode, settings in modes.items():
            runs[mode].append(run(tokens, model, work / f"{mode}-{repeat}", args.steps, settings))
    best = {mode: max(found, key=lambda r: r["tokens_per_second"]) for mode, found in runs.items()}
    result = {
        "when": datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "records": args.records, "steps": args.steps, "batch": args.batch, "packing": capacity,
        "row_tokens": {"min": min(lengths), "mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths)},
        "runs": runs, "best": best,
        "over_padded": {mode: round(found["tokens_per_second"] / best["padded"]["tokens_per_second"], 2)
                        for mode, found in best.items()},
        "over_grouped": {mode: round(found["tokens_per_second"] / best["grouped"]["tokens_per_second"], 2)
                         for mode, found in best.items()},
    }  # fmt: skip
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"rows of {result['row_tokens']} tokens\n")
    print("| mode | tokens/s | vs padded | vs grouped | padding share | eval loss | seconds |")
    print("|---|---|---|---|---|---|---|")
    for mode, found in best.items():
        ratios = f"{result['over_padded'][mode]}x | {result['over_grouped'][mode]}x"
        print(f"| {mode} | {found['tokens_per_second']} | {ratios} | {found['padding_share']} | {found['eval_loss']} | "
              f"{found['seconds']} |")  # fmt: skip
    steps = list(next(iter(best.values()))["loss_curve"])
    print(f"\ntraining loss (mean since the last point) at steps {steps}:")
    for mode, found in best.items():
        print(f"  {mode}: {list(found['loss_curve'].values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
