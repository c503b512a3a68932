"""The convert stage end to end on synthetic data: reruns, sharding, accounting, errors, the entrypoint."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.convert import main
from vcot.config import parse_config
from vcot.convert import ConvertConfig, convert
from vcot.dev.synthetic import write_synthetic_viscot
from vcot.errors import ConfigError, NotCommittedError, StorageError, VcotError
from vcot.io import manifest, shards, storage

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("synthetic")
    return write_synthetic_viscot(str(root / "data"), num_records=48, seed=3) | {"root": str(root / "data")}


def _all_records(output: str, prefixes: tuple[str, ...] = ("train/", "val/")) -> list[dict]:
    return [
        r for prefix in prefixes for uri in manifest.committed_files(output, prefix) for r in shards.read_jsonl(uri)
    ]


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_data_converts_to_its_known_boxes(synthetic: dict, tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    convert(ConvertConfig(source="viscot", input=synthetic["root"], output=output, check_images=True))
    records = {r["id"]: r for r in _all_records(output)}
    assert set(records) == set(synthetic["truth"])
    conventions = set()
    for record_id, truth in synthetic["truth"].items():
        record = records[record_id]
        assert record["objects"][0]["ref"] == truth["ref"] and record["answer"] == truth["answer"]
        assert max(abs(a - b) for a, b in zip(record["objects"][0]["box"], truth["box"])) <= 2
        assert record["rationale"].endswith(f"Answer: {truth['answer']}") and record["split"] in ("train", "val")
        assert record["width"] != record["height"]
        conventions.add(record["provenance"]["box_source"])
    assert conventions == {"absolute", "string_unit", "string_norm1000"}
    quality = storage.read_json(storage.join(output, "quality.json"))
    assert quality["total"]["accepted"] == 48 and quality["total"]["ref_coverage"] == 1.0
    assert (tmp_path / "out" / "quality.md").read_text().startswith("# Convert quality: viscot")


def test_rerun_is_byte_identical_and_a_committed_output_is_skipped(synthetic: dict, tmp_path: Path) -> None:
    output = tmp_path / "out"
    config = ConvertConfig(source="viscot", input=synthetic["root"], output=str(output), val_fraction=0.25)
    committed = convert(config)  # like every stage: its manifest, or None when already committed
    assert committed == manifest.read_manifest(str(output)) and committed["stats"]["subsets"]
    first = _file_bytes(output)
    assert {"_SUCCESS", "quality.json", "train/00000-of-00001.jsonl.gz", "rejected/00000-of-00001.jsonl.gz"} <= set(
        first
    )
    (output / "train" / "00000-of-00001.jsonl.gz").write_bytes(b"tampered")
    assert convert(config) is None  # committed: skipped, nothing rewritten
    assert (output / "train" / "00000-of-00001.jsonl.gz").read_bytes() == b"tampered"
    convert(
        ConvertConfig(source="viscot", input=synthetic["root"], output=str(output), val_fraction=0.25, overwrite=True)
    )
    assert _file_bytes(output) == first


def test_three_shards_equal_the_unsharded_run(synthetic: dict, tmp_path: Path) -> None:
    single = str(tmp_path / "single")
    convert(ConvertConfig(source="viscot", input=synthetic["root"], output=single))
    sharded = str(tmp_path / "sharded")
    for index in range(3):
        assert not manifest.is_committed(sharded)
        with pytest.raises(NotCommittedError):
            manifest.committed_files(sharded)
        config = ConvertConfig(
            source="viscot", input=synthetic["root"], output=sharded, shard_index=index, num_shards=3
        )
        assert convert(config)["shard"]["index"] == index  # the shard's own manifest
        assert convert(config) is None  # a retried pod skips its committed shard, even before the others finish
    assert manifest.is_committed(sharded)

    def key(records: list[dict]) -> list[str]:
        return sorted(json.dumps(r, sort_keys=True) for r in records)

    assert key(_all_records(sharded)) == key(_all_records(single))
    for split in ("train/", "val/"):
        assert len(manifest.committed_files(sharded, split)) == 3
    assert storage.read_json(f"{sharded}/quality.json")["total"] == {
        **storage.read_json(f"{single}/quality.json")["total"]
    }
    # Each shard converted a disjoint part.
    per_shard = [
        {r["id"] for p in ("train", "val") for r in shards.read_jsonl(f"{sharded}/{p}/0000{i}-of-00003.jsonl.gz")}
        for i in range(3)
    ]
    assert sum(map(len, per_shard)) == len(set().union(*per_shard)) == 48
    # The merged report is written before _SUCCESS and listed in it, like in an unsharded run.
    listed = {f["path"]: f for f in manifest.read_manifest(sharded)["files"]}
    for name in ("quality.json", "quality.md"):
        data = (tmp_path / "sharded" / name).read_bytes()
        assert listed[name]["sha256"] == hashlib.sha256(data).hexdigest() and listed[name]["bytes"] == len(data)
    # The pod that completed the set died before _SUCCESS: a retried pod writes the report and _SUCCESS.
    success = (tmp_path / "sharded" / "_SUCCESS").read_bytes()
    for name in ("_SUCCESS", "quality.json", "quality.md"):
        (tmp_path / "sharded" / name).unlink()
    convert(ConvertConfig(source="viscot", input=synthetic["root"], output=sharded, shard_index=1, num_shards=3))
    assert (tmp_path / "sharded" / "_SUCCESS").read_bytes() == success
    assert (tmp_path / "sharded" / "quality.json").exists()


def test_shard_index_defaults_to_the_job_completion_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    assert ConvertConfig(source="viscot", input="x", output="y", num_shards=3).shard.index == 2
    with pytest.raises(ValueError, match="--shard-index"):
        ConvertConfig(source="viscot", input="x", output="y", num_shards=2)


def test_bad_items_are_rejected_and_every_item_is_accounted_for(synthetic: dict, tmp_path: Path) -> None:
    items = json.loads(Path(synthetic["json"]).read_text())[:7]
    items[1]["conversations"] = "oops"
    items[2]["image"] = ["cot/synthetic/missing.png"]
    items[3] = [1, 2]
    items[4]["conversations"][1]["value"] = "[0.1, 0.2, 0.9]"
    # viscot_mixed_2m.json's LLaVA items: the first question's box and the last question's answer do not belong together
    items[6]["conversations"][2:] = [{"from": "human", "value": "What shape is it?"}, {"from": "gpt", "value": "round"}]
    data = tmp_path / "in" / "viscot.json"
    data.parent.mkdir()
    raw = json.dumps(items).encode("utf-8").replace(b"What color", b"\xff\xfeWhat color", 1)  # item 0: bad UTF-8
    data.write_bytes(raw)
    output = str(tmp_path / "out")
    convert(ConvertConfig(source="viscot", input=str(data), images=f"{synthetic['root']}/images", output=output))
    rejected = {r["source_index"]: r["reason"] for r in _all_records(output, ("rejected/",))}
    assert rejected == {
        0: "bad_encoding",
        1: "bad_conversations",
        2: "missing_image",
        3: "not_an_object",
        4: "missing_box",
        6: "not_viscot_item",
    }
    assert [r["provenance"]["source_index"] for r in _all_records(output)] == [5]


def test_malformed_jsonl_lines_are_rejected(synthetic: dict, tmp_path: Path) -> None:
    items = json.loads(Path(synthetic["json"]).read_text())[:3]
    data = tmp_path / "viscot.jsonl"
    data.write_bytes(
        json.dumps(items[0]).encode() + b"\n{not json\n" + b'"\xff"\n' + json.dumps(items[1]).encode() + b"\n"
    )
    output = str(tmp_path / "out")
    convert(
        ConvertConfig(
            source="viscot",
            input=str(data),
            images=f"{synthetic['root']}/images",
            metadata=synthetic["metadata"],
            output=output,
        )
    )
    assert sorted(r["reason"] for r in _all_records(output, ("rejected/",))) == ["bad_encoding", "malformed_json"]
    assert len(_all_records(output)) == 2


def test_truncated_json_array_is_a_clear_error_and_commits_nothing(synthetic: dict, tmp_path: Path) -> None:
    data = tmp_path / "viscot.json"
    data.write_text(Path(synthetic["json"]).read_text()[:5000])
    output = str(tmp_path / "out")
    with pytest.raises(VcotError, match="truncated or corrupt"):
        convert(ConvertConfig(source="viscot", input=str(data), images=f"{synthetic['root']}/images", output=output))
    assert not manifest.is_committed(output)


@pytest.mark.parametrize("number", [2**64, -(2**63)])
def test_integer_yajl_refuses_stops_the_stage_and_commits_nothing(synthetic: dict, tmp_path: Path, number: int) -> None:
    items = json.loads(Path(synthetic["json"]).read_text())[:3]
    items[1]["question_id"] = number
    data = tmp_path / "viscot.json"
    data.write_text(json.dumps(items))
    output = str(tmp_path / "out")
    with pytest.raises(VcotError, match="integer overflow"):
        convert(ConvertConfig(source="viscot", input=str(data), images=f"{synthetic['root']}/images", output=output))
    assert not manifest.is_committed(output)


def test_missing_input_exits_non_zero_with_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--source", "viscot", "--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")])
    assert code == 1
    err = capsys.readouterr().err
    assert "vcot-convert: error: VisCOT file" in err and "does not exist" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["--source", "viscot", "--input", "x", "--output", "y", "--val-fraction", "2"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("source", "content"),
    [
        ("viscot", '{"data": [{"dataset": "gqa", "image": "cot/gqa/1.jpg"}]}'),  # the array wrapped in an object
        ("viscot", "[]"),
        ("viscot", ""),  # JSONL without a line
        ("scienceqa", '[{"question": "a VisCOT array given the wrong --source"}]'),
        ("aokvqa", '{"1": {"question": "a ScienceQA problems.json given the wrong --source"}}'),
        ("llava-cot", "[]"),
        ("records", "[]"),
    ],
)
def test_input_without_items_exits_2_and_commits_nothing(
    source: str, content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / ("data.jsonl" if not content else "data.json")
    data.write_text(content)
    output = tmp_path / "out"
    code = main(["--source", source, "--input", str(data), "--output", str(output)])
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vcot-convert: error:")]
    assert len(errors) == 1 and f"error: {data} holds no {source} items: expected" in errors[0]
    assert not manifest.is_committed(str(output))  # so the rerun with the right input is not skipped


def test_a_shard_owning_none_of_a_small_input_commits_but_an_empty_input_is_refused(
    synthetic: dict, tmp_path: Path
) -> None:
    one_item = tmp_path / "one.json"
    one_item.write_text(json.dumps(json.loads(Path(synthetic["json"]).read_text())[:1]))
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    images = f"{synthetic['root']}/images"
    output, refused = str(tmp_path / "out"), str(tmp_path / "refused")
    for index in (0, 1):  # shard 1 owns nothing of the one item: a legitimate, empty shard
        convert(ConvertConfig("viscot", str(one_item), output, images=images, shard_index=index, num_shards=2))
    assert manifest.is_committed(output) and len(_all_records(output)) == 1
    for index in (0, 1):
        with pytest.raises(ConfigError, match="holds no viscot items"):
            convert(ConvertConfig("viscot", str(empty), refused, images=images, shard_index=index, num_shards=2))
    assert not manifest.is_committed(refused)


def test_unreachable_storage_exits_non_zero(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("VCOT_S3_MAX_ATTEMPTS", "1")
    code = main(["--source", "viscot", "--input", f"{s3_bucket}/in", "--output", f"{s3_bucket}/out"])
    assert code == 1
    assert "cannot reach bucket" in capsys.readouterr().err


def test_convert_on_moto_s3(synthetic: dict, s3_bucket: str) -> None:
    source = f"{s3_bucket}/synthetic"
    write_synthetic_viscot(source, num_records=12, seed=1)
    output = f"{s3_bucket}/runs/convert"
    convert(ConvertConfig(source="viscot", input=source, output=output, check_images=True))
    records = _all_records(output)
    assert len(records) == 12 and all(r["image"].startswith(f"{source}/images/") for r in records)
    with pytest.raises(StorageError):
        storage.read_bytes(f"{s3_bucket}/runs/convert/nothing")


@pytest.mark.integration
def test_entrypoint_against_the_real_local_s3_server(real_s3: str) -> None:
    source = f"{real_s3}/synthetic"
    write_synthetic_viscot(source, num_records=20, seed=5)
    output = f"{real_s3}/convert"
    command = [
        sys.executable,
        "-m",
        "jobs.convert",
        "--source",
        "viscot",
        "--input",
        source,
        "--output",
        output,
        "--num-shards",
        "2",
    ]
    env = dict(os.environ)
    for index in (0, 1):
        result = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=env | {"JOB_COMPLETION_INDEX": str(index)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
    assert manifest.is_committed(output)
    assert len(_all_records(output)) == 20
    assert storage.read_json(f"{output}/quality.json")["total"]["input"] == 20
    # A rerun of a committed shard is a no-op that still exits 0.
    rerun = subprocess.run(
        command, cwd=REPO_ROOT, env=env | {"JOB_COMPLETION_INDEX": "0"}, capture_output=True, text=True, timeout=120
    )
    assert rerun.returncode == 0 and "already_committed" in rerun.stderr
    missing_input = [*command[:6], f"{real_s3}/nothing-here", "--output", f"{real_s3}/other"]
    missing = subprocess.run(missing_input, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_synthetic_data_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    first = write_synthetic_viscot(str(tmp_path / "a"), num_records=10, seed=7)
    write_synthetic_viscot(str(tmp_path / "b"), num_records=10, seed=7)
    assert _file_bytes(tmp_path / "a") == _file_bytes(tmp_path / "b")
    other = write_synthetic_viscot(str(tmp_path / "c"), num_records=10, seed=8)
    assert other["truth"] != first["truth"]
    assert all(t["width"] != t["height"] for t in first["truth"].values())
    items = json.loads((tmp_path / "a" / "viscot.json").read_text())
    assert len(items) == 10 and len(list((tmp_path / "a" / "images").rglob("*.png"))) == 10


def test_storage_outage_while_reading_images_stops_the_stage(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    source = f"{s3_bucket}/synthetic"
    write_synthetic_viscot(source, num_records=3, seed=2)
    from vcot.convert.images import size_from_uri

    assert size_from_uri(f"{source}/images/cot/synthetic/00000.png")[0] > 0
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("VCOT_S3_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageError, match="cannot reach"):
        size_from_uri(f"{source}/images/cot/synthetic/00000.png")


# --- outputs that would destroy the input or another stage's output; reruns of sharded runs -----------------


@pytest.mark.parametrize("where", ["local", "real_s3"])
def test_an_output_that_holds_the_input_is_refused_and_the_input_kept(
    where: str, tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """vcot-convert --input <d1>/data --output <d1> [--overwrite]: exit 2 before anything is read or deleted."""
    root = str(tmp_path) if where == "local" else request.getfixturevalue("real_s3")
    data = f"{root}/d1/data"
    write_synthetic_viscot(data, num_records=4, seed=2)
    before = storage.list_uris(data)
    for extra in ([], ["--overwrite"]):
        assert main(["--source", "viscot", "--input", data, "--output", f"{root}/d1", *extra]) == 2
        assert "same place or one holds the other" in capsys.readouterr().err
    assert storage.list_uris(data) == before and not manifest.is_committed(f"{root}/d1")


def test_another_stages_output_is_not_replaced_nor_taken_as_done(
    synthetic: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = str(tmp_path / "tokens")
    manifest.commit(tokens, stage="tokenize", files=[shards.write_file(tokens, "train/x.parquet", b"PAR1")], config={})
    for extra in ([], ["--overwrite"]):
        assert main(["--source", "viscot", "--input", synthetic["root"], "--output", tokens, *extra]) == 2
        assert f"--output {tokens} holds a committed tokenize output" in capsys.readouterr().err
    assert manifest.read_manifest(tokens)["stage"] == "tokenize"
    assert (tmp_path / "tokens" / "train" / "x.parquet").exists()


def _sharded_run(synthetic: dict, output: str, *flags: str, environ: dict[str, str]) -> list[bool]:
    """Both pods of a 2-shard run, one after the other; whether the output was committed after each."""
    committed = []
    for index in range(2):
        argv = ["--source", "viscot", "--input", synthetic["root"], "--output", output, "--num-shards", "2", *flags]
        convert(parse_config(ConvertConfig, [*argv, "--shard-index", str(index)], environ=environ))
        committed.append(manifest.is_committed(output))
    return committed


def test_an_overwrite_rerun_with_the_same_shard_count_never_mixes_the_runs(synthetic: dict, tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    assert _sharded_run(synthetic, output, "--val-fraction", "0.25", environ={"VCOT_RUN_ID": "job-1"}) == [False, True]
    # The same settings under a new Job (VCOT_RUN_ID from its uid): pod 0's shard and old shard 1 are no set.
    rerun = _sharded_run(synthetic, output, "--val-fraction", "0.25", "--overwrite", environ={"VCOT_RUN_ID": "job-2"})
    assert rerun == [False, True]
    # Local pods without a run id: a changed setting is another run, so again only the new shards are merged.
    assert _sharded_run(synthetic, output, "--val-fraction", "0.5", "--overwrite", environ={}) == [False, True]
    assert manifest.read_manifest(output)["config"]["val_fraction"] == 0.5
    records = _all_records(output)
    assert len(records) == 48 and {r["id"] for r in records} == set(synthetic["truth"])
    assert storage.read_json(f"{output}/quality.json")["total"]["input"] == 48
