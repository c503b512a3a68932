"""Do GRPO and RGFN help? The local task's held-out scores of SFT, SFT + GRPO, SFT trained on for the same extra
time (the fair comparison) and SFT + RGFN (greedy, BiN, best-of-N), over several seeds, on CPU.

It runs the shipped entrypoints as a user would (``python -m jobs.train`` / ``jobs.evaluate`` with the shipped
recipes) on the local S3 server, after ``make local-train`` (its SFT run: ``RUN``) and ``make local-rgfn``'s SFT
(the three-turn SFT: ``RGFN_RUN``; only its ``train/`` and ``eval-sft/`` are read). Per seed:

- GRPO: ``tiny-cpu-grpo`` with ``seed=S`` from ``RUN/train/adapter``, then the same evaluation as ``make
  local-train``'s (the full val split, greedy, 96 new tokens);
- SFT for the same extra time: ``tiny-cpu`` continued from the same adapter (``--init-adapter``) at
  ``--sft-learning-rate`` with a cosine decay, for as many steps as SFT takes in the GRPO run's training time
  (the steps per second of ``RUN/train``'s own throughput), evaluated the same way;
- RGFN: ``tiny-cpu-rgfn`` with ``seed=S`` from ``RGFN_RUN/train/adapter``, evaluated with ``--bin N``.

Outputs go under ``--output`` (one folder per method and seed); reruns skip what is committed. Prints a markdown
table and writes ``results.json`` there. The machine, its load and every command are recorded.

    PYTHONPATH=. .venv/bin/python bench/rl_bench.py --seeds 42,1,2 [--run s3://vcot/local/qwen2.5-vl-norm1000]
        [--rgfn-run s3://vcot/local/qwen2.5-vl-norm1000-rgfn] [--output s3://vcot/bench/rl] [--bin 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

from vcot.dev.local_s3 import LocalS3
from vcot.io import manifest, storage

MODEL = ".cache/tiny-qwen2.5-vl-local"
KEYS = ("first_object_iou", "acc_at_50", "answer_accuracy")


def run(argv: list[str], log: str) -> float:
    """Run one entrypoint (its log to ``log``); returns its wall seconds."""
    start = time.monotonic()
    with open(log, "w") as handle:
        subprocess.run([sys.executable, "-m", *argv], check=True, stdout=handle, stderr=subprocess.STDOUT)
    return time.monotonic() - start


def evaluated(adapter: str, records: str, output: str, log: str, bin_n: int = 0) -> dict[str, Any]:
    """The evaluation ``make local-train`` runs, of ``adapter``; with ``bin_n`` BiN and best-of-N beside greedy."""
    if not manifest.is_committed(output):
        argv = ["jobs.evaluate", "--model", MODEL, "--adapter", adapter, "--data", records, "--output", output,
                "--max-new-tokens", "96", "--threads", "1"] + (["--bin", str(bin_n)] if bin_n else [])  # fmt: skip
        run(argv, log)
    return storage.read_json(storage.join(output, "metrics.json"))


def scores(metrics: dict[str, Any], style: str | None = None) -> dict[str, float]:
    """``KEYS`` of an evaluation, overall or of one prompt style (``bin``, ``best_of_n``)."""
    overall = metrics["overall"] if style is None else metrics["prompt_styles"]["metrics"][style]["overall"]
    return {key: float(overall[key]) for key in KEYS}


def trained(argv: list[str], output: str, log: str) -> float:
    """Train unless committed; the run's training seconds (its throughput's wall time)."""
    if not manifest.is_committed(output):
        run(["jobs.train", *argv, "--output", output, "--threads", "1"], log)
    return float(storage.read_json(storage.join(output, "metrics.json"))["throughput"]["wall_seconds"])


def seed_results(args: argparse.Namespace, seed: int, logs: str) -> dict[str, dict[str, float]]:
    records, sft = f"{args.run}/records", f"{args.run}/train/adapter"
    out = f"{args.output}/seed-{seed}"
    grpo_s = trained(["--data", records, "--model", MODEL, "--init-adapter", sft, "--recipe", "tiny-cpu-grpo",
                      "--set", f"seed={seed}"], f"{out}/grpo", f"{logs}/grpo-{seed}.log")  # fmt: skip
    grpo_eval = evaluated(f"{out}/grpo/adapter", records, f"{out}/grpo-eval", f"{logs}/grpo-eval-{seed}.log")
    rows = {"GRPO": scores(grpo_eval)}
    rows["GRPO"]["train_s"] = grpo_s

    sft_rate = storage.read_json(f"{args.run}/train/metrics.json")["throughput"]
    steps = max(1, round(grpo_s * sft_rate["steps"] / sft_rate["wall_seconds"]))
    extra = f"seed={seed},max_steps={steps},learning_rate={args.sft_learning_rate},generation_eval_samples=0"
    extra_s = trained(["--data", f"{args.run}/tokenized", "--model", MODEL, "--init-adapter", sft, "--recipe",
                       "tiny-cpu", "--set", extra], f"{out}/sft-extra", f"{logs}/sft-extra-{seed}.log")  # fmt: skip
    rows["SFT, same extra time"] = scores(evaluated(f"{out}/sft-extra/adapter", records, f"{out}/sft-extra-eval",
                                                    f"{logs}/sft-extra-eval-{seed}.log"))  # fmt: skip
    rows["SFT, same extra time"]["train_s"] = extra_s

    if args.rgfn_run:
        rgfn_s = trained(["--data", records, "--model", MODEL, "--init-adapter", f"{args.rgfn_run}/train/adapter",
                          "--recipe", "tiny-cpu-rgfn", "--set", f"seed={seed}"], f"{out}/rgfn",
                         f"{logs}/rgfn-{seed}.log")  # fmt: skip
        bin_eval = evaluated(f"{out}/rgfn/adapter", records, f"{out}/rgfn-eval", f"{logs}/rgfn-eval-{seed}.log",
                             args.bin)
        rows["RGFN greedy"] = {**scores(bin_eval), "train_s": rgfn_s}
        rows[f"RGFN BiN (N={args.bin})"] = scores(bin_eval, "bin")
        rows[f"RGFN best-of-{args.bin}"] = scores(bin_eval, "best_of_n")
    return rows


def table(start: dict[str, dict[str, float]], per_seed: dict[int, dict[str, dict[str, float]]]) -> list[str]:
    """Markdown: each method's mean (min-max over seeds) per metric, its start beside it."""
    lines = ["| run | first-object IoU | Acc@0.5 | answers | train s |", "|---|---|---|---|---|"]
    for name, values in start.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[k]:.3f}" for k in KEYS) + " | |")
    methods = list(next(iter(per_seed.values())))
    for method in methods:
        cells = []
        for key in (*KEYS, "train_s"):
            found = [rows[method][key] for rows in per_seed.values() if key in rows[method]]
            if not found:
                cells.append("")
            elif key == "train_s":
                cells.append(f"{statistics.mean(found):.0f}")
            else:
                cells.append(f"{statistics.mean(found):.3f} ({min(found):.3f}-{max(found):.3f})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="s3://vcot/local/qwen2.5-vl-norm1000", help="make local-train's LOCAL_RUN")
    parser.add_argument("--rgfn-run", default="s3://vcot/local/qwen2.5-vl-norm1000-rgfn",
                        help="make local-rgfn's LOCAL_RGFN_RUN (its train/ and eval-sft/); empty: no RGFN rows")
    parser.add_argument("--output", default="s3://vcot/bench/rl", help="where the runs go (reruns skip them)")
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--bin", type=int, default=5, help="BiN's N (and best-of-N's)")
    parser.add_argument("--sft-learning-rate", type=float, default=1e-3, help="the extra SFT's peak rate (cosine)")
    parser.add_argument("--logs", default=".cache/rl-bench", help="local folder for each command's log")
    args = parser.parse_args(argv)
    os.environ.update(LocalS3.from_env().env())
    os.makedirs(args.logs, exist_ok=True)
    start = {"SFT (make local-train)": scores(storage.read_json(f"{args.run}/eval/metrics.json"))}
    if args.rgfn_run:
        start["three-turn SFT (make local-rgfn)"] = scores(storage.read_json(f"{args.rgfn_run}/eval-sft/metrics.json"))
    per_seed = {int(s): seed_results(args, int(s), args.logs) for s in args.seeds.split(",")}
    lines = table(start, per_seed)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    results = {"start": start, "seeds": per_seed, "machine": machine, "args": vars(args)}
    storage.write_json(f"{args.output}/results.json", results)
    print("\n".join(lines))
    print(json.dumps(machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
