"""Storage round trips on local paths and on S3 (moto for speed, the real local server for the integration test)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vcot.errors import ConfigError, MissingError, NotCommittedError, StorageError
from vcot.io import manifest, shards, storage

RECORDS = [{"id": f"r{i}", "text": "ünïcode ✓", "n": i} for i in range(25)]


def _round_trip(root: str) -> None:
    assert manifest.prepare_output(root, stage="test", inputs=[], overwrite=False) is True
    files = [
        shards.write_jsonl(root, "train/00000-of-00001.jsonl.gz", RECORDS[:20]),
        shards.write_jsonl(root, "val/00000-of-00001.jsonl", RECORDS[20:]),
    ]
    with pytest.raises(NotCommittedError, match="no _SUCCESS"):
        manifest.read_manifest(root)
    committed = manifest.commit(root, stage="test", files=files, config={"a": 1})
    assert committed["records"] == 25
    assert manifest.read_manifest(root) == committed
    train = manifest.committed_files(root, "train/")
    assert [list(shards.read_jsonl(uri)) for uri in train] == [RECORDS[:20]]
    assert list(shards.read_jsonl(manifest.committed_files(root, "val/")[0])) == RECORDS[20:]
    assert storage.list_uris(root) == sorted(
        storage.join(root, p) for p in ("train/00000-of-00001.jsonl.gz", "val/00000-of-00001.jsonl", "_SUCCESS")
    )
    # sha256 and sizes in the manifest describe the bytes actually stored.
    import hashlib

    for entry in committed["files"]:
        data = storage.read_bytes(storage.join(root, entry["path"]))
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
    # A committed output is a no-op to rerun, unless overwritten (which removes the old commit first).
    assert manifest.prepare_output(root, stage="test", inputs=[], overwrite=False) is False
    assert manifest.prepare_output(root, stage="test", inputs=[], overwrite=True) is True
    assert not manifest.is_committed(root) and storage.list_uris(root) == []


def test_round_trip_local(tmp_path: Path) -> None:
    _round_trip(str(tmp_path / "out"))


def test_round_trip_moto(s3_bucket: str) -> None:
    _round_trip(f"{s3_bucket}/run/out")


@pytest.mark.integration
def test_round_trip_real_server(real_s3: str) -> None:
    _round_trip(real_s3)


def test_shards_are_byte_identical_across_runs(tmp_path: Path) -> None:
    first = shards.write_jsonl(str(tmp_path / "a"), "x.jsonl.gz", RECORDS)
    second = shards.write_jsonl(str(tmp_path / "b"), "x.jsonl.gz", RECORDS)
    assert first == second
    assert (tmp_path / "a" / "x.jsonl.gz").read_bytes() == (tmp_path / "b" / "x.jsonl.gz").read_bytes()


def test_manifest_is_deterministic_and_records_lineage(tmp_path: Path) -> None:
    upstream = str(tmp_path / "up")
    manifest.commit(upstream, stage="convert", files=[shards.write_jsonl(upstream, "a.jsonl", RECORDS)], config={})
    outputs = []
    for name in ("d1", "d2"):
        out = str(tmp_path / name)
        files = [shards.write_jsonl(out, "b.jsonl", RECORDS)]
        manifest.commit(out, stage="tokenize", files=files, config={"k": "v"}, inputs=[upstream])
        outputs.append((tmp_path / name / "_SUCCESS").read_bytes())
    assert outputs[0] == outputs[1]
    lineage = manifest.read_manifest(str(tmp_path / "d1"))["inputs"]
    assert lineage[0]["uri"] == upstream and lineage[0]["stage"] == "convert"


def test_sharded_commit_completes_only_when_every_shard_is_done(s3_bucket: str) -> None:
    root = f"{s3_bucket}/sharded"
    specs = [manifest.ShardSpec(i, 3) for i in range(3)]
    for spec in specs[:2]:
        files = [shards.write_jsonl(root, f"train/{spec.name}.jsonl.gz", RECORDS[spec.index :: 3])]
        manifest.commit(root, stage="convert", files=files, config={"shard_index": spec.index}, shard=spec)
        assert manifest.is_committed(root, spec)
    assert not manifest.is_committed(root)
    with pytest.raises(NotCommittedError):
        manifest.read_manifest(root)
    spec = specs[2]
    files = [shards.write_jsonl(root, f"train/{spec.name}.jsonl.gz", RECORDS[2::3])]
    manifest.commit(root, stage="convert", files=files, config={"shard_index": 2}, shard=spec)
    assert manifest.is_committed(root)
    merged = manifest.read_manifest(root)
    assert merged["records"] == len(RECORDS) and merged["shard_count"] == 3
    ids = sorted(r["id"] for uri in manifest.committed_files(root) for r in shards.read_jsonl(uri))
    assert ids == sorted(r["id"] for r in RECORDS)


_KILLED_WRITER = """
import os, signal, sys
from vcot.io import manifest, shards
root = sys.argv[1]
writer = shards.JsonlShardWriter(root, "train/00000-of-00001.jsonl.gz")
for i in range(200000):
    writer.write({"id": i, "pad": "x" * 100})
    if i == 100000:
        os.kill(os.getpid(), signal.SIGKILL)
writer.close()
manifest.commit(root, stage="test", files=[writer.result], config={})
"""


@pytest.mark.integration
def test_writer_killed_mid_output_leaves_nothing_readable(real_s3: str) -> None:
    result = subprocess.run([sys.executable, "-c", _KILLED_WRITER, real_s3], env=dict(os.environ), timeout=120)
    assert result.returncode == -9
    assert not manifest.is_committed(real_s3)
    with pytest.raises(NotCommittedError):
        manifest.committed_files(real_s3)
    # A rerun of an uncommitted output simply runs again.
    assert manifest.prepare_output(real_s3, stage="test", inputs=[], overwrite=False) is True


@pytest.mark.integration
def test_wrong_credentials_give_one_clear_error(real_s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(StorageError) as info:
        storage.check_access(real_s3)
    message = str(info.value)
    assert "bucket 'vcot'" in message and "127.0.0.1" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert "\n" not in message


def test_unreachable_endpoint_gives_one_clear_error(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("VCOT_S3_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageError, match=r"cannot reach bucket .* at endpoint http://127.0.0.1:9") as info:
        storage.check_access(f"{s3_bucket}/x")
    assert not isinstance(info.value, MissingError)


def test_a_streamed_write_s3_refuses_is_a_storage_error(real_s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read-only credentials pass the bucket check; a shard writer then learns it may not write when the upload
    starts or, for a small object, when it is closed. Both escaped as botocore's own errors: logged as a crash (a
    bug) with a traceback, and not an outage to the loops that must stop on one."""
    from botocore.exceptions import ClientError

    from vcot.errors import storage_outage

    def refused(**kwargs: object) -> None:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "PutObject")

    for call in ("put_object", "create_multipart_upload", "upload_part", "complete_multipart_upload"):
        monkeypatch.setattr(storage.s3_client(), call, refused)
    with pytest.raises(StorageError, match="S3 refused access to bucket 'vcot'.*AccessDenied") as info:
        shards.write_jsonl(f"{real_s3}/refused", "train/00000-of-00001.jsonl.gz", [{"a": 1}])
    assert storage_outage(info.value)
    with pytest.raises(StorageError, match="AccessDenied"), storage.open_uri(f"{real_s3}/refused/x.bin", "wb") as out:
        out.write(b"x")


def test_missing_bucket_and_missing_key(s3_bucket: str, tmp_path: Path) -> None:
    """A missing key or file is one bad input (MissingError: a stage rejects that record); a missing bucket is a
    setting to fix, and stops the stage."""
    with pytest.raises(StorageError, match="bucket .no-such-bucket-vcot. does not exist at endpoint http") as info:
        storage.check_access("s3://no-such-bucket-vcot/x")
    assert not isinstance(info.value, MissingError)
    with pytest.raises(MissingError, match="does not exist|NoSuchKey"):
        storage.read_bytes(f"{s3_bucket}/missing.json")
    with pytest.raises(MissingError, match="does not exist"):
        storage.read_bytes(str(tmp_path / "missing.json"))
    assert storage.exists(f"{s3_bucket}/missing.json") is False
    # HEAD answers 404 for a key in a bucket that does not exist too: not "no such file" (distill rejected every
    # record's image as missing instead of stopping on a wrong bucket)
    with pytest.raises(StorageError, match="bucket .no-such-bucket-vcot. does not exist") as info:
        storage.exists("s3://no-such-bucket-vcot/images/1.png")
    assert not isinstance(info.value, MissingError)


def test_invalid_addressing_style_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VCOT_S3_ADDRESSING_STYLE", "sideways")
    with pytest.raises(ConfigError, match="set it to path, virtual or auto"):
        storage.S3Settings.from_env()


def test_a_malformed_endpoint_is_a_setting_to_fix_and_hides_its_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:pw@minio:port/")
    with pytest.raises(ConfigError, match=r"^AWS_ENDPOINT_URL='http://\*\*\*@minio:port/' is not a URL") as info:
        storage.s3_client()  # botocore's own check would raise a bare ValueError, only here
    assert "pw" not in str(info.value)


def test_join_and_relative() -> None:
    assert storage.join("s3://b/run/", "/train/", "x.jsonl") == "s3://b/run/train/x.jsonl"
    assert storage.relative("s3://b/run/train/x", "s3://b/run") == "train/x"
    assert storage.split_s3("s3://bucket/a/b") == ("bucket", "a/b")
    assert storage.parent("s3://b/run/x.json") == storage.parent("s3://b/run/sub/") == "s3://b/run"
    assert storage.parent("x.json") == "." and storage.parent("/data/x") == "/data"
    with pytest.raises(ValueError, match="bucket root"):
        storage.parent("s3://b/")


def test_upload_and_download_prefix(s3_bucket: str, tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("a")
    (source / "sub" / "b.bin").write_bytes(b"\x00\x01")
    written = storage.upload_dir(source, f"{s3_bucket}/model")
    assert len(written) == 2
    dest = storage.download_prefix(f"{s3_bucket}/model", tmp_path / "dst")
    assert (dest / "a.txt").read_text() == "a" and (dest / "sub" / "b.bin").read_bytes() == b"\x00\x01"


@pytest.mark.integration
def test_a_file_replaced_at_the_same_uri_is_fetched_again(real_s3: str, tmp_path: Path) -> None:
    """An adapter retrained at the same URI (same file sizes) must not be served stale from the model cache."""
    storage.write_text(f"{real_s3}/adapter/weights.bin", "old!")
    dest = storage.download_prefix(f"{real_s3}/adapter", tmp_path / "cache")
    assert (dest / "weights.bin").read_text() == "old!"
    time.sleep(1.1)  # S3 modification times have one-second resolution
    storage.write_text(f"{real_s3}/adapter/weights.bin", "new!")
    assert (storage.download_prefix(f"{real_s3}/adapter", dest) / "weights.bin").read_text() == "new!"
    before = (dest / "weights.bin").stat().st_mtime_ns
    storage.download_prefix(f"{real_s3}/adapter", dest)  # unchanged: not fetched again
    assert (dest / "weights.bin").stat().st_mtime_ns == before


def test_lineage_of_raw_source_data_records_only_its_uri(tmp_path: Path) -> None:
    raw = tmp_path / "viscot.json"
    raw.write_text("[]")
    out = str(tmp_path / "out")
    committed = manifest.commit(out, stage="convert", files=[], config={}, inputs=[str(raw)])
    assert committed["inputs"] == [{"uri": str(raw), "committed": False}]

@pytest.mark.parametrize("where", ["local", "s3"])
def test_download_prefix_can_skip_weights(where: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "config.json").write_text("{}")
    (source / "model.safetensors").write_bytes(b"\x00" * 8)
    prefix = str(source)
    if where == "s3":
        prefix = f"{request.getfixturevalue('s3_bucket')}/model"
        storage.upload_dir(source, prefix)
    dest = storage.download_prefix(prefix, tmp_path / "dst", skip_suffixes=(".safetensors", ".bin"))
    assert sorted(p.name for p in dest.iterdir()) == ["config.json"]


def test_s3_client_is_per_process(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = storage.s3_client()
    assert storage.s3_client() is parent
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as in a forked DataLoader worker
    assert storage.s3_client() is not parent


def test_an_upper_case_scheme_is_s3_not_a_local_folder(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 3986: schemes are case-insensitive. ``S3://`` reaches the bucket, and what storage builds says ``s3://``."""
    monkeypatch.chdir(tmp_path)
    upper = "S3://" + s3_bucket[len("s3://") :]
    _round_trip(f"{upper}/run/out")
    storage.write_text(f"{upper}/run/a.txt", "a")
    assert storage.read_text(f"{s3_bucket}/run/a.txt") == "a" and storage.exists(f"{upper}/run/a.txt")
    assert storage.list_uris(f"{upper}/run") == [f"{s3_bucket}/run/a.txt"]
    assert storage.join(upper, "run") == storage.parent(f"{upper}/run/a.txt") == f"{s3_bucket}/run"
    assert storage.relative(f"{s3_bucket}/run/a.txt", f"{upper}/run") == "a.txt"
    assert storage.overlaps(f"{upper}/run", f"{s3_bucket}/run/a.txt")
    assert (storage.download_prefix(f"{upper}/run", tmp_path / "dst") / "a.txt").read_text() == "a"
    assert not (tmp_path / "S3:").exists()


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("s3:/bucket/key", "write s3://bucket/key"),
        ("S3:bucket/key", "write s3://bucket/key"),
        ("s3://", "names no bucket"),
        ("s3:///key", "names no bucket"),
        ("gs://bucket/key", "gs:// is not supported"),
        ("s3a://bucket/key", "s3a:// is not supported"),
    ],
)
def test_odd_uri_forms_are_one_clear_line_not_a_local_folder(
    uri: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.convert import main as convert_main

    monkeypatch.chdir(tmp_path)
    for call in (lambda: storage.write_text(f"{uri}/x.txt", "x"), lambda: storage.exists(uri),
                 lambda: storage.list_uris(uri), lambda: storage.check_access(uri)):
        with pytest.raises(ConfigError, match=says):
            call()
    (tmp_path / "in.jsonl").write_text("{}\n")
    assert convert_main(["--source", "records", "--input", str(tmp_path / "in.jsonl"), "--output", uri]) == 2
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if line and not line.startswith("{")]  # log lines aside
    assert line.startswith("vcot-convert: error: ") and says in line and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no folder named s3: (or gs:) was made


def test_upload_dir_can_move_into_a_local_folder(tmp_path: Path) -> None:
    """Export moves its merged model out of scratch: a second full copy of a large model may not fit the disk."""
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "model.safetensors").write_bytes(b"\x00\x01")
    written = storage.upload_dir(source, str(tmp_path / "out"), move=True)
    assert written == [str(tmp_path / "out" / "sub" / "model.safetensors")]
    assert (tmp_path / "out" / "sub" / "model.safetensors").read_bytes() == b"\x00\x01"
    assert not (source / "sub" / "model.safetensors").exists()


def test_local_writers_of_one_file_in_one_process_never_share_a_temporary_file(tmp_path: Path) -> None:
    """The temporary file was named by pid alone: threads (and pods on a shared volume, each pid 1) shared it, one
    failed with FileNotFoundError and a reader could see a half-written file."""
    import threading

    path, document = tmp_path / "_SUCCESS", b"{" + b" " * 2_000_000 + b"}"
    storage.write_bytes(str(path), document)
    errors: list[BaseException] = []
    torn: list[int] = []

    def write() -> None:
        for _ in range(20):
            try:
                storage.write_bytes(str(path), document)
            except BaseException as exc:  # noqa: BLE001 - counted: none may fail
                errors.append(exc)

    def read() -> None:
        for _ in range(200):
            if (data := path.read_bytes()) != document:
                torn.append(len(data))

    threads = [threading.Thread(target=write) for _ in range(3)] + [threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and torn == []


@pytest.mark.parametrize("spelling", ["{root}//own", "{root}/./own", "file://{root}/own", "{root}/own/"])
def test_a_local_listing_is_under_the_prefix_as_written(tmp_path: Path, spelling: str) -> None:
    """rglob's paths are normalized: under `$DATA/own` with DATA ending in `/`, relative() of each listed file
    failed, and converting a user's own folder stopped with a traceback."""
    (tmp_path / "own" / "sub").mkdir(parents=True)
    (tmp_path / "own" / "sub" / "a.jsonl").write_text("{}")
    prefix = spelling.format(root=tmp_path)
    assert [storage.relative(uri, prefix) for uri in storage.list_uris(prefix)] == ["sub/a.jsonl"]
