"""Route converted items to ``train/``, ``val/`` or ``rejected/``: one item to exactly one place, counted.

:func:`route_block` routes a run of items into a :class:`RoutedBlock` of packed lines and counts, which
the stage appends in input order (:meth:`vcot.io.shards.SplitWriters.write_block`), whether a worker process
or the stage itself made it. :func:`route_blocks` cuts a stream of items into such blocks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from vcot.convert.common import Item, Rejection, paused_gc
from vcot.convert.quality import QualityStats, quality_problem
from vcot.grounding.records import split_for
from vcot.io.shards import encode_record, pack_lines

OUTPUT_SPLITS = ("train", "val", "rejected")
BLOCK_ITEMS = 4096
"""Items per block when routing a stream (about one chunk's worth of VisCOT items)."""


@dataclass
class RoutedBlock:
    """The routed output of a run of items: per split, packed lines and their count; the quality counts."""

    blocks: dict[str, tuple[bytes, int]]
    stats: dict[str, Any]
    items: int


def route_block(items: Iterable[Item], val_fraction: float, compresslevel: int | None) -> RoutedBlock:
    """Accepted records to train/val by id hash, everything else to rejected; one gzip member per non-empty split."""
    lines: dict[str, list[bytes]] = {split: [] for split in OUTPUT_SPLITS}
    stats = QualityStats()
    for item in items:
        if isinstance(item, Rejection):
            lines["rejected"].append(encode_record(item.to_dict()))
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
            lines["rejected"].append(encode_record(rejection.to_dict()))
            stats.rejected(rejection.subset, problem)
            continue
        lines[item["split"]].append(encode_record(item))
        stats.accepted(item)
    blocks = {
        split: (pack_lines(b"".join(split_lines), compresslevel), len(split_lines))
        for split, split_lines in lines.items()
        if split_lines
    }
    return RoutedBlock(blocks, stats.to_dict(), sum(len(split_lines) for split_lines in lines.values()))


def route_blocks(
    items: Iterable[Item], val_fraction: float, compresslevel: int | None, size: int = BLOCK_ITEMS
) -> Iterator[RoutedBlock]:
    """:func:`route_block` over a stream, ``size`` items at a time (garbage collection paused per block)."""
    iterator = iter(items)
    while True:
        with paused_gc():
            block = route_block(islice(iterator, size), val_fraction, compresslevel)
        if not block.items:
            return
        yield block
