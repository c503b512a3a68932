"""Distill throughput against a local OpenAI-compatible server with a fixed answer latency.

    .venv/bin/python bench/distill_bench.py [--samples 500] [--concurrency 10] [--latency 0.2]

The ideal wall time is ``samples * latency / concurrency`` (every slot busy all the time); the target is at
most 1.15x that. The server runs in its own process (so it does not compete for our GIL), the whole
stage is timed (reading the input, images, requests, validation, cache, writing shards, commit), and a
second run over the same input shows what a rerun costs (all answers cached, zero requests).
Results go to docs/bench-distill.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from vcot.distill import DistillConfig, distill  # noqa: E402
from vcot.grounding.records import split_for  # noqa: E402
from vcot.io import manifest, shards  # noqa: E402
from vcot.log import configure_logging  # noqa: E402
from vcot.train.distributed import free_port  # noqa: E402

API_KEY = "bench-key"


def _write_input(root: Path, samples: int) -> str:
    """``samples`` records needing distillation, each with its own 224x224 JPEG."""
    records = []
    for index in range(samples):
        image = root / "images" / f"{index}.jpg"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (224, 224), (index % 256, (index * 7) % 256, 120)).save(image, quality=90)
        record_id = f"bench:train:{index}"
        records.append(
            {
                "id": record_id, "source": "synthetic", "subset": "bench", "split": split_for(record_id, 0.1),
                "image": str(image), "width": 224, "height": 224, "question": f"Q{index}: what color is the square?",
                "answer": f"answer{index}", "choices": None, "answer_index": None, "objects": [], "rationale": "",
                "needs_distillation": True, "provenance": {"dataset": "bench", "source_index": index},
            }
        )  # fmt: skip
    uri = str(root / "convert")
    files = [
        shards.write_jsonl(uri, f"{s}/00000-of-00001.jsonl.gz", [r for r in records if r["split"] == s])
        for s in ("train", "val")
    ]
    manifest.commit(uri, stage="convert", files=files, config={})
    return uri


def _stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()
    configure_logging("json", "WARNING")
    os.environ["OPENAI_API_KEY"] = API_KEY

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vcot.dev.fake_openai",
            "--port",
            str(port),
            "--latency",
            str(args.latency),
            "--api-key",
            API_KEY,
        ],
        cwd=REPO_ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _stats(port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            input_uri = _write_input(root, args.samples)
            ideal = args.samples * args.latency / args.concurrency
            results = {}
            for run in ("first", "rerun"):
                config = DistillConfig(
                    input=input_uri, output=str(root / f"out-{run}"), model="gpt-4o", base_url=f"http://127.0.0.1:{port}/v1",
                    concurrency=args.concurrency, hint_answer=True, shard_index=0,
                )  # fmt: skip
                before = _stats(port)["chat_requests"]
                started = time.perf_counter()
                report = distill(config)["stats"]
                wall = time.perf_counter() - started
                stats = _stats(port)
                results[run] = {
                    "wall_s": round(wall, 3),
                    "requests": stats["chat_requests"] - before,
                    "accepted": report["accepted"],
                    "rejected": report["counts"].get("rejected", 0),
                }
            results["first"]["ideal_s"] = ideal
            results["first"]["ratio_to_ideal"] = round(results["first"]["wall_s"] / ideal, 3) if ideal else None
            results["max_in_flight"] = _stats(port)["max_in_flight"]
            print(
                json.dumps(
                    {"samples": args.samples, "concurrency": args.concurrency, "latency_s": args.latency, **results},
                    indent=2,
                )
            )
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
