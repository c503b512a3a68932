"""Data parallel (DDP) against sharded (FSDP2) training on 2 gloo ranks of a CPU: steps/s, memory per rank, and
checkpoint save and resume, side by side on the same model, rows and global batch.

Each run is ``torchrun --nproc-per-node 2 -m jobs.train`` on a true-width slice of a published model
(``vcot.dev.model_slice``: every width real, two decoder layers) with that model's LoRA recipe on a 16-bit base
(``quantize=null``; ``sharding=fsdp2`` for FSDP2), or ``tiny`` with ``tiny-cpu`` for a smoke run. Measured
from outside the ranks and from their JSON logs:

- **step seconds**: the median interval between consecutive ``train_log`` events (one per step; the save step's
  interval left out by the median);
- **RSS per rank**: each rank's resident memory (``/proc/<pid>/status`` VmRSS, sampled every 0.2 s), the largest
  sample between the first and the last training step (after loading: rank 0 of a sharded run holds the whole
  model only while it sends the shards), and ``VmHWM``, the peak of the whole run, loading included;
- **checkpoint save seconds**: from the save step's ``train_log`` to its ``checkpoint_synced`` (the rows are all
  train rows: no evaluation between them): the Trainer's save and the upload to local storage;
- **resume seconds**: the run is stopped by SIGTERM on rank 1 (a preemption: a checkpoint, then exit) and the same
  command run again, from its ``resume_from`` event to its first ``train_log``, less one step: loading the
  checkpoint and the first batch.

Runs alternate (DDP, FSDP2, DDP, ...) so the machine's load touches both; the fastest repeat is reported.

    PYTHONPATH=. .venv/bin/python bench/sharding_bench.py [--model qwen2.5-vl-3b] [--steps 6] [--repeats 2]
        [--output results.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.plan_bench import model_folder, write_records
from vcot.dev.torchrun_workers import rank_pids
from vcot.tokenize import TokenizeConfig, tokenize
from vcot.train.distributed import free_port
from vcot.train.recipe import recipe_names

REPO_ROOT = Path(__file__).resolve().parents[1]
MODES = {"ddp": "", "fsdp2": ",sharding=fsdp2"}
BASE_SET = ("optim=adamw_torch,generation_eval_samples=0,num_train_epochs=100,logging_steps=1,global_batch_size=0,"
            "gradient_accumulation_steps=1,per_device_train_batch_size=1,per_device_eval_batch_size=1")  # fmt: skip
"""The same global batch (2 ranks x 1 row) and a 32-bit AdamW in both modes (bitsandbytes' 8-bit one is not sharded)."""


def recipe_for(model: str) -> tuple[str, str]:
    """The recipe and its overrides: the slice's own LoRA recipe on a 16-bit base (FSDP2 shards no 4-bit one);
    ``tiny-cpu`` for the tiny model.

    >>> recipe_for("qwen2.5-vl-3b"), recipe_for("qwen2.5-vl-72b")
    (('qwen2.5-vl-3b-qlora', ',quantize=null'), ('qwen2.5-vl-72b-lora', ''))
    """
    if model == "tiny":
        return "tiny-cpu", ""
    if f"{model}-qlora" in recipe_names():
        return f"{model}-qlora", ",quantize=null"
    if f"{model}-lora" in recipe_names():
        return f"{model}-lora", ""
    raise SystemExit(f"no LoRA recipe for {model}: use a published name with a shipped -qlora or -lora recipe, or tiny")


def memory_kib(pid: int) -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of ``pid`` in KiB, or zeros once it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except OSError:
        return 0, 0
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def launch(data: str, model: Path, output: Path, recipe: str, settings: str, stop_after: int = 0
           ) -> tuple[list[dict[str, Any]], dict[int, list[tuple[float, int, int]]]]:  # fmt: skip
    """One 2-rank run: its JSON log events (with their time) and each rank's memory samples; ``stop_after``: SIGTERM
    to rank 1 once that step is logged (a preemption: the ranks save a checkpoint and stop)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "VCOT_LOG_FORMAT": "json",
           "CUDA_VISIBLE_DEVICES": ""}  # gloo ranks on the CPU, on a GPU machine too  # fmt: skip
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
            "-m", "jobs.train", "--data", data, "--model", str(model), "--output", str(output),
            "--recipe", recipe, "--threads", "1", "--set", settings]  # fmt: skip
    output_pipe: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    process = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, **output_pipe)
    samples: dict[int, list[tuple[float, int, int]]] = {0: [], 1: []}

    def sample() -> None:
        while process.poll() is None:
            for rank, pid in rank_pids(process.pid).items():
                rss, hwm = memory_kib(pid)
                if rss:
                    samples[rank].append((time.time(), rss, hwm))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    events: list[dict[str, Any]] = []
    tail: list[str] = []
    stopped = False
    assert process.stdout is not None
    for line in process.stdout:
        tail = [*tail[-40:], line]
        if line.startswith("{"):
            event = json.loads(line)
            event["_seen"] = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
            events.append(event)
            if stop_after and event["event"] == "train_log" and event.get("step") == stop_after:
                os.kill(rank_pids(process.pid)[1], signal.SIGTERM)
                stopped = True
    sampler.join()
    if process.wait() != (1 if stopped else 0) or stopped != bool(stop_after):
        raise RuntimeError(f"the {settings} run failed:\n" + "".join(tail))
    return events, samples


def measure(data: str, model: Path, recipe: tuple[str, str], work: Path, mode: str, steps: int) -> dict[str, Any]:
    """A run stopped (SIGTERM) a step before its end, after its first checkpoint; then the same command resuming it."""
    save = steps // 2
    name, overrides = recipe
    settings = f"{BASE_SET},max_steps={steps},save_steps={save},eval_steps={save}{overrides}{MODES[mode]}"
    events, samples = launch(data, model, work / "run", name, settings, stop_after=steps - 1)
    logs = [e for e in events if e["event"] == "train_log" and "loss" in e]
    seen = [e["_seen"] for e in logs]
    if len(seen) < 3:
        raise RuntimeError(f"{len(seen)} steps logged: use --steps 4 or more")
    step_s = statistics.median(b - a for a, b in itertools.pairwise(seen))
    synced = next(e["_seen"] for e in events if e["event"] == "checkpoint_synced" and e["step"] == save)
    logged = next(e["_seen"] for e in logs if e["step"] == save)
    training = {rank: [rss for t, rss, _ in found if seen[0] <= t <= seen[-1]] for rank, found in samples.items()}
    again, _ = launch(data, model, work / "run", name, settings)
    resumed = next(e["_seen"] for e in again if e["event"] == "resume_from")
    # None when the SIGTERM landed in the last step: its checkpoint is the end, and the rerun trains nothing more.
    first = next((e["_seen"] for e in again if e["event"] == "train_log" and "loss" in e), None)
    sharded = {e["rank"]: e for e in events if e["event"] == "sharded"}
    return {
        "mode": mode,
        "step_seconds": round(step_s, 3),
        "rss_training_gib": [round(max(training[r], default=0) / 2**20, 2) for r in (0, 1)],
        "rss_peak_gib": [round(max((h for _, _, h in samples[r]), default=0) / 2**20, 2) for r in (0, 1)],
        "checkpoint_save_seconds": round(synced - logged, 2),
        "resume_seconds": round(first - resumed - step_s, 2) if first is not None else None,
        "parameters_per_rank": [sharded[r]["parameters"] for r in sorted(sharded)] if sharded else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-vl-3b", help="a published name (a slice of it) or tiny")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode, alternating; the fastest counts")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vcot-sharding-bench-") as tmp:
        work = Path(tmp)
        model = model_folder(args.model, work)
        records = write_records(str(work / "records"), 32, 224)
        data = str(work / "tokens")
        tokenize(TokenizeConfig(input=[records], output=data, model=str(model)))
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        load = os.getloadavg()
        for repeat in range(args.repeats):
            for mode in MODES:
                found = measure(data, model, recipe_for(args.model), work / f"{mode}-{repeat}", mode, args.steps)
                runs[mode].append(found)
                print(json.dumps(found), flush=True)
    best = {mode: min(found, key=lambda r: r["step_seconds"]) for mode, found in runs.items()}
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU", "load_average_before": load,
               "model": args.model, "recipe": recipe_for(args.model), "steps": args.steps, "best": best,
               "runs": runs}  # fmt: skip
    print(json.dumps(results, indent=1))
    if args.output:
        args.output.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
