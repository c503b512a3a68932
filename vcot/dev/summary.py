"""What ``make local-train`` and ``make local-grpo`` print at the end: losses or reward curves, the evaluation's key
metrics, responses, the report.

A new user should see in a few lines that the model learned something and what it cost: the train loss from its
first to its last logged step, the eval loss, the run's throughput (samples and tokens per second, peak memory,
wall time, GPU-hours), for a GRPO run each reward's mean at the start and the end of the run, how many
responses carry a valid ``<ref>..</ref><box>[..]</box>``, whether the model points (its first-object IoU beside the
best constant box, the most a model that ignores the image can reach), a few responses with their true boxes, and
where the HTML report is (copied to a local file so a browser opens it directly). With ``--local-s3`` (the
Makefile's local targets), a last line says that the local S3 server they started is still running, and how to stop it.

    python -m vcot.dev.summary --run s3://vcot/local/qwen2.5-vl-norm1000/train \\
        --evaluation s3://vcot/local/qwen2.5-vl-norm1000/eval --report-to .cache/local-train/report.html
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

from vcot.dev.local_s3 import LocalS3, is_up
from vcot.io import manifest, storage
from vcot.io.shards import read_jsonl
from vcot.log import configure_logging


def loss_line(metrics: dict[str, Any]) -> str:
    """Train loss first -> last logged step, and the final eval loss, from a train run's ``metrics.json``.

    >>> loss_line({"log_history": [{"loss": 6.7, "step": 1}, {"loss": 0.7, "step": 170}], "eval": {"eval_loss": 0.68}})
    'train loss 6.700 (step 1) -> 0.700 (step 170); eval loss 0.680'
    """
    logged = [entry for entry in metrics.get("log_history", []) if "loss" in entry]
    parts = []
    if logged:
        first, last = logged[0], logged[-1]
        start, end = f"{first['loss']:.3f} (step {first['step']})", f"{last['loss']:.3f} (step {last['step']})"
        parts.append(f"train loss {start} -> {end}")
    if "eval_loss" in metrics.get("eval", {}):
        parts.append(f"eval loss {metrics['eval']['eval_loss']:.3f}")
    return "; ".join(parts) or "no losses logged"


def throughput_line(metrics: dict[str, Any]) -> str:
    """What the run cost, from a train run's ``metrics.json`` (``throughput``, :mod:`vcot.train.throughput`).

    >>> throughput_line({"throughput": {"wall_seconds": 93.5, "steps": 40, "samples_per_second": 3.42,
    ...     "tokens_per_second": 512.1, "peak_memory_gib": 1.25, "peak_memory_kind": "cpu_max_rss", "gpu_hours": 0.0}})
    '40 steps in 93.5 s; 3.42 samples/s; 512 tokens/s; peak memory 1.25 GiB (cpu_max_rss); 0.0000 GPU-hours'
    """
    t = metrics.get("throughput") or {}
    if not t:
        return "no throughput recorded (trained before it was)"
    return (
        f"{t['steps']} steps in {t['wall_seconds']:.1f} s; {t['samples_per_second']:.2f} samples/s; "
        f"{t['tokens_per_second']:.0f} tokens/s; peak memory {t['peak_memory_gib']:.2f} GiB ({t['peak_memory_kind']}); "
        f"{t['gpu_hours']:.4f} GPU-hours"
    )


def reward_lines(metrics: dict[str, Any]) -> list[str]:
    """One line per reward of a GRPO run's ``metrics.json``: its mean at the start and at the end of the run.

    >>> reward_lines({"log_history": [{"rewards/format_reward/mean": 0.1, "step": 1}, {"rewards/format_reward/mean": 0.5, "step": 9}]})
    ['reward       format_reward 0.100 (steps 1-1) -> 0.500 (steps 9-9)']
    """
    from vcot.train.grpo import reward_curves  # torch, TRL, bitsandbytes: after main configured logging

    curves = reward_curves(metrics.get("log_history", []))
    return [
        f"reward       {name} {c['start']:.3f} (steps {c['start_steps'][0]}-{c['start_steps'][1]}) -> "
        f"{c['end']:.3f} (steps {c['end_steps'][0]}-{c['end_steps'][1]})"
        for name, c in curves.items()
    ]


def held_out_lines(metrics: dict[str, Any], pointer: dict[str, Any] | None) -> list[str]:
    """An RL run's held-out score at its start and at the checkpoint it kept, and what became of the pointer.

    >>> held = {"held_out": {"metric": "eval_gen_first_object_iou", "start": 0.52, "end": 0.5, "pointed": None}}
    >>> for line in held_out_lines(held, {"move": False, "reason": "below the start"}):
    ...     print(line)
    held-out     eval_gen_first_object_iou 0.5200 at the start -> 0.5000 kept
    pointer      not moved: below the start
    """
    held = metrics.get("held_out") or {}
    lines = []
    if held.get("start") is not None and held.get("end") is not None:
        lines.append(f"held-out     {held['metric']} {held['start']:.4f} at the start -> {held['end']:.4f} kept")
    if pointer:
        lines.append(f"pointer      {'moved' if pointer.get('move') else 'not moved'}: {pointer.get('reason')}")
    return lines


def comparison_lines(before: dict[str, Any], after: dict[str, Any], names: tuple[str, str]) -> list[str]:
    """Two evaluations' key metrics side by side (the same evaluation of a run's start and of the run).

    >>> comparison_lines({"first_object_iou": 0.5, "acc_at_50": 0.6, "answer_accuracy": 0.99},
    ...                  {"first_object_iou": 0.52, "acc_at_50": 0.61, "answer_accuracy": 0.99}, ("SFT", "GRPO"))[1]
    'first-object IoU             0.500     0.520    +0.020'
    """
    lines = [f"{'held-out (full val)':24s} {names[0]:>9s} {names[1]:>9s} {'change':>9s}"]
    for key, label in (("first_object_iou", "first-object IoU"), ("acc_at_50", "Acc@0.5"),
                       ("answer_accuracy", "answer accuracy")):  # fmt: skip
        if before.get(key) is not None and after.get(key) is not None:
            lines.append(f"{label:24s} {before[key]:9.3f} {after[key]:9.3f} {after[key] - before[key]:+9.3f}")
    return lines


def metrics_line(overall: dict[str, Any]) -> str:
    """The evaluation's key numbers, from ``metrics.json``'s ``overall``.

    >>> metrics_line({"samples": 50, "box_detection_rate": 1.0, "mean_iou": 0.1, "acc_at_50": 0.02,
    ...               "answer_accuracy": 0.2})
    'samples 50; box detection rate 1.000; mean IoU 0.100; Acc@0.5 0.020; answer accuracy 0.200'
    """
    names = (
        ("box_detection_rate", "box detection rate"),
        ("mean_iou", "mean IoU"),
        ("acc_at_50", "Acc@0.5"),
        ("answer_accuracy", "answer accuracy"),
    )
    parts = [f"samples {overall.get('samples', 0)}"]
    parts += [f"{label} {overall[key]:.3f}" for key, label in names if overall.get(key) is not None]
    return "; ".join(parts)


def pointing_line(overall: dict[str, Any]) -> str:
    """First-object IoU against the constant-box baseline, first-object Acc@0.5 and answer accuracy.

    >>> pointing_line({"first_object_iou": 0.42, "constant_box_iou": 0.15, "constant_box": [200, 180, 700, 760],
    ...                "first_object_acc_at_50": 0.38, "answer_accuracy": 0.9})
    'first-object IoU 0.420 vs 0.150 for the best constant box [200, 180, 700, 760] (2.8x); first-object Acc@0.5 0.380; answer accuracy 0.900'
    """
    if overall.get("first_object_iou") is None:
        return "no first-object metrics (evaluated before they existed)"
    first, constant = overall["first_object_iou"], overall.get("constant_box_iou") or 0.0
    ratio = f" ({first / constant:.1f}x)" if constant else ""
    parts = [f"first-object IoU {first:.3f} vs {constant:.3f} for the best constant box {overall.get('constant_box')}{ratio}"]
    parts.append(f"first-object Acc@0.5 {overall.get('first_object_acc_at_50', 0.0):.3f}")
    if overall.get("answer_accuracy") is not None:
        parts.append(f"answer accuracy {overall['answer_accuracy']:.3f}")
    return "; ".join(parts)


def _boxes_note(row: dict[str, Any]) -> str:
    """The first box read back in house coordinates (what was scored: it differs from the text in an absolute
    frame) beside the true one.

    >>> _boxes_note({"boxes": [{"ref": "a", "box": [1, 2, 3, 4]}], "truth_boxes": [[1, 2, 3, 5]]})
    '  (read as [1, 2, 3, 4]; truth [1, 2, 3, 5])'
    """
    parts = [f"read as {row['boxes'][0]['box']}"] if row.get("boxes") else []
    parts += [f"truth {row['truth_boxes'][0]}"] if row.get("truth_boxes") else []
    return f"  ({'; '.join(parts)})" if parts else ""


def server_line(server: LocalS3) -> list[str]:
    """The local S3 server a local run started keeps running (the next run and ``make demo`` read from it): say so,
    and how to stop it; nothing when it is not running."""
    if not is_up(server):
        return []
    return [f"local S3     still running on {server.endpoint} (data in {server.root / 'data'}): make s3-down stops it"]


def summary(
    run: str,
    evaluation: str | None = None,
    report_to: Path | None = None,
    responses: int = 3,
    local_s3: LocalS3 | None = None,
) -> list[str]:
    """The lines to print; copies the evaluation's ``report.html`` to ``report_to`` when given; ends with
    :func:`server_line` when given the ``local_s3`` server the run is on."""
    lines = _run_lines(run, evaluation, report_to, responses)
    return lines + (server_line(local_s3) if local_s3 is not None else [])


def _run_lines(run: str, evaluation: str | None, report_to: Path | None, responses: int) -> list[str]:
    run_metrics = storage.read_json(storage.join(run, "metrics.json"))
    lines = [f"train        {loss_line(run_metrics)}", f"cost         {throughput_line(run_metrics)}"]
    lines += reward_lines(run_metrics)
    committed = manifest.read_manifest(run) if manifest.is_committed(run) else {}
    lines += held_out_lines(run_metrics, (committed.get("stats") or {}).get("pointer"))
    if not evaluation:
        return lines
    metrics = storage.read_json(storage.join(evaluation, "metrics.json"))
    lines.append(f"evaluation   {metrics_line(metrics.get('overall', {}))}")
    lines.append(f"pointing     {pointing_line(metrics.get('overall', {}))}")
    predictions = storage.list_uris(storage.join(evaluation, "predictions"), ".jsonl.gz")
    rows = list(itertools.islice(read_jsonl(predictions[0]), responses)) if predictions else []
    for row in rows:
        lines.append(f"a response   {str(row.get('prediction', ''))[:200]!r}{_boxes_note(row)}")
    report = storage.join(evaluation, "report.html")
    if report_to is not None:
        report_to.parent.mkdir(parents=True, exist_ok=True)
        report_to.write_bytes(storage.read_bytes(report))
        lines.append(f"report       {report_to.resolve().as_uri()}  (also {report})")
    else:
        lines.append(f"report       {report}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcot.dev.summary", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="A committed train output, SFT or GRPO (metrics.json).")
    parser.add_argument("--evaluation", default=None, help="A committed evaluate output (metrics.json, report.html).")
    parser.add_argument("--report-to", type=Path, default=None, help="Local file to copy the HTML report to.")
    parser.add_argument("--start-evaluation", default=None,
                        help="The same evaluation of the model the run started from: printed beside --evaluation.")
    parser.add_argument("--local-s3", action="store_true",
                        help="The run is on the local S3 server (VCOT_LOCAL_S3_*): end by saying it still runs.")
    args = parser.parse_args(argv)
    configure_logging("console")
    server = LocalS3.from_env() if args.local_s3 else None
    lines = summary(args.run, args.evaluation, args.report_to, local_s3=server)
    if args.start_evaluation and args.evaluation:
        overall = lambda uri: storage.read_json(storage.join(uri, "metrics.json")).get("overall", {})  # noqa: E731
        lines += comparison_lines(overall(args.start_evaluation), overall(args.evaluation), ("start", "this run"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
