"""Do GRPO and RGFN help? The local task's held-out scores of SFT, SFT + GRPO, SFT trained on for the same extra
time (the fair comparison) and SFT + RGFN (greedy, BiN, best-of-N), over several seeds, on CPU.

It runs the shipped entrypoints as a user would (``python -m jobs.train`` / ``jobs.evaluate`` with the shipped
recipes) on the local S3 server, from the SFT run ``make local-train`` leaves (``--run``) and the three-turn SFT run
``make local-rgfn`` trains (``--rgfn-run``: its ``train/`` and ``eval-sft/``); ``--prepare N`` makes both first when
they are missing, the way those targets do, on N synthetic records. Per seed:

- GRPO: ``tiny-cpu-grpo`` with ``seed=S`` from ``RUN/train/adapter``, then the evaluation ``make local-train`` runs
  (the full val split, greedy, 96 new tokens: ``--max-new-tokens``);
- SFT for the same extra time: ``tiny-cpu`` continued from the same adapter (``--init-adapter``) at
  ``--sft-learning-rate`` with a cosine decay, for as many steps as SFT makes in the GRPO run's training time (the
  steps per second of ``RUN/train``'s own throughput), evaluated the same way;
- RGFN: ``tiny-cpu-rgfn`` with ``seed=S`` from ``RGFN_RUN/train/adapter``, evaluated with ``--bin N``.

With ``--ood N``, the SFT start and each seed's GRPO and extra-SFT adapters are also evaluated on N records the
local task never shows (``vcot.dev.synthetic --max-objects 2``: about half the images hold a second shape, a
distractor the question does not name; every record, ``--split all``), since better generalization is why the
field uses RL for grounding.

Outputs go under ``--output`` (a folder per seed and method); reruns skip what is committed. Prints a markdown table
(and the out-of-distribution one) and writes ``results.json`` there, with the machine and its load. ``--set`` adds
recipe overrides to every run (the smoke test's tiny sizes).

    PYTHONPATH=. .venv/bin/python bench/rl_bench.py --seeds 42,1,2 [--run s3://vcot/local/qwen2.5-vl-norm1000]
        [--rgfn-run s3://vcot/local/qwen2.5-vl-norm1000-rgfn] [--output s3://vcot/bench/rl] [--bin 5] [--prepare 2250]
        [--ood 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

from vcot.dev.local_s3 import LocalS3
from vcot.io import manifest, storage

KEYS = ("first_object_iou", "acc_at_50", "answer_accuracy")
THREE_TURN_SFT_SET = "num_train_epochs=15"
"""``make local-rgfn``'s ``LOCAL_RGFN_SFT_SET``: its three-turn SFT trains 15 epochs, not ``tiny-cpu``'s 10."""


def run(argv: list[str], log: str) -> None:
    """Run one module (``jobs.train``, ``vcot.dev.synthetic``, ...) with its output in ``log``."""
    with open(log, "w") as handle:
        subprocess.run([sys.executable, "-m", *argv], check=True, stdout=handle, stderr=subprocess.STDOUT)


def with_set(argv: list[str], extra: str) -> list[str]:
    """``argv`` of ``jobs.train`` with ``extra`` recipe overrides appended to its ``--set`` (or as one)."""
    if not extra:
        return argv
    if "--set" in argv:
        at = argv.index("--set") + 1
        return [*argv[:at], f"{argv[at]},{extra}", *argv[at + 1 :]]
    return [*argv, "--set", extra]


def trained(args: argparse.Namespace, argv: list[str], output: str, log: str) -> float:
    """Train unless committed; the run's training seconds (its throughput's wall time)."""
    if not manifest.is_committed(output):
        command = ["jobs.train", *argv, "--model", args.model, "--output", output, "--threads", "1"]
        run(with_set(command, args.set), log)
    return float(storage.read_json(storage.join(output, "metrics.json"))["throughput"]["wall_seconds"])


def evaluated(
    args: argparse.Namespace, adapter: str, output: str, log: str, bin_n: int = 0, data: str = ""
) -> dict[str, Any]:
    """The evaluation ``make local-train`` runs, of ``adapter``; with ``bin_n`` BiN and best-of-N beside greedy; with
    ``data``, every record of those records instead of the run's val split."""
    if not manifest.is_committed(output):
        argv = ["jobs.evaluate", "--model", args.model, "--adapter", adapter, "--data", data or f"{args.run}/records",
                "--output", output, "--max-new-tokens", str(args.max_new_tokens), "--threads", "1"]
        run(argv + (["--bin", str(bin_n)] if bin_n else []) + (["--split", "all"] if data else []), log)
    return storage.read_json(storage.join(output, "metrics.json"))


def ood_records(args: argparse.Namespace) -> str:
    """``--ood`` records, made once: the local task's images with up to two shapes (it trains on one)."""
    records = f"{args.output}/ood/records"
    if not manifest.is_committed(records):
        synthetic = f"{args.output}/ood/synthetic"
        run(["vcot.dev.synthetic", synthetic, "--num-records", str(args.ood), "--max-objects", "2", "--seed", "7"],
            f"{args.logs}/ood-synthetic.log")  # fmt: skip
        run(["jobs.convert", "--source", "viscot", "--input", synthetic, "--output", records],
            f"{args.logs}/ood-convert.log")
    return records


def ood_results(args: argparse.Namespace, seeds: list[int]) -> tuple[dict[str, Any], dict[int, Any]]:
    """The SFT start's and each seed's GRPO and extra-SFT adapters' scores on the ``--ood`` records."""
    records, logs = ood_records(args), args.logs
    sft = f"{args.run}/train/adapter"
    start = evaluated(args, sft, f"{args.output}/ood/sft-eval", f"{logs}/ood-sft.log", data=records)
    per_seed = {}
    for seed in seeds:
        out = f"{args.output}/seed-{seed}"
        grpo = evaluated(args, f"{out}/grpo/adapter", f"{out}/grpo-ood", f"{logs}/ood-grpo-{seed}.log", data=records)
        extra = evaluated(args, f"{out}/sft-extra/adapter", f"{out}/sft-extra-ood", f"{logs}/ood-sft-extra-{seed}.log",
                          data=records)  # fmt: skip
        per_seed[seed] = {"GRPO": scores(grpo), "SFT, same extra time": scores(extra)}
    return {"SFT (make local-train)": scores(start)}, per_seed


def scores(metrics: dict[str, Any], style: str | None = None) -> dict[str, float]:
    """``KEYS`` of an evaluation, overall or of one prompt style (``bin``, ``best_of_n``)."""
    overall = metrics["overall"] if style is None else metrics["prompt_styles"]["metrics"][style]["overall"]
    return {key: float(overall[key]) for key in KEYS}


def prepare(args: argparse.Namespace) -> None:
    """``make local-train``'s chain and ``make local-rgfn``'s three-turn SFT, where they are not committed."""
    run_, logs = args.run, args.logs
    run(["vcot.dev.tiny_model", args.model, "--size", args.size, "--keep-current"], f"{logs}/tiny-model.log")
    if not manifest.is_committed(f"{run_}/records"):
        run(["vcot.dev.synthetic", f"{run_}/synthetic", "--num-records", str(args.prepare)], f"{logs}/synthetic.log")
        run(["jobs.convert", "--source", "viscot", "--input", f"{run_}/synthetic", "--output", f"{run_}/records"],
            f"{logs}/convert.log")  # fmt: skip
    for root, layout in ((run_, "two_turn"), (args.rgfn_run, "rationale_turn")):
        if not root:
            continue
        if not manifest.is_committed(f"{root}/tokenized"):
            run(["jobs.tokenize", "--input", f"{run_}/records", "--output", f"{root}/tokenized", "--model", args.model,
                 "--layout", layout], f"{logs}/tokenize-{layout}.log")  # fmt: skip
        sft = ["--data", f"{root}/tokenized", "--recipe", "tiny-cpu"]
        sft += ["--set", THREE_TURN_SFT_SET] if layout == "rationale_turn" else []
        trained(args, sft, f"{root}/train", f"{logs}/sft-{layout}.log")
        start = "eval" if layout == "two_turn" else "eval-sft"
        evaluated(args, f"{root}/train/adapter", f"{root}/{start}", f"{logs}/eval-{layout}.log")


def seed_results(args: argparse.Namespace, seed: int) -> dict[str, dict[str, float]]:
    records, sft, logs = f"{args.run}/records", f"{args.run}/train/adapter", args.logs
    out = f"{args.output}/seed-{seed}"
    grpo = ["--data", records, "--init-adapter", sft, "--recipe", "tiny-cpu-grpo", "--set", f"seed={seed}"]
    grpo_s = trained(args, grpo, f"{out}/grpo", f"{logs}/grpo-{seed}.log")
    grpo_eval = evaluated(args, f"{out}/grpo/adapter", f"{out}/grpo-eval", f"{logs}/grpo-eval-{seed}.log")
    rows = {"GRPO": {**scores(grpo_eval), "train_s": grpo_s}}

    sft_rate = storage.read_json(f"{args.run}/train/metrics.json")["throughput"]
    steps = max(1, round(grpo_s * sft_rate["steps"] / sft_rate["wall_seconds"]))
    extra = f"seed={seed},max_steps={steps},learning_rate={args.sft_learning_rate},generation_eval_samples=0"
    extra_s = trained(args, ["--data", f"{args.run}/tokenized", "--init-adapter", sft, "--recipe", "tiny-cpu",
                             "--set", extra], f"{out}/sft-extra", f"{logs}/sft-extra-{seed}.log")  # fmt: skip
    extra_eval = evaluated(args, f"{out}/sft-extra/adapter", f"{out}/sft-extra-eval", f"{logs}/sft-extra-e-{seed}.log")
    rows["SFT, same extra time"] = {**scores(extra_eval), "train_s": extra_s}

    if args.rgfn_run:
        rgfn_s = trained(args, ["--data", records, "--init-adapter", f"{args.rgfn_run}/train/adapter", "--recipe",
                                "tiny-cpu-rgfn", "--set", f"seed={seed}"], f"{out}/rgfn", f"{logs}/rgfn-{seed}.log")
        bin_eval = evaluated(args, f"{out}/rgfn/adapter", f"{out}/rgfn-eval", f"{logs}/rgfn-eval-{seed}.log", args.bin)
        rows["RGFN greedy"] = {**scores(bin_eval), "train_s": rgfn_s}
        rows[f"RGFN BiN (N={args.bin})"] = scores(bin_eval, "bin")
        rows[f"RGFN best-of-{args.bin}"] = scores(bin_eval, "best_of_n")
    return rows


def table(start: dict[str, dict[str, float]], per_seed: dict[int, dict[str, dict[str, float]]]) -> list[str]:
    """Markdown: each method's mean (min-max over seeds) per metric, the starts above them.

    >>> table({"SFT": {"first_object_iou": 0.5, "acc_at_50": 0.6, "answer_accuracy": 0.9}},
    ...       {1: {"GRPO": {"first_object_iou": 0.52, "acc_at_50": 0.6, "answer_accuracy": 0.9, "train_s": 300.0}}})[-1]
    '| GRPO | 0.520 (0.520-0.520) | 0.600 (0.600-0.600) | 0.900 (0.900-0.900) | 300 |'
    """
    lines = ["| run | first-object IoU | Acc@0.5 | answers | train s |", "|---|---|---|---|---|"]
    for name, values in start.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[k]:.3f}" for k in KEYS) + " | |")
    for method in next(iter(per_seed.values())):
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
    parser.add_argument("--max-new-tokens", type=int, default=96, help="evaluation's, as make local-train's")
    parser.add_argument("--sft-learning-rate", type=float, default=1e-3, help="the extra SFT's peak rate (cosine)")
    parser.add_argument("--model", default=".cache/tiny-qwen2.5-vl-local", help="the tiny model (make tiny-model)")
    parser.add_argument("--size", default="local", choices=("local", "test"), help="its size, for --prepare")
    parser.add_argument("--prepare", type=int, default=0, help="make the SFT runs first when missing, on N records")
    parser.add_argument("--set", default="", help="recipe overrides added to every run (key=value,...)")
    parser.add_argument("--logs", default=".cache/rl-bench", help="local folder for each command's log")
    parser.add_argument("--json", default="", help="also write the results to this local file")
    parser.add_argument("--ood", type=int, default=0, help="also score on N out-of-distribution records (0: no)")
    args = parser.parse_args(argv)
    if any(storage.is_s3(uri) for uri in (args.run, args.rgfn_run, args.output) if uri):
        os.environ.update(LocalS3.from_env().env())  # the local S3 server's endpoint and keys (make s3-up)
    os.makedirs(args.logs, exist_ok=True)
    started = time.monotonic()
    if args.prepare:
        prepare(args)
    start = {"SFT (make local-train)": scores(storage.read_json(f"{args.run}/eval/metrics.json"))}
    if args.rgfn_run:
        start["three-turn SFT (make local-rgfn)"] = scores(storage.read_json(f"{args.rgfn_run}/eval-sft/metrics.json"))
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed = {seed: seed_results(args, seed) for seed in seeds}
    ood = ood_results(args, seeds) if args.ood else None
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
               "wall_seconds": round(time.monotonic() - started)}  # fmt: skip
    results = {"start": start, "seeds": per_seed, "machine": machine, "args": vars(args)}
    if ood:
        results["ood"] = {"start": ood[0], "seeds": ood[1]}
    storage.write_json(f"{args.output}/results.json", results)
    if args.json:
        storage.write_json(args.json, results)
    print("\n".join(table(start, per_seed)))
    if ood:
        print(f"\nOut of distribution ({args.ood} records, up to two shapes):")
        print("\n".join(table(*ood)))
    print(machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
