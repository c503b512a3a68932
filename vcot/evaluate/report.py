"""The self-contained HTML report: one file, no external assets, readable offline or as an S3 object.

Metric table (overall and per subset), a histogram of per-box IoU, the history of scheduled
re-evaluations when there is one, and a grid of samples: the image (an inlined JPEG thumbnail) with
ground-truth boxes in green and predicted boxes in red (an SVG overlay in 0-1000 coordinates, so boxes
stay exact at any thumbnail size), beside the question, the answer and the reasoning text. Each table and the
samples have a legend that says what every column, id and box means: the page is read by people who have not
read the code.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from vcot.evaluate.benchmark import SCORE_NAMES, SPECS
from vcot.grounding.boxes import NORM
from vcot.pages.html import box_rects as _box_rects
from vcot.pages.html import highlight_tags, thumbnail_data_uri

HISTOGRAM_BINS = 10
METRIC_COLUMNS = [
    ("samples", "samples", "{:d}"),
    ("box_detection_rate", "box detection", "{:.3f}"),
    ("mean_iou", "mean IoU", "{:.3f}"),
    ("iou_success_rate", "IoU > 0.5", "{:.3f}"),
    ("acc_at_50", "Acc@0.5", "{:.3f}"),
    ("acc_at_75", "Acc@0.75", "{:.3f}"),
    ("first_object_iou", "first-object IoU", "{:.3f}"),
    ("constant_box_iou", "constant box IoU", "{:.3f}"),
    ("first_object_acc_at_50", "first-object Acc@0.5", "{:.3f}"),
    ("answer_accuracy", "answer acc.", "{:.3f}"),
    ("invalid_boxes", "invalid boxes", "{:d}"),
]
METRIC_MEANINGS = {
    "subset": "overall: every sample scored; then one row per subset (the records' subset, e.g. the source "
    "dataset). Boxes are scored on the samples with ground-truth boxes; n/a: not computed for these records.",
    "samples": "records scored (with a prediction).",
    "box detection": "share of responses with at least one valid box.",
    "mean IoU": "mean, over every predicted box, of its IoU (overlap: intersection / union of the two boxes) with "
    "its best-matching ground-truth box; 0 when no box was predicted.",
    "IoU > 0.5": "share of predicted boxes whose best match has an IoU above 0.5.",
    "Acc@0.5": "per sample, predicted boxes paired one-to-one with ground-truth boxes at IoU >= 0.5, divided by the "
    "larger of the two counts, averaged over samples: extra boxes lower it.",
    "Acc@0.75": "the same at IoU >= 0.75.",
    "first-object IoU": "the IoU of the first valid predicted box with the record's first object (0 without a box), "
    "averaged over samples.",
    "constant box IoU": "the same for the one box that, answered for every sample, scores best on this set: the most "
    "a model that ignores the image can reach.",
    "first-object Acc@0.5": "share of samples whose first-object IoU is above 0.5.",
    "answer acc.": "share of samples whose answer (the text after 'Answer:') matches the record's answer.",
    "invalid boxes": "boxes written that cannot be read (out of range, inverted, wrong number of coordinates): "
    "counted, never repaired, not scored.",
}
"""What each column of the metric table means, shown under it (``vcot.scoring.metrics`` defines them)."""
FIELD_MEANINGS = {
    "subset": "as in the Metrics table; samples with ground-truth boxes only.",
    "mIoU (TreeBench)": "mean, over ground-truth boxes, of the best IoU among the predicted boxes (extra predicted "
    "boxes cost nothing).",
    "dual IoU": "half that (recall) plus half the mean, over predicted boxes, of the best IoU among the ground truth "
    "(precision): flooding with boxes lowers it (TreeVGR).",
    "union IoU (GRIT)": "the IoU of the area all predicted boxes cover with the area all ground-truth boxes cover.",
    "first-box Acc@0.5": "share of samples whose reasoning's first box has an IoU above 0.5 with a ground-truth box "
    "(VisCoT's detection).",
    "consistency": "answer-grounding consistency, CR / (CR + CM + WR) (MM-GCoT).",
    "CR, CM, WR, WW": "samples counted by answer and grounding (mIoU above 0.5): right and grounded, right but not "
    "grounded, wrong but grounded, wrong and not grounded.",
}
"""What each column of the field's table means (``vcot.scoring.field_metrics`` defines them)."""
SAMPLE_MEANINGS = [
    ('<span style="color:#00b050">&#9632; ground truth</span>', "the record's boxes."),
    ('<span style="color:#e00000">&#9632; predicted</span>', "the boxes the model wrote, read back into the image."),
    ('<span style="color:#999999">&#9633; constant box</span>', "dashed: the set's constant box (Metrics, above)."),
    ("<b>id</b> (subset)", "the record's id, as in the records and the predictions files, and its subset."),
    ("<b>Answer</b>, <b>predicted</b>", "the record's answer; the model's (after 'Answer:'), correct or wrong."),
    ("<b>IoU per box</b>", "each valid predicted box's IoU with its best-matching ground-truth box."),
    ("reasoning", "the response as written: <ref> (blue) names an object, <box> (red) its box."),
]
"""The samples' legend: the coloured boxes and each line of a card (terms are HTML, meanings plain text)."""
FIELD_KEYS = ("truth_mean_iou", "dual_iou", "union_iou", "first_box_acc_at_50", "consistency")
HISTORY_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 12px 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.regression { background: #fde2e2; border: 1px solid #c00; padding: 8px 12px; color: #900; }
.ok { background: #e5f5e5; border: 1px solid #3a3; padding: 8px 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(660px, 1fr)); gap: 16px; }
.sample { display: flex; gap: 12px; border: 1px solid #ddd; padding: 8px; border-radius: 6px; }
.figure { position: relative; flex: 0 0 320px; align-self: flex-start; line-height: 0; }
.figure img, .figure .placeholder { display: block; width: 100%; height: auto; }
.figure svg.boxes { position: absolute; left: 0; top: 0; width: 100%; height: 100%; }
.placeholder { background: #eee; }
.text { font-size: 13px; line-height: 1.4; overflow-wrap: anywhere; }
.reasoning { white-space: pre-wrap; background: #fafafa; padding: 4px; }
.tag-box { color: #c00; font-weight: 600; }
.tag-ref { color: #05a; }
.correct { color: #080; } .wrong { color: #c00; }
.legend span { margin-right: 16px; }
dl.legend { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; font-size: 13px; max-width: 1100px; }
dl.legend dt { font-weight: 600; } dl.legend dd { margin: 0; color: #444; }
"""


def _fmt(value: Any, pattern: str) -> str:
    if value is None:
        return "n/a"
    return pattern.format(value)


def legend(legend_id: str, entries: Sequence[tuple[str, str]]) -> str:
    """A definition list under a table: each term (HTML) and what it means (plain text)."""
    items = "".join(f"<dt>{term}</dt><dd>{html.escape(meaning)}</dd>" for term, meaning in entries)
    return f'<dl class="legend" id="{legend_id}">{items}</dl>'


def metric_table(metrics: dict[str, Any]) -> str:
    """An HTML table: one row for overall, one per subset."""
    header = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in METRIC_COLUMNS)
    rows = [("overall", metrics["overall"])] + list(metrics.get("subsets", {}).items())
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td>{_fmt(values.get(key), pattern)}</td>" for key, _, pattern in METRIC_COLUMNS)
        + "</tr>"
        for name, values in rows
    )
    return f'<table id="metrics"><thead><tr><th>subset</th>{header}</tr></thead><tbody>{body}</tbody></table>'


def _table(table_id: str, header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """An HTML table; cells are already escaped and formatted."""
    head = "".join(f"<th>{html.escape(label)}</th>" for label in header)
    rows = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in body)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def field_table(metrics: dict[str, Any]) -> str:
    """The field's grounding metrics (``vcot.scoring.field_metrics``), overall and per subset."""
    header = ["subset", "mIoU (TreeBench)", "dual IoU", "union IoU (GRIT)", "first-box Acc@0.5", "consistency",
              "CR", "CM", "WR", "WW"]
    body = []
    for name, values in [("overall", metrics["overall"]), *metrics.get("subsets", {}).items()]:
        counts = values.get("consistency_counts", {})
        cells = [_fmt(values.get(key), "{:.3f}") for key in FIELD_KEYS]
        body.append([html.escape(name), *cells, *(str(counts.get(case, 0)) for case in ("CR", "CM", "WR", "WW"))])
    explained = [(html.escape(term), meaning) for term, meaning in FIELD_MEANINGS.items()]
    return _table("field-metrics", header, body) + legend("field-legend", explained)


def judge_table(metrics: dict[str, Any]) -> str:
    """The judge's score beside exact match, overall and per subset, with its failures and what it cost."""
    judge = metrics["details"]["judge"]
    ledger = judge["ledger"]
    cost = ledger.get("estimated_cost_usd")
    line = (
        f"<p>Judge <b>{html.escape(judge['model'])}</b> (VisCoT's protocol): {ledger['requests']} requests, "
        f"{ledger['cache_hits']} from the cache, {ledger['retries']} retries, "
        f"{ledger['prompt_tokens'] + ledger['completion_tokens']} tokens"
        + (f", about ${cost:.4f}" if cost is not None else "") + ".</p>"
    )
    body = []
    for name, values in [("overall", metrics["overall"]), *metrics.get("subsets", {}).items()]:
        failures = ", ".join(f"{k}: {v}" for k, v in values.get("judge_failures", {}).items()) or "none"
        body.append([html.escape(name), _fmt(values.get("judge_score"), "{:.3f}"), str(values.get("judge_scored", 0)),
                     _fmt(values.get("answer_accuracy"), "{:.3f}"), html.escape(failures)])
    explained = [
        ("judge score", "the judge's mean score (0-1) of the answers it scored."),
        ("judged", "how many answers it scored."),
        ("exact match", "answer acc. of the Metrics table, for comparison."),
        ("judge failures", "answers it could not score, by reason (not counted in its score)."),
    ]
    return (line + _table("judge", ["subset", "judge score", "judged", "exact match", "judge failures"], body)
            + legend("judge-legend", explained))


def benchmark_section(table: dict[str, Any]) -> str:
    """The benchmark's per-subset table, as the paper names the subsets (``vcot.evaluate.benchmark``)."""
    spec = SPECS[table["benchmark"]]
    header = ["subset", "questions", f"answer score ({SCORE_NAMES[table['answer_score']]})",
              "detection Acc@0.5 (first box)", "mean IoU"]  # fmt: skip
    body = [
        [html.escape(row["name"]) + ("" if row["in_average"] else " *"), str(row["questions"]),
         *(_fmt(row[key], "{:.3f}") for key in ("answer_score", "detection_acc_at_50", "mean_iou"))]
        for row in [*table["subsets"], table["average"]]
    ]
    note = f"<p>* not in the average ({spec.average_note}). Also in benchmark.csv.</p>"
    explained = [
        ("questions", "the subset's questions scored."),
        ("answer score", spec.answer_meaning),
        ("detection Acc@0.5 (first box)", "share of questions whose first box has an IoU above 0.5 with a "
         "ground-truth box."),
        ("mean IoU", "TreeBench's mIoU: the mean over ground-truth boxes of the best IoU among the predicted ones "
         "(0 when none was predicted); not the Metrics table's mean IoU, which averages over predicted boxes."),
    ]
    table_html = _table("benchmark", header, body) + legend("benchmark-legend", explained)
    return f"<h2>{html.escape(spec.title)}</h2>{table_html}{note}"


def styles_section(comparison: dict[str, Any]) -> str:
    """Chain-of-thought against direct answers on the same samples, per subset (``vcot.evaluate.styles``)."""
    styles = comparison["styles"]
    metrics = [name for name in ("answer_accuracy", "judge_score") if name in comparison["rows"][0]]
    paired = {"cot", "direct"} <= set(styles)
    header = ["subset", "samples"]
    for name in metrics:
        label = "answer acc." if name == "answer_accuracy" else "judge score"
        header += [f"{label} {style}" for style in styles] + ([f"{label} cot - direct"] if paired else [])
    body = []
    for row in comparison["rows"]:
        cells = [html.escape(row["subset"]), str(row["samples"][styles[0]])]
        for name in metrics:
            cells += [_fmt(row[name][style], "{:.3f}") for style in styles]
            cells += [_fmt(row.get(f"{name}_difference"), "{:+.3f}")] if paired else []
        body.append(cells)
    title = "Chain of thought vs direct answers" if paired else "Answers side by side (greedy, BiN, best-of-N)"
    return f"<h2>{title}</h2>" + _table("prompt-styles", header, body)


def field_sections(metrics: dict[str, Any]) -> list[str]:
    """The report's sections beyond the seed's metric table: the field's metrics, the judge, benchmark, styles."""
    sections = ["<h2>Grounding metrics of the field</h2>" + field_table(metrics)]
    if metrics["details"].get("judge"):
        sections.append("<h2>LLM judge</h2>" + judge_table(metrics))
    if metrics.get("benchmark"):
        sections.append(benchmark_section(metrics["benchmark"]))
    if metrics.get("official"):
        sections.append(official_section(metrics["official"]))
    if metrics.get("prompt_styles"):
        sections.append(styles_section(metrics["prompt_styles"]))
    sections.append(protocol_section(metrics))
    return sections


def official_section(official: dict[str, Any]) -> str:
    """The aggregates the benchmark's own harness reports (``vcot.evaluate.benchmark.official_aggregates``)."""
    parts = ["<h2>The benchmark's own aggregates</h2>"]
    if official.get("cycles"):
        kinds = list(official["cycle_average"])
        body = [[html.escape(name), *(_fmt(values.get(kind), "{:.3f}") for kind in kinds)]
                for name, values in [*official["cycles"].items(), ("average over cycles", official["cycle_average"])]]
        parts.append("<p>Answer accuracy per cycle and its average over the cycles (HR-Bench's score, as "
                     "VLMEvalKit reports it).</p>" + _table("cycles", ["cycle", *kinds], body))
    if official.get("task_groups"):
        body = [[html.escape(group), str(values["samples"]), _fmt(values["answer_accuracy"], "{:.3f}")]
                for group, values in official["task_groups"].items()]
        parts.append("<p>Answer accuracy pooled over the tasks of each group of subsets named group/task (TreeBench's "
                     "and MME-RealWorld's Perception and Reasoning).</p>"
                     + _table("task-groups", ["group", "questions", "answer acc."], body))
    return "".join(parts)


AVG_COLUMNS = (("answer_accuracy", "answer acc."), ("first_box_acc_at_50", "first-box Acc@0.5"),
               ("truth_mean_iou", "mIoU (TreeBench)"), ("box_missing_or_invalid", "boxes missing or invalid"))  # fmt: skip


def protocol_section(metrics: dict[str, Any]) -> str:
    """How the questions were asked (Avg@k, decoding, option order), the Avg@k table, and the first box's Acc@0.5
    read once beside the best-of-two reading (``vcot.evaluate.protocol``, ``vcot.scoring.field_metrics``)."""
    protocol = metrics["details"].get("protocol") or {}
    said = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in protocol.items() if value is not None)
    parts = [f'<h2>Protocol</h2><p id="protocol">{html.escape(said or "as given")}.</p>']
    avg = metrics.get("avg_at_k")
    if avg:
        k = avg["k"]
        header = ["subset", *(f"{label} Avg@{k}" for _, label in AVG_COLUMNS), f"answer acc. range over {k}"]
        spread = avg["range"].get("answer_accuracy", [None, None])
        body = [["overall", *(_fmt(avg["overall"].get(key), "{:.3f}") for key, _ in AVG_COLUMNS),
                 f"{_fmt(spread[0], '{:.3f}')} - {_fmt(spread[1], '{:.3f}')}"]]  # fmt: skip
        body += [[html.escape(name), *(_fmt(values.get(key), "{:.3f}") for key, _ in AVG_COLUMNS), ""]
                 for name, values in avg["subsets"].items()]  # fmt: skip
        parts.append(f"<p>Each question answered {k} times; Avg@{k} is each score's mean over the {k} answers (the "
                     "tables above score the first).</p>" + _table("avg-at-k", header, body))  # fmt: skip
    overall = metrics["overall"]
    if "best_of_two_acc_at_50" in overall:
        parts.append(
            f'<p id="best-of-two">First-box Acc@0.5 read once, in the model\'s own frame: '
            f"{overall['single_reading_acc_at_50']:.3f}. Read both ways (0-1000 and pixels) keeping the better, as "
            f"some harnesses score RefCOCO (best-of-two): {overall['best_of_two_acc_at_50']:.3f} "
            f"({overall['best_of_two_inflation']:+.3f}, not a score of the model).</p>"
        )
    return "".join(parts)


def constant_box_note(overall: dict[str, Any]) -> str:
    """What the constant-box column means, with this set's box: the bar for a model that looks at the image."""
    box = overall.get("constant_box")
    if not box:
        return ""
    first, constant = overall.get("first_object_iou") or 0.0, overall.get("constant_box_iou") or 0.0
    ratio = f"{first / constant:.1f}x" if constant else "n/a"
    return (
        f'<p id="constant-box">First-object IoU: the first predicted box against the first ground-truth object of the record. '
        f"Constant box: the one box {html.escape(str(box))} that, answered for every sample, scores best on this set "
        f"(IoU {constant:.3f}; dashed grey in the samples): no model that ignores the image can beat it. "
        f"This model: {first:.3f} ({ratio} the constant box).</p>"
    )


def iou_histogram(ious: Sequence[float], bins: int = HISTOGRAM_BINS) -> str:
    """An inline SVG bar chart of IoU values in ``bins`` equal bins over [0, 1]."""
    counts = [0] * bins
    for value in ious:
        counts[min(int(value * bins), bins - 1)] += 1
    width, height, pad = 420, 180, 24
    bar = (width - 2 * pad) / bins
    top = max(counts) or 1
    parts = [f'<svg class="histogram" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for index, count in enumerate(counts):
        bar_height = (height - 2 * pad) * count / top
        x = pad + index * bar
        y = height - pad - bar_height
        parts.append(
            f'<rect class="bin" data-count="{count}" x="{x:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" '
            f'height="{bar_height:.1f}" fill="#4a7bd0"><title>{index / bins:.1f}-{(index + 1) / bins:.1f}: {count}</title></rect>'
        )
        if count:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{y - 3:.1f}" font-size="10" text-anchor="middle">{count}</text>')
    for tick in range(0, bins + 1, 2):
        parts.append(
            f'<text x="{pad + tick * bar:.1f}" y="{height - 8}" font-size="10" text-anchor="middle">{tick / bins:.1f}</text>'
        )
    parts.append(f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#333"/></svg>')
    return "".join(parts)


def history_plot(entries: Sequence[dict[str, Any]], metrics: Sequence[str]) -> str:
    """An inline SVG line chart of watched metrics over the history entries (oldest left)."""
    width, height, pad = 640, 220, 32
    count = len(entries)
    step = (width - 2 * pad) / max(count - 1, 1)
    parts = [f'<svg class="history" width="{width}" height="{height + 20 * len(metrics)}" viewBox="0 0 {width} {height + 20 * len(metrics)}">']
    parts.append(f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="none" stroke="#ccc"/>')
    for tick in (0.0, 0.5, 1.0):
        y = height - pad - tick * (height - 2 * pad)
        parts.append(f'<text x="{pad - 4}" y="{y + 3:.1f}" font-size="10" text-anchor="end">{tick:.1f}</text>')
    for position, entry in enumerate(entries):
        label = str(entry.get("run") or entry.get("output") or position).rstrip("/").rsplit("/", 1)[-1][:14]
        parts.append(
            f'<text x="{pad + position * step:.1f}" y="{height - pad + 14}" font-size="9" text-anchor="middle">{html.escape(label)}</text>'
        )
    for index, name in enumerate(metrics):
        color = HISTORY_COLORS[index % len(HISTORY_COLORS)]
        points = []
        for position, entry in enumerate(entries):
            value = entry.get("metrics", {}).get(name)
            if value is not None:
                points.append((pad + position * step, height - pad - float(value) * (height - 2 * pad)))
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(f'<polyline class="series" data-metric="{html.escape(name)}" points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in points)
        parts.append(f'<text x="{pad}" y="{height + 14 + 20 * index}" font-size="12" fill="{color}">&#9632; {html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def sample_card(row: dict[str, Any], record: dict[str, Any], constant_box: Sequence[int] | None = None) -> str:
    """One sample: the image with boxes (and the set's constant box, dashed), beside question, answers and reasoning."""
    width, height = int(record.get("width") or 1), int(record.get("height") or 1)
    source = thumbnail_data_uri(record["image"]) if record.get("image") else None
    if source:
        picture = f'<img src="{source}" alt="{html.escape(str(row["id"]))}">'
    else:
        picture = f'<svg class="placeholder" viewBox="0 0 {width} {height}"><text x="10" y="30">image unavailable</text></svg>'
    overlay = (
        f'<svg class="boxes" viewBox="0 0 {NORM} {NORM}" preserveAspectRatio="none">'
        + (_box_rects([constant_box], "constant", "#999999", dashed=True) if constant_box else "")
        + _box_rects(row["truth_boxes"], "gt", "#00b050")
        + _box_rects([b["box"] for b in row["boxes"]], "pred", "#e00000")
        + "</svg>"
    )
    verdict = '<span class="correct">correct</span>' if row["answer_correct"] else '<span class="wrong">wrong</span>'
    no_iou = "no valid box" if row["truth_boxes"] else "no truth box"
    ious = ", ".join(f"{value:.2f}" for value in row["best_ious"]) or no_iou
    invalid = f" &middot; {len(row['invalid_boxes'])} invalid box(es)" if row["invalid_boxes"] else ""
    return (
        f'<div class="sample" data-id="{html.escape(str(row["id"]))}">'
        f'<div class="figure">{picture}{overlay}</div>'
        f'<div class="text"><b>{html.escape(str(row["id"]))}</b> ({html.escape(str(row["subset"]))})<br>'
        f"<b>Q:</b> {html.escape(str(record.get('question', '')))}<br>"
        f"<b>Answer:</b> {html.escape(str(record.get('answer', '')))} &middot; <b>predicted:</b> "
        f"{html.escape(row['predicted_answer'])} ({verdict})<br>"
        f"<b>IoU per box:</b> {ious}{invalid}{_judged(row)}"
        f'<div class="reasoning">{highlight_tags(row["prediction"])}</div></div></div>'
    )


def _judged(row: dict[str, Any]) -> str:
    if "judge_score" not in row:
        return ""
    score = row["judge_score"]
    verdict = _fmt(score, "{:.2f}") if score is not None else html.escape(str(row["judge_failure"]))
    return f" &middot; <b>judge:</b> {verdict}"


def build_report(
    *,
    title: str,
    metrics: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    records: dict[str, dict[str, Any]],
    details: dict[str, Any],
    max_samples: int,
    history: Sequence[dict[str, Any]] = (),
    regression: dict[str, Any] | None = None,
    extra_sections: Sequence[str] = (),
) -> str:
    """The whole report as one HTML string; ``extra_sections`` (HTML) follow the metric table."""
    sections = [f"<h1>{html.escape(title)}</h1>"]
    sections.append(
        "<p>" + " &middot; ".join(f"<b>{html.escape(k)}</b>: {html.escape(str(v))}" for k, v in details.items()) + "</p>"
    )
    if regression is not None:
        if regression["regressions"]:
            lines = "".join(f"<li>{html.escape(line)}</li>" for line in regression["regressions"])
            sections.append(f'<div class="regression" id="regression"><b>Regression</b><ul>{lines}</ul></div>')
        else:
            sections.append('<div class="ok" id="regression">No regression against the previous and best entries.</div>')
    explained = [(html.escape(term), meaning) for term, meaning in METRIC_MEANINGS.items()]
    sections.append("<h2>Metrics</h2>" + metric_table(metrics) + legend("metric-legend", explained)
                    + constant_box_note(metrics["overall"]))
    sections.extend(extra_sections)
    all_ious = [value for row in rows for value in row["best_ious"]]
    sections.append(f"<h2>IoU of each predicted box with its best match ({len(all_ious)} boxes)</h2>" + iou_histogram(all_ious))
    if history:
        watched = regression["metrics"] if regression else ["mean_iou", "iou_success_rate"]
        sections.append(f"<h2>History ({len(history)} evaluations)</h2>" + history_plot(history, watched))
    shown = list(rows[:max_samples])
    sections.append(
        f"<h2>Samples ({len(shown)} of {len(rows)})</h2>"
        + legend("sample-legend", SAMPLE_MEANINGS)
        + '<div class="grid">'
        + "".join(sample_card(row, records[str(row["id"])], metrics["overall"].get("constant_box")) for row in shown)
        + "</div>"
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(sections)}</body></html>"
    )
