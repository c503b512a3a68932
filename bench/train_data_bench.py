"""Benchmark of the train stage's data: memory of the training rows and the loader's rows/s, at 100k and 1M rows.

For each row count, a committed tokenize output of synthetic text rows (``--tokens`` ids each, below Qwen's
vocabulary of 151,665, labels masked on the first tenth) is written to a local folder, then a fresh process per
``--modes`` entry opens the train split and reads ``--reads`` rows in a random order through a DataLoader (batch 8,
padded to tensors as the collator does):

- ``mmap``: ``vcot.train.data.TokenizedDataset`` (Arrow files memory-mapped, ids narrowed to uint32/int32);
- ``in-memory``: the previous way, every shard read into one Arrow table (``pq.read_table``).

Reported per run: the peak RSS (VmHWM), the process's own memory at the end (RssAnon: not file pages the kernel
can drop), the open time and rows/s. Memory-mapped pages a process touched count in its RSS but are the page cache,
shared by the ranks of a node. The model is not loaded: add its own footprint.

    PYTHONPATH=. .venv/bin/python bench/train_data_bench.py [--rows 100000,1000000] [--tokens 128] [--reads 20000]
        [--modes mmap,in-memory] [--output results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

VOCAB = 151_665
ROWS_PER_SHARD = 50_000


def write_tokens(root: Path, rows: int, tokens: int) -> None:
    """A committed tokenize output (train split only) of ``rows`` synthetic rows, written shard by shard."""
    from vcot.io import manifest
    from vcot.io.shards import file_entry

    rng = np.random.default_rng(0)
    files = []
    for start in range(0, rows, ROWS_PER_SHARD):
        count = min(ROWS_PER_SHARD, rows - start)
        ids = rng.integers(0, VOCAB, size=count * tokens, dtype=np.int32)
        labels = ids.copy().reshape(count, tokens)
        labels[:, : tokens // 10] = -100
        offsets = pa.array(np.arange(0, (count + 1) * tokens, tokens, dtype=np.int32))
        table = pa.table(
            {
                "id": [f"r{start + i}" for i in range(count)],
                "input_ids": pa.ListArray.from_arrays(offsets, pa.array(ids)),
                "labels": pa.ListArray.from_arrays(offsets, pa.array(labels.ravel())),
                "length": pa.array(np.full(count, tokens, dtype=np.int32)),
            }
        )
        path = root / "train" / f"{start // ROWS_PER_SHARD:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="zstd")
        files.append(file_entry(path, f"train/{path.name}"))
    manifest.commit(str(root), stage="tokenize", files=files, config={})


def memory() -> dict[str, float]:
    """Peak RSS and the process's own (anonymous) memory now, in MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kinds = (("peak_rss_mb", "VmHWM"), ("anon_mb", "RssAnon"))
    return {name: int(fields[key].split()[0]) / 1024 for name, key in kinds}


class InMemory:
    """The train stage's previous dataset: every shard read into one Arrow table."""

    def __init__(self, data: str) -> None:
        from vcot.io import manifest
        tables = [pq.read_table(pa.BufferReader(raw)) for _, raw in manifest.read_committed(data, "train/")]
        self.table = pa.concat_tables(tables)

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.table.slice(index, 1).to_pylist()[0]


def pad(rows: list[dict[str, Any]]) -> Any:
    import torch

    width = max(len(row["input_ids"]) for row in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row["input_ids"])] = torch.tensor(row["input_ids"])
    return ids


def measure(data: str, mode: str, reads: int) -> dict[str, Any]:
    """One run in this process: open the split, read ``reads`` random rows in batches of 8."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from vcot.train.data import TokenizedDataset

    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        if mode == "mmap":
            dataset: Any = TokenizedDataset(data, "train", cache=Path(cache), vocab_size=VOCAB)
        else:
            dataset = InMemory(data)
        opened = time.perf_counter() - start
        after_open = memory()
        order = np.random.default_rng(1).permutation(len(dataset))[:reads].tolist()
        start = time.perf_counter()
        for _ in DataLoader(Subset(dataset, order), batch_size=8, collate_fn=pad):
            pass
        elapsed = time.perf_counter() - start
        return {
            "mode": mode,
            "rows": len(dataset),
            "open_s": round(opened, 1),
            "peak_rss_mb_after_open": round(after_open["peak_rss_mb"]),
            "anon_mb_after_open": round(after_open["anon_mb"]),
            **{key: round(value) for key, value in memory().items()},
            "rows_per_s": round(reads / elapsed),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,1000000", help="Row counts, comma separated.")
    parser.add_argument("--tokens", type=int, default=128, help="Tokens per row.")
    parser.add_argument("--reads", type=int, default=20_000, help="Rows read (random order) per run.")
    parser.add_argument("--modes", default="mmap,in-memory")
    parser.add_argument("--output", default="", help="Write the results here as JSON.")
    parser.add_argument("--measure", nargs=2, metavar=("DATA", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # the child process: one measurement, printed as JSON
        print(json.dumps(measure(args.measure[0], args.measure[1], args.reads)))
        return

    results = []
    with tempfile.TemporaryDirectory(prefix="vcot-data-bench-") as tmp:
        for rows in [int(n) for n in args.rows.split(",")]:
            data = Path(tmp) / f"tokens-{rows}"
            write_tokens(data, rows, args.tokens)
            for mode in args.modes.split(","):
                child = [sys.executable, __file__, "--reads", str(min(args.reads, rows)), "--measure", str(data), mode]
                out = subprocess.run(child, check=True, capture_output=True, text=True, env=os.environ).stdout
                results.append(json.loads(out.strip().splitlines()[-1]))
                print("| " + " | ".join(str(v) for v in results[-1].values()) + " |", flush=True)
    result = {"tokens_per_row": args.tokens, "runs": results, "load_average": os.getloadavg()}
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
