"""Manifest rules that stages share: reruns with another shard count, the shard default, stable config bytes."""

from __future__ import annotations

import pytest

from vcot import manifest, shards, storage

RECORDS = [{"id": f"r{i}", "n": i} for i in range(24)]


def _run_shard(root: str, spec: manifest.ShardSpec, *, tag: str, overwrite: bool) -> bool:
    """One pod of a run: prepare, write its records, commit. ``False`` when it skipped."""
    if not manifest.prepare_output(root, overwrite=overwrite, shard=spec):
        return False
    files = [shards.write_jsonl(root, f"train/{spec.name}.jsonl.gz", RECORDS[spec.index :: spec.count])]
    manifest.commit(root, stage="test", files=files, config={"tag": tag, "overwrite": overwrite}, shard=spec)
    return True


def test_overwrite_with_another_shard_count_publishes_the_new_run(s3_bucket: str) -> None:
    root = f"{s3_bucket}/resharded"
    for index in range(4):
        _run_shard(root, manifest.ShardSpec(index, 4), tag="old", overwrite=False)
    assert manifest.read_manifest(root)["shard_count"] == 4

    # The first pod of the new run removes the old commit at once: no reader trusts it while we rewrite.
    _run_shard(root, manifest.ShardSpec(0, 8), tag="new", overwrite=True)
    assert not manifest.is_committed(root)
    with pytest.raises(manifest.NotCommittedError):
        manifest.read_manifest(root)

    for index in range(1, 8):
        _run_shard(root, manifest.ShardSpec(index, 8), tag="new", overwrite=True)
    merged = manifest.read_manifest(root)
    assert merged["shard_count"] == 8 and merged["config"] == {"tag": "new"}
    assert sorted(r["id"] for r in manifest.committed_records(root, ("train/",))) == sorted(r["id"] for r in RECORDS)
    assert all("-of-00008" in f["path"] for f in merged["files"])


def test_overwrite_never_removes_a_shard_of_the_new_run(s3_bucket: str) -> None:
    """N pods start at once with --overwrite; a pod that starts after another finished keeps its manifest."""
    root = f"{s3_bucket}/concurrent"
    for index in range(2):
        _run_shard(root, manifest.ShardSpec(index, 2), tag="old", overwrite=False)
    new = [manifest.ShardSpec(index, 3) for index in range(3)]
    for spec in new:
        assert manifest.prepare_output(root, overwrite=True, shard=spec) is True
    files = [shards.write_jsonl(root, f"train/{new[0].name}.jsonl.gz", RECORDS[0::3])]
    manifest.commit(root, stage="test", files=files, config={"tag": "new"}, shard=new[0])
    # A late pod (or a retried one) of the same new run prepares after shard 0 committed.
    assert manifest.prepare_output(root, overwrite=True, shard=new[2]) is True
    assert manifest.is_committed(root, new[0])
    for spec in new[1:]:
        files = [shards.write_jsonl(root, f"train/{spec.name}.jsonl.gz", RECORDS[spec.index :: 3])]
        manifest.commit(root, stage="test", files=files, config={"tag": "new"}, shard=spec)
    assert manifest.read_manifest(root)["shard_count"] == 3


def test_complete_shard_set_prefers_the_callers_count(tmp_path: str) -> None:
    root = str(tmp_path)
    for count in (2, 4):
        for index in range(count):
            spec = manifest.ShardSpec(index, count)
            files = [shards.write_jsonl(root, f"train/{spec.name}.jsonl", RECORDS[index::count])]
            storage.write_json(
                manifest.shard_manifest_uri(root, spec),
                manifest.build_manifest(stage="test", files=files, config={"count": count}, shard=spec),
            )
    assert manifest.complete_shard_set(root, count=4)["shard_count"] == 4  # type: ignore[index]
    assert manifest.read_manifest(root)["shard_count"] == 4
    assert manifest.complete_shard_set(root, count=3) is None
    assert manifest.merge_shard_manifests(root)["shard_count"] == 2  # type: ignore[index]  # readers: as before


def test_overwrite_is_not_part_of_the_manifest_config(tmp_path: str) -> None:
    made = [
        storage.dumps_json(manifest.build_manifest(stage="test", files=[], config={"a": 1, "overwrite": flag}))
        for flag in (False, True)
    ]
    assert made[0] == made[1] and '"overwrite"' not in made[0]


def test_shard_default_comes_from_the_indexed_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(manifest.JOB_INDEX_ENV, raising=False)
    assert manifest.ShardSpec.resolve(None, 4) == manifest.ShardSpec(0, 4)
    monkeypatch.setenv(manifest.JOB_INDEX_ENV, "3")
    assert manifest.ShardSpec.resolve(None, 4) == manifest.ShardSpec(3, 4)
    assert manifest.ShardSpec.resolve(1, 4) == manifest.ShardSpec(1, 4)  # an explicit index wins
    with pytest.raises(ValueError, match="not in"):
        manifest.ShardSpec.resolve(None, 2)
    monkeypatch.setenv(manifest.JOB_INDEX_ENV, "x")
    with pytest.raises(ValueError, match="--shard-index"):
        manifest.ShardSpec.resolve(None, 2)


def test_committed_records_reads_train_then_val(tmp_path: str) -> None:
    root = str(tmp_path)
    files = [
        shards.write_jsonl(root, "val/00000-of-00001.jsonl", RECORDS[20:]),
        shards.write_jsonl(root, "train/00000-of-00001.jsonl", RECORDS[:20]),
        shards.write_jsonl(root, "rejected/00000-of-00001.jsonl", [{"id": "bad"}]),
    ]
    manifest.commit(root, stage="test", files=files, config={})
    assert list(manifest.committed_records(root)) == RECORDS
    assert list(manifest.committed_records(root, ("val/",))) == RECORDS[20:]
