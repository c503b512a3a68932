"""Is there something for GRPO to learn? What an adapter's own samples say about its boxes, before any RL step.

For ``--records`` held-out records (the ``--split`` of committed records), on the CPU:

- greedy: the first-object IoU of the answer the evaluation generates (greedy, the default repetition penalty);
- samples: ``--samples`` K responses per record at ``--temperature`` and ``--top-p``, as TRL draws GRPO's rollouts
  (no repetition penalty, no top-k cut): their mean IoU, the best of K (what a perfect choice among them would
  score), the spread of IoU within a group (the signal GRPO's advantages are made of; 0 means a group teaches
  nothing), and the standard deviation of each sampled coordinate within a group (house units, 0-1000);
- the entropy, in nats, of the model's next-token distribution at each digit of the greedy boxes, by place counted
  from the right (the ``4`` of ``40`` is a tens digit; a uniform digit is ln 10 = 2.303), beside the mean of every
  other token's: which digits the model knows, and so which ones a policy gradient can move. Two-turn models only:
  a ``rationale_turn`` model answers in a second generation, which this does not score token by token.

    PYTHONPATH=. .venv/bin/python bench/grpo_signal.py --adapter s3://vcot/local/qwen2.5-vl-norm1000/train/adapter \\
        --data s3://vcot/local/qwen2.5-vl-norm1000/records [--model .cache/tiny-qwen2.5-vl-local] [--records 48]
        [--samples 8] [--temperature 0.7] [--top-p 0.9] [--output result.json]

``--prepare N`` first makes what is missing, as ``make local-train`` does: the tiny model (``--size``) and N
synthetic records converted to ``--data``; without ``--adapter`` the bare model is probed.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from vcot.grounding.boxes import BoxFormat
from vcot.grounding.model_format import HOUSE, ModelFormat
from vcot.io import manifest
from vcot.io.images import load_rgb
from vcot.models.generation import GenerationSettings, Skipped, generate_responses, prompt_text, two_phase
from vcot.models.loading import adapter_format, load_model_and_processor
from vcot.models.penalty import inside_open_box
from vcot.scoring.response import score_response, truth_boxes
from vcot.train.recipe import load_recipe

PLACES = ("thousands", "hundreds", "tens", "units")


def digit_places(pieces: Sequence[str], box_syntax: BoxFormat = "house") -> list[str]:
    """Each token's place in a number written inside an open box of ``box_syntax``, counted from the right
    (``hundreds``, ``tens``, ``units``, ...); any other token is ``other``.

    >>> "".join(place[0] for place in digit_places(["<box>", "[", "5", "8", "2", ",", " ", "4", "0", "]", "</box>",
    ...                                                  " (", "3", ")"]))  # o: other, h: hundreds, t: tens, u: units
    'oohtuootuooooo'
    >>> digit_places(["<|box_start|>", "(", "1", "2", ",", "3", ")", "<|box_end|>"], "qwen")
    ['other', 'other', 'tens', 'units', 'other', 'units', 'other', 'other']
    """
    places, run, text = ["other"] * len(pieces), [], ""
    for index, piece in enumerate([*pieces, " "]):
        if len(piece) == 1 and piece.isdigit() and inside_open_box(text, box_syntax):
            run.append(index)
        else:
            for place, at in enumerate(reversed(run)):
                places[at] = PLACES[max(0, len(PLACES) - 1 - place)]
            run = []
        text += piece
    return places


def first_box_scored(text: str | Skipped, record: dict[str, Any], fmt: ModelFormat) -> tuple[float, list[int] | None]:
    """A response's first-object IoU as the evaluation scores it, and its first box in house coordinates (0 and
    ``None`` without a box, or for a skipped record)."""
    if not isinstance(text, str):
        return 0.0, None
    row, _ = score_response(record, text, fmt)
    return row["first_box_iou"], row["boxes"][0]["box"] if row["boxes"] else None


def digit_entropies(model: Any, processor: Any, record: dict[str, Any], response: str, settings: GenerationSettings,
                    image: Any) -> dict[str, list[float]]:  # fmt: skip
    """The entropy of the next-token distribution at each token of ``response``, grouped by :func:`digit_places`."""
    prompt = prompt_text(processor, record, settings)
    images = [image] if image is not None else None  # a text-mode model reads no image
    start = processor(text=[prompt], images=images, return_tensors="pt")["input_ids"].shape[1]
    inputs = processor(text=[prompt + response], images=images, return_tensors="pt").to(model.device)
    with torch.no_grad():
        logits = model(**inputs).logits[0, start - 1 : -1].float()
    entropy = (-(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)).tolist()
    pieces = [processor.tokenizer.decode([token]) for token in inputs["input_ids"][0, start:].tolist()]
    grouped: dict[str, list[float]] = defaultdict(list)
    for place, value in zip(digit_places(pieces, settings.fmt.box_syntax), entropy, strict=True):
        grouped[place].append(value)
    return grouped


def prepare(args: argparse.Namespace) -> None:
    """The tiny model and ``--prepare`` synthetic records at ``--data``, where missing."""
    steps = [["vcot.dev.tiny_model", args.model, "--size", args.size, "--keep-current"]]
    if not manifest.is_committed(args.data):
        synthetic = f"{args.data.rstrip('/')}-synthetic"
        steps += [["vcot.dev.synthetic", synthetic, "--num-records", str(args.prepare)],
                  ["jobs.convert", "--source", "viscot", "--input", synthetic, "--output", args.data]]  # fmt: skip
    for step in steps:
        subprocess.run([sys.executable, "-m", *step], check=True, stdout=subprocess.DEVNULL)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Generate, score and take the entropies (the module docstring); the result as JSON-ready values."""
    if args.prepare:
        prepare(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, processor = load_model_and_processor(args.model, adapter_uri=args.adapter)
    model.eval()
    fmt = (adapter_format(args.adapter) if args.adapter else None) or HOUSE
    committed = manifest.committed_records(args.data, (f"{args.split}/",), expect_stage=manifest.RECORD_STAGES)
    records = [record for record in committed if truth_boxes(record)][: args.records]
    if not records:
        raise SystemExit(f"no {args.split} record with a box in {args.data}")
    greedy_settings = GenerationSettings(fmt=fmt, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    sample_settings = GenerationSettings(fmt=fmt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                         top_p=args.top_p, batch_size=args.batch_size,
                                         repetition_penalty=1.0)  # fmt: skip
    started = time.perf_counter()
    greedy, _ = generate_responses(model, processor, records, greedy_settings)
    model.generation_config.top_k = 0  # transformers' default cuts at 50; TRL's rollouts (top_k=0) do not cut
    groups = [record for record in records for _ in range(args.samples)]
    sampled, _ = generate_responses(model, processor, groups, sample_settings)
    greedy_ious, mean_ious, best_ious, spreads, coordinate_spreads = [], [], [], [], []
    entropies: dict[str, list[float]] = defaultdict(list)
    for n, record in enumerate(records):
        scored = [first_box_scored(text, record, fmt) for text in sampled[n * args.samples : (n + 1) * args.samples]]
        group = [iou for iou, _ in scored]
        greedy_ious.append(first_box_scored(greedy[n], record, fmt)[0])
        mean_ious.append(statistics.mean(group))
        best_ious.append(max(group))
        spreads.append(statistics.pstdev(group))
        found = [box for _, box in scored if box]
        if len(found) > 1:
            coordinate_spreads += [statistics.pstdev(box[k] for box in found) for k in range(4)]
        if isinstance(greedy[n], str) and not two_phase(greedy_settings):
            image = load_rgb(record["image"]) if fmt.mode == "multimodal" else None
            for place, values in digit_entropies(model, processor, record, greedy[n], greedy_settings, image).items():
                entropies[place] += values
    return {
        "adapter": args.adapter,
        "records": len(records),
        "samples": args.samples,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "first_object_iou": {
            "greedy": round(statistics.mean(greedy_ious), 4),
            "sampled_mean": round(statistics.mean(mean_ious), 4),
            f"best_of_{args.samples}": round(statistics.mean(best_ious), 4),
            "within_group_std": round(statistics.mean(spreads), 4),
        },
        "sampled_coordinate_std": round(statistics.mean(coordinate_spreads), 1) if coordinate_spreads else None,
        "entropy_nats": {place: round(statistics.mean(v), 3) for place, v in sorted(entropies.items())},
        "uniform_digit_nats": round(math.log(10), 3),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {"cpus": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__},
    }


def main() -> None:
    """Parse the flags, measure, print the result (and write it to ``--output``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", default=None, help="the adapter to probe (an SFT or GRPO run's adapter/)")
    parser.add_argument("--data", required=True, help="committed records (convert's output)")
    parser.add_argument("--model", default=".cache/tiny-qwen2.5-vl-local", help="the base model")
    parser.add_argument("--split", default="val")
    parser.add_argument("--records", type=int, default=48)
    grpo = load_recipe("tiny-cpu-grpo")  # the defaults are its rollouts' own, so the two cannot drift apart
    parser.add_argument("--samples", type=int, default=grpo.num_generations, help="K: GRPO's group size")
    parser.add_argument("--temperature", type=float, default=grpo.temperature, help="GRPO's sampling temperature")
    parser.add_argument("--top-p", type=float, default=grpo.top_p, help="GRPO's nucleus cut")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64, help="responses generated at a time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="", help="also write the result here (JSON)")
    parser.add_argument("--prepare", type=int, default=0, help="make the tiny model and N records first")
    parser.add_argument("--size", default="local", help="the tiny model's size, with --prepare")
    args = parser.parse_args()
    result = measure(args)
    print(json.dumps(result, indent=2))
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
