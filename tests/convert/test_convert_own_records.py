"""Your own data (--source records): the docs' ten lines in all three layouts, the bbox_2d frame flag, bad items."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from jobs.convert import main as convert_main
from tests.convert.own_data import IMAGES, bomb_png, docs_example, png, write_own_data
from vcot.convert import ConvertConfig, convert
from vcot.errors import ConfigError
from vcot.io import manifest, shards, storage


def _records(output: str, prefixes: tuple[str, ...] = ("train/", "val/")) -> list[dict]:
    return [r for p in prefixes for uri in manifest.committed_files(output, p) for r in shards.read_jsonl(uri)]


def _write(tmp_path: Path, items: list, name: str = "own.jsonl") -> str:
    for path, size in IMAGES.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(png(size))
    lines = [item if isinstance(item, str) else json.dumps(item) for item in items]
    (tmp_path / name).write_text("\n".join(lines) + "\n")
    return str(tmp_path / name)


@pytest.mark.integration
def test_the_docs_example_converts_in_all_three_layouts(real_s3: str) -> None:
    data = write_own_data(f"{real_s3}/own", street=f"{real_s3}/elsewhere/street.png")
    output = f"{real_s3}/records"
    convert(ConvertConfig(source="records", input=data, output=output, bbox_2d_frame="norm1000", val_fraction=0.0))

    records = sorted(_records(output), key=lambda r: r["provenance"]["source_index"])
    assert len(records) == len(docs_example()) == 10 and _records(output, ("rejected/",)) == []
    assert [r["provenance"]["layout"] for r in records] == ["vcot"] * 4 + ["swift"] * 3 + ["chat"] * 3
    assert records[3]["image"] == f"{real_s3}/elsewhere/street.png"  # an absolute URI stays as it is
    assert records[0]["image"] == f"{real_s3}/own/photos/shop.png"
    assert (records[0]["width"], records[0]["height"]) == (640, 480)
    assert records[1]["choices"] == ["left", "right"] and records[1]["answer_index"] == 1
    assert {r["subset"] for r in records} == {"own-data"} and records[0]["id"] == "records:shop-1"
    # what the docs say the fifth line becomes
    cat = records[4]
    assert (cat["question"], cat["answer"]) == ("Find the cat.", "cat")
    assert cat["objects"] == [{"ref": "cat", "box": [100, 200, 800, 900]}]
    assert cat["rationale"] == "<ref>cat</ref><box>[100, 200, 800, 900]</box> Answer: cat"
    assert records[5]["rationale"] == (
        "A <ref>laptop</ref><box>[300, 200, 800, 700]</box> and a <ref>mug</ref><box>[100, 400, 220, 600]</box>. "
        "Answer: a laptop and a mug"
    )
    assert records[6]["objects"] == [{"ref": "door", "box": [700, 100, 950, 990]}]  # norm1
    assert records[7]["rationale"] == "The cat is here: <ref>cat</ref><box>[100, 200, 800, 900]</box>. Answer: orange"
    assert records[8]["rationale"] == "<ref>mug</ref><box>[100, 400, 220, 600]</box>\nOne mug. Answer: 1"
    assert records[8]["question"] == "How many mugs are there?"
    assert records[9]["rationale"] == "<ref>red sign</ref><box>[188, 167, 641, 542]</box> says OPEN. Answer: yes"
    assert records[9]["image"] == f"{real_s3}/own/photos/shop.png" and records[9]["answer"] == "yes"
    quality = storage.read_json(f"{output}/quality.json")
    assert quality["source"] == "records" and quality["total"]["accepted"] == 10 and quality["total"]["grounded"] == 10


def test_chat_boxes_without_their_frame_stop_the_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write(tmp_path, docs_example()[7:8])
    output = str(tmp_path / "out")
    with pytest.raises(ConfigError, match="--bbox-2d-frame"):
        convert(ConvertConfig(source="records", input=data, output=output))
    assert not manifest.is_committed(output)
    assert convert_main(["--source", "records", "--input", data, "--output", output]) == 2
    assert "pass --bbox-2d-frame norm1000" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("frame", "box"),
    [("norm1000", [250, 250, 500, 500]), ("pixels", [50, 25, 100, 50]), ("qwen2.5-resized", [49, 28, 98, 56])],
)
def test_each_bbox_2d_frame_reads_its_own_numbers(tmp_path: Path, frame: str, box: list[int]) -> None:
    """The same region of a 200x100 image written in each frame (Qwen2.5-VL resizes it to 196x112)."""
    (tmp_path / "wide.png").write_bytes(png((200, 100)))
    answer = json.dumps({"bbox_2d": box, "label": "square"}) + " Answer: red"
    item = {"messages": [{"role": "user", "content": "<image>Color?"}, {"role": "assistant", "content": answer}],
            "images": ["wide.png"]}
    output = str(tmp_path / "out")
    convert(ConvertConfig(source="records", input=_write(tmp_path, [item]), output=output, bbox_2d_frame=frame))
    [record] = _records(output)
    assert record["objects"] == [{"ref": "square", "box": [250, 250, 500, 500]}]
    assert record["rationale"] == "<ref>square</ref><box>[250, 250, 500, 500]</box> Answer: red"


def test_an_answer_made_from_the_object_names_is_a_visible_choice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The docs' fifth line ("Find the cat" -> a box) has no answer of its own: by default (--missing-answer refs) it
    answers with what it locates, marked, counted in the quality report and warned about; reject rejects it."""
    lines = docs_example()[4:]  # ms-swift and chat items: only the first of them lacks an answer
    data = _write(tmp_path, lines)
    kept = str(tmp_path / "kept")
    assert convert_main(["--source", "records", "--input", data, "--output", kept, "--bbox-2d-frame", "norm1000",
                         "--val-fraction", "0"]) == 0
    by_answer = {r["answer"]: r for r in _records(kept)}
    assert by_answer["cat"]["provenance"]["answer_from"] == "refs"
    assert [r for r in by_answer.values() if "answer_from" in r["provenance"]] == [by_answer["cat"]]
    quality = storage.read_json(f"{kept}/quality.json")
    assert quality["total"]["answers_from_refs"] == 1 and quality["subsets"]["own"]["answers_from_refs"] == 1
    assert "Answers made from the object names" in (tmp_path / "kept" / "quality.md").read_text()
    warning = [json.loads(line) for line in capsys.readouterr().err.splitlines() if "answers_from_refs" in line]
    assert [(w["event"], w["records"], w["of"]) for w in warning] == [("answers_from_refs", 1, len(lines))]

    refused = str(tmp_path / "refused")
    convert(ConvertConfig(source="records", input=data, output=refused, bbox_2d_frame="norm1000",
                          missing_answer="reject"))
    assert [(r["reason"], r["raw"]["objects"]["ref"]) for r in _records(refused, ("rejected/",))] == [
        ("no_answer", ["cat"])
    ]
    assert storage.read_json(f"{refused}/quality.json")["total"]["answers_from_refs"] == 0
    with pytest.raises(ValueError, match="--missing-answer applies to --source records only"):
        ConvertConfig(source="viscot", input=data, output=refused, missing_answer="reject")


def test_bad_items_are_rejected_with_a_reason_each(tmp_path: Path) -> None:
    swift = json.loads(docs_example()[4])
    two_turns = {**swift, "messages": swift["messages"] * 2}
    too_many = {**swift, "messages": [{"role": "user", "content": "<image><ref-object> and <ref-object>"},
                                      {"role": "assistant", "content": "<bbox>"}]}
    outside = {**swift, "objects": {"ref": ["cat"], "bbox": [[30, 60, 240, 400]]}}  # the image is 300 high
    bad_type = {**swift, "objects": {**swift["objects"], "bbox_type": "percent"}}
    two_images = {**swift, "images": ["photos/cat.png", "photos/desk.png"]}
    missing = {**swift, "images": ["photos/dog.png"]}
    wrong_size = {**json.loads(docs_example()[2]), "width": 401}
    items = ["[1, 2]", "{not json", {"question": "no layout"}, two_turns, too_many, outside, bad_type, two_images,
             missing, wrong_size, swift]
    output = str(tmp_path / "out")
    convert(ConvertConfig(source="records", input=_write(tmp_path, items), output=output))
    rejected = {r["reason"] for r in _records(output, ("rejected/",))}
    assert rejected == {
        "not_an_object", "malformed_json", "unknown_layout", "multi_turn", "placeholder_mismatch",
        "box_outside_image", "bad_bbox_type", "multiple_images", "missing_image", "size_mismatch",
    }
    assert [r["id"] for r in _records(output)] == ["records:own:10"]
    assert storage.read_json(f"{output}/quality.json")["total"]["input"] == len(items)


def test_parquet_rows_with_embedded_images(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "messages": [{"role": "user", "content": "<image>Find the <ref-object>."},
                         {"role": "assistant", "content": "<bbox>"}],
            "images": [{"bytes": png((300, 300)), "path": "cat.png"}],
            "objects": json.dumps({"ref": ["cat"], "bbox": [[0.1, 0.2, 0.8, 0.9]], "bbox_type": "norm1"}),
        }
    ]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in" / "train-00000-of-00001.parquet")
    output = str(tmp_path / "out")
    convert(ConvertConfig(source="records", input=str(tmp_path / "in"), output=output))
    [record] = _records(output)
    assert record["image"].startswith(f"{output}/images/") and storage.exists(record["image"])
    assert record["rationale"] == "<ref>cat</ref><box>[100, 200, 800, 900]</box> Answer: cat"
    assert record["subset"] == "train-00000-of-00001" and record["id"] == "records:train-00000-of-00001:0"


def _bad_rows() -> dict[str, tuple[dict, str | None]]:
    """Rows a hand-written export gets wrong, each with the reason it must be rejected for (``None``: accepted)."""
    vcot, swift = json.loads(docs_example()[0]), json.loads(docs_example()[4])
    objects = swift["objects"]
    return {
        "box_none": ({**vcot, "objects": [{"ref": "red sign", "box": [None, None, None, None]}]}, "invalid_object_box"),
        "box_strings": ({**vcot, "objects": [{"ref": "red sign", "box": ["188", "167", "641", "542"]}]},
                        "invalid_object_box"),
        "box_one_none": ({**vcot, "objects": [{"ref": "red sign", "box": [188, 167, None, 542]}]},
                         "invalid_object_box"),
        "box_not_a_list": ({**vcot, "objects": [{"ref": "red sign", "box": "188,167,641,542"}]}, "invalid_object_box"),
        "box_out_of_range": ({**vcot, "objects": [{"ref": "red sign", "box": [188, 167, 1641, 542]}]},
                             "invalid_object_box"),
        "question_none": ({**vcot, "question": None}, "missing_question"),
        "width_text": ({**vcot, "width": "640", "height": "480"}, "size_mismatch"),
        "swift_bbox_type_list": ({**swift, "objects": {**objects, "bbox_type": ["real"]}}, "bad_bbox_type"),
        "swift_box_none": ({**swift, "objects": {**objects, "bbox": [[None, 60, 240, 270]]}}, "bad_box"),
        "swift_bbox_not_a_list": ({**swift, "objects": {**objects, "bbox": "30,60,240,270"}}, "bad_objects"),
        "swift_box_outside": ({**swift, "objects": {**objects, "bbox": [[30, 60, 240, 900]]}}, "box_outside_image"),
        "image_one_slash": ({**vcot, "image": "s3:/my-bucket/shop.png"}, "bad_image_path"),
        "image_no_bucket": ({**vcot, "image": "s3://"}, "bad_image_path"),
        "image_elsewhere": ({**vcot, "image": "gs://my-bucket/shop.png"}, "bad_image_path"),
        "image_missing": ({**vcot, "image": "photos/dog.png"}, "missing_image"),
        "image_none": ({**vcot, "image": None}, "missing_image"),
        "image_a_folder": ({**vcot, "image": "photos"}, "unreadable_image"),
        "embedded_not_an_image": ({**swift, "images": [{"bytes": b"not a png", "path": "cat.png"}]},
                                  "unreadable_image"),
        "embedded_a_number": ({**swift, "images": [{"bytes": 10**12, "path": "cat.png"}]}, "unreadable_image"),
        "provenance_bytes": ({**vcot, "provenance": {"note": b"exported"}}, None),
        "good": (vcot, None),
    }


def _json_can_hold(row: dict) -> bool:
    try:
        json.dumps(row)
    except TypeError:
        return False
    return True


@pytest.mark.parametrize("layout", ["parquet", "jsonl"])
def test_bad_rows_are_rejected_with_a_reason_each_never_a_traceback(tmp_path: Path, layout: str) -> None:
    """Parquet (one file per row: their columns' types differ) and JSONL (the rows JSON can hold): every bad row
    is rejected with its reason and counted; the good ones are converted; nothing stops the stage."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _write(tmp_path, [])  # the images
    rows = {name: ({**row, "id": name}, reason) for name, (row, reason) in _bad_rows().items()}  # ids: one each
    folder = tmp_path / "in"
    folder.mkdir()
    if layout == "parquet":
        for name, (row, _) in rows.items():
            pq.write_table(pa.Table.from_pylist([row]), folder / f"{name}.parquet")
    else:
        rows = {name: case for name, case in rows.items() if _json_can_hold(case[0])}
        lines = [json.dumps({**row, "subset": name}) for name, (row, _) in rows.items()]
        (folder / "own.jsonl").write_text("\n".join(lines) + "\n")
    output = str(tmp_path.parent / f"{tmp_path.name}-out")  # not inside --images
    convert(ConvertConfig(source="records", input=str(folder), output=output, images=str(tmp_path), val_fraction=0.0))

    found = {r["subset"]: r["reason"] for r in _records(output, ("rejected/",))}
    found.update({r["subset"]: None for r in _records(output)})
    assert found == {name: reason for name, (_, reason) in rows.items()}
    total = storage.read_json(f"{output}/quality.json")["total"]
    assert (total["input"], total["rejected"]) == (len(rows), sum(reason is not None for _, reason in rows.values()))


def test_parquet_chat_rows_without_their_bbox_2d_frame_stop_the_stage(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _write(tmp_path, [])
    pq.write_table(pa.Table.from_pylist([json.loads(docs_example()[7])]), tmp_path / "chat.parquet")
    output = str(tmp_path / "out")
    assert convert_main(["--source", "records", "--input", str(tmp_path / "chat.parquet"), "--output", output]) == 2
    assert not manifest.is_committed(output)


def test_an_image_over_the_decompression_bomb_limit_is_rejected_and_counted(tmp_path: Path) -> None:
    """A 20000x20000 PNG (a few KB) as a file and embedded in Parquet: rejected as image_too_large, not exit 1."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _write(tmp_path, [])
    (tmp_path / "photos" / "huge.png").write_bytes(bomb_png())
    vcot, swift = json.loads(docs_example()[0]), json.loads(docs_example()[4])
    folder = tmp_path / "in"
    folder.mkdir()
    lines = [{**vcot, "id": "huge-file", "image": "photos/huge.png"}, vcot]
    (folder / "own.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    embedded = {**swift, "images": [{"bytes": bomb_png(), "path": "huge.png"}]}
    pq.write_table(pa.Table.from_pylist([embedded]), folder / "embedded.parquet")
    output = str(tmp_path.parent / f"{tmp_path.name}-out")
    argv = ["--source", "records", "--input", str(folder), "--images", str(tmp_path), "--output", output]
    assert convert_main(argv) == 0

    rejected = {r["id"]: r["reason"] for r in _records(output, ("rejected/",))}
    assert rejected == {"records:huge-file": "image_too_large", "records:embedded:0": "image_too_large"}
    total = storage.read_json(f"{output}/quality.json")["total"]
    assert (total["accepted"], total["rejected"], total["reasons"]) == (1, 2, {"image_too_large": 2})


def test_an_input_of_which_nothing_is_accepted_is_never_committed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong image root rejects every item: exit 2 with the top reasons, nothing committed, so the rerun with the
    right --images is not skipped as already done (it used to commit an empty output with exit 0)."""
    data = _write(tmp_path, docs_example()[:3] + docs_example()[4:6])
    output = str(tmp_path.parent / f"{tmp_path.name}-out")
    argv = ["--source", "records", "--input", data, "--output", output]
    assert convert_main([*argv, "--images", str(tmp_path / "elsewhere")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vcot-convert: error:")]
    assert len(errors) == 1 and "none of the 5 items of" in errors[0]
    assert "was accepted as --source records: missing_image 5 (first: missing_image:" in errors[0]
    assert "check that --source records is this data's layout and that --images is the folder" in errors[0]
    assert not manifest.is_committed(output)
    assert convert_main(argv) == 0 and len(_records(output)) == 5


def test_a_shard_that_accepts_none_of_its_items_is_refused_one_that_owns_none_commits(tmp_path: Path) -> None:
    """Items are dealt round-robin: shard 0 of 2 gets items 0 and 2 (both bad), shard 1 items 1 and 3 (good).
    Of a one-item input, shard 1 owns nothing: it commits its empty part so that the set completes."""
    good = json.loads(docs_example()[0])
    bad = {**good, "image": "photos/dog.png"}
    items = [{**item, "id": f"item-{n}"} for n, item in enumerate([bad, good, bad, good])]
    data = _write(tmp_path, items)
    output = str(tmp_path.parent / f"{tmp_path.name}-sharded")
    config = ConvertConfig(source="records", input=data, output=output, num_shards=2, shard_index=0)
    refusal = r"none of the 2 items of .* \(shard 0 of 2\) was accepted as --source records: missing_image 2"
    with pytest.raises(ConfigError, match=refusal):
        convert(config)
    assert convert(replace(config, shard_index=1)) is not None and not manifest.is_committed(output)

    one = _write(tmp_path, [good], name="one.jsonl")
    small = str(tmp_path.parent / f"{tmp_path.name}-small")
    for index in (1, 0):
        convert(ConvertConfig(source="records", input=one, output=small, num_shards=2, shard_index=index))
    assert manifest.is_committed(small) and len(_records(small)) == 1
