"""Parallel VisCOT conversion: the same bytes for any number of workers, and the streaming fallback gives the same records."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from vcot.convert import ConvertConfig, convert, viscot
from vcot.dev.synthetic import write_synthetic_viscot


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("synthetic")
    return write_synthetic_viscot(str(root / "data"), num_records=120, seed=5) | {"root": str(root / "data")}


def _run(synthetic: dict, data: Path, output: Path, **options: object) -> dict[str, bytes]:
    convert(
        ConvertConfig(
            source="viscot",
            input=str(data),
            images=f"{synthetic['root']}/images",
            metadata=synthetic["metadata"],
            output=str(output),
            val_fraction=0.25,
            **options,  # type: ignore[arg-type]
        )
    )
    return {str(p.relative_to(output)): p.read_bytes() for p in sorted(output.rglob("*")) if p.is_file()}


def _lines(files: dict[str, bytes]) -> dict[str, list[str]]:
    return {name: gzip.decompress(data).decode().splitlines() for name, data in files.items() if name.endswith(".gz")}


def test_output_bytes_do_not_depend_on_workers(
    synthetic: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(viscot, "CHUNK_BYTES", 1024)  # ~20 chunks of a few items each
    data = Path(synthetic["json"])
    runs = {workers: _run(synthetic, data, tmp_path / f"w{workers}", workers=workers) for workers in (1, 2, 3)}
    manifests = [json.loads(runs[workers].pop("_SUCCESS")) for workers in (1, 2, 3)]
    assert runs[1] == runs[2] == runs[3]  # every shard and the quality report
    assert manifests[0]["files"] == manifests[1]["files"] == manifests[2]["files"]
    assert "workers" not in manifests[0]["config"]  # how it ran, not what it made
    assert sum(len(lines) for lines in _lines(runs[1]).values()) == 120


def test_a_chunk_orjson_refuses_is_read_by_yajl_and_a_wrong_cut_streams_the_rest_with_the_same_records(
    synthetic: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = json.loads(Path(synthetic["json"]).read_text())
    items[40]["conversations"][3]["value"] += " 1234567890123456789012"  # 19+ digits: yajl reads that chunk
    items[70] = {"conversations": items[70].pop("conversations"), **items[70]}  # another first key: a miscount
    data = tmp_path / "viscot.json"
    data.write_text(json.dumps(items, indent=1))
    streamed = _run(synthetic, data, tmp_path / "streamed", workers=1)  # one chunk: read whole by yajl
    monkeypatch.setattr(viscot, "CHUNK_BYTES", 2048)
    events = []
    monkeypatch.setattr(viscot.log, "info", lambda event, **kw: events.append((event, kw)))
    chunked = _run(synthetic, data, tmp_path / "chunked", workers=2)
    fallback = [kw for event, kw in events if event == "streaming_fallback"]
    assert len(fallback) == 1 and 40 < fallback[0]["from_item"] <= 70 and "whole elements" in fallback[0]["why"]
    assert _lines(chunked) == _lines(streamed)
    assert any("1234567890123456789012" in line for lines in _lines(chunked).values() for line in lines)


def test_invalid_utf8_mid_file_is_one_rejected_record_on_the_chunked_path(
    synthetic: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = json.loads(Path(synthetic["json"]).read_text())
    items[90]["conversations"][3]["value"] = "PLACEHOLDER"
    raw = json.dumps(items).encode().replace(b"PLACEHOLDER", b"bad \xff byte")
    data = tmp_path / "viscot.json"
    data.write_bytes(raw)
    monkeypatch.setattr(viscot, "CHUNK_BYTES", 2048)
    files = _run(synthetic, data, tmp_path / "out", workers=2)
    rejected = [json.loads(line) for line in _lines(files)["rejected/00000-of-00001.jsonl.gz"]]
    assert [r["reason"] for r in rejected] == ["bad_encoding"] and rejected[0]["source_index"] == 90
    assert sum(len(lines) for lines in _lines(files).values()) == 120
