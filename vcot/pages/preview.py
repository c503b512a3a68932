"""``vcot-preview``: a page of records with their boxes drawn, to look at the data before any GPU time is spent.

It reads a committed record output (convert or distill) and writes one self-contained HTML file (the evaluation
report's pieces, ``vcot.pages.html``): per record the image with its ``objects`` boxes (green, labelled with their
ref) and the boxes its rationale names (orange, dashed; they should sit on the green ones), beside the question,
answer and rationale, and why training would skip it when it would. The records shown are a seeded sample of
the split (read once, in one pass), in their order in the data.
"""

from __future__ import annotations

import html
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from vcot.config import option
from vcot.grounding.boxes import parse_grounded
from vcot.grounding.records import grounding_problem
from vcot.io import manifest, storage
from vcot.log import get_logger
from vcot.pages.html import box_rects, highlight_tags, thumbnail_data_uri

log = get_logger(__name__)

OBJECT_COLOR = "#00b050"
RATIONALE_COLOR = "#ff8c00"
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 12px 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(660px, 1fr)); gap: 16px; }
.record { display: flex; gap: 12px; border: 1px solid #ddd; padding: 8px; border-radius: 6px; }
.figure { position: relative; flex: 0 0 320px; align-self: flex-start; line-height: 0; }
.figure img, .figure .placeholder { display: block; width: 100%; height: auto; }
.figure svg.boxes { position: absolute; left: 0; top: 0; width: 100%; height: 100%; }
.figure .label { position: absolute; line-height: 1.2; font-size: 11px; background: #00b050; color: #fff;
  padding: 0 3px; white-space: nowrap; transform: translateY(-100%); }
.placeholder { background: #eee; }
.text { font-size: 13px; line-height: 1.4; overflow-wrap: anywhere; }
.rationale { white-space: pre-wrap; background: #fafafa; padding: 4px; }
.tag-box { color: #c00; font-weight: 600; } .tag-ref { color: #05a; }
.problem { color: #c00; font-weight: 600; }
.legend span { margin-right: 16px; }
"""


@dataclass
class PreviewConfig:
    """Write an HTML page of records with their boxes drawn (a committed convert or distill output)."""

    data: str = option(help="Committed record output (convert or distill): s3://bucket/prefix or a local path.")
    output: str = option(help="The HTML file to write: a local path or an s3:// URI.")
    max: int = option(48, help="How many records to show (a seeded sample of the split).")
    split: Literal["train", "val"] = option("train", help="Which split to show: train or val.")
    seed: int = option(0, help="Seed of the sample: the same seed shows the same records.")

    def __post_init__(self) -> None:
        if self.max < 1:
            raise ValueError("--max must be at least 1")
        if not self.output.endswith((".html", ".htm")):
            raise ValueError("--output must name an .html file")


def sample_records(data: str, split: str, count: int, seed: int) -> tuple[list[dict[str, Any]], Counter[str]]:
    """``count`` records of ``split`` drawn uniformly in one pass (reservoir sampling), in data order; and the
    number of records per subset in the whole split."""
    rng = random.Random(seed)
    chosen: list[tuple[int, dict[str, Any]]] = []
    subsets: Counter[str] = Counter()
    records = manifest.committed_records(data, (f"{split}/",), expect_stage=manifest.RECORD_STAGES)
    for position, record in enumerate(records):
        subsets[str(record.get("subset") or "unknown")] += 1
        if position < count:
            chosen.append((position, record))
        else:
            slot = rng.randrange(position + 1)
            if slot < count:
                chosen[slot] = (position, record)
    return [record for _, record in sorted(chosen, key=lambda pair: pair[0])], subsets


def record_card(record: dict[str, Any]) -> str:
    """One record: its image with boxes and labels, beside its text."""
    record_id = html.escape(str(record.get("id")))
    objects = [o for o in record.get("objects") or [] if isinstance(o, dict) and _drawable(o.get("box"))]
    named = [b.box for b in parse_grounded(str(record.get("rationale") or "")).boxes]
    source = thumbnail_data_uri(record["image"]) if record.get("image") else None
    width, height = int(record.get("width") or 1), int(record.get("height") or 1)
    if source:
        picture = f'<img src="{source}" alt="{record_id}">'
    else:
        picture = (
            f'<svg class="placeholder" viewBox="0 0 {width} {height}">'
            '<text x="10" y="30">image unavailable</text></svg>'
        )
    overlay = (
        '<svg class="boxes" viewBox="0 0 1000 1000" preserveAspectRatio="none">'
        + box_rects([o["box"] for o in objects], "object", OBJECT_COLOR)
        + box_rects(named, "named", RATIONALE_COLOR, dashed=True)
        + "</svg>"
    )
    labels = "".join(
        f'<span class="label" style="left:{o["box"][0] / 10:.1f}%;top:{o["box"][1] / 10:.1f}%">'
        f'{html.escape(str(o.get("ref") or ""))}</span>'
        for o in objects
        if o.get("ref")
    )
    problem = grounding_problem(record)
    flag = f'<br><span class="problem">training skips it: {html.escape(problem)}</span>' if problem else ""
    choices = record.get("choices")
    options = f"<b>Choices:</b> {html.escape(' | '.join(map(str, choices)))}<br>" if choices else ""
    return (
        f'<div class="record" data-id="{record_id}">'
        f'<div class="figure">{picture}{overlay}{labels}</div>'
        f'<div class="text"><b>{record_id}</b> ({html.escape(str(record.get("subset")))}, '
        f"{width}x{height})<br>"
        f"<b>Q:</b> {html.escape(str(record.get('question', '')))}<br>{options}"
        f"<b>Answer:</b> {html.escape(str(record.get('answer', '')))}{flag}"
        f'<div class="rationale">{highlight_tags(str(record.get("rationale") or ""))}</div></div></div>'
    )


def _drawable(box: Any) -> bool:
    return isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)


def build_page(data: str, split: str, records: list[dict[str, Any]], subsets: Counter[str]) -> str:
    """The whole page as one HTML string."""
    title = f"Records: {data} ({split})"
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{n}</td></tr>" for name, n in sorted(subsets.items()))
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<table id="subsets"><thead><tr><th>subset</th><th>records</th></tr></thead><tbody>{rows}</tbody></table>'
        f"<h2>{len(records)} of {sum(subsets.values())} records</h2>"
        f'<p class="legend"><span style="color:{OBJECT_COLOR}">&#9632; objects</span>'
        f'<span style="color:{RATIONALE_COLOR}">&#9633; boxes the rationale names</span></p>'
        f'<div class="grid">{"".join(record_card(r) for r in records)}</div></body></html>'
    )


def preview(config: PreviewConfig) -> str:
    """Write the page; returns its URI. Refuses, before reading anything, a page inside a committed stage output."""
    manifest.check_not_inside_committed(config.output)
    records, subsets = sample_records(config.data, config.split, config.max, config.seed)
    storage.write_text(config.output, build_page(config.data, config.split, records, subsets))
    log.info("preview_written", output=config.output, shown=len(records), records=sum(subsets.values()))
    return config.output
