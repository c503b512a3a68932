"""How a benchmark is asked, stated and reproducible: options shuffled per question, k answers per question (Avg@k).

Papers on the same benchmarks cannot be compared today: one reports the first greedy answer (Avg@1), another the
mean over 32 sampled ones (Mini-o3's Avg@32), and a multiple-choice benchmark whose right answer is most often
option A rewards a model that likes A. ``vcot-evaluate`` makes both explicit:

- ``--shuffle-options SEED``: each multiple-choice question's options in an order drawn from (seed, question id,
  sample), the same on every rerun and for every model, so a table of models sees the same questions (records whose
  right option is given by ``answer_index``);
- ``--samples K``: every question answered K times (sample j drawn with seed ``--seed`` + j, or greedy over K
  option orders); each metric is reported for the first answer and as its mean over the K (Avg@K), with its range.

Pure: records in, records out; metrics in, metrics out.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

AVERAGED_SKIP = ("samples", "grounded_samples", "predicted_boxes", "invalid_boxes", "samples_with_invalid_boxes",
                 "constant_box_iou")  # fmt: skip
"""Overall numbers that are counts or a property of the data, not a score: not averaged over samples."""


def option_order(seed: int, record_id: str, sample: int, size: int) -> list[int]:
    """The order the options of question ``record_id`` are shown in for ``sample`` (a permutation of ``range(size)``):
    the same for the same arguments on any machine and Python version.

    >>> option_order(0, "q1", 0, 4) == option_order(0, "q1", 0, 4), sorted(option_order(3, "q1", 1, 4))
    (True, [0, 1, 2, 3])
    """
    digest = hashlib.sha256(f"{seed}:{record_id}:{sample}".encode()).digest()
    order = list(range(size))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return order


def shuffle_options(record: dict[str, Any], seed: int, sample: int = 0) -> dict[str, Any]:
    """``record`` with its options in :func:`option_order`'s order and ``answer_index`` following its answer;
    ``options_order`` lists the original index of each option shown. A record without options, or whose right
    option is not given by its index (its answer might be a letter), is returned as is.

    >>> r = shuffle_options({"id": "q", "choices": ["a", "b", "c"], "answer_index": 0, "answer": "a"}, seed=1)
    >>> r["choices"][r["answer_index"]], [["a", "b", "c"][i] for i in r["options_order"]] == r["choices"]
    ('a', True)
    """
    choices = record.get("choices")
    if not choices or not isinstance(record.get("answer_index"), int):  # no index: the answer may be a letter
        return record
    order = option_order(seed, str(record["id"]), sample, len(choices))
    shuffled = {**record, "choices": [choices[i] for i in order], "options_order": order}
    if isinstance(record.get("answer_index"), int):
        shuffled["answer_index"] = order.index(record["answer_index"])
    return shuffled


def sample_records(records: list[dict[str, Any]], samples: int, seed: int | None) -> list[list[dict[str, Any]]]:
    """The records as asked for each of ``samples`` answers: options shuffled per sample when ``seed`` is set.

    >>> recs = [{"id": "q", "choices": ["a", "b", "c", "d"], "answer_index": 2}]
    >>> [s[0]["choices"][s[0]["answer_index"]] for s in sample_records(recs, 3, seed=7)]
    ['c', 'c', 'c']
    """
    if seed is None:
        return [records] * samples
    return [[shuffle_options(record, seed, sample) for record in records] for sample in range(samples)]


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in AVERAGED_SKIP}  # fmt: skip


def average_at_k(per_sample: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Avg@k of per-sample metrics (each ``{"overall": ..., "subsets": {...}}``): every score's mean over the k
    samples, and its lowest and highest value (how much one reading can differ from another).

    >>> avg = average_at_k([{"overall": {"answer_accuracy": 0.5}, "subsets": {}},
    ...                     {"overall": {"answer_accuracy": 1.0}, "subsets": {}}])
    >>> avg["k"], avg["overall"]["answer_accuracy"], avg["range"]["answer_accuracy"]
    (2, 0.75, [0.5, 1.0])
    """
    overall = [_numbers(m["overall"]) for m in per_sample]
    keys = [k for k in overall[0] if all(k in o for o in overall)]
    subsets: dict[str, dict[str, float]] = {}
    for name in per_sample[0]["subsets"]:
        values = [_numbers(m["subsets"][name]) for m in per_sample if name in m["subsets"]]
        subsets[name] = {k: sum(v[k] for v in values) / len(values) for k in values[0] if all(k in v for v in values)}
    return {
        "k": len(per_sample),
        "overall": {k: sum(o[k] for o in overall) / len(overall) for k in keys},
        "range": {k: [min(o[k] for o in overall), max(o[k] for o in overall)] for k in keys},
        "subsets": subsets,
    }
