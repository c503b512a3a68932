"""Convert throughput and memory on a generated VisCOT-format file, beside the raw parse rate and json.load.

    .venv/bin/python bench/convert_bench.py --records 300000

Generates ``viscot.json`` (a llava-format JSON array like VisCOT's: 2/3 of the items with the absolute
``###`` box, 1/3 with only the padded box string, both string conventions) and ``metadata.jsonl``
with the image sizes (no images needed), then runs, each in its own process so peak RSS is its own:

- ``raw``: ijson (yajl2_c) streaming every item of the file as Python objects: the practical limit;
- ``raw-python``: the same with ijson's pure-Python backend (what a machine without the C extension gets);
- ``raw-chunks``: the stage's own reader in one process (``vcot.convert.array_chunks``: cut, count, orjson);
- ``convert``: the convert stage (``vcot.convert.convert``) writing gzipped shards and the manifest, with
  its default worker processes (one per available CPU); ``convert@W``: with ``--workers W``;
- ``convert:0/4``: shard 0 of 4 alone (it parses the whole file, converts a quarter): the wall time of
  a 4-pod Indexed Job (``convert:0/4@1``: with one process);
- ``json.load``: the naive approach, the whole file at once.

CPU time and memory include the worker processes: CPU is the parent's plus its children's. "Peak RSS (bound)"
is the parent's peak plus, per worker, the largest worker's peak: an upper bound, since forked workers share
pages; "peak PSS (sampled)" is the largest sum of the processes' PSS seen every 0.2 s (shared pages split between
the processes that share them: what the pod uses), or the peak RSS for a run with one process (the sampler
cannot see inside a C call that holds the GIL, such as ``json.load``).
Prints a Markdown table (records/s, seconds, peak RSS) for ``docs/bench-convert.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SUBSETS = ("gqa", "textvqa", "docvqa", "flickr30k", "cub", "v7w", "openimages", "vsr", "sroie", "dude")
PROMPT = "Please provide the bounding box coordinate of the region that can help you answer the question better."


def generate(folder: Path, records: int, seed: int = 0) -> tuple[Path, Path]:
    """Write ``viscot.json`` and ``metadata.jsonl`` (one image for every two questions) under ``folder``."""
    sys.path.insert(0, str(REPO_ROOT))
    from vcot.grounding.boxes import pixels_to_viscot_padded

    rng = random.Random(seed)
    data, metadata = folder / "viscot.json", folder / "metadata.jsonl"
    with data.open("w") as out, metadata.open("w") as meta:
        out.write("[\n")
        for index in range(records):
            subset = SUBSETS[(index // 2) % len(SUBSETS)]
            image = f"{index // 2:09d}.jpg"
            if index % 2 == 0:  # a new image every two questions
                width, height = rng.randint(200, 2400), rng.randint(200, 2400)
            x1, y1 = rng.randint(0, width // 2), rng.randint(0, height // 2)
            box = [x1, y1, rng.randint(x1 + 5, width), rng.randint(y1 + 5, height)]
            padded = pixels_to_viscot_padded(box, width, height, decimals=None)
            string = (
                ("[" + ", ".join(f"{v:.3f}" for v in padded) + "]")
                if index % 2
                else str([round(v * 1000) for v in padded])
            )
            path = f"cot/{subset}/{image}"
            item = {
                "dataset": subset,
                "split": "train",
                "question_id": index,
                "image": [path, f"{path}###{box}"] if index % 3 else [path],
                "conversations": [
                    {
                        "from": "human",
                        "value": f"<image>\nWhat is the object on the left side of the table number {index}? {PROMPT}",
                    },
                    {"from": "gpt", "value": string},
                    {"from": "human", "value": "<image>"},
                    {"from": "gpt", "value": f"a small wooden chair {index % 97}"},
                ],
            }
            out.write(("" if index == 0 else ",\n") + json.dumps(item))
            if index % 2 == 0:
                meta.write(
                    json.dumps(
                        {
                            "image": image,
                            "dataset": subset,
                            "width": width,
                            "height": height,
                            "question": "q",
                            "answer": "a",
                            "bboxs": [box],
                            "split": "train",
                        }
                    )
                    + "\n"
                )
        out.write("\n]\n")
    return data, metadata


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(mode: str, data: str, output: str) -> None:
    """One measurement in this process; prints ``{"seconds", "records", "peak_rss_mb"}``."""
    sys.path.insert(0, str(REPO_ROOT))
    os.environ.setdefault("VCOT_LOG_FORMAT", "json")
    import ijson

    from vcot.convert import ConvertConfig, convert
    from vcot.convert.common import ijson_backend
    from vcot.convert.quality import report
    from vcot.io.manifest import code_version
    from vcot.io.parallel import resolve_workers

    code_version()  # one git call, not per-record work
    workers = 0
    if "@" in mode:
        mode, workers_text = mode.split("@")
        workers = int(workers_text)
    sampler = PssSampler().__enter__()
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    if mode in ("raw", "raw-python"):
        backend = ijson_backend() if mode == "raw" else ijson.get_backend("python")
        with open(data, "rb") as handle:
            count = sum(1 for _ in backend.items(handle, "item", use_float=True))
    elif mode == "raw-chunks":
        from vcot.convert.array_chunks import iter_array_chunks, parse_chunk
        from vcot.convert.common import paused_gc

        count = 0
        with open(data, "rb") as handle:
            for chunk in iter_array_chunks(handle):
                with paused_gc():
                    count += len(parse_chunk(chunk))  # type: ignore[arg-type]
    elif mode == "json.load":
        with open(data, "rb") as handle:
            count = len(json.load(handle))
    else:
        shard_index, num_shards = (int(v) for v in mode.split(":")[1].split("/")) if ":" in mode else (0, 1)
        committed = convert(
            ConvertConfig(
                source="viscot",
                input=data,
                output=output,
                read_image_headers=False,
                overwrite=True,
                shard_index=shard_index,
                num_shards=num_shards,
                workers=workers,
            )
        )
        assert committed is not None  # --overwrite: never skipped
        total = report(committed["stats"], source="viscot", shards=1)["total"]
        count = total["input"]
        assert total["accepted"] == count, total["reasons"]
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu_start
    sampler.__exit__()
    # Several processes only for a convert run whose workers resolve to more than one (the file has many chunks).
    worker_count = resolve_workers(workers) if mode.startswith("convert") else 0
    worker_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if worker_count > 1 else 0.0
    print(
        json.dumps(
            {
                "mode": mode,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "records": count,
                "peak_rss_mb": _peak_rss_mb() + (worker_count * worker_rss if worker_rss else 0.0),
                "peak_pss_mb": sampler.peak_mb if worker_rss else _peak_rss_mb(),
                "parent_rss_mb": _peak_rss_mb(),
                "worker_rss_mb": worker_rss,
                "workers": worker_count if worker_rss else 1,
            }
        )
    )


class PssSampler:
    """Peak of the summed PSS of this process and its children, sampled every 0.2 s.

    PSS splits pages shared after fork (the image-size index) between the processes sharing them, so the
    sum is the memory the pod really uses; adding up each process's RSS would count shared pages per worker.
    """

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.peak_mb = max(self.peak_mb, sum(_pss_kb(pid) for pid in _process_tree(os.getpid())) / 1024)
            if self._stop.wait(0.2):
                return


def _process_tree(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid] + [p for child in children for p in _process_tree(int(child))]


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds() -> float:
    """User + system time of this process and of its finished children (the worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(mode: str, data: Path, output: Path) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--data", str(data), "--output", str(output)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000, help="Items in the generated file (default 300000).")
    parser.add_argument("--workdir", default=None, help="Where to generate (default: a temporary folder, removed).")
    parser.add_argument(
        "--modes",
        default="raw,raw-chunks,convert,convert@1,json.load",
        help="Runs, comma-separated: raw (ijson C backend), raw-python (ijson pure-Python backend), raw-chunks "
        "(the stage's chunked reader), convert, convert@W (W worker processes), convert:I/N (shard I of N alone: "
        "the wall time when N pods run in parallel), json.load.",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data, args.output)
        return 0

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        data, _ = generate(folder, args.records)
        size_mb = data.stat().st_size / 1e6
        print(
            f"generated {args.records} records, {size_mb:.0f} MB in {time.perf_counter() - start:.0f} s",
            file=sys.stderr,
        )
        results = {mode: measure(mode, data, folder / "out") for mode in args.modes.split(",")}
    # Rates are of the whole file: a shard reads all of it, so its time is the file's time with N pods in parallel.
    # CPU-time rates are less skewed than wall-time rates when other work shares the cores.
    raw = results.get("raw", {"seconds": float("nan"), "cpu_seconds": float("nan")})
    print(f"\n{args.records} records, {size_mb:.0f} MB file, load average {os.getloadavg()[0]:.2f} at the end\n")
    print(
        "| run | processes | wall s | records/s (wall) | vs raw C (wall) | CPU s | records/s (CPU) | vs raw C (CPU) "
        "| peak RSS (bound) | peak PSS (sampled) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, result in results.items():
        wall, cpu = args.records / result["seconds"], args.records / result["cpu_seconds"]
        processes = 1 + result["workers"] if result["workers"] > 1 else 1
        print(
            f"| {mode} | {processes} | {result['seconds']:.1f} | {wall:,.0f} | {raw['seconds'] / result['seconds']:.0%} "
            f"| {result['cpu_seconds']:.1f} | {cpu:,.0f} | {raw['cpu_seconds'] / result['cpu_seconds']:.0%} "
            f"| {result['peak_rss_mb']:.0f} MB | {result['peak_pss_mb']:.0f} MB |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
