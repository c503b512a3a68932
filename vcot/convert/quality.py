"""The quality filter (the seed's ``filter_quality``) and the quality report.

A grounded record must pass :func:`vcot.grounding.records.grounding_problem` (valid boxes, a rationale that
grounds them). A record that needs distillation has no boxes yet: it must only carry the fields distill
needs. Every failure is a reason code; the counts here make "accepted + rejected == input" checkable.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from vcot.grounding.records import grounding_problem, record_problem, top_reasons

COUNTERS = (
    "input",
    "accepted",
    "rejected",
    "train",
    "val",
    "grounded",
    "needs_distillation",
    "with_ref",
    "boxes",
    "response_chars",
    "string_box_checked",
    "string_box_disagrees",
    "answers_from_refs",
    "exif_turned",
)
STRING_BOX_TOLERANCE = 2
"""Units (0-1000) by which the padded-string box may differ from the absolute box before it counts as disagreeing."""


def quality_problem(record: dict[str, Any]) -> str | None:
    """Why ``record`` is not accepted (a reason code), or ``None``."""
    return record_problem(record) if record.get("needs_distillation") else grounding_problem(record)


class QualityStats:
    """Counts per subset; plain integers, so the counts of blocks and shards add up (:func:`vcot.grounding.records.merge_counts`)."""

    def __init__(self) -> None:
        self.subsets: dict[str, Counter[str]] = {}
        self.reasons: dict[str, Counter[str]] = {}

    def _counter(self, subset: str) -> Counter[str]:
        if subset not in self.subsets:
            self.subsets[subset] = Counter()
            self.reasons[subset] = Counter()
        return self.subsets[subset]

    def accepted(self, record: dict[str, Any]) -> None:
        counts = self._counter(record.get("subset") or "unknown")
        rationale = record.get("rationale") or ""
        counts["input"] += 1
        counts["accepted"] += 1
        counts[record["split"]] += 1
        counts["needs_distillation" if record.get("needs_distillation") else "grounded"] += 1
        counts["with_ref"] += "<ref>" in rationale
        counts["boxes"] += rationale.count("<box>")
        counts["response_chars"] += len(rationale)
        provenance = record.get("provenance") or {}
        counts["answers_from_refs"] += provenance.get("answer_from") == "refs"
        counts["exif_turned"] += provenance.get("exif_orientation", 1) != 1
        delta = provenance.get("string_box_delta")
        if delta is not None:
            counts["string_box_checked"] += 1
            counts["string_box_disagrees"] += delta > STRING_BOX_TOLERANCE

    def rejected(self, subset: str, reason: str) -> None:
        counts = self._counter(subset or "unknown")
        counts["input"] += 1
        counts["rejected"] += 1
        self.reasons[subset or "unknown"][reason] += 1

    def to_dict(self) -> dict[str, Any]:
        """``{"subsets": {name: {counter: n, "reasons": {code: n}}}}``, sorted, zero counters included."""
        return {
            "subsets": {
                name: {
                    **{key: self.subsets[name][key] for key in COUNTERS},
                    "reasons": dict(sorted(self.reasons[name].items())),
                }
                for name in sorted(self.subsets)
            }
        }


def _derived(counts: dict[str, Any]) -> dict[str, Any]:
    accepted = counts["accepted"] or 0
    return {
        **counts,
        "ref_coverage": round(counts["with_ref"] / accepted, 4) if accepted else 0.0,
        "box_density": round(counts["boxes"] / accepted, 4) if accepted else 0.0,
        "avg_response_chars": round(counts["response_chars"] / accepted, 1) if accepted else 0.0,
        "rejection_rate": round(counts["rejected"] / counts["input"], 4) if counts["input"] else 0.0,
    }


def report(stats: dict[str, Any], *, source: str, shards: int) -> dict[str, Any]:
    """``quality.json``: totals and per-subset counts with the derived ratios.

    ``ref_coverage``: share of accepted rationales naming at least one ``<ref>``; ``box_density``: ``<box>``
    tags per accepted rationale; ``avg_response_chars``: mean rationale length.
    """
    total: dict[str, Any] = {key: 0 for key in COUNTERS}
    reasons: Counter[str] = Counter()
    subsets = {name: {key: counts.get(key, 0) for key in COUNTERS} | {"reasons": counts.get("reasons", {})}
               for name, counts in stats["subsets"].items()}  # a shard's counts from before a counter existed: 0
    for counts in subsets.values():
        for key in COUNTERS:
            total[key] += counts[key]
        reasons.update(counts["reasons"])
    total["reasons"] = dict(sorted(reasons.items()))
    return {
        "source": source,
        "shards": shards,
        "total": _derived(total),
        "subsets": {name: _derived(counts) for name, counts in subsets.items()},
    }


def render_markdown(quality: dict[str, Any]) -> str:
    """A short readable summary of ``quality.json`` (written beside it as ``quality.md``)."""
    total = quality["total"]
    lines = [
        f"# Convert quality: {quality['source']}",
        "",
        f"{total['input']} input items: {total['accepted']} accepted "
        f"({total['train']} train, {total['val']} val; {total['grounded']} grounded, "
        f"{total['needs_distillation']} need distillation), {total['rejected']} rejected.",
        "",
        "| subset | input | accepted | rejected | `<ref>` coverage | boxes/response | avg chars | top rejections |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, counts in [*quality["subsets"].items(), ("**total**", total)]:
        top = top_reasons(counts["reasons"])
        lines.append(
            f"| {name} | {counts['input']} | {counts['accepted']} | {counts['rejected']} | "
            f"{counts['ref_coverage']:.1%} | {counts['box_density']:.2f} | {counts['avg_response_chars']:.0f} | "
            f"{top or '-'} |"
        )
    if total["string_box_checked"]:
        lines += [
            "",
            f"Padded box strings checked against the absolute `###` box: {total['string_box_checked']}, "
            f"disagreeing by more than {STRING_BOX_TOLERANCE} units: {total['string_box_disagrees']}.",
        ]
    if total["answers_from_refs"]:
        lines += [
            "",
            f"Answers made from the object names (items with no answer of their own, `--missing-answer refs`): "
            f"{total['answers_from_refs']} of {total['accepted']} accepted.",
        ]
    if total["exif_turned"]:
        lines += [
            "",
            f"Images stored turned, with an EXIF orientation (read upright, as displayed): {total['exif_turned']} of "
            f"{total['accepted']} accepted. Their boxes are right only if drawn on the image as displayed "
            "(docs/convert.md).",
        ]
    return "\n".join(lines) + "\n"
