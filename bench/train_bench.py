"""Benchmark of tokenize and train on the tiny offline Qwen2.5-VL, on CPU: text vs multimodal.

What the pixels cost: the same records are tokenized in ``text`` mode (the seed's: no image) and in
``multimodal`` mode (image tokens + pixels loaded by the collator), then trained for the same number of
steps with the ``tiny-cpu`` recipe (no evaluation or checkpoint inside the timed window). Reports
tokenize records/s, train samples/s and tokens/s (all tokens and supervised ones), and the peak RSS.
It measures mechanics on a ~250k-parameter model, not what a 7B costs on a GPU. On a shared machine wall
times swing with the load: the fastest of interleaved repeats is reported, with CPU seconds beside it.

    PYTHONPATH=. .venv/bin/python bench/train_bench.py [--records 256] [--steps 60] [--repeats 3] [--warmup-steps 3]
        [--output results.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from vcot.dev.tiny_model import build_tiny_qwen25vl
from vcot.grounding.boxes import pixels_to_norm1000
from vcot.grounding.records import split_for
from vcot.io import manifest, shards, storage
from vcot.models.loading import load_processor_for
from vcot.tokenize import TokenizeConfig, tokenize
from vcot.train import TrainConfig, train
from vcot.train.recipe import load_recipe

COLORS = ("red", "green", "blue", "yellow")


LONG_SENTENCE = "I look over the picture from left to right and note each object and where it stands. "
"""What a long rationale repeats (8-24 times) before its box: LLaVA-CoT-like lengths (``long_share``)."""


def write_records(root: Path, count: int, seed: int = 0, *, max_side: int = 256, long_share: float = 0.0) -> str:
    """A committed record output: one coloured square per image (96-``max_side`` px), grounded in the rationale;
    ``long_share`` of the rationales reason at length before the box."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        width, height = rng.randint(96, max_side), rng.randint(96, max_side)
        side = min(width, height) // 3
        x1, y1 = rng.randrange(width - side), rng.randrange(height - side)
        color = rng.choice(COLORS)
        image = Image.new("RGB", (width, height), "gray")
        ImageDraw.Draw(image).rectangle((x1, y1, x1 + side, y1 + side), fill=color)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        uri = str(root / "images" / f"{index:05d}.png")
        storage.write_bytes(uri, buffer.getvalue())
        box = list(pixels_to_norm1000((x1, y1, x1 + side, y1 + side), width, height))
        reasoning = LONG_SENTENCE * rng.randint(8, 24) if long_share and rng.random() < long_share else ""
        record_id = f"bench:{index}"
        records.append(
            {
                "id": record_id, "source": "synthetic", "subset": "bench", "split": split_for(record_id, 0.1),
                "image": uri, "width": width, "height": height, "question": "What color is the square?",
                "answer": color, "choices": None, "answer_index": None,
                "objects": [{"ref": f"{color} square", "box": box}],
                "rationale": f"{reasoning}I find the <ref>{color} square</ref><box>[{', '.join(map(str, box))}]</box>. "
                             f"Answer: {color}",
            }
        )  # fmt: skip
    files = [
        shards.write_jsonl(str(root), f"{split}/00000-of-00001.jsonl.gz", [r for r in records if r["split"] == split])
        for split in ("train", "val")
    ]
    manifest.commit(str(root), stage="convert", files=files, config={"source": "bench"})
    return str(root)


def tokenize_mode(mode: str, records: str, model: Path, work: Path) -> tuple[str, dict[str, Any], float]:
    """Tokenize the records; returns the output, its stats and the CPU seconds it took."""
    tokens = str(work / f"tokens-{mode}")
    started = time.process_time()
    committed = tokenize(TokenizeConfig(input=[records], output=tokens, model=str(model), mode=mode))
    assert committed is not None
    return tokens, committed["stats"], time.process_time() - started


def train_seconds(tokens: str, model: Path, output: Path, steps: int) -> tuple[float, float]:
    """``(wall, cpu)``: the Trainer's ``train_runtime`` for ``steps`` steps (model loading excluded, one save
    at the end) and the process CPU time of the whole call (all threads)."""
    settings = f"max_steps={steps},num_train_epochs=100,logging_steps={steps},save_steps={steps},eval_steps={steps}"
    started = time.process_time()
    train(TrainConfig(data=tokens, model=str(model), output=str(output), recipe="tiny-cpu", set=settings))
    cpu = time.process_time() - started
    return json.loads((output / "metrics.json").read_text())["train"]["train_runtime"], cpu


def summarize(
    mode: str, stats: dict[str, Any], tokenize_cpu: float, runs: list[tuple[float, float]], steps: int
) -> dict[str, Any]:
    train_stats = stats["train"]
    rows = train_stats["rows"] + stats["val"]["rows"]
    wall = min(w for w, _ in runs)  # the least disturbed of the interleaved repeats
    cpu = min(c for _, c in runs)
    recipe = load_recipe("tiny-cpu")
    samples = steps * recipe.per_device_train_batch_size * recipe.gradient_accumulation_steps
    mean_tokens = train_stats["tokens"] / train_stats["rows"]
    supervised = train_stats["supervised_tokens"] / train_stats["rows"]
    return {
        "mode": mode,
        "tokenize_records_per_cpu_second": round(rows / tokenize_cpu, 1),
        "mean_row_tokens": round(mean_tokens, 1),
        "image_tokens_per_row": round(train_stats["image_tokens"] / train_stats["rows"], 1),
        "train_steps": steps,
        "train_wall_seconds": [round(w, 2) for w, _ in runs],
        "train_cpu_seconds": [round(c, 2) for _, c in runs],
        "train_samples_per_second": round(samples / wall, 2),
        "train_tokens_per_second": round(samples * mean_tokens / wall, 1),
        "supervised_tokens_per_second": round(samples * supervised / wall, 1),
        "train_cpu_seconds_per_step": round(cpu / steps, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument(
        "--repeats", type=int, default=3, help="training runs per mode, interleaved; the fastest counts"
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=3, help="untimed training steps first (0: no warm-up, for a smoke run)"
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    modes = ("text", "multimodal")
    with tempfile.TemporaryDirectory(prefix="vcot-train-bench-") as tmp:
        work = Path(tmp)
        model = build_tiny_qwen25vl(work / "tiny")
        records = write_records(work / "records", args.records)
        # Warm-up, untimed: imports, first loads, template compilation, the 8-bit optimizer's first step.
        load_processor_for(str(model))
        if args.warmup_steps > 0:
            warm_tokens, _, _ = tokenize_mode("multimodal", records, model, work / "warm-up")
            train_seconds(warm_tokens, model, work / "warm-up" / "run", args.warmup_steps)
        load_before = os.getloadavg()
        tokenized = {mode: tokenize_mode(mode, records, model, work) for mode in modes}
        runs: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
        for repeat in range(args.repeats):
            for mode in modes:
                output = work / f"run-{mode}-{repeat}"
                runs[mode].append(train_seconds(tokenized[mode][0], model, output, args.steps))
        results = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "records": args.records,
            "modes": [summarize(m, tokenized[m][1], tokenized[m][2], runs[m], args.steps) for m in modes],
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    print(json.dumps(results, indent=2))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
