"""Route converted items to ``train/``, ``val/`` or ``rejected/``: one item to exactly one place, counted.

:func:`route` writes through open shard writers (the sequential path); :func:`route_block` does the same
work into a :class:`RoutedBlock` of packed lines and counts, which a worker process hands back for the
stage to append in input order (:meth:`vcot.shards.SplitWriters.write_block`). Both give the same lines.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from vcot.convert.common import Item, Rejection
from vcot.convert.quality import QualityStats, quality_problem
from vcot.records import split_for
from vcot.shards import encode_record, pack_lines

OUTPUT_SPLITS = ("train", "val", "rejected")


class RecordSink(Protocol):
    def write(self, split: str, record: dict[str, Any]) -> None: ...


def route(items: Iterable[Item], outputs: RecordSink, stats: QualityStats, val_fraction: float) -> None:
    """Send every item to exactly one split: accepted records to train/val by id hash, everything else to rejected."""
    for item in items:
        if isinstance(item, Rejection):
            outputs.write("rejected", item.to_dict())
            stats.rejected(item.subset, item.reason)
            continue
        item["split"] = split_for(item["id"], val_fraction)
        problem = quality_problem(item)
        if problem is not None:
            rejection = Rejection(
                problem,
                "failed the quality filter",
                item["provenance"].get("source_index", -1),
                id=item.get("id"),
                subset=item.get("subset") or "unknown",
                raw=item,
            )
            outputs.write("rejected", rejection.to_dict())
            stats.rejected(rejection.subset, problem)
            continue
        outputs.write(item["split"], item)
        stats.accepted(item)


@dataclass
class RoutedBlock:
    """The routed output of a run of items: per split, packed lines and their count; the quality counts."""

    blocks: dict[str, tuple[bytes, int]]
    stats: dict[str, Any]
    items: int


class _LineCollector:
    def __init__(self) -> None:
        self.lines: dict[str, list[bytes]] = {split: [] for split in OUTPUT_SPLITS}

    def write(self, split: str, record: dict[str, Any]) -> None:
        self.lines[split].append(encode_record(record))


def route_block(items: Iterable[Item], val_fraction: float, compresslevel: int | None) -> RoutedBlock:
    """:func:`route` into packed blocks (one gzip member per non-empty split) instead of open files."""
    collector = _LineCollector()
    stats = QualityStats()
    route(items, collector, stats, val_fraction)
    blocks = {
        split: (pack_lines(b"".join(lines), compresslevel), len(lines))
        for split, lines in collector.lines.items()
        if lines
    }
    counts = stats.to_dict()
    return RoutedBlock(blocks, counts, sum(len(lines) for lines in collector.lines.values()))
