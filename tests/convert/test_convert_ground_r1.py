"""VisCoT's benchmark as Ground-R1 evaluates it (``--source ground-r1``): real lines of its
``visualCoT_eval_subset150_choice.jsonl`` (two per subset, ``tests/fixtures/ground_r1``, then three odd ones: GQA
options written ``A)``, a DUDE box past its image, an inverted DocVQA box) into records, and broken lines rejected by
reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from tests.conftest import FIXTURES
from vcot.convert import ConvertConfig, convert
from vcot.convert.ground_r1 import image_path
from vcot.io import manifest, shards

SAMPLE = FIXTURES / "ground_r1" / "subset150_choice_sample.jsonl"


def write_images(root: Path) -> Path:
    """Plain images of each sample line's size where the records will look for them: ``root/cot_image_data``."""
    for line in SAMPLE.read_text().splitlines():
        item = json.loads(line)
        path = root / "cot_image_data" / image_path(item["image"])
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            Image.new("RGB", (item["width"], item["height"]), (200, 180, 90)).save(path)
    return root / "cot_image_data"


def committed(output: Path, prefix: str) -> list[dict[str, Any]]:
    return [r for uri in manifest.committed_files(str(output), prefix) for r in shards.read_jsonl(uri)]


def test_every_subset_converts_with_its_boxes_options_and_images(tmp_path: Path) -> None:
    lines = SAMPLE.read_text().splitlines()
    convert(ConvertConfig(source="ground-r1", input=str(SAMPLE), output=str(tmp_path / "out"),
                          images=str(tmp_path / "cot_image_data"), val_fraction=1.0))
    records = {r["id"]: r for r in committed(tmp_path / "out", "val/")}
    assert len(records) == len(lines) == 29 and not committed(tmp_path / "out", "rejected/")
    assert {r["subset"] for r in records.values()} == {json.loads(line)["dataset"] for line in lines}

    gqa = records["ground-r1:gqa:7"]
    assert gqa["question"] == "What are the tree branches in front of?"  # the stray quote and the options cut off
    assert gqa["choices"] == ["Door", "Wall", "Window", "Garage"]
    assert (gqa["answer"], gqa["answer_index"]) == ("Window", 2)  # <answer>C</answer>
    assert gqa["objects"][0]["box"] == [555, 686, 619, 786]  # [217, 343, 242, 393] px of 391 x 500
    assert gqa["image"] == str(tmp_path / "cot_image_data" / "gqa" / "2316539.jpg")

    textcap = next(r for r in records.values() if r["subset"] == "textcap")
    assert textcap["image"].startswith(str(tmp_path / "cot_image_data" / "textvqa"))  # textcap asks about textvqa's
    assert textcap["choices"] is None and textcap["answer"] == "LANCOME"
    v7w = next(r for r in records.values() if r["subset"] == "v7w")
    assert v7w["choices"] is None and v7w["answer"] == "Foliage."  # open in this file
    parenthesized = records["ground-r1:gqa:437"]  # "A) Hamburger" lines
    assert parenthesized["question"] == "What kind of fast food is on the tray?"
    assert (parenthesized["choices"], parenthesized["answer"]) == (["Hamburger", "Hot Dog", "Pizza", "Taco"], "Hot Dog")
    for key, reason in (("ground-r1:dude:3", "box_outside_image"), ("ground-r1:docvqa:128", "inverted_box")):
        kept = records[key]  # asked and scored like the others, with no box to score
        assert kept["objects"] == [] and kept["needs_distillation"] and kept["provenance"]["box_problem"] == reason
    for record in records.values():
        assert record["provenance"]["benchmark"] == "VisCoT (Ground-R1)" and record["source"] == "ground-r1"
        if record["objects"]:
            assert f"Answer: {record['answer']}" in record["rationale"] and not record["needs_distillation"]


def test_broken_lines_are_rejected_by_reason(tmp_path: Path) -> None:
    good = json.loads(SAMPLE.read_text().splitlines()[0])
    choice = next(json.loads(line) for line in SAMPLE.read_text().splitlines() if '"gqa"' in line)
    broken = [
        {**choice, "solution": "<answer>E</answer>", "problem_id": 900},  # names no option
        {**good, "bboxs": [[303, 96, 560, 289]], "problem_id": 901},  # 60 px past a 500 px wide image
        {**good, "width": None, "problem_id": 902},
        {**good, "bboxs": [], "problem_id": 903},
        {**good, "solution": "", "problem_id": 904},
        {**good, "bboxs": [[303, 96, 300, 289]], "problem_id": 905},
    ]
    data = tmp_path / "broken.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in [good, *broken]) + "{not json\n")
    convert(ConvertConfig(source="ground-r1", input=str(data), output=str(tmp_path / "out"), val_fraction=1.0))
    kept = {r["id"]: r for r in committed(tmp_path / "out", "val/")}
    assert {key: r["provenance"]["box_problem"] for key, r in kept.items()} == {
        f"ground-r1:flickr30k:{good['problem_id']}": None, "ground-r1:flickr30k:901": "box_outside_image",
        "ground-r1:flickr30k:903": "missing_box", "ground-r1:flickr30k:905": "inverted_box"}  # fmt: skip
    reasons = sorted(r["reason"] for r in committed(tmp_path / "out", "rejected/"))
    assert reasons == ["bad_answer", "malformed_json", "missing_answer", "missing_size"]


def test_check_images_rejects_missing_images_and_wrong_sizes(tmp_path: Path) -> None:
    images = write_images(tmp_path)
    lines = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    (images / image_path(lines[0]["image"])).unlink()
    data = tmp_path / "sample.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in [*lines, {**lines[4], "width": 641, "problem_id": 9}]))
    convert(ConvertConfig(source="ground-r1", input=str(data), output=str(tmp_path / "out"), images=str(images),
                          val_fraction=1.0, check_images=True))
    assert len(committed(tmp_path / "out", "val/")) == len(lines) - 1
    assert sorted(r["reason"] for r in committed(tmp_path / "out", "rejected/")) == ["missing_image", "size_mismatch"]
