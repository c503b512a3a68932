"""The training rows: memory-mapped from local Arrow files (not read into memory), token ids narrowed."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vcot.io import manifest
from vcot.io.shards import file_entry
from vcot.train.data import TokenizedDataset

ROWS, TOKENS = 2000, 300


def write_tokens(root: Path, shards: int = 2, vocab: int = 151_665) -> list[list[int]]:
    """A committed tokenize output of ROWS text rows of TOKENS ids below ``vocab`` (default: Qwen's vocabulary)."""
    ids = [[(row * 7919 + t * 104729) % vocab for t in range(TOKENS)] for row in range(ROWS)]
    files = []
    per_shard = ROWS // shards
    for shard in range(shards):
        part = ids[shard * per_shard : (shard + 1) * per_shard]
        table = pa.table(
            {
                "id": [f"r{shard}-{i}" for i in range(len(part))],
                "input_ids": pa.array(part, pa.list_(pa.int32())),
                "labels": pa.array([[-100] * 10 + row[10:] for row in part], pa.list_(pa.int32())),
                "length": pa.array([TOKENS] * len(part), pa.int32()),
            }
        )
        path = root / "train" / f"{shard:05d}-of-{shards:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="zstd")
        files.append(file_entry(path, f"train/{path.name}"))
    manifest.commit(str(root), stage="tokenize", files=files, config={})
    return ids


def test_rows_are_memory_mapped_not_read_into_memory(tmp_path: Path) -> None:
    ids = write_tokens(tmp_path / "tokens")
    before = pa.total_allocated_bytes()
    rows = TokenizedDataset(str(tmp_path / "tokens"), "train", cache=tmp_path / "cache", vocab_size=151_665)
    assert rows.table is not None and rows.table.nbytes > 2_000_000  # 2000 x 300 x (4 + 4) bytes
    assert pa.total_allocated_bytes() - before < 100_000  # the buffers are the mapped files, not process memory
    assert len(rows) == ROWS
    assert rows[0]["input_ids"] == ids[0] and rows[1999]["input_ids"] == ids[1999]
    assert rows[1001]["labels"] == [-100] * 10 + ids[1001][10:]
    assert str(rows.table.schema.field("input_ids").type) == "list<item: uint32>"  # Qwen's vocab needs > 16 bits
    assert str(rows.table.schema.field("labels").type) == "list<item: int32>"
    assert rows.reads == 3  # what was asked for, nothing else


def test_a_small_vocabulary_gets_16_bit_ids_and_the_cache_is_reused(tmp_path: Path) -> None:
    ids = write_tokens(tmp_path / "tokens", shards=1, vocab=600)
    first = TokenizedDataset(str(tmp_path / "tokens"), "train", cache=tmp_path / "cache", vocab_size=600)
    assert str(first.table.schema.field("input_ids").type) == "list<item: uint16>"  # type: ignore[union-attr]
    converted = (tmp_path / "cache" / "train" / "00000.arrow").stat().st_mtime_ns
    again = TokenizedDataset(str(tmp_path / "tokens"), "train", cache=tmp_path / "cache", vocab_size=600)
    assert len(again) == ROWS and again[5]["input_ids"] == ids[5] and (tmp_path / "cache" / "train" / "00000.arrow").stat().st_mtime_ns == converted
