"""RefCOCO / RefCOCO+ / RefCOCOg in lmms-eval's Parquet layout (``--source refcoco``): one record per referring
expression, the COCO box in the house frame, a subset per split; then scored as the papers score it (first box,
Acc@0.5, read once) with the best-of-two reading beside it. The sample files are written here in that layout."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from jobs.evaluate import main as evaluate_main
from vcot.convert import ConvertConfig, convert
from vcot.grounding.model_format import ModelFormat
from vcot.io import manifest, shards


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def write_split(folder: Path, split: str, rows: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{split}-00000-of-00001.parquet")


def refcoco_rows(offset: int) -> list[dict[str, Any]]:
    image = {"bytes": png(640, 480), "path": f"COCO_train2014_{offset:012d}.jpg"}
    return [
        {"question_id": str(offset), "image": image, "question": "", "answer": ["man on the left", "left guy"],
         "bbox": [64.0, 48.0, 192.0, 240.0], "iscrowd": 0, "file_name": image["path"], "segmentation": [1.0, 2.0]},
        {"question_id": str(offset + 1), "image": image, "question": "", "answer": ["red car"],
         "bbox": [320.0, 240.0, 320.0, 240.0], "iscrowd": 0, "file_name": image["path"], "segmentation": [1.0]},
        {"question_id": str(offset + 2), "image": image, "question": "", "answer": ["ghost"],
         "bbox": [600.0, 10.0, 100.0, 50.0], "iscrowd": 0, "file_name": image["path"], "segmentation": []},
    ]  # fmt: skip


def committed(output: Path, prefix: str) -> list[dict[str, Any]]:
    return [r for uri in manifest.committed_files(str(output), prefix) for r in shards.read_jsonl(uri)]


def test_each_expression_is_a_record_with_its_box_and_split(tmp_path: Path) -> None:
    data = tmp_path / "RefCOCO" / "data"
    for number, split in enumerate(("val", "testA", "testB")):
        write_split(data, split, refcoco_rows(10 * number))
    convert(ConvertConfig(source="refcoco", input=str(data), output=str(tmp_path / "out"), val_fraction=1.0))
    records = {r["id"]: r for r in committed(tmp_path / "out", "val/")}
    assert len(records) == 9  # 3 splits x (2 + 1 expressions)
    left = records["RefCOCO:val:0:0"]
    assert (left["subset"], left["answer"]) == ("RefCOCO_val", "man on the left")
    assert left["question"] == "Locate man on the left in the image."
    assert left["objects"] == [{"ref": "man on the left", "box": [100, 100, 400, 600]}]
    assert records["RefCOCO:val:0:1"]["objects"][0]["box"] == [100, 100, 400, 600]
    assert records["RefCOCO:testA:11:0"]["objects"][0]["box"] == [500, 500, 1000, 1000]
    assert {r["subset"] for r in records.values()} == {"RefCOCO_val", "RefCOCO_testA", "RefCOCO_testB"}
    assert left["provenance"]["benchmark"] == "RefCOCO" and left["needs_distillation"] is False
    assert len({r["image"] for r in records.values()}) == 1  # stored once
    assert {r["reason"] for r in committed(tmp_path / "out", "rejected/")} == {"box_outside_image"}


def test_a_test_split_a_single_expression_and_broken_boxes(tmp_path: Path) -> None:
    image = {"bytes": png(100, 100), "path": "x.jpg"}
    rows = [{"question_id": "1", "image": image, "answer": "the dog", "bbox": [10.0, 10.0, 50.0, 50.0]},
            {"question_id": "2", "image": image, "answer": "a cat", "bbox": [10.0, None, 5.0, 5.0]},
            {"question_id": "3", "image": image, "answer": "a cow", "bbox": [50.0, 50.0, -10.0, 5.0]}]  # fmt: skip
    write_split(tmp_path / "RefCOCOg" / "data", "test", rows)
    convert(ConvertConfig(source="refcoco", input=str(tmp_path / "RefCOCOg" / "data"), output=str(tmp_path / "out"),
                          val_fraction=1.0))  # fmt: skip
    (record,) = committed(tmp_path / "out", "val/")
    assert (record["id"], record["subset"], record["answer"]) == ("RefCOCOg:test:1:0", "RefCOCOg_test", "the dog")
    assert sorted(r["reason"] for r in committed(tmp_path / "out", "rejected/")) == ["inverted_box", "missing_box"]


def test_refcoco_is_scored_read_once_with_the_best_of_two_beside_it(tmp_path: Path) -> None:
    data = tmp_path / "RefCOCOg" / "data"
    write_split(data, "val", refcoco_rows(0))
    out = tmp_path / "records"
    convert(ConvertConfig(source="refcoco", input=str(data), output=str(out), val_fraction=1.0))
    records = committed(out, "val/")
    own = ModelFormat.for_family("qwen2.5-vl")
    lines = []
    for number, record in enumerate(records):  # the first in the model's frame, the others in pixels
        fmt = own if number == 0 else own.other_frame()
        box = record["objects"][0]["box"]
        text = fmt.render(f"<ref>{record['answer']}</ref><box>{box}</box> Answer: {record['answer']}",
                          record["width"], record["height"])  # fmt: skip
        lines.append(json.dumps({"id": record["id"], "prediction": text}) + "\n")
    (tmp_path / "p.jsonl").write_text("".join(lines))
    assert evaluate_main(["--predictions", str(tmp_path / "p.jsonl"), "--data", str(out), "--split", "all",
                          "--output", str(tmp_path / "eval")]) == 0  # fmt: skip
    found = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    overall = found["overall"]
    assert overall["single_reading_acc_at_50"] == overall["first_box_acc_at_50"] == 1 / 3
    assert overall["best_of_two_acc_at_50"] == 1.0
    assert set(found["subsets"]) == {"RefCOCOg_val"} and found["details"]["benchmark_name"] == "RefCOCOg"
