"""Probe: can a from-scratch tiny model learn to *point* on CPU? Data + model in-process, train, score held-out IoU.

Builds the synthetic VisCOT data (``vcot.dev.synthetic``) as canonical records, the tiny model of a family, and
trains it with the pipeline's own encoder and collator for a time or step budget (one torch thread by default),
then generates on the held-out records with the pipeline's generation and scoring and prints the first-box IoU
next to the best constant box for that split.

    PYTHONPATH=. .venv/bin/python bench/grounding_probe.py [--family qwen2.5-vl] [--coords norm1000]
        [--records 1024] [--epochs 4] [--minutes 6] [--output result.json]
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

from vcot.dev.synthetic import Scene, synthetic_items
from vcot.convert.viscot import grounded_rationale


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


def smooth_position_embeddings(model: Any, scale: float) -> None:
    """Qwen3-VL's learned position table set to low-frequency 2D sin/cos waves (what a pretrained one encodes)."""
    table = model.model.visual.pos_embed.weight
    side, dim = int(math.isqrt(table.shape[0])), table.shape[1]
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    omega = 1.0 / (10.0 ** (torch.arange(dim // 4) / (dim // 4)))
    ax = xs.flatten()[:, None] / (side - 1) * math.pi * omega[None]
    ay = ys.flatten()[:, None] / (side - 1) * math.pi * omega[None]
    with torch.no_grad():
        table.copy_(torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], 1) * scale)


def teacher_forced(model: Any, collate: Any, rows: list[dict[str, Any]], records: list[dict[str, Any]], processor: Any,
                   fmt: Any) -> dict[str, float]:
    """Quick held-out numbers without generation: each assistant token predicted from the true ones before it."""
    from vcot.evaluate.scoring import score_response

    was_training = model.training
    model.eval()
    ious, correct, first_digits = [], [], []
    with torch.no_grad():
        for start in range(0, len(rows), 25):
            chunk = rows[start : start + 25]
            batch = collate(chunk)
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            predicted = logits[:, :-1].argmax(-1)
            labels = batch["labels"][:, 1:]
            for i, row in enumerate(chunk):
                mask = labels[i] != -100
                text = processor.tokenizer.decode(predicted[i][mask].tolist(), skip_special_tokens=False)
                truth_tokens = processor.tokenizer.convert_ids_to_tokens(labels[i][mask].tolist())
                guess_tokens = processor.tokenizer.convert_ids_to_tokens(predicted[i][mask].tolist())
                after = [j for j, t in enumerate(truth_tokens) if t.endswith("[")][:1]
                if after:  # the first digit of each coordinate, predicted from the true tokens before it
                    j, new_number, coord = after[0] + 1, True, 0
                    while j < len(truth_tokens) and "]" not in truth_tokens[j]:
                        if truth_tokens[j].isdigit() and new_number:
                            first_digits.append((coord % 4, guess_tokens[j] == truth_tokens[j]))
                            coord += 1
                        new_number = truth_tokens[j].startswith(",") or truth_tokens[j] == "Ġ"
                        j += 1
                record = records[start + i]
                r, score = score_response(record, text.split("<|im_end|>")[0], fmt)
                ious.append(score.first_iou or 0.0)
                correct.append(bool(r["answer_correct"]))
    if was_training:
        model.train()
    return {"tf_iou": round(sum(ious) / len(ious), 4), "tf_answer": round(sum(correct) / len(correct), 4),
            "tf_first_digit": [round(sum(ok for c, ok in first_digits if c == k) /
                                     max(1, sum(c == k for c, _ in first_digits)), 2) for k in range(4)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="qwen2.5-vl")
    parser.add_argument("--coords", default="norm1000")
    parser.add_argument("--size", default="local")
    parser.add_argument("--shape", default="", help="TinySize fields as JSON, over --size (e.g. '{\"hidden\": 128}')")
    parser.add_argument("--records", type=int, default=1024)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--epochs", type=float, default=4)
    parser.add_argument("--minutes", type=float, default=0, help="stop training after this many minutes (0: none)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--vision-lr", type=float, default=0, help="0 freezes the vision tower")
    parser.add_argument("--merger-lr", type=float, default=-1, help="-1: as --vision-lr")
    parser.add_argument("--patch-lr", type=float, default=-1, help="patch embedding's rate (-1: as --vision-lr)")
    parser.add_argument("--lora-targets", default="", help="LoRA target modules (default: the recipe's)")
    parser.add_argument("--lora", default="", help="R[/ALPHA]:module,module: the train stage's LoRA + modules_to_save")
    parser.add_argument("--warmup", type=float, default=0.05)
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default="", help="JSON overrides of text_config / vision_config")
    parser.add_argument("--max-objects", type=int, default=Scene.max_objects)
    parser.add_argument("--min-size", type=float, default=Scene.min_size)
    parser.add_argument("--no-frame", action="store_true")
    parser.add_argument("--eval-every", type=int, default=100, help="teacher-forced held-out numbers every N steps")
    parser.add_argument("--pos-scale", type=float, default=0, help="qwen3-vl: smooth 2D sin/cos pos_embed of this size")
    parser.add_argument("--generate", type=int, default=1, help="0: skip the generation at the end")
    parser.add_argument("--save", type=Path, default=None, help="save the trained model here")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from transformers import AutoModelForImageTextToText

    from vcot.evaluate.generation import GenerationSettings, generate_responses
    from vcot.evaluate.metrics import best_constant_box
    from vcot.evaluate.scoring import score_response
    from vcot.model_format import ModelFormat
    from vcot.dev.tiny_model import TINY_SIZES, build_processor, tiny_config
    from vcot.train.data import Collator
    from vcot.tokenize.encode import Encoder

    tmp = Path(tempfile.mkdtemp(prefix="grounding-probe-"))
    started = time.perf_counter()
    scene = Scene(max_objects=args.max_objects, min_size=args.min_size, frame=not args.no_frame)
    records = records_of(tmp, args.records + args.val, args.seed, scene)
    train_records, val_records = records[: args.records], records[args.records :]
    processor = build_processor(family=args.family)
    size = dataclasses.replace(TINY_SIZES[args.size], **(json.loads(args.shape) if args.shape else {}))
    config = tiny_config(processor.tokenizer, size, args.family)
    for key, values in (json.loads(args.config) if args.config else {}).items():
        sub = getattr(config, key)
        for name, value in values.items():
            if name == "rope_theta":
                sub.rope_parameters["rope_theta"] = value
            else:
                setattr(sub, name, value)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    if args.pos_scale:
        smooth_position_embeddings(model, args.pos_scale)
    fmt = ModelFormat.for_processor(processor, args.family, coords=args.coords)
    encoder = Encoder(processor, fmt)
    rows = [encoder.encode(record) for record in train_records]
    val_rows = [encoder.encode(record) for record in val_records]
    collate = Collator(processor)
    print(f"data+model {time.perf_counter() - started:.1f}s; rows {len(rows)}; mean length "
          f"{sum(r['length'] for r in rows) / len(rows):.0f}; params {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M")

    merger_lr = args.vision_lr if args.merger_lr < 0 else args.merger_lr
    if args.lora:  # what the train stage trains: LoRA on the language model + modules_to_save in full, one rate
        from vcot.train.recipe import Recipe
        from vcot.train.common import add_lora

        rank, _, saved = args.lora.partition(":")
        r, _, alpha = rank.partition("/")
        targets = args.lora_targets.split(",") if args.lora_targets else Recipe().lora_target_modules
        model = add_lora(model, Recipe(lora_r=int(r), lora_alpha=int(alpha or r), lora_dropout=0.0,
                                       lora_target_modules=targets, modules_to_save=[m for m in saved.split(",") if m]))
    groups: dict[str, list[Any]] = {"lm": [], "vision": [], "merger": [], "patch": []}
    for name, param in model.named_parameters():
        group = ("merger" if "merger" in name else "patch" if "patch_embed" in name
                 else "vision" if "visual" in name else "lm")
        groups[group].append(param)
    lrs = {"lm": args.lr, "vision": args.vision_lr, "merger": merger_lr, "patch": args.vision_lr if args.patch_lr < 0 else args.patch_lr}
    if args.lora:
        lrs = dict.fromkeys(lrs, args.lr)
        groups = {"lm": [p for p in model.parameters() if p.requires_grad]}
    for group, params in groups.items():
        for param in params:
            param.requires_grad_(lrs[group] > 0)
    optimizer = torch.optim.AdamW(
        [{"params": p, "lr": lrs[g]} for g, p in groups.items() if lrs[g] > 0], weight_decay=0.01
    )
    steps_per_epoch = math.ceil(len(rows) / args.batch)
    total = int(steps_per_epoch * args.epochs)
    warmup = max(1, int(total * args.warmup))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if args.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    rng = random.Random(args.seed)
    model.train()
    step, train_started, losses = 0, time.perf_counter(), []
    budget = args.minutes * 60 if args.minutes else float("inf")
    while step < total and time.perf_counter() - train_started < budget:
        order = list(range(len(rows)))
        rng.shuffle(order)
        for start in range(0, len(order), args.batch):
            if step >= total or time.perf_counter() - train_started >= budget:
                break
            batch = collate([rows[i] for i in order[start : start + args.batch]])
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            step += 1
            if step % 50 == 0:
                extra = teacher_forced(model, collate, val_rows, val_records, processor, fmt) if step % args.eval_every == 0 else ""
                print(f"step {step}/{total} loss {sum(losses[-50:]) / 50:.3f} "
                      f"{time.perf_counter() - train_started:.0f}s {extra}", flush=True)
    train_seconds = time.perf_counter() - train_started

    if args.save:
        model.save_pretrained(args.save)
        processor.save_pretrained(args.save)
    if not args.generate:
        print(json.dumps({"steps": step, "train_seconds": round(train_seconds, 1),
                          **teacher_forced(model, collate, val_rows, val_records, processor, fmt)}))
        return 0
    model.eval()
    settings = GenerationSettings(fmt=fmt, max_new_tokens=48, batch_size=25, repetition_penalty=1.0)
    texts, _ = generate_responses(model, processor, val_records, settings)
    ious, hits, correct = [], [], []
    for record, text in zip(val_records, texts, strict=True):
        row, score = score_response(record, text if isinstance(text, str) else "", fmt)
        first = score.best_ious[0] if row["boxes"] else 0.0  # one truth object: best match = the first object
        ious.append(first)
        hits.append(first > 0.5)
        correct.append(bool(row["answer_correct"]))
    truths = [record["objects"][0]["box"] for record in val_records]
    constant, constant_iou = best_constant_box(truths)
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "steps": step,
        "train_seconds": round(train_seconds, 1),
        "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4),
        "first_box_iou": round(sum(ious) / len(ious), 4),
        "constant_box_iou": round(constant_iou, 4),
        "constant_box": constant,
        "acc_at_50": round(sum(hits) / len(hits), 4),
        "answer_accuracy": round(sum(correct) / len(correct), 4),
        "responses": [t if isinstance(t, str) else repr(t) for t in texts[:4]],
    }
    print(json.dumps(result, indent=1))
    if args.output:
        args.output.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
