"""Chain-of-thought against direct answering, side by side (``--prompt-style both``). Pure.

The same samples are prompted twice: for grounded reasoning (``cot``) and for the answer alone (``direct``).
Per subset and overall, each style's answer accuracy (and judge score when the judge is on) and the
difference ``cot - direct``: positive when the boxed reasoning helps answers, negative when it costs them
(as the iVGR paper found it can at inference).
"""

from __future__ import annotations

from typing import Any

ANSWER_METRICS = ("answer_accuracy", "judge_score")


def compare_styles(by_style: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``by_style``: style -> its metrics (``overall`` and ``subsets``), the first style first.

    >>> def metrics(accuracy):
    ...     values = {"samples": 2, "answer_accuracy": accuracy}
    ...     return {"overall": values, "subsets": {"a": values}}
    >>> cot, direct = metrics(0.5), metrics(1.0)
    >>> table = compare_styles({"cot": cot, "direct": direct})
    >>> table["rows"][0]["answer_accuracy"], table["rows"][0]["answer_accuracy_difference"]
    ({'cot': 0.5, 'direct': 1.0}, -0.5)
    >>> unjudged = {**cot, "overall": {**cot["overall"], "judge_score": None}}  # the judge scored none of them
    >>> compare_styles({"cot": unjudged, "direct": {**direct, "overall": {**direct["overall"], "judge_score": 1.0}}}
    ...                )["rows"][0]["judge_score_difference"] is None
    True
    """
    styles = list(by_style)
    subsets = sorted({name for metrics in by_style.values() for name in metrics["subsets"]})
    rows = []
    for subset in ["overall", *subsets]:
        values = {
            style: metrics["overall"] if subset == "overall" else metrics["subsets"].get(subset, {})
            for style, metrics in by_style.items()
        }
        row: dict[str, Any] = {"subset": subset, "samples": {style: v.get("samples", 0) for style, v in values.items()}}
        for name in ANSWER_METRICS:
            if all(name in v for v in values.values()):
                row[name] = {style: v[name] for style, v in values.items()}
                if {"cot", "direct"} <= set(styles):
                    cot, direct = values["cot"][name], values["direct"][name]
                    row[f"{name}_difference"] = None if cot is None or direct is None else cot - direct
        rows.append(row)
    return {
        "styles": styles,
        "rows": rows,
        "metrics": {
            style: {"overall": m["overall"], "subsets": m["subsets"]} for style, m in list(by_style.items())[1:]
        },
    }
