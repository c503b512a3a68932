"""A benchmark table you can put next to the published ones: the VisCoT benchmark, per subset (``--benchmark viscot``).

The records are the VisCoT benchmark file converted by ``vcot-convert --source viscot`` (its ``###`` boxes
and subsets kept). Each subset row has the answer score (the judge's mean when ``--judge-model`` is on, as
VisCoT and Ground-R1 report it; exact match otherwise), the detection Acc@0.5 of the reasoning's first box
(VisCoT's detection metric: IoU > 0.5) and the mean IoU (TreeBench's, per question; one box each, that box's
IoU). Subsets carry the names of VisCoT's table; the average is the mean of the subset scores over the subsets
VisCoT's own scripts average (``tools/cot_get_result.py``: 11 of the benchmark's 13), as the papers do.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from vcot.errors import VcotError

VISCOT_NAMES = {
    "docvqa": "DocVQA",
    "textcap": "TextCaps",
    "textvqa": "TextVQA",
    "dude": "DUDE",
    "sroie": "SROIE",
    "infographicsvqa": "InfographicsVQA",
    "flickr30k": "Flickr30k",
    "gqa": "GQA",
    "openimages": "Open Images",
    "vsr": "VSR",
    "cub": "CUB (Birds-200-2011)",
    "v7w": "Visual7W",
    "visual7w": "Visual7W",
    "emotic": "EMOTIC",
}
"""Record subset (the benchmark's folder name) -> its name in the paper, in the paper's order."""
VISCOT_AVERAGED = ("docvqa", "textcap", "textvqa", "dude", "sroie", "infographicsvqa", "flickr30k", "gqa",
                   "openimages", "vsr", "cub")
"""The subsets VisCoT's scripts score and average."""
CSV_COLUMNS = ("subset", "name", "questions", "answer_score", "exact_match", "judge_score", "detection_acc_at_50",
               "mean_iou", "in_average")
BENCHMARKS = ("viscot",)


def benchmark_name(records: list[dict[str, Any]], data: str) -> str:
    """What the leaderboard calls the evaluated data: the benchmark its records share (``provenance.benchmark``, as
    ``vcot-convert --source vlmevalkit`` writes it), else the last part of ``--data``.

    >>> benchmark_name([{"provenance": {"benchmark": "TreeBench"}}], "s3://b/bench/tree")
    'TreeBench'
    >>> benchmark_name([{"provenance": {}}, {"provenance": {"benchmark": "x"}}], "s3://b/bench/mixed/")
    'mixed'
    """
    names = {(record.get("provenance") or {}).get("benchmark") for record in records}
    shared = names.pop() if len(names) == 1 else None
    return str(shared) if shared else data.rstrip("/").rsplit("/", 1)[-1]


def check_records(records: list[dict[str, Any]], benchmark: str) -> None:
    """Refuse records that are not the benchmark's (a table of other data would be mislabelled)."""
    others = [r for r in records if r.get("source") != benchmark]
    if others:
        raise VcotError(
            f"--benchmark {benchmark}: {len(others)} of {len(records)} records are not {benchmark} records "
            f"(e.g. {others[0].get('id')!r}); convert the benchmark file with vcot-convert --source {benchmark}"
        )


def _order(subset: str) -> tuple[int, str]:
    names = list(VISCOT_NAMES)
    return (names.index(subset) if subset in names else len(names), subset)


def benchmark_table(metrics: dict[str, Any], *, judged: bool) -> dict[str, Any]:
    """The per-subset rows and the average, from ``metrics["subsets"]`` (the field and judge metrics included)."""
    rows = []
    for subset in sorted(metrics["subsets"], key=_order):
        values = metrics["subsets"][subset]
        judge = values.get("judge_score") if judged else None
        rows.append({
            "subset": subset,
            "name": VISCOT_NAMES.get(subset, subset),
            "questions": values["samples"],
            "answer_score": judge if judged else values["answer_accuracy"],
            "exact_match": values["answer_accuracy"],
            "judge_score": judge,
            "detection_acc_at_50": values["first_box_acc_at_50"],
            "mean_iou": values["truth_mean_iou"],
            "in_average": subset in VISCOT_AVERAGED,
        })
    averaged = [row for row in rows if row["in_average"]]
    average: dict[str, Any] = {"subset": "average", "name": "Average"}
    average["questions"] = sum(row["questions"] for row in averaged)
    for key in ("answer_score", "exact_match", "judge_score", "detection_acc_at_50", "mean_iou"):
        values = [row[key] for row in averaged if row[key] is not None]
        average[key] = sum(values) / len(values) if values else None
    average["in_average"] = True
    return {
        "benchmark": "viscot",
        "answer_score": "judge" if judged else "exact_match",
        "subsets": rows,
        "average": average,
        "averaged_subsets": [row["subset"] for row in averaged],
    }


def benchmark_csv(table: dict[str, Any]) -> str:
    """The table as CSV: one row per subset, then the average; scores as fractions (blank when not measured)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in [*table["subsets"], table["average"]]:
        writer.writerow({k: ("" if row[k] is None else round(row[k], 4) if isinstance(row[k], float) else row[k])
                         for k in CSV_COLUMNS})
    return buffer.getvalue()
