"""Scheduled re-evaluation: the newest-model pointer, the history of results, and regression checks.

The history is a JSONL object in storage (S3 cannot append: it is read and rewritten whole; the
CronJob never overlaps itself). Entries are compared only with entries on the same data and split:
numbers on different samples are not comparable.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vcot.errors import VcotError
from vcot.io import storage


class RegressionError(VcotError):
    """A watched metric dropped beyond the threshold: the entrypoint exits with code 3."""

    exit_code = 3


@dataclass(frozen=True)
class Pointer:
    """The newest model, as train writes it: ``{"run": OUTPUT, "base_model": URI, "adapter": "OUTPUT/adapter"}``."""

    run: str
    base_model: str
    adapter: str | None


def run_folder(run: str, home: str) -> str:
    """The evaluation folder of ``run``: its path under the pointer's folder ``home``, else a short hash.

    Every k8s run trains into ``RUN_ROOT/<run id>/train``: the last path segment alone would give every
    run the same folder (and after the first night the committed output would skip every new model).

    >>> run_folder("s3://b/runs/exp1/train", "s3://b/runs"), run_folder("s3://b/runs/exp2/train/", "s3://b/runs")
    ('exp1/train', 'exp2/train')
    >>> run_folder("s3://other/exp1/train", "s3://b/runs")
    'train-3db335cdaf7c'
    """
    run = run.rstrip("/")
    try:
        return storage.relative(run, home)
    except ValueError:
        digest = hashlib.sha256(run.encode("utf-8")).hexdigest()[:12]
        return f"{run.rsplit('/', 1)[-1]}-{digest}"


def read_pointer(uri: str) -> Pointer:
    value = storage.read_json(uri)
    if not isinstance(value, dict) or not value.get("base_model") or not value.get("run"):
        raise VcotError(f"{uri} is not a model pointer: expected JSON with run, base_model and adapter (written by vcot-train)")
    return Pointer(run=str(value["run"]), base_model=str(value["base_model"]), adapter=value.get("adapter") or None)


def read_history(uri: str) -> list[dict[str, Any]]:
    """Every entry of the history (oldest first); an absent history is empty."""
    if not storage.exists(uri):
        return []
    entries = []
    for number, line in enumerate(storage.read_text(uri).splitlines(), start=1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise VcotError(f"{uri} line {number} is not valid JSON ({exc}): fix or remove that line") from exc
    return entries


def append_history(uri: str, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Append ``entry``, replacing an earlier entry for the same output (a rerun), and return the history."""
    entries = [e for e in read_history(uri) if e.get("output") != entry.get("output")] + [entry]
    storage.write_text(uri, "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    return entries


ASKED = {"prompt_style": "cot", "max_samples": None, "max_per_subset": None, "samples": 1, "temperature": 0.0,
         "top_p": 1.0, "shuffle_options": None, "max_new_tokens": 512}  # fmt: skip
"""The settings that change what a run's numbers measure, and their defaults (EvaluateConfig's): a direct-answer run
writes no boxes, a slice or another budget scores other responses. Not the sampling seed: Avg@k under another seed
estimates the same figure."""


def asked_otherwise(protocol: dict[str, Any] | None) -> dict[str, Any]:
    """What ``protocol`` asks otherwise than one greedy chain-of-thought answer per record of the whole split, at the
    default budget, options in their given order: two entries are comparable when these are equal. An entry without
    a protocol (or with a full one: the form written before) reads the same way.

    >>> asked_otherwise({"split": "val", "samples": 1, "temperature": 0.0, "max_samples": 20, "seed": 3})
    {'max_samples': 20}
    >>> asked_otherwise(None), asked_otherwise({"temperature": 0.0, "top_p": 0.9})  # greedy: top-p changes nothing
    ({}, {})
    """
    given = protocol or {}
    differs = {key: given[key] for key, default in ASKED.items() if given.get(key, default) != default}
    if not given.get("temperature"):
        differs.pop("top_p", None)
    return differs


def comparable(entries: Sequence[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Earlier entries on the same data and split, asked the same way (:func:`asked_otherwise`), as ``entry`` (other
    outputs only)."""
    asked = asked_otherwise(entry.get("protocol"))
    return [
        e
        for e in entries
        if e.get("data") == entry.get("data") and e.get("split") == entry.get("split")
        and asked_otherwise(e.get("protocol")) == asked and e.get("output") != entry.get("output")
    ]


def compare(
    current: dict[str, Any], earlier: Sequence[dict[str, Any]], *, metrics: Sequence[str], threshold: float
) -> dict[str, Any]:
    """Compare ``current`` metrics with the previous entry and the best earlier value of each watched metric.

    A regression is a drop of more than ``threshold`` (absolute) below either.

    >>> earlier = [{"metrics": {"mean_iou": 0.40}}, {"metrics": {"mean_iou": 0.30}}]
    >>> compare({"mean_iou": 0.35}, earlier, metrics=["mean_iou"], threshold=0.02)["regressions"]
    ['mean_iou 0.3500 is 0.0500 below the best earlier entry (0.4000)']
    """
    previous = earlier[-1]["metrics"] if earlier else {}
    regressions: list[str] = []
    table: dict[str, dict[str, float | None]] = {}
    for name in metrics:
        value = current.get(name)
        old_values = [e["metrics"][name] for e in earlier if e.get("metrics", {}).get(name) is not None]
        best = max(old_values) if old_values else None
        last = previous.get(name)
        table[name] = {"current": value, "previous": last, "best": best}
        if value is None:
            continue
        if last is not None and last - value > threshold:
            regressions.append(f"{name} {value:.4f} is {last - value:.4f} below the previous entry ({last:.4f})")
        elif best is not None and best - value > threshold:
            regressions.append(f"{name} {value:.4f} is {best - value:.4f} below the best earlier entry ({best:.4f})")
    return {"metrics": list(metrics), "threshold": threshold, "values": table, "regressions": regressions}
