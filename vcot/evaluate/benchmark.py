"""A benchmark table you can put next to the published ones: the VisCoT benchmark per subset, under VisCoT's protocol
(``--benchmark viscot``) or Ground-R1's (``--benchmark ground-r1``).

``viscot``: the VisCoT benchmark file converted by ``vcot-convert --source viscot`` (its ``###`` boxes and subsets
kept); the answer score is the judge's mean when ``--judge-model`` is on (as VisCoT reports it), exact match
otherwise; the average is over the 11 subsets VisCoT's scripts average (``tools/cot_get_result.py``).
``ground-r1``: Ground-R1's 150-per-subset file converted by ``vcot-convert --source ground-r1``; the answer score is
the judge's when it is on (as Ground-R1's tables report it), else its per-subset rules (``rule_score``,
:mod:`vcot.evaluate.ground_r1`); the average is over the 12 subsets of its table (VisCoT's 11 and Visual7W).

Each subset row also has the detection Acc@0.5 of the reasoning's first box (VisCoT's detection metric: IoU > 0.5)
and the mean IoU (TreeBench's, per question; one box each, that box's IoU), under the names of VisCoT's table.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
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
GROUND_R1_AVERAGED = ("docvqa", "textcap", "textvqa", "dude", "sroie", "infographicsvqa", "flickr30k", "v7w", "gqa",
                      "openimages", "vsr", "cub")
"""The subsets of Ground-R1's VisCoT table and average, in its order."""


@dataclass(frozen=True)
class TableSpec:
    """What a benchmark's table averages, which score it shows without a judge, and how the report names them."""

    title: str
    averaged: tuple[str, ...]
    unjudged: str  # the per-subset metric that is the answer score when no judge ran
    unjudged_name: str  # its name in metrics.json's table (``answer_score``) and a key of SCORE_NAMES
    answer_meaning: str
    average_note: str


SPECS = {
    "viscot": TableSpec("VisCoT benchmark", VISCOT_AVERAGED, "answer_accuracy", "exact_match",
                        "the judge's mean score when a judge ran; else exact match.",
                        "VisCoT's scripts average 11 subsets"),
    "ground-r1": TableSpec("VisCoT benchmark, Ground-R1's protocol", GROUND_R1_AVERAGED, "rule_score", "rule",
                           "the judge's mean score when a judge ran; else Ground-R1's rule of the subset (option "
                           "letter, 1 - word error rate, ROUGE, containment).",
                           "Ground-R1's table averages 12 subsets"),
}  # fmt: skip
SCORE_NAMES = {"judge": "judge", "rule": "Ground-R1's rules", "exact_match": "exact match"}
"""A table's answer score (``answer_score`` in its metrics) in words: the report's and the leaderboard's."""
CSV_COLUMNS = ("subset", "name", "questions", "answer_score", "exact_match", "judge_score", "rule_score",
               "detection_acc_at_50", "mean_iou", "in_average")


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


def _order(subset: str, averaged: tuple[str, ...]) -> tuple[int, int, str]:
    names = list(VISCOT_NAMES)
    return (averaged.index(subset) if subset in averaged else len(averaged),
            names.index(subset) if subset in names else len(names), subset)  # fmt: skip


def benchmark_table(metrics: dict[str, Any], *, judged: bool, benchmark: str = "viscot") -> dict[str, Any]:
    """The per-subset rows and the average, from ``metrics["subsets"]`` (the field, judge and rule metrics included)."""
    spec = SPECS[benchmark]
    averaged_subsets = spec.averaged
    rows = []
    for subset in sorted(metrics["subsets"], key=lambda name: _order(name, averaged_subsets)):
        values = metrics["subsets"][subset]
        judge = values.get("judge_score") if judged else None
        rows.append({
            "subset": subset,
            "name": VISCOT_NAMES.get(subset, subset),
            "questions": values["samples"],
            "answer_score": judge if judged else values.get(spec.unjudged),
            "exact_match": values.get("answer_accuracy"),
            "judge_score": judge,
            "rule_score": values.get("rule_score"),
            "detection_acc_at_50": values.get("first_box_acc_at_50"),
            "mean_iou": values.get("truth_mean_iou"),
            "in_average": subset in averaged_subsets,
        })
    averaged = [row for row in rows if row["in_average"]]
    average: dict[str, Any] = {"subset": "average", "name": "Average"}
    average["questions"] = sum(row["questions"] for row in averaged)
    for key in ("answer_score", "exact_match", "judge_score", "rule_score", "detection_acc_at_50", "mean_iou"):
        values = [row[key] for row in averaged if row[key] is not None]
        average[key] = sum(values) / len(values) if values else None
    average["in_average"] = True
    return {
        "benchmark": benchmark,
        "answer_score": "judge" if judged else spec.unjudged_name,
        "subsets": rows,
        "average": average,
        "averaged_subsets": [row["subset"] for row in averaged if row["answer_score"] is not None],
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


def official_aggregates(rows: list[dict[str, Any]], records_by_id: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The aggregates a benchmark's own harness reports beside plain accuracy, where the records carry what they are
    built from (``{}`` otherwise; of the first answer):

    - ``cycles``, ``cycle_average``: HR-Bench's (VLMEvalKit's ``report_acc_hrbench``): answer accuracy per cycle
      (``provenance.cycle_category``), overall (``all``) and per subset, then each summed over the cycles and divided
      by their number (a subset missing from a cycle counts 0 there, as VLMEvalKit counts it);
    - ``task_groups``: subsets named ``<group>/<task>`` (TreeBench's and MME-RealWorld's Perception and Reasoning):
      answer accuracy pooled over each group's tasks.

    >>> rows = [{"id": str(i), "subset": s, "answer_correct": c} for i, (s, c) in enumerate(
    ...     [("FSP", True), ("FCP", False), ("FSP", True), ("FSP", False)])]
    >>> records = {str(i): {"provenance": {"cycle_category": c}} for i, c in enumerate(["c1", "c1", "c2", "c2"])}
    >>> official_aggregates(rows, records)["cycle_average"]  # FCP: 0 in c1, absent from c2
    {'FCP': 0.0, 'FSP': 0.75, 'all': 0.5}
    >>> official_aggregates([{"id": "0", "subset": "Perception/OCR", "answer_correct": True}], {"0": {}})
    {'task_groups': {'Perception': {'samples': 1, 'answer_accuracy': 1.0}}}
    """
    found: dict[str, Any] = {}
    cycles: dict[str, dict[str, list[bool]]] = {}
    groups: dict[str, list[bool]] = {}
    for row in rows:
        correct = bool(row.get("answer_correct"))
        cycle = (records_by_id[str(row["id"])].get("provenance") or {}).get("cycle_category")
        if cycle:
            by_type = cycles.setdefault(str(cycle), {})
            by_type.setdefault("all", []).append(correct)
            by_type.setdefault(str(row["subset"]), []).append(correct)
        if "/" in str(row["subset"]):
            groups.setdefault(str(row["subset"]).split("/", 1)[0], []).append(correct)
    if cycles:
        found["cycles"] = {cycle: {kind: sum(v) / len(v) for kind, v in sorted(by_type.items())}
                           for cycle, by_type in sorted(cycles.items())}  # fmt: skip
        per_cycle = list(found["cycles"].values())
        kinds = sorted({kind for by_type in per_cycle for kind in by_type})
        # over every cycle, as VLMEvalKit divides: a subset a cycle lacks counts 0 there
        found["cycle_average"] = {kind: sum(c.get(kind, 0.0) for c in per_cycle) / len(per_cycle) for kind in kinds}
    if groups:
        found["task_groups"] = {group: {"samples": len(v), "answer_accuracy": sum(v) / len(v)}
                                for group, v in sorted(groups.items())}  # fmt: skip
    return found
