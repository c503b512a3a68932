"""History and regression checks (pure parts; the end-to-end scheduled runs are in test_eval_model.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vcot.errors import VcotError
from vcot.evaluate import history as hist
from vcot.evaluate.config import EvaluateConfig
from vcot.evaluate.history import append_history, comparable, compare, read_history, read_pointer


def _entries(*values: float) -> list[dict]:
    return [{"output": f"o{i}", "metrics": {"mean_iou": v, "acc_at_50": v}} for i, v in enumerate(values)]


@pytest.mark.parametrize(
    ("history", "current", "flagged"),
    [
        ((0.50,), 0.47, ["previous"]),  # dropped 0.03 below the previous entry
        ((0.60, 0.49), 0.48, ["best"]),  # within threshold of the previous, 0.12 below the best
        ((0.50,), 0.49, []),  # a drop within the threshold is noise
        ((0.40, 0.45), 0.60, []),  # an improvement
        ((), 0.10, []),  # the first entry has nothing to regress from
    ],
)
def test_regressions_against_previous_and_best(history: tuple, current: float, flagged: list[str]) -> None:
    result = compare({"mean_iou": current, "acc_at_50": 1.0}, _entries(*history), metrics=["mean_iou", "acc_at_50"], threshold=0.02)
    kinds = ["previous" if "previous entry" in line else "best" for line in result["regressions"]]
    assert kinds == flagged
    assert all(line.startswith("mean_iou") for line in result["regressions"])


def test_only_same_data_and_split_are_compared() -> None:
    entry = {"data": "d", "split": "val", "output": "new"}
    entries = [
        {"data": "d", "split": "val", "output": "a"},
        {"data": "d", "split": "train", "output": "b"},
        {"data": "other", "split": "val", "output": "c"},
        {"data": "d", "split": "val", "output": "new"},
    ]
    assert [e["output"] for e in comparable(entries, entry)] == ["a"]


def test_history_appends_and_a_rerun_replaces_its_entry(tmp_path: Path) -> None:
    uri = str(tmp_path / "h.jsonl")
    assert read_history(uri) == []
    append_history(uri, {"output": "a", "v": 1})
    append_history(uri, {"output": "b", "v": 2})
    append_history(uri, {"output": "a", "v": 3})
    assert read_history(uri) == [{"output": "b", "v": 2}, {"output": "a", "v": 3}]
    (tmp_path / "h.jsonl").write_text('{"output": "a"}\nnot json\n')
    with pytest.raises(VcotError, match="line 2 is not valid JSON"):
        read_history(uri)


def test_pointer_contract(tmp_path: Path) -> None:
    path = tmp_path / "latest.json"
    path.write_text('{"run": "s3://b/runs/r1", "base_model": "s3://b/models/base", "adapter": "s3://b/runs/r1/adapter"}')
    pointer = read_pointer(str(path))
    assert (pointer.run, pointer.base_model, pointer.adapter) == ("s3://b/runs/r1", "s3://b/models/base", "s3://b/runs/r1/adapter")
    path.write_text('{"adapter": "x"}')
    with pytest.raises(VcotError, match="not a model pointer"):
        read_pointer(str(path))


def test_the_settings_that_make_runs_comparable_default_as_evaluate_does() -> None:
    """``ASKED``'s defaults are what an entry without a protocol was asked with: they must be EvaluateConfig's."""
    defaults = {f.name: f.default for f in dataclasses.fields(EvaluateConfig)}
    assert {key: defaults[key] for key in hist.ASKED} == hist.ASKED
