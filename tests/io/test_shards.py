"""JSONL shard encoding and writing: the fast encoder writes what json.dumps wrote, batches lose nothing."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from vcot.io import shards, storage

_JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)
_JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def _json_module_line(record: object) -> bytes:
    return (json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _JSON_VALUES, max_size=6))
def test_encode_record_writes_what_the_json_module_wrote(record: dict) -> None:
    assert shards.encode_record(record) == _json_module_line(record)


def test_encode_record_falls_back_to_the_json_module_for_what_orjson_refuses() -> None:
    record = {"big": 2**70, "nested": {"b": 1, "a": [2**65]}}
    assert shards.encode_record(record) == _json_module_line(record)
    assert json.loads(shards.encode_record({"x": 1e-7})) == {"x": 1e-7}  # shortest form, same value


def test_writer_batches_keep_every_line_in_order_and_bytes_stable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(shards, "WRITE_BATCH_BYTES", 100)  # many batches, and a partial one at close
    records = [{"id": f"r{i}", "text": "ünïcode ✓" * (i % 3)} for i in range(57)]
    first = shards.write_jsonl(str(tmp_path / "a"), "train/x.jsonl.gz", records)
    second = shards.write_jsonl(str(tmp_path / "b"), "train/x.jsonl.gz", records)
    assert first == second and first.records == 57
    lines = gzip.decompress((tmp_path / "a/train/x.jsonl.gz").read_bytes()).splitlines()
    assert [json.loads(line) for line in lines] == records


def test_writer_compresslevel_changes_bytes_not_content(tmp_path: Path) -> None:
    records = [{"id": f"r{i}", "text": "abc" * i} for i in range(200)]
    with shards.JsonlShardWriter(str(tmp_path), "fast.jsonl.gz", compresslevel=1) as fast:
        for record in records:
            fast.write(record)
    default = shards.write_jsonl(str(tmp_path), "default.jsonl.gz", records)
    assert fast.result is not None and fast.result.sha256 != default.sha256
    assert list(shards.read_jsonl(str(tmp_path / "fast.jsonl.gz"))) == records


def test_split_writers_route_by_split_and_abort_commits_nothing(tmp_path: Path) -> None:
    outputs = shards.SplitWriters(str(tmp_path), "00001-of-00002", compresslevel=1)
    outputs.write("train", {"id": "t"})
    outputs.write("rejected", {"id": "r"})
    files = {f.path: f.records for f in outputs.close()}
    assert files == {
        "train/00001-of-00002.jsonl.gz": 1,
        "val/00001-of-00002.jsonl.gz": 0,
        "rejected/00001-of-00002.jsonl.gz": 1,
    }
    assert [r["id"] for r in shards.read_jsonl(str(tmp_path / "rejected/00001-of-00002.jsonl.gz"))] == ["r"]
    aborted = shards.SplitWriters(str(tmp_path / "b"), "00000-of-00001", splits=("train",))
    aborted.write("train", {"id": "x"})
    aborted.abort()
    assert aborted.writers["train"].result is None


def test_write_file_and_file_entry_describe_the_stored_bytes(s3_bucket: str, tmp_path: Path) -> None:
    import hashlib

    data = b'{"a": 1}\n'
    entry = shards.write_file(f"{s3_bucket}/run", "reports/quality.json", data)
    stored = storage.read_bytes(f"{s3_bucket}/run/reports/quality.json")
    assert stored == data and entry.sha256 == hashlib.sha256(stored).hexdigest() and entry.bytes == len(data)
    (tmp_path / "local.bin").write_bytes(data)
    assert shards.file_entry(tmp_path / "local.bin", "reports/quality.json") == entry
    assert shards.file_entry(tmp_path / "local.bin", "x.parquet", records=3).records == 3


def test_blocks_and_records_interleave_in_order_and_an_empty_shard_is_valid_gzip(tmp_path: Path) -> None:
    with shards.JsonlShardWriter(str(tmp_path), "mixed.jsonl.gz", compresslevel=3) as writer:
        writer.write({"n": 0})
        writer.write_block(shards.pack_lines(b'{"n":1}\n{"n":2}\n', 3), 2)
        writer.write({"n": 3})
    assert writer.result is not None and writer.result.records == 4
    assert [json.loads(line)["n"] for line in gzip.open(tmp_path / "mixed.jsonl.gz")] == [0, 1, 2, 3]
    with shards.JsonlShardWriter(str(tmp_path), "empty.jsonl.gz") as empty:
        pass
    assert gzip.decompress((tmp_path / "empty.jsonl.gz").read_bytes()) == b"" and empty.close().records == 0


def test_an_aborted_s3_shard_is_not_published(real_s3: str) -> None:
    """abort() closed the upload as if done: a truncated, whole-looking gzip sat at the shard's final name (listed in
    no manifest, but seen by anything that lists the prefix)."""
    writer = shards.JsonlShardWriter(f"{real_s3}/aborted", "train/00000-of-00001.jsonl.gz")
    for index in range(20_000):  # some 2 MB, under smart_open's first part: sent whole on close, had it been closed
        writer.write({"i": index, "noise": os.urandom(64).hex()})
    writer.abort()
    assert storage.list_uris(f"{real_s3}/aborted") == []
