"""Manifest rules that stages share: reruns and run ids, outputs that overlap inputs, checked reads, stable bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from vcot.errors import ConfigError, StorageError
from vcot.io import manifest, shards, storage

RECORDS = [{"id": f"r{i}", "n": i} for i in range(24)]


def _run_shard(root: str, spec: manifest.ShardSpec, *, tag: str, overwrite: bool) -> bool:
    """One pod of a run: prepare, write its records, commit. ``False`` when it skipped."""
    if not manifest.prepare_output(root, stage="test", inputs=[], overwrite=overwrite, shard=spec):
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
        assert manifest.prepare_output(root, stage="test", inputs=[], overwrite=True, shard=spec) is True
    files = [shards.write_jsonl(root, f"train/{new[0].name}.jsonl.gz", RECORDS[0::3])]
    manifest.commit(root, stage="test", files=files, config={"tag": "new"}, shard=new[0])
    # A late pod (or a retried one) of the same new run prepares after shard 0 committed.
    assert manifest.prepare_output(root, stage="test", inputs=[], overwrite=True, shard=new[2]) is True
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
    assert manifest.complete_shard_set(root, shard=manifest.ShardSpec(0, 4))["shard_count"] == 4  # type: ignore[index]
    assert manifest.read_manifest(root)["shard_count"] == 4
    assert manifest.complete_shard_set(root, shard=manifest.ShardSpec(0, 3)) is None
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


# --- an --overwrite rerun with the same shard count (issue 12, item 4) --------------------------------------


@pytest.mark.integration
def test_overwrite_with_the_same_shard_count_never_merges_another_runs_shards(real_s3: str) -> None:
    """The first pod of the new run commits before the others start: the old run's shards are not its set."""
    root = f"{real_s3}/same-count"
    for index in range(3):
        _run_shard(root, manifest.ShardSpec(index, 3, run="old"), tag="old", overwrite=False)
    assert manifest.read_manifest(root)["config"] == {"tag": "old"}

    _run_shard(root, manifest.ShardSpec(0, 3, run="new"), tag="new", overwrite=True)
    assert not manifest.is_committed(root)
    with pytest.raises(manifest.NotCommittedError):
        manifest.read_manifest(root)  # the old shards were dropped: {new 0} is no complete set
    assert not manifest.is_committed(root, manifest.ShardSpec(1, 3, run="new"))  # old shard 1 is not the new run's

    for index in (1, 2):
        _run_shard(root, manifest.ShardSpec(index, 3, run="new"), tag="new", overwrite=True)
    merged = manifest.read_manifest(root)
    assert merged["config"] == {"tag": "new"} and merged["shard_count"] == 3
    parts = [storage.read_json(manifest.shard_manifest_uri(root, manifest.ShardSpec(i, 3))) for i in range(3)]
    assert {part["shard"]["run"] for part in parts} == {"new"}


def test_a_resumed_run_adopts_committed_shards_and_an_overwrite_run_drops_them(tmp_path: Path) -> None:
    root = str(tmp_path / "out")
    assert _run_shard(root, manifest.ShardSpec(0, 3, run="a"), tag="a", overwrite=False)
    assert _run_shard(root, manifest.ShardSpec(1, 3, run="a"), tag="a", overwrite=False)
    assert not _run_shard(root, manifest.ShardSpec(0, 3, run="a"), tag="a", overwrite=False)  # a retried pod
    # Run a failed at shard 2; its Job is deleted and applied again (a new uid): shards 0 and 1 are adopted.
    assert not _run_shard(root, manifest.ShardSpec(1, 3, run="b"), tag="b", overwrite=False)
    assert manifest.is_committed(root, manifest.ShardSpec(1, 3, run="b"))
    assert not manifest.is_committed(root)
    assert _run_shard(root, manifest.ShardSpec(2, 3, run="b"), tag="b", overwrite=False)
    assert not manifest.is_committed(root)  # shard 0 is still only run a's
    assert not _run_shard(root, manifest.ShardSpec(0, 3, run="b"), tag="b", overwrite=False)
    assert manifest.is_committed(root)  # the pod that adopted the last shard merged the set
    assert manifest.read_manifest(root)["shard_count"] == 3
    # Committed: any later run skips without --overwrite. The first pod of an --overwrite run drops every
    # shard manifest of another run, so that no later run adopts (or merges) the old shards.
    assert not _run_shard(root, manifest.ShardSpec(1, 3, run="c"), tag="c", overwrite=False)
    assert _run_shard(root, manifest.ShardSpec(1, 3, run="d"), tag="d", overwrite=True)
    assert storage.list_uris(f"{root}/_shards") == [manifest.shard_manifest_uri(root, manifest.ShardSpec(1, 3))]


def test_a_resumed_run_with_changed_settings_makes_its_shards_again(tmp_path: Path) -> None:
    """A Job applied again after a settings change (a new uid, other settings): adopting the old shards committed a
    set that mixed two settings (two box frames, say) under a _SUCCESS naming the first shard's."""
    root = str(tmp_path / "out")
    for index in (0, 1):
        assert _run_shard(root, manifest.ShardSpec(index, 3, run="a", made="frame-1"), tag="a", overwrite=False)
    rerun = [manifest.ShardSpec(index, 3, run="b", made="frame-2") for index in range(3)]
    assert _run_shard(root, rerun[1], tag="b", overwrite=False)  # made again, not adopted
    assert _run_shard(root, rerun[2], tag="b", overwrite=False)
    assert not manifest.is_committed(root)  # shard 0 is still only run a's, of the old settings
    assert _run_shard(root, rerun[0], tag="b", overwrite=False)
    assert manifest.read_manifest(root)["config"] == {"tag": "b"}
    # The same settings under a new uid are still adopted (a Job deleted and applied again).
    again = str(tmp_path / "again")
    assert _run_shard(again, manifest.ShardSpec(0, 2, run="a", made="m"), tag="a", overwrite=False)
    assert not _run_shard(again, manifest.ShardSpec(0, 2, run="b", made="m"), tag="a", overwrite=False)


def test_a_shard_manifest_storage_cannot_serve_stops_the_pod_instead_of_redoing_the_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, spec = str(tmp_path / "out"), manifest.ShardSpec(0, 2, run="a")
    assert _run_shard(root, spec, tag="a", overwrite=False)
    unreachable = StorageError("cannot reach bucket 'b' at endpoint http://s3: check AWS_ENDPOINT_URL_S3")
    monkeypatch.setattr(storage, "read_json", lambda uri: (_ for _ in ()).throw(unreachable))
    with pytest.raises(StorageError, match="cannot reach"):  # read as "not committed", the shard would run again
        manifest.is_committed(root, spec)
    with pytest.raises(StorageError, match="cannot reach"):
        manifest.prepare_output(root, stage="test", inputs=[], overwrite=False, shard=spec)


def test_the_default_run_id_follows_what_the_run_makes() -> None:
    config = {"input": "s3://b/in", "output": "s3://b/out", "val_fraction": 0.1}
    same = manifest.default_run_id({**config, "shard_index": 3, "workers": 4, "overwrite": True, "run_id": None})
    assert manifest.default_run_id(config) == same
    assert manifest.default_run_id({**config, "val_fraction": 0.2}) != same


# --- outputs that would destroy an input or another stage's output (item 1) -------------------------------


def _places(root: str) -> list[tuple[str, str]]:
    """(output, input) pairs that are the same place or nested either way."""
    return [
        (f"{root}/d1", f"{root}/d1/data"),  # the example: the output holds the raw dataset
        (f"{root}/d1/data/out", f"{root}/d1/data"),  # the output inside the input
        (f"{root}/d1/", f"{root}/d1"),  # the same place
    ]


@pytest.mark.parametrize("where", ["local", "real_s3"])
def test_prepare_output_refuses_an_output_that_overlaps_an_input(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    root = str(tmp_path) if where == "local" else request.getfixturevalue("real_s3")
    raw = storage.join(root, "d1", "data", "viscot.json")
    storage.write_text(raw, "[]")
    for output, input_uri in _places(root):
        for overwrite in (False, True):
            with pytest.raises(ConfigError, match="same place or one holds the other") as info:
                manifest.prepare_output(output, stage="convert", inputs=[input_uri], overwrite=overwrite)
            assert info.value.exit_code == 2
    assert storage.read_text(raw) == "[]"
    assert manifest.prepare_output(f"{root}/d2", stage="convert", inputs=[f"{root}/d1/data", None], overwrite=True)


def test_a_relative_local_output_is_compared_where_it_resolves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError):
        manifest.prepare_output("./runs/../d1", stage="tokenize", inputs=[f"{tmp_path}/d1/records"], overwrite=False)


@pytest.mark.parametrize("overwrite", [False, True])
def test_another_stages_output_is_never_deleted_nor_taken_as_done(tmp_path: Path, overwrite: bool) -> None:
    records = str(tmp_path / "records")
    files = [shards.write_jsonl(records, "train/00000-of-00001.jsonl.gz", RECORDS)]
    manifest.commit(records, stage="convert", files=files, config={})
    with pytest.raises(ConfigError, match=f"--output {records} holds a committed convert output"):
        manifest.prepare_output(records, stage="tokenize", inputs=[], overwrite=overwrite)
    spec = manifest.ShardSpec(0, 2, run="r")
    with pytest.raises(ConfigError, match="committed convert output"):
        manifest.prepare_output(records, stage="distill", inputs=[], overwrite=overwrite, shard=spec)
    assert list(manifest.committed_records(records, ("train/",))) == RECORDS


# --- readers name the stage they expect (item 6) and check each file's sha256 (item 15) -------------------


def test_a_reader_refuses_another_stages_output_in_one_line(tmp_path: Path) -> None:
    tokens = str(tmp_path / "tokens")
    files = [shards.write_file(tokens, "train/00000-of-00001.parquet", b"PAR1 not records PAR1")]
    manifest.commit(tokens, stage="tokenize", files=files, config={})
    with pytest.raises(ConfigError) as info:
        list(manifest.committed_records(tokens, expect_stage=manifest.RECORD_STAGES))
    assert str(info.value) == f"{tokens} is a tokenize output; expected records (a convert or distill output)"
    with pytest.raises(ConfigError, match="is a tokenize output; expected a train output"):
        manifest.committed_files(tokens, expect_stage="train")
    assert manifest.committed_files(tokens, expect_stage="tokenize") == [f"{tokens}/train/00000-of-00001.parquet"]


@pytest.mark.integration
def test_a_committed_file_replaced_after_commit_is_an_error_naming_it(real_s3: str) -> None:
    root = f"{real_s3}/replaced"
    files = [
        shards.write_jsonl(root, "train/00000-of-00001.jsonl.gz", RECORDS[:20]),
        shards.write_jsonl(root, "val/00000-of-00001.jsonl.gz", RECORDS[20:]),
        shards.write_file(root, "quality.json", b'{"accepted": 24}'),
    ]
    manifest.commit(root, stage="convert", files=files, config={})
    assert list(manifest.committed_records(root)) == RECORDS
    assert manifest.read_listed(root, "quality.json") == b'{"accepted": 24}'

    # Another writer replaced one object with valid data of its own: readable, but not what was committed.
    shards.write_jsonl(root, "val/00000-of-00001.jsonl.gz", [{"id": "other"}])
    storage.write_bytes(f"{root}/quality.json", b'{"accepted": 99}')
    replaced = f"{root}/val/00000-of-00001.jsonl.gz"
    with pytest.raises(StorageError, match=f"{replaced} is not the file its manifest lists"):
        list(manifest.committed_records(root))
    with pytest.raises(StorageError, match=f"{replaced} is not the file its manifest lists"):
        list(manifest.read_committed(root, "val/"))
    with pytest.raises(StorageError, match="quality.json is not the file its manifest lists"):
        manifest.read_listed(root, "quality.json")
    # A truncated gzip object (a half-written replacement) is named as well, not a bare zlib error.
    data = storage.read_bytes(f"{root}/train/00000-of-00001.jsonl.gz")
    storage.write_bytes(f"{root}/train/00000-of-00001.jsonl.gz", data[: len(data) // 2])
    with pytest.raises(StorageError, match="train/00000-of-00001.jsonl.gz"):
        list(manifest.committed_records(root, ("train/",)))


def test_a_skipped_rerun_says_when_its_inputs_were_written_again_or_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, made = str(tmp_path / "records"), str(tmp_path / "tokens")
    manifest.commit(source, stage="convert", files=[shards.write_jsonl(source, "train/a.jsonl.gz", RECORDS[:2])],
                    config={})  # fmt: skip
    manifest.commit(made, stage="tokenize", files=[], config={}, inputs=[source])
    assert manifest.changed_inputs(made) == []
    manifest.commit(source, stage="convert", files=[shards.write_jsonl(source, "train/a.jsonl.gz", RECORDS[:3])],
                    config={})  # an --overwrite rerun of the input  # fmt: skip
    assert manifest.changed_inputs(made) == [source]
    storage.delete_prefix(source)
    assert manifest.changed_inputs(made) == [source]
    unreadable = StorageError("cannot reach bucket 'b'")
    monkeypatch.setattr(manifest, "changed_inputs", lambda output: (_ for _ in ()).throw(unreadable))
    assert not manifest.prepare_output(made, stage="tokenize", inputs=[source], overwrite=False)  # skipped all the same
