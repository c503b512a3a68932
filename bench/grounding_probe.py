"""Probe: does a from-scratch tiny model learn to *point* on a CPU? Data, model and training in one process.

The question behind ``make local-train`` (docs/train.md, "Teaching the tiny model to point"), asked in minutes
instead of a whole chain: it builds the synthetic scenes (``vcot.dev.synthetic``) as the canonical records convert
writes, the tiny model of a family, trains it with the pipeline's own encoder and collator (what trains: the
recipe's LoRA and ``modules_to_save``, ``tiny-cpu`` by default, or ``--rates`` for parts trained in full at their
own rates), prints teacher-forced held-out numbers while it trains (first-object IoU, answer accuracy, the first
digit of each coordinate), then generates on the held-out records with the pipeline's generation and scoring and
prints the first-object IoU beside the best constant box of that split. One torch thread by default.

    PYTHONPATH=. .venv/bin/python bench/grounding_probe.py [--family qwen2.5-vl] [--coords norm1000]
        [--records 2048] [--epochs 10] [--minutes 0] [--rates lm=2e-3,merger=2e-3] [--output result.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vcot.convert.viscot import grounded_rationale
from vcot.dev.synthetic import Scene, synthetic_items
from vcot.grounding.families import DEFAULT_FAMILY, FAMILIES

PARTS = ("lm", "merger", "patch", "vision")
"""Parameter groups for ``--rates``: the language model, the mergers, the patch embedding, the rest of the tower."""


def records_of(root: Path, count: int, seed: int, scene: Scene) -> list[dict[str, Any]]:
    """Canonical records as convert writes them from the synthetic data (images under ``root``)."""
    records = []
    for item, _, png, truth in synthetic_items(count, seed, scene):
        path = root / item["image"][0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        records.append(
            {
                "id": truth["id"],
                "subset": "synthetic",
                "image": str(path),
                "width": truth["width"],
                "height": truth["height"],
                "question": f"What color is the {truth['ref']}?",
                "answer": truth["answer"],
                "choices": None,
                "objects": [{"ref": truth["ref"], "box": truth["box"]}],
                "rationale": grounded_rationale(truth["ref"], truth["box"], truth["answer"]),
            }
        )
    return records


def build_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """The tiny model of ``--family`` at ``--size`` with ``--shape`` and ``--config`` over it, and its processor."""
    from transformers import AutoModelForImageTextToText

    from vcot.dev.tiny_model import TINY_SIZES, build_processor, tiny_config

    size = dataclasses.replace(TINY_SIZES[args.size], **json.loads(args.shape or "{}"))
    min_pixels, max_pixels = size.pixels(args.family)
    processor = build_processor(family=args.family, min_pixels=min_pixels, max_pixels=max_pixels)
    config = tiny_config(processor.tokenizer, size, args.family)
    for key, values in json.loads(args.config or "{}").items():
        sub = getattr(config, key)
        for name, value in values.items():
            if name == "rope_theta":
                sub.rope_parameters["rope_theta"] = value
            else:
                setattr(sub, name, value)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    if args.pos_scale:
        smooth_position_embeddings(model, args.pos_scale)
    return model, processor


def smooth_position_embeddings(model: Any, scale: float) -> None:
    """Qwen3-VL's learned position table set to low-frequency 2D sin/cos waves of size ``scale`` (an ablation)."""
    table = model.model.visual.pos_embed.weight
    side, dim = int(math.isqrt(table.shape[0])), table.shape[1]
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    omega = 1.0 / (10.0 ** (torch.arange(dim // 4) / (dim // 4)))
    ax = xs.flatten()[:, None] / (side - 1) * math.pi * omega[None]
    ay = ys.flatten()[:, None] / (side - 1) * math.pi * omega[None]
    with torch.no_grad():
        table.copy_(torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], 1) * scale)


def part_of(name: str) -> str:
    """Which of :data:`PARTS` a parameter belongs to."""
    if "merger" in name:
        return "merger"
    if "patch_embed" in name:
        return "patch"
    return "vision" if "visual" in name else "lm"


def optimizer_for(model: Any, args: argparse.Namespace, recipe: Any) -> tuple[Any, Any]:
    """The model to train (wrapped in the recipe's LoRA unless ``--rates``) and its AdamW."""
    from vcot.train.common import add_lora

    if not args.rates:
        model = add_lora(model, recipe)  # what the train stage trains, at the recipe's one rate
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": args.lr}]
        return model, torch.optim.AdamW(groups, weight_decay=recipe.weight_decay)
    rates = {part: 0.0 for part in PARTS} | {k: float(v) for k, v in (i.split("=") for i in args.rates.split(","))}
    by_part: dict[str, list[Any]] = {part: [] for part in PARTS}
    for name, param in model.named_parameters():
        param.requires_grad_(rates[part_of(name)] > 0)
        by_part[part_of(name)].append(param)
    groups = [{"params": by_part[p], "lr": rates[p]} for p in PARTS if rates[p] > 0]
    return model, torch.optim.AdamW(groups, weight_decay=recipe.weight_decay)


def teacher_forced(model: Any, collate: Any, rows: list[dict[str, Any]], records: list[dict[str, Any]],
                   processor: Any, fmt: Any) -> dict[str, Any]:
    """Held-out numbers without generation: every assistant token predicted from the true ones before it."""
    from vcot.scoring.response import score_response

    was_training = model.training
    model.eval()
    ious, correct, digits = [], [], []
    with torch.no_grad():
        for start in range(0, len(rows), 25):
            batch = collate(rows[start : start + 25])
            predicted = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1].argmax(-1)
            labels = batch["labels"][:, 1:]
            for i, record in enumerate(records[start : start + 25]):
                mask = labels[i] != -100
                guess, truth = predicted[i][mask].tolist(), labels[i][mask].tolist()
                digits += first_digits(processor.tokenizer.convert_ids_to_tokens(truth),
                                       processor.tokenizer.convert_ids_to_tokens(guess))
                text = processor.tokenizer.decode(guess, skip_special_tokens=False).split("<|im_end|>")[0]
                row, score = score_response(record, text, fmt)
                ious.append(score.first_iou or 0.0)
                correct.append(bool(row["answer_correct"]))
    model.train(was_training)
    per_coordinate = [[ok for c, ok in digits if c == k] for k in range(4)]
    return {"tf_iou": round(sum(ious) / len(ious), 4), "tf_answer": round(sum(correct) / len(correct), 4),
            "tf_first_digit": [round(sum(oks) / max(1, len(oks)), 2) for oks in per_coordinate]}


def first_digits(truth: list[str], guess: list[str]) -> list[tuple[int, bool]]:
    """``(coordinate, right)`` for the first digit of each number of the first box (tokens: one digit each).

    >>> first_digits([">[", "3", "2", ",", "Ġ", "7", "]</"], [">[", "3", "9", ",", "Ġ", "1", "]</"])
    [(0, True), (1, False)]
    """
    start = next((j for j, token in enumerate(truth) if token.endswith("[")), None)
    if start is None:
        return []
    found, new_number = [], True
    for j in range(start + 1, len(truth)):
        if "]" in truth[j]:
            break
        if truth[j].isdigit() and new_number:
            found.append((len(found) % 4, guess[j] == truth[j]))
        new_number = truth[j].startswith(",") or truth[j] == "Ġ"
    return found


def schedule(args: argparse.Namespace, total: int) -> Any:
    """Linear warm-up, then constant or a cosine decay to zero over ``total`` steps."""
    warmup = max(1, int(total * args.warmup))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if args.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


def train(model: Any, optimizer: Any, rows: list[dict[str, Any]], collate: Any, args: argparse.Namespace,
          progress: Any) -> tuple[int, float, list[float]]:
    """Train for ``--epochs`` or ``--minutes``, whichever ends first; returns steps, seconds and the losses."""
    total = int(math.ceil(len(rows) / args.batch) * args.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(args, total))
    rng, losses, step = random.Random(args.seed), [], 0
    started, budget = time.perf_counter(), args.minutes * 60 if args.minutes else float("inf")
    model.train()
    while step < total and time.perf_counter() - started < budget:
        order = rng.sample(range(len(rows)), len(rows))
        for start in range(0, len(order), args.batch):
            if step >= total or time.perf_counter() - started >= budget:
                break
            loss = model(**collate([rows[i] for i in order[start : start + args.batch]])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            step += 1
            if step % args.eval_every == 0:
                print(f"step {step}/{total} loss {sum(losses[-50:]) / len(losses[-50:]):.3f} "
                      f"{time.perf_counter() - started:.0f}s {progress()}", flush=True)
    return step, time.perf_counter() - started, losses


def generated(model: Any, processor: Any, records: list[dict[str, Any]], fmt: Any) -> dict[str, Any]:
    """What the pipeline's evaluation would report on ``records``: greedy responses, scored."""
    from vcot.models.generation import GenerationSettings, generate_responses
    from vcot.scoring.metrics import summarize
    from vcot.scoring.response import score_response

    model.eval()
    settings = GenerationSettings(fmt=fmt, max_new_tokens=48, batch_size=25, repetition_penalty=1.0)
    texts, _ = generate_responses(model, processor, records, settings)
    texts = [text if isinstance(text, str) else "" for text in texts]
    metrics = summarize(score_response(record, text, fmt)[1] for record, text in zip(records, texts, strict=True))
    keys = ("first_object_iou", "constant_box_iou", "constant_box", "first_object_acc_at_50", "answer_accuracy")
    return {key: metrics[key] for key in keys} | {"responses": texts[:3]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default=DEFAULT_FAMILY, help=" or ".join(FAMILIES))
    parser.add_argument("--coords", default="norm1000", help="norm1000 or qwen2.5-absolute")
    parser.add_argument("--size", default="local", help="a TINY_SIZES name")
    parser.add_argument("--shape", default="", help="TinySize fields as JSON over --size: '{\"hidden\": 128}'")
    parser.add_argument("--config", default="", help="JSON over the config: '{\"text_config\": {\"rope_theta\": 10}}'")
    parser.add_argument("--pos-scale", type=float, default=0, help="qwen3-vl: smooth 2D sin/cos position table")
    parser.add_argument("--records", type=int, default=2048, help="training records")
    parser.add_argument("--val", type=int, default=100, help="held-out records")
    parser.add_argument("--max-objects", type=int, default=Scene.max_objects)
    parser.add_argument("--min-size", type=float, default=Scene.min_size)
    parser.add_argument("--no-frame", action="store_true")
    parser.add_argument("--recipe", default="tiny-cpu", help="LoRA, modules_to_save and defaults below")
    parser.add_argument("--rates", default="", help=f"train parts in full instead ({', '.join(PARTS)}): lm=2e-3,...")
    parser.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--epochs", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--batch", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--warmup", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    parser.add_argument("--minutes", type=float, default=0, help="stop training after this many minutes (0: none)")
    parser.add_argument("--eval-every", type=int, default=250, help="teacher-forced held-out numbers every N steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, default=None, help="save the trained model here")
    parser.add_argument("--output", type=Path, default=None, help="write the result JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from vcot.grounding.model_format import ModelFormat
    from vcot.tokenize.encode import Encoder
    from vcot.train.data import Collator
    from vcot.train.recipe import load_recipe

    args = parse_args(argv)
    recipe = load_recipe(args.recipe)
    args.lr = recipe.learning_rate if args.lr is None else args.lr
    args.epochs = recipe.num_train_epochs if args.epochs is None else args.epochs
    args.batch = recipe.per_device_train_batch_size if args.batch is None else args.batch
    args.warmup = recipe.warmup_ratio if args.warmup is None else args.warmup
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    scene = Scene(max_objects=args.max_objects, min_size=args.min_size, frame=not args.no_frame)
    records = records_of(Path(tempfile.mkdtemp(prefix="grounding-probe-")), args.records + args.val, args.seed, scene)
    train_records, val_records = records[: args.records], records[args.records :]
    model, processor = build_model(args)
    fmt = ModelFormat.for_processor(processor, args.family, coords=args.coords)
    encoder, collate = Encoder(processor, fmt), Collator(processor)
    rows, val_rows = [encoder.encode(r) for r in train_records], [encoder.encode(r) for r in val_records]
    print(f"{len(rows)} rows of {sum(r['length'] for r in rows) / len(rows):.0f} tokens; "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)

    model, optimizer = optimizer_for(model, args, recipe)
    steps, seconds, losses = train(
        model, optimizer, rows, collate, args, lambda: teacher_forced(model, collate, val_rows, val_records, processor, fmt)
    )
    if args.save:
        model.save_pretrained(args.save)
        processor.save_pretrained(args.save)
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "steps": steps,
        "train_seconds": round(seconds, 1),
        "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4),
        **teacher_forced(model, collate, val_rows, val_records, processor, fmt),
        **generated(model, processor, val_records, fmt),
    }
    print(json.dumps(result, indent=1))
    if args.output:
        args.output.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
