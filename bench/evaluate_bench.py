"""Benchmark of the evaluate stage on the tiny offline Qwen2.5-VL, on CPU.

1. Batched vs one-at-a-time greedy generation on the same model and samples (target: >= 4x samples/s
   at batch 16), checking that both produce the same responses.
2. Repetition penalty: none (1.0) vs the seed's standard 1.2 vs box-aware 1.2. A random tiny model emits
   no boxes, so the tiny model is first overfit for a few hundred steps on the benchmark's own samples
   (it learns the format and memorizes their boxes). The comparison then measures how much each penalty
   gets in the way of emitting coordinates the model "knows"; it says nothing about quality on real data.

    PYTHONPATH=. .venv/bin/python bench/evaluate_bench.py [--samples 64] [--max-new-tokens 64] [--train-steps 300]
        [--repeats 3] [--threads N] [--output results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from vcot.dev.tiny_model import build_tiny_qwen25vl
from vcot.grounding.model_format import ModelFormat
from vcot.grounding.prompts import build_messages
from vcot.io.images import load_rgb
from vcot.models.generation import GenerationSettings, generate_batch, generate_responses
from vcot.models.loading import load_model_and_processor
from vcot.scoring.metrics import summarize
from vcot.scoring.response import score_response

COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 160, 60)}

TINY_FORMAT = ModelFormat.for_family(min_pixels=56 * 56, max_pixels=112 * 112)


def make_records(folder: Path, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Images with one coloured rectangle; the rationale grounds it and names its colour."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        width, height = rng.choice([(112, 112), (140, 84), (84, 140)])
        x1, y1 = rng.randint(0, 600), rng.randint(0, 600)
        box = [x1, y1, x1 + rng.randint(150, 399), y1 + rng.randint(150, 399)]
        color = rng.choice(sorted(COLORS))
        image = Image.new("RGB", (width, height), (240, 240, 240))
        ImageDraw.Draw(image).rectangle([box[0] * width / 1000, box[1] * height / 1000, box[2] * width / 1000, box[3] * height / 1000], fill=COLORS[color])
        path = folder / f"{index}.png"
        image.save(path)
        records.append(
            {
                "id": f"bench:{index}", "subset": "bench", "image": str(path), "width": width, "height": height,
                "question": "What colour is the square?", "answer": color, "choices": None, "answer_index": None,
                "objects": [{"ref": "square", "box": box}],
                "rationale": f"The <ref>square</ref><box>[{box[0]}, {box[1]}, {box[2]}, {box[3]}]</box> is {color}. Answer: {color}",
            }
        )
    return records


def timed_generation(
    model: Any, processor: Any, records: list[dict[str, Any]], settings: GenerationSettings, repeats: int = 1
) -> tuple[list[str], float]:
    """Responses and the best wall time of ``repeats`` runs (the machine is shared: the minimum is the least noisy)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        if settings.batch_size == 1:
            texts = [generate_batch(model, processor, [record], settings)[0] for record in records]
        else:
            texts, _ = generate_responses(model, processor, records, settings)
        best = min(best, time.perf_counter() - started)
    return texts, best


def overfit(model: Any, processor: Any, records: list[dict[str, Any]], steps: int, batch_size: int = 8) -> float:
    """A few hundred steps of full fine-tuning on the records' own chats (loss on the assistant turn)."""
    processor.tokenizer.padding_side = "right"
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    im_start = processor.tokenizer.convert_tokens_to_ids("<|im_start|>")
    loss = torch.tensor(0.0)
    for _ in range(steps):
        batch = rng.sample(records, min(batch_size, len(records)))
        texts = [processor.apply_chat_template(build_messages(r), tokenize=False) for r in batch]
        inputs = processor(text=texts, images=[load_rgb(r["image"]) for r in batch], padding=True, return_tensors="pt")
        labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        for row in labels:  # learn the assistant turn only: mask up to the last <|im_start|>
            starts = (row == im_start).nonzero()
            row[: int(starts[-1]) + 1] = -100
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return float(loss.detach())


def teacher_forced(model: Any, processor: Any, records: list[dict[str, Any]], penalties: dict[str, Any]) -> dict[str, Any]:
    """Feed each gold rationale and ask, at every step, whether greedy decoding would pick the gold next token.

    Split by where the step is: the gold token is a coordinate token inside an open box, or anything else.
    This isolates what a penalty does to coordinates from everything that follows a first wrong token.
    """
    from vcot.models.penalty import coordinate_token_ids, inside_open_box

    tokenizer = processor.tokenizer
    coordinate_ids = set(coordinate_token_ids(tokenizer))
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    hits = {name: {"coordinates": 0, "other": 0} for name in penalties}
    totals = {"coordinates": 0, "other": 0}
    for record in records:
        text = processor.apply_chat_template(build_messages(record), tokenize=False)
        inputs = processor(text=[text], images=[load_rgb(record["image"])], return_tensors="pt")
        with torch.inference_mode():
            logits = model(**inputs).logits[0]
        ids = inputs["input_ids"]
        start = int((ids[0] == im_start).nonzero()[-1]) + 3  # after "<|im_start|>assistant\n"
        for position in range(start, ids.shape[1] - 1):
            gold = int(ids[0, position + 1])
            context = ids[:, : position + 1]
            tail = tokenizer.decode(context[0, -48:], skip_special_tokens=False)
            kind = "coordinates" if gold in coordinate_ids and inside_open_box(tail) else "other"
            totals[kind] += 1
            for name, penalty in penalties.items():
                scores = logits[position : position + 1].clone()
                if penalty is not None:
                    scores = penalty(context, scores)
                hits[name][kind] += int(scores.argmax(-1)) == gold
    return {
        name: {kind: round(count / max(totals[kind], 1), 4) for kind, count in by_kind.items()}
        for name, by_kind in hits.items()
    } | {"positions": totals}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration; the fastest counts")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads", "args": {k: str(v) for k, v in vars(args).items()}}

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "images").mkdir()
        records = make_records(folder / "images", args.samples)
        model, processor = load_model_and_processor(str(build_tiny_qwen25vl(folder / "model", seed=0)))
        # the plain penalty, as section 1 of docs/bench-evaluate.md was measured (the default is box-aware now)
        base = GenerationSettings(max_new_tokens=args.max_new_tokens, fmt=TINY_FORMAT, box_aware_penalty=False)

        # 1. Batched vs one-at-a-time (random weights: responses run to max_new_tokens or an early stop).
        generate_batch(model, processor, records[:2], base)  # warm-up
        one_settings = GenerationSettings(**{**base.__dict__, "batch_size": 1})
        batch_settings = GenerationSettings(**{**base.__dict__, "batch_size": args.batch_size})
        one, one_seconds = timed_generation(model, processor, records, one_settings, args.repeats)
        batched, batched_seconds = timed_generation(model, processor, records, batch_settings, args.repeats)
        results["batching"] = {
            "samples": len(records),
            "one_at_a_time_samples_per_s": round(len(records) / one_seconds, 2),
            f"batch_{args.batch_size}_samples_per_s": round(len(records) / batched_seconds, 2),
            "speedup": round(one_seconds / batched_seconds, 2),
            "identical_responses": sum(a == b for a, b in zip(one, batched)),
        }
        print(json.dumps(results["batching"], indent=2), flush=True)

        # 2. Repetition penalties on the overfit tiny model (--train-steps 0 skips it).
        if args.train_steps <= 0:
            if args.output:
                args.output.write_text(json.dumps(results, indent=2) + "\n")
            return
        started = time.perf_counter()
        final_loss = overfit(model, processor, records, args.train_steps)
        results["overfit"] = {"steps": args.train_steps, "final_loss": round(final_loss, 4), "seconds": round(time.perf_counter() - started, 1)}
        print(json.dumps(results["overfit"]), flush=True)
        from transformers import RepetitionPenaltyLogitsProcessor

        from vcot.models.generation import BoxAwareRepetitionPenalty

        results["teacher_forced_greedy_accuracy"] = teacher_forced(
            model,
            processor,
            records,
            {
                "none (1.0)": None,
                "standard 1.2": RepetitionPenaltyLogitsProcessor(1.2),
                "box-aware 1.2": BoxAwareRepetitionPenalty(1.2, processor.tokenizer),
            },
        )
        print(json.dumps(results["teacher_forced_greedy_accuracy"]), flush=True)
        penalties = {"none (1.0)": (1.0, False), "standard 1.2": (1.2, False), "box-aware 1.2": (1.2, True)}
        results["penalty"] = {}
        for name, (penalty, aware) in penalties.items():
            settings = GenerationSettings(**{**base.__dict__, "batch_size": args.batch_size, "repetition_penalty": penalty, "box_aware_penalty": aware})
            texts, seconds = timed_generation(model, processor, records, settings, args.repeats)
            metrics = summarize(score_response(r, t, TINY_FORMAT)[1] for r, t in zip(records, texts))
            results["penalty"][name] = {
                "samples_per_s": round(len(records) / seconds, 2),
                **{k: round(metrics[k], 4) for k in ("box_detection_rate", "mean_iou", "iou_success_rate", "acc_at_50", "answer_accuracy")},
                "invalid_boxes": metrics["invalid_boxes"],
                "example": texts[0][:160],
            }
            print(name, json.dumps(results["penalty"][name]), flush=True)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
