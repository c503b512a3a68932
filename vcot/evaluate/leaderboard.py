"""``vcot-leaderboard``: one table of models x benchmarks, built from committed evaluate outputs.

A row per model (a served model's name, a run, an adapter, a predictions file), a column group per benchmark and
protocol: evaluations of the same benchmark asked differently (another split or slice, Avg@k, temperature, shuffled
options, prompt style) are never mixed in one column, and the header says how each was asked. Each cell holds the
answer score (Avg@k when k > 1; the judge's when one ran), and on benchmarks with boxes the traceability numbers:
first-box Acc@0.5 (read once, in the model's frame), TreeBench's mIoU, answer-grounding consistency and the share of
answers with boxes missing or invalid. Outputs: ``leaderboard.html`` (one self-contained page), ``leaderboard.json``,
``leaderboard.csv`` (one line per model); rebuilt on every run (cheap), committed with a manifest written last.
"""

from __future__ import annotations

import csv
import html
import io
import json
from dataclasses import dataclass
from typing import Any

from vcot.config import option, redacted
from vcot.errors import ConfigError
from vcot.evaluate.benchmark import SCORE_NAMES, benchmark_name
from vcot.io import manifest, shards, storage
from vcot.log import get_logger

log = get_logger(__name__)

STAGE = "leaderboard"
EVALUATE = "evaluate"
CELL_METRICS = (
    ("answer", "answer"),
    ("first_box_acc_at_50", "first-box Acc@0.5"),
    ("truth_mean_iou", "mIoU"),
    ("consistency", "consistency"),
    ("box_missing_or_invalid", "boxes missing/invalid"),
)
"""Each cell's numbers (key in a column, label): the answer score, then the traceability metrics."""
GROUNDING = tuple(key for key, _ in CELL_METRICS[1:])


@dataclass
class LeaderboardConfig:
    """Build the leaderboard page and tables from committed evaluate outputs."""

    evals: list[str] = option(
        help="Comma-separated committed evaluate outputs, or folders searched for them (every committed evaluate "
        "output below a folder is a cell)."
    )
    output: str = option(help="Folder to write leaderboard.html, leaderboard.json and leaderboard.csv to.")
    title: str = option("vcot leaderboard", help="The page's title.")


def evaluate_outputs(locations: list[str]) -> list[str]:
    """The committed evaluate outputs at or below each location, in order, each once."""
    found: list[str] = []
    for location in locations:
        location = location.rstrip("/")
        if manifest.committed_stage(location) == EVALUATE:
            found.append(location)
            continue
        for marker in storage.list_uris(location, suffix=manifest.SUCCESS):
            output = storage.parent(marker)
            if marker == manifest.manifest_uri(output) and manifest.committed_stage(output) == EVALUATE:
                found.append(output)
    return list(dict.fromkeys(found))


def model_name(details: dict[str, Any]) -> str:
    """The row an evaluation belongs to: the served model's name, else the run (a run's ``adapter/``, or a full
    fine-tune's ``model/``, counts as its run, so model mode and the scheduled re-evaluation of one run share a row),
    model or predictions file.

    >>> model_name({"mode": "served", "served_model": "r1"}), model_name({"adapter": "s3://b/runs/r2/train/adapter"})
    ('r1', 's3://b/runs/r2/train')
    """
    adapter = str(details.get("adapter") or "").rstrip("/")
    model = str(details.get("model") or "").rstrip("/")
    if not details.get("run") and adapter.endswith("/adapter"):
        details = {**details, "run": adapter.removesuffix("/adapter")}
    elif not details.get("run") and not adapter and model.endswith("/model"):
        run = model.removesuffix("/model")
        if manifest.committed_stage(run) == "train":  # a full fine-tune's model/, not any folder named model
            details = {**details, "run": run}
    for key in ("served_model", "run", "adapter", "model", "predictions"):
        if details.get(key):
            return str(details[key]).rstrip("/")
    return "unknown"


def protocol_label(protocol: dict[str, Any]) -> str:
    """How a benchmark was asked, in words (what makes two evaluations comparable).

    >>> protocol_label({"split": "all", "samples": 8, "temperature": 1.0, "top_p": 1.0, "shuffle_options": 0})
    'split all, Avg@8, temperature 1.0, options shuffled (seed 0)'
    >>> protocol_label({"split": "val", "max_per_subset": 150, "samples": 1, "temperature": 0.0,
    ...                 "prompt_style": "direct"})
    'split val, first 150 per subset, greedy, direct answers'
    """
    parts = [f"split {protocol.get('split', '?')}"]
    if protocol.get("max_per_subset"):
        parts.append(f"first {protocol['max_per_subset']} per subset")
    if protocol.get("max_samples"):
        parts.append(f"first {protocol['max_samples']}")
    samples = int(protocol.get("samples") or 1)
    parts.append(f"Avg@{samples}" if samples > 1 else "")
    temperature = protocol.get("temperature")
    if temperature:
        top_p = protocol.get("top_p", 1.0)
        parts.append(f"temperature {temperature}" + (f", top-p {top_p}" if top_p < 1 else ""))
    elif temperature is not None:
        parts.append("greedy")
    if protocol.get("shuffle_options") is not None:
        parts.append(f"options shuffled (seed {protocol['shuffle_options']})")
    if protocol.get("prompt_style") == "direct":
        parts.append("direct answers")
    return ", ".join(part for part in parts if part)


def cell(metrics: dict[str, Any]) -> dict[str, Any]:
    """One evaluation's numbers: the answer score (Avg@k's mean when k > 1, the judge's when one ran; with a benchmark
    table, its average over the subsets, and with HR-Bench's cycles, the average over them, as the papers report
    them) and, when the data has boxes, the traceability metrics (of the first answer, or their Avg@k)."""
    overall = metrics["overall"]
    averaged = (metrics.get("avg_at_k") or {}).get("overall") or {}
    judged = overall.get("judge_score") is not None
    answer_key = "judge_score" if judged else "answer_accuracy"
    found: dict[str, Any] = {
        "answer": averaged.get(answer_key, overall.get(answer_key)),
        "answer_score": "judge score" if judged else "exact match",
        "samples": overall.get("samples"),
    }
    averaged_table = None if judged else (metrics.get("avg_at_k") or {}).get("benchmark")  # the judge's is the first's
    table = averaged_table or metrics.get("benchmark")
    cycles = (metrics.get("official") or {}).get("cycle_average")
    if cycles and not averaged and not judged:  # HR-Bench: its score is the average over cycles
        count = len(metrics["official"]["cycles"])
        found.update(answer=cycles["all"], answer_score=f"exact match, mean of {count} cycles")
    if table:
        found["answer"] = table["average"]["answer_score"]
        found["answer_score"] = (f"{SCORE_NAMES[table['answer_score']]}, mean of "
                                 f"{len(table['averaged_subsets'])} subsets")  # fmt: skip
    if overall.get("grounded_samples"):
        found.update({key: averaged.get(key, overall.get(key)) for key in GROUNDING})
    return found


def evaluation_entry(output: str) -> dict[str, Any]:
    """What the leaderboard takes from one committed evaluate output."""
    metrics = json.loads(manifest.read_listed(output, "metrics.json"))
    details = metrics.get("details", {})
    protocol = details.get("protocol") or {"split": details.get("split"), "samples": 1}
    benchmark = details.get("benchmark_name") or benchmark_name([], str(details.get("data", "?")))  # older outputs
    numbers = cell(metrics)
    scored_as = "" if numbers["answer_score"] == "exact match" else f", {numbers['answer_score']}"  # never mixed
    return {
        "model": model_name(details),
        "benchmark": benchmark,
        "protocol": protocol_label(protocol) + scored_as,
        "output": output,
        "evaluated_at": details.get("evaluated_at") or "",
        "cell": numbers,
    }


def build_table(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Columns (benchmark, protocol) in the order first seen, rows per model; a model evaluated twice the same way
    keeps its newest evaluation (the others are listed as ``replaced``)."""
    columns: dict[tuple[str, str], dict[str, Any]] = {}
    rows: dict[str, dict[str, Any]] = {}
    replaced: list[str] = []
    for entry in sorted(entries, key=lambda e: str(e["evaluated_at"])):  # stable: outputs without a time first
        key = (entry["benchmark"], entry["protocol"])
        column = columns.setdefault(key, {"id": f"c{len(columns)}", "benchmark": key[0], "protocol": key[1],
                                          "grounded": False})  # fmt: skip
        column["grounded"] |= any(k in entry["cell"] for k in GROUNDING)
        row = rows.setdefault(entry["model"], {"model": entry["model"], "cells": {}, "sources": {}})
        if column["id"] in row["sources"]:
            replaced.append(row["sources"][column["id"]])
        row["cells"][column["id"]] = entry["cell"]
        row["sources"][column["id"]] = entry["output"]
    ordered = sorted(columns.values(), key=lambda c: (c["benchmark"], c["protocol"]))
    return {"columns": ordered, "rows": sorted(rows.values(), key=lambda r: r["model"]), "replaced": replaced}


def column_metrics(column: dict[str, Any]) -> list[tuple[str, str]]:
    return list(CELL_METRICS) if column["grounded"] else list(CELL_METRICS[:1])


def _number(value: Any) -> str:
    return "" if value is None else f"{value:.4f}"


def table_csv(table: dict[str, Any]) -> str:
    """One line per model; a column per (benchmark, protocol, metric), named ``benchmark [protocol] metric``."""
    header = ["model"]
    fields: list[tuple[str, str]] = []
    for column in table["columns"]:
        for key, label in column_metrics(column):
            header.append(f"{column['benchmark']} [{column['protocol']}] {label}")
            fields.append((column["id"], key))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in table["rows"]:
        writer.writerow([row["model"], *(_number(row["cells"].get(cid, {}).get(key)) for cid, key in fields)])
    return buffer.getvalue()


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 12px 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th.model, td.model { text-align: left; white-space: nowrap; }
th.group { text-align: center; background: #f3f3f3; }
.protocol { font-weight: normal; font-size: 12px; color: #555; }
td.best { font-weight: 700; background: #eef7ee; }
"""


def table_html(table: dict[str, Any], title: str) -> str:
    """The page: a header row per benchmark (its protocol under its name), a row per model, each column's best bold."""
    groups = "".join(
        f'<th class="group" colspan="{len(column_metrics(c))}" data-column="{c["id"]}">{html.escape(c["benchmark"])}'
        f'<br><span class="protocol">{html.escape(c["protocol"])}</span></th>'
        for c in table["columns"]
    )
    labels = "".join(f"<th>{html.escape(label)}</th>" for c in table["columns"] for _, label in column_metrics(c))
    best: dict[tuple[str, str], float] = {}
    for column in table["columns"]:
        for key, _ in column_metrics(column):
            values = [r["cells"][column["id"]].get(key) for r in table["rows"] if column["id"] in r["cells"]]
            values = [v for v in values if v is not None]
            if values:  # missing or invalid boxes: lower is better
                best[(column["id"], key)] = min(values) if key == "box_missing_or_invalid" else max(values)
    body = []
    for row in table["rows"]:
        cells = [f'<td class="model">{html.escape(row["model"])}</td>']
        for column in table["columns"]:
            found = row["cells"].get(column["id"], {})
            for key, _ in column_metrics(column):
                value = found.get(key)
                mark = ' class="best"' if value is not None and best.get((column["id"], key)) == value else ""
                shown = "" if value is None else f"{value * 100:.1f}"
                cells.append(f'<td{mark} data-column="{column["id"]}" data-metric="{key}">{shown}</td>')
        body.append(f'<tr data-model="{html.escape(row["model"])}">{"".join(cells)}</tr>')
    note = ("<p>Scores x 100. Answer: exact match (the judge's score where one ran), the mean over the k answers "
            "for Avg@k; with a benchmark table (viscot, ground-r1) the table's average over its subsets, on "
            "HR-Bench the average over its cycles, as the papers report them (said under the column's name). "
            "Boxes are read once, in each model's own frame. First-box Acc@0.5: VisCoT's detection; "
            "mIoU: TreeBench's; consistency: MM-GCoT's; boxes missing/invalid: lower is better. Bold: the column's "
            "best.</p>")  # fmt: skip
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{note}"
        f'<table id="leaderboard"><thead><tr><th class="model" rowspan="2">model</th>{groups}</tr>'
        f"<tr>{labels}</tr></thead><tbody>{''.join(body)}</tbody></table></body></html>"
    )


def leaderboard(config: LeaderboardConfig) -> dict[str, Any]:
    """Read every evaluation, write the page and the tables, commit; returns the table."""
    outputs = evaluate_outputs(config.evals)
    if not outputs:
        raise ConfigError(f"no committed evaluate output at or below {', '.join(config.evals)}: run vcot-evaluate "
                          "first, or check --evals")  # fmt: skip
    manifest.prepare_output(config.output, stage=STAGE, inputs=config.evals, overwrite=True)  # rebuilt every time
    table = build_table([evaluation_entry(output) for output in outputs])
    files = [
        shards.write_file(config.output, "leaderboard.html", table_html(table, config.title).encode("utf-8")),
        shards.write_file(config.output, "leaderboard.json", storage.dumps_json(table).encode("utf-8")),
        shards.write_file(config.output, "leaderboard.csv", table_csv(table).encode("utf-8")),
    ]
    manifest.commit(config.output, stage=STAGE, files=files, config=redacted(config), inputs=outputs,
                    stats={"models": len(table["rows"]), "columns": len(table["columns"])})  # fmt: skip
    log.info("leaderboard", output=config.output, models=len(table["rows"]), columns=len(table["columns"]),
             replaced=len(table["replaced"]))  # fmt: skip
    return table
