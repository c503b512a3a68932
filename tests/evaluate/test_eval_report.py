"""The HTML report explains itself: every column of its tables, the ids on the samples and the coloured boxes have a
legend on the page."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from vcot.evaluate.report import METRIC_COLUMNS, build_report, field_sections


class _Legends(HTMLParser):
    """``{legend id: {term text: meaning}}`` of every ``<dl class="legend">``, and the header cells of each table."""

    def __init__(self) -> None:
        super().__init__()
        self.legends: dict[str, dict[str, str]] = {}
        self.headers: dict[str, list[str]] = {}
        self._legend = self._table = ""
        self._term: str | None = None
        self._in: str | None = None  # "dt", "dd" or "th"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "dl" and attributes.get("class") == "legend":
            self._legend = attributes["id"] or ""
            self.legends[self._legend] = {}
        elif tag == "table":
            self._table = attributes.get("id") or ""
            self.headers[self._table] = []
        elif tag == "dt" and self._legend:
            self._in, self._term = "dt", ""
        elif tag == "dd" and self._legend:
            self._in = "dd"
            self.legends[self._legend][self._term or ""] = ""
        elif tag == "th" and self._table:
            self._in = "th"
            self.headers[self._table].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "dl":
            self._legend = ""
        elif tag == "table":
            self._table = ""
        elif tag in ("dt", "dd", "th"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "dt":
            self._term = (self._term or "") + data
        elif self._in == "dd":
            self.legends[self._legend][self._term or ""] += data
        elif self._in == "th":
            self.headers[self._table][-1] += data


def _report() -> str:
    overall: dict[str, Any] = {key: 0.5 for key, _, _ in METRIC_COLUMNS} | {"samples": 1, "invalid_boxes": 0,
                                                                              "constant_box": [0, 0, 500, 500]}
    metrics = {"overall": overall, "subsets": {"gqa": overall}, "details": {}}
    row = {"id": "test:gqa:0", "subset": "gqa", "truth_boxes": [[0, 0, 500, 500]],
           "boxes": [{"ref": "cat", "box": [0, 0, 400, 500]}], "best_ious": [0.8], "invalid_boxes": [],
           "answer_correct": True, "predicted_answer": "red",
           "prediction": "The <ref>cat</ref><box>[0, 0, 400, 500]</box> is red. Answer: red"}
    record = {"width": 100, "height": 100, "question": "What colour is the cat?", "answer": "red"}
    return build_report(title="t", metrics=metrics, rows=[row], records={"test:gqa:0": record}, details={},
                        max_samples=4, extra_sections=field_sections(metrics))


def test_every_column_of_the_metric_tables_is_explained() -> None:
    page = _Legends()
    page.feed(_report())
    for table, legend in (("metrics", "metric-legend"), ("field-metrics", "field-legend")):
        explained = page.legends[legend]
        assert all(meaning.strip() for meaning in explained.values())
        terms = {part.strip() for term in explained for part in term.split(",")}  # "CR, CM, WR, WW"
        assert [column for column in page.headers[table] if column not in terms] == []


def test_the_samples_say_what_the_ids_and_the_coloured_boxes_are() -> None:
    page = _Legends()
    page.feed(_report())
    explained = page.legends["sample-legend"]
    terms = " ".join(explained)
    for what in ("ground truth", "predicted", "constant box", "id", "IoU per box"):
        assert what in terms
    assert "the record's id" in explained["id (subset)"]
