"""Valid boxes by construction: what vLLM's structured outputs (``vcot-evaluate --structured-boxes``) change on a
trained model, and what they cost, side by side on the same server, records and decoding.

The export (``vcot-export`` of a run: ``make local-train``'s tiny model is what a CPU can serve) is served by the real
vLLM (``make vllm-env``); ``vcot-evaluate --server`` answers ``--records`` records of ``--data`` greedily (no repetition
penalty), with and without the card's regex, ``--repeats`` times each in alternation (fresh answer caches, so every
answer is asked). Reported: the share of answers with an invalid box and the invalid boxes by reason, the share with
a valid box, first-object IoU and Acc@0.5, answer accuracy, and speed (completion tokens/s and samples/s of the whole
stage call, the fastest repeat).

    PYTHONPATH=. .venv/bin/python bench/structured_bench.py --export EXPORT --data RECORDS [--split val]
        [--records 217] [--tokens 256] [--concurrency 8] [--repeats 2] [--output structured_bench.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.plan_bench import write_records
from vcot.dev.vllm_server import VllmServer, vllm_venv, vllm_venv_ready
from vcot.train.distributed import free_port

REPORTED = ("samples_with_invalid_boxes", "invalid_boxes", "invalid_reasons", "box_detection_rate",
            "first_object_iou", "first_object_acc_at_50", "answer_accuracy", "box_missing_or_invalid")  # fmt: skip


def untrained_export(folder: Path) -> Path:
    """A tiny model served as an export is (its processor saved for serving, its card): for smoke runs only, as it
    writes no box on its own."""
    from vcot.dev.tiny_model import build_tiny_model
    from vcot.grounding.model_format import ModelFormat
    from vcot.io.layout import MODEL_CARD
    from vcot.models.loading import load_processor, save_processor_for_serving

    build_tiny_model(folder, family="qwen2.5-vl", size="local")  # vLLM: heads of 32 and more
    processor = load_processor(str(folder))
    save_processor_for_serving(processor, folder)
    (folder / MODEL_CARD).write_text(json.dumps(ModelFormat.for_processor(processor, "qwen2.5-vl").to_dict()))
    return folder


def evaluate_once(args: argparse.Namespace, server: VllmServer, output: Path, structured: bool) -> dict[str, Any]:
    """One ``vcot-evaluate --server`` call: its metrics and speed."""
    from vcot.evaluate.config import EvaluateConfig
    from vcot.evaluate.stage import evaluate

    config = EvaluateConfig(data=args.data, output=str(output), split=args.split, max_samples=args.records,
                            server=server.url, model_card=str(args.export), max_new_tokens=args.tokens,
                            server_concurrency=args.concurrency, server_cache=str(output.parent / f"{output.name}-cache"),
                            server_params={"repetition_penalty": 1.0}, structured_boxes=structured,
                            report_samples=0)  # fmt: skip
    started = time.perf_counter()
    evaluate(config)
    seconds = time.perf_counter() - started
    metrics = json.loads((output / "metrics.json").read_text())
    overall, ledger = metrics["overall"], metrics["details"]["served"]["ledger"]
    return {
        **{key: overall.get(key) for key in REPORTED},
        "samples": overall["samples"],
        "seconds": round(seconds, 2),
        "completion_tokens": ledger["completion_tokens"],
        "tokens_per_s": round(ledger["completion_tokens"] / seconds, 1),
        "samples_per_s": round(overall["samples"] / seconds, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, help="a vcot-export folder (default: an untrained tiny model)")
    parser.add_argument("--data", help="committed records to answer (default: records of one square each)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--records", type=int, default=217)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("structured_bench.json"))
    args = parser.parse_args(argv)
    if not vllm_venv_ready(vllm_venv()):
        parser.error(f"no vLLM environment at {vllm_venv()}: run `make vllm-env` first")
    scratch = Path(tempfile.mkdtemp(prefix="structured-bench-"))
    if args.export is None:
        args.export = untrained_export(scratch / "model")
    if args.data is None:
        args.data, args.split = write_records(str(scratch / "records"), args.records, 224), "train"
    server = VllmServer(model=args.export, port=free_port(), venv=vllm_venv(), root=scratch / "vllm")
    server.up()
    runs: dict[str, list[dict[str, Any]]] = {"free": [], "structured": []}
    try:
        for repeat in range(args.repeats):
            for name in ("free", "structured"):
                runs[name].append(evaluate_once(args, server, scratch / f"{name}-{repeat}", name == "structured"))
    finally:
        server.down()
    best = {name: max(found, key=lambda r: r["tokens_per_s"]) for name, found in runs.items()}
    result = {"when": datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
              "cpus": len(__import__("os").sched_getaffinity(0)), "args": {k: str(v) for k, v in vars(args).items()},
              "best": best, "runs": runs,
              "tokens_per_s_ratio": round(best["structured"]["tokens_per_s"] / best["free"]["tokens_per_s"], 3)}  # fmt: skip
    args.output.write_text(json.dumps(result, indent=2))
    print("| decoding | answers with an invalid box | invalid boxes | with a valid box | first-object IoU | "
          "Acc@0.5 | answers | tokens/s | samples/s |\n|---|---|---|---|---|---|---|---|---|")
    for name, row in best.items():
        print(f"| {name} | {row['samples_with_invalid_boxes']} / {row['samples']} | {row['invalid_boxes']} "
              f"{row['invalid_reasons']} | {row['box_detection_rate']:.3f} | {row['first_object_iou']:.3f} | "
              f"{row['first_object_acc_at_50']:.3f} | {row['answer_accuracy']:.3f} | {row['tokens_per_s']} | "
              f"{row['samples_per_s']} |")
    print(f"structured / free tokens/s: {result['tokens_per_s_ratio']}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
