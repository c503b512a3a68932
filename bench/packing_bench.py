"""Padded batches vs length-grouped batches vs packed rows (recipe ``packing``), SFT on the tiny Qwen2.5-VL, CPU.

The records are a mix like a VisCoT + LLaVA-CoT mixture: 70% short grounded answers (one box and the answer, as
VisCoT's) and 30% long rationales (8-24 sentences before the box, as LLaVA-CoT's), on images of 96-448 px (so image
tokens differ too). Each mode trains ``tiny-cpu`` for ``--steps`` steps on the same tokenized rows and seed, with
about the same tokens a step: ``--batch`` rows padded to the longest (``padded``), the same with ``group_by_length``
(``grouped``), and one packed row of ``--batch`` x the mean row length (``packed``). Reports the trainer's tokens/s
(non-padding input tokens, as every run's throughput counts them), the padding share of the padded mode's
batches, the final eval loss of each mode (training is the same task, the loss where it ends), and the fastest
of ``--repeats`` interleaved runs.

    PYTHONPATH=. .venv/bin/python bench/packing_bench.py [--records 400] [--steps 40] [--batch 8] [--repeats 2]
        [--output results.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from vcot.dev.tiny_model import build_tiny_model
from vcot.grounding.boxes import pixels_to_norm1000
from vcot.grounding.records import split_for
from vcot.io import manifest, shards, storage
from vcot.tokenize import TokenizeConfig, tokenize
from vcot.train import TrainConfig, train
from vcot.train.data import TokenizedDataset

SENTENCE = "I look over the picture from left to right and note each object and where it stands. "


def mixed_records(root: Path, count: int, seed: int = 0) -> str:
    """A committed record output with the mixture's lengths (module docstring)."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        width, height = rng.randint(96, 448), rng.randint(96, 448)
        side = min(width, height) // 3
        x1, y1 = rng.randrange(width - side), rng.randrange(height - side)
        image = Image.new("RGB", (width, height), "gray")
        ImageDraw.Draw(image).rectangle((x1, y1, x1 + side, y1 + side), fill="red")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        uri = str(root / "images" / f"{index:05d}.png")
        storage.write_bytes(uri, buffer.getvalue())
        numbers = [int(v) for v in pixels_to_norm1000((x1, y1, x1 + side, y1 + side), width, height)]
        box = ", ".join(map(str, numbers))
        reasoning = SENTENCE * rng.randint(8, 24) if rng.random() < 0.3 else ""
        record_id = f"bench:{index}"
        records.append({
            "id": record_id, "source": "synthetic", "subset": "bench", "split": split_for(record_id, 0.1), "image": uri,
            "width": width, "height": height, "question": "What color is the square?", "answer": "red",
            "choices": None, "answer_index": None, "objects": [{"ref": "red square", "box": numbers}],
            "rationale": f"{reasoning}I find the <ref>red square</ref><box>[{box}]</box>. Answer: red",
        })  # fmt: skip
    by_split = {split: [r for r in records if r["split"] == split] for split in ("train", "val")}
    name = shards.shard_name(0, 1)
    files = [shards.write_jsonl(str(root), f"{split}/{name}", rows) for split, rows in by_split.items()]
    manifest.commit(str(root), stage="convert", files=files, config={"source": "bench"})
    return str(root)


def run(tokens: str, model: Path, output: Path, steps: int, settings: str) -> dict[str, Any]:
    """One SFT run; its throughput and final eval loss."""
    common = f"max_steps={steps},num_train_epochs=1000,logging_steps={steps},save_steps={steps},eval_steps={steps}"
    train(TrainConfig(data=tokens, model=str(model), output=str(output), recipe="tiny-cpu", set=f"{common},{settings}",
                      threads=1))  # fmt: skip
    metrics = json.loads((output / "metrics.json").read_text())
    throughput = metrics["throughput"]
    return {"tokens_per_second": throughput["tokens_per_second"], "tokens": throughput["tokens"],
            "seconds": throughput["wall_seconds"], "eval_loss": round(metrics["eval"]["eval_loss"], 4)}  # fmt: skip


def padding_share(rows: TokenizedDataset, batch: int, seed: int = 0) -> float:
    """The share of padding tokens in random batches of ``batch`` rows padded to their longest."""
    lengths = rows.lengths()
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    real = padded = 0
    for start in range(0, len(order) - batch + 1, batch):
        chunk = [lengths[i] for i in order[start : start + batch]]
        real, padded = real + sum(chunk), padded + max(chunk) * len(chunk)
    return round(1 - real / padded, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("packing_bench.json"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="packing-bench-"))
    model = build_tiny_model(work / "model", size="local")
    tokens = str(work / "tokens")
    tokenize(TokenizeConfig(input=[mixed_records(work / "records", args.records)], output=tokens, model=str(model)))
    rows = TokenizedDataset(tokens, "train")
    lengths = rows.lengths()
    capacity = round(args.batch * sum(lengths) / len(lengths))
    modes = {
        "padded": f"per_device_train_batch_size={args.batch}",
        "grouped": f"per_device_train_batch_size={args.batch},group_by_length=true",
        "packed": f"per_device_train_batch_size=1,packing={capacity}",
    }
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
        "padding_share_padded": padding_share(rows, args.batch), "runs": runs, "best": best,
        "packed_over_padded": round(best["packed"]["tokens_per_second"] / best["padded"]["tokens_per_second"], 2),
        "packed_over_grouped": round(best["packed"]["tokens_per_second"] / best["grouped"]["tokens_per_second"], 2),
    }  # fmt: skip
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"rows of {result['row_tokens']} tokens; padding in random batches of {args.batch}: "
          f"{result['padding_share_padded']:.0%}\n")  # fmt: skip
    print("| mode | tokens/s | eval loss | seconds |\n|---|---|---|---|")
    for mode, found in best.items():
        print(f"| {mode} | {found['tokens_per_second']} | {found['eval_loss']} | {found['seconds']} |")
    print(f"packed / padded {result['packed_over_padded']}x, packed / grouped {result['packed_over_grouped']}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
