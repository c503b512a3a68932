"""Join responses to committed records by id and score each one: the rows of the predictions output."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vcot.errors import ConfigError
from vcot.grounding.model_format import ModelFormat
from vcot.io import manifest, storage
from vcot.log import get_logger
from vcot.scoring.metrics import SampleScore
from vcot.scoring.response import score_response

log = get_logger(__name__)


def load_records(
    data: str, split: str = "val", max_samples: int | None = None, max_per_subset: int | None = None
) -> list[dict[str, Any]]:
    """The committed records of ``data`` under ``<split>/`` (``all``: train/ then val/) in manifest order: the first
    ``max_per_subset`` of each subset, at most ``max_samples`` in all."""
    prefixes = ("train/", "val/") if split == "all" else (f"{split}/",)
    where = " or ".join(prefixes)
    if not any(manifest.committed_files(data, prefix, expect_stage=manifest.RECORD_STAGES) for prefix in prefixes):
        raise ConfigError(f"{data} lists no files under {where}: choose another --split or check the data stage")
    records: Iterable[dict[str, Any]] = manifest.committed_records(data, prefixes)
    if max_per_subset is not None:
        records = first_per_subset(records, max_per_subset)
    loaded = list(itertools.islice(records, max_samples))
    if not loaded:
        raise ConfigError(
            f"{data} holds no record under {where} (its files are empty): choose another --split (all, train) or "
            "check the data stage's quality report; nothing was committed"
        )
    return loaded


def first_per_subset(records: Iterable[dict[str, Any]], limit: int) -> Iterator[dict[str, Any]]:
    """The first ``limit`` records of each subset, in order.

    >>> [r["id"] for r in first_per_subset([{"id": i, "subset": "ab"[i % 2]} for i in range(6)], 2)]
    [0, 1, 2, 3]
    """
    seen: Counter[str] = Counter()
    for record in records:
        subset = str(record.get("subset", ""))
        if seen[subset] < limit:
            seen[subset] += 1
            yield record


@dataclass
class LoadedPredictions:
    """Responses by id, and what was skipped while reading them (reason code -> count)."""

    by_id: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def load_predictions(uri: str) -> LoadedPredictions:
    """Read a predictions JSONL(.gz); malformed lines, missing fields and repeated ids are counted and skipped."""
    loaded = LoadedPredictions()
    with storage.open_uri(uri, "rb", compression="infer_from_extension") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError)
                loaded.skip("malformed_json")
                continue
            if not isinstance(item, dict) or "id" not in item or not isinstance(item.get("prediction"), str):
                loaded.skip("missing_id_or_prediction")
                continue
            key = str(item["id"])
            if key in loaded.by_id:
                loaded.skip("duplicate_id")  # the first one counts: never pick the better of two
                continue
            loaded.by_id[key] = item["prediction"]
    if loaded.skipped:
        log.warning("prediction_lines_skipped", uri=uri, **loaded.skipped)
    return loaded


def join_and_score(
    records: Iterable[dict[str, Any]], responses: dict[str, str], fmt: ModelFormat
) -> tuple[list[dict[str, Any]], list[SampleScore], dict[str, int]]:
    """Score every record that has a response; count records without one and responses without a record."""
    rows: list[dict[str, Any]] = []
    scores: list[SampleScore] = []
    seen: set[str] = set()
    missing = 0
    for record in records:
        key = str(record["id"])
        if key not in responses:
            missing += 1
            continue
        seen.add(key)
        row, score = score_response(record, responses[key], fmt, best_of_two=True)
        rows.append(row)
        scores.append(score)
    join = {"scored": len(rows), "records_without_prediction": missing, "predictions_without_record": len(set(responses) - seen)}
    if missing or join["predictions_without_record"]:
        log.warning("partial_join", **join)
    if not rows:
        raise ConfigError(
            f"no prediction matches a record id ({missing} records, {len(responses)} responses): check that "
            "--predictions and --data/--split describe the same samples; nothing was committed"
        )
    return rows, scores, join
