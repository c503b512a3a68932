"""Benchmarks in VLMEvalKit's TSV layout (``--source vlmevalkit``): TreeBench's evidence boxes, HR-Bench's and V*'s
option columns, MME-RealWorld-Lite's option list, images shared between rows by index (before or after), sharded.
The sample files are written here in the published layout: a header row, tab separated, base64 images, as pandas'
``to_csv(sep="\\t")`` writes them (VLMEvalKit's loader reads them with pandas)."""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vcot.convert import ConvertConfig, convert
from vcot.io import manifest, shards


def png64(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def write_tsv(path: Path, header: list[str], rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def records(output: Path) -> dict[str, dict[str, Any]]:
    found = [r for p in ("train/", "val/") for uri in manifest.committed_files(str(output), p) for r in shards.read_jsonl(uri)]
    return {r["id"]: r for r in found}


def rejected(output: Path) -> dict[str, str]:
    return {r["id"]: r["reason"] for uri in manifest.committed_files(str(output), "rejected/") for r in shards.read_jsonl(uri)}


def run(source_file: Path, output: Path, **extra: Any) -> dict[str, Any]:
    return convert(ConvertConfig(source="vlmevalkit", input=str(source_file), output=str(output), **extra))


TREEBENCH_HEADER = ["index", "image", "question", "A", "B", "C", "D", "answer", "category", "target_instances"]


def treebench(tmp_path: Path) -> Path:
    rows = [
        {"index": 0, "image": png64(200, 100), "question": "What colour is the mug?", "A": "red", "B": "blue",
         "C": "green", "D": "white", "answer": "A", "category": "Perception/Attributes",
         "target_instances": "[[10, 20, 110, 70]]"},
        {"index": 1, "image": "0", "question": "Which is left, the mug or the pen?", "A": "the mug", "B": "the pen",
         "C": "", "D": "", "answer": "B", "category": "Reasoning/Ordering",
         "target_instances": "[[10, 20, 110, 70], [120, 0, 200, 100]]"},
        {"index": 2, "image": "0", "question": "Outside?", "A": "yes", "B": "no", "C": "", "D": "", "answer": "A",
         "category": "Perception/OCR", "target_instances": "[[10, 20, 300, 70]]"},
        {"index": 3, "image": png64(50, 50), "question": "Bad letter", "A": "a", "B": "b", "C": "c", "D": "d",
         "answer": "E", "category": "Perception/OCR", "target_instances": "[]"},
    ]  # fmt: skip
    return write_tsv(tmp_path / "TreeBench.tsv", TREEBENCH_HEADER, rows)


def test_treebench_keeps_its_evidence_boxes_in_the_house_frame(tmp_path: Path) -> None:
    run(treebench(tmp_path), tmp_path / "out", val_fraction=1.0)
    found = records(tmp_path / "out")
    first, second = found["TreeBench:0"], found["TreeBench:1"]
    assert (first["width"], first["height"], first["subset"]) == (200, 100, "Perception/Attributes")
    assert first["objects"] == [{"ref": "evidence", "box": [50, 200, 550, 700]}]
    assert (first["choices"], first["answer_index"], first["answer"]) == (["red", "blue", "green", "white"], 0, "red")
    assert first["needs_distillation"] is False and first["rationale"].endswith("Answer: red")
    assert first["provenance"]["benchmark"] == "TreeBench" and first["source"] == "vlmevalkit"
    assert second["image"] == first["image"]  # named by index: the same stored image
    assert [o["box"] for o in second["objects"]] == [[50, 200, 550, 700], [600, 0, 1000, 1000]]
    assert (second["choices"], second["answer"]) == (["the mug", "the pen"], "the pen")
    assert rejected(tmp_path / "out") == {"TreeBench:2": "evidence_box_outside_image", "TreeBench:3": "bad_answer"}
    assert Image.open(first["image"]).size == (200, 100)


def test_hr_bench_and_v_star_option_columns(tmp_path: Path) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    hr = ["index", "question", "answer", "category", "A", "B", "C", "D", "cycle_category", "image"]
    write_tsv(folder / "hr_bench_4k.tsv", hr, [
        {"index": 7, "question": "What is written on the sign?", "answer": "C", "category": "FSP", "A": "STOP",
         "B": "GO", "C": "EXIT", "D": "OPEN", "cycle_category": "cycle_1", "image": png64(400, 300)},
    ])  # fmt: skip
    write_tsv(folder / "VStarBench.tsv", ["index", "image", "question", "A", "B", "answer", "category"], [
        {"index": 0, "image": png64(120, 90), "question": "Is the cup left of the dog?", "A": "Yes", "B": "No",
         "answer": "B", "category": "relative_position"},
    ])  # fmt: skip
    run(folder, tmp_path / "out", val_fraction=1.0)
    found = records(tmp_path / "out")
    hr_record, star = found["hr_bench_4k:7"], found["VStarBench:0"]
    assert (hr_record["answer"], hr_record["answer_index"], hr_record["subset"]) == ("EXIT", 2, "FSP")
    assert hr_record["provenance"]["cycle_category"] == "cycle_1" and hr_record["needs_distillation"] is True
    assert (star["answer"], star["choices"], star["subset"]) == ("No", ["Yes", "No"], "relative_position")


def test_mme_realworld_lite_option_list_and_a_named_benchmark(tmp_path: Path) -> None:
    header = ["index", "image", "question", "multi-choice options", "answer", "category", "l2-category"]
    source = write_tsv(tmp_path / "mme_realworld_lite.tsv", header, [
        {"index": "rs_01", "image": png64(64, 48), "question": "How many planes?",
         "multi-choice options": "['(A) 2', '(B) 3', '(C) 4', '(D) 5', '(E) None of the above']", "answer": "B",
         "category": "Perception/Remote Sensing", "l2-category": "counting"},
    ])  # fmt: skip
    run(source, tmp_path / "out", val_fraction=1.0, benchmark_name="mme-realworld-lite")
    record = records(tmp_path / "out")["mme-realworld-lite:rs_01"]
    assert record["choices"] == ["2", "3", "4", "5", "None of the above"] and record["answer"] == "3"
    assert record["provenance"]["l2-category"] == "counting"


@pytest.mark.parametrize("num_shards", [1, 2])
def test_an_image_named_by_a_later_row_or_another_shard_is_found(tmp_path: Path, num_shards: int) -> None:
    header = ["index", "image", "question", "A", "B", "answer", "category"]
    rows = [{"index": i, "image": "5" if i < 5 else png64(30 + i, 20), "question": f"Q{i}?", "A": "x", "B": "y",
             "answer": "A", "category": "c"} for i in range(6)]  # fmt: skip
    rows.append({"index": 6, "image": "99", "question": "Q6?", "A": "x", "B": "y", "answer": "A", "category": "c"})
    source = write_tsv(tmp_path / "bench.tsv", header, rows)
    for shard in range(num_shards):
        run(source, tmp_path / "out", val_fraction=1.0, shard_index=shard, num_shards=num_shards)
    found, reasons = records(tmp_path / "out"), rejected(tmp_path / "out")
    assert sorted(found) == [f"bench:{i}" for i in range(6)]
    assert {r["width"] for r in found.values()} == {35} and len({r["image"] for r in found.values()}) == 1
    assert reasons == {"bench:6": "image_reference_unresolved"}


def test_cells_pandas_wrote_as_nan_are_empty_and_a_broken_option_list_is_one_rejection(tmp_path: Path) -> None:
    header = ["index", "image", "question", "hint", "multi-choice options", "A", "B", "answer", "category",
              "target_instances"]  # fmt: skip
    source = write_tsv(tmp_path / "bench.tsv", header, [
        {"index": 0, "image": png64(40, 40), "question": "Q0?", "hint": "nan", "multi-choice options": "nan",
         "A": "yes", "B": "no", "answer": "A", "category": "nan", "target_instances": "nan"},
        {"index": 1, "image": "0", "question": "Q1?", "hint": "", "multi-choice options": "['(A) yes', ",
         "A": "nan", "B": "nan", "answer": "A", "category": "c", "target_instances": ""},
    ])  # fmt: skip
    run(source, tmp_path / "out", val_fraction=1.0)
    record = records(tmp_path / "out")["bench:0"]
    assert (record["question"], record["subset"], record["objects"], record["choices"]) == ("Q0?", "bench", [], ["yes", "no"])
    assert rejected(tmp_path / "out") == {"bench:1": "unreadable_options"}


def test_a_cell_listing_images_is_its_one_image_or_multiple_images(tmp_path: Path) -> None:
    """VLMEvalKit's multi-image rows (BLINK, MUIRBench) hold a list literal of base64 strings; decoded leniently its
    images' bytes ran together, and the record silently got the first image alone."""
    header = ["index", "image", "question", "A", "B", "answer"]
    red, blue = png64(64, 32, (255, 0, 0)), png64(30, 90, (0, 0, 255))
    source = write_tsv(tmp_path / "multi.tsv", header, [
        {"index": 0, "image": str([red, blue]), "question": "Which image is red?", "A": "first", "B": "second",
         "answer": "A"},
        {"index": 1, "image": str([blue]), "question": "Is it blue?", "A": "yes", "B": "no", "answer": "A"},
        {"index": 2, "image": red[:40] + "!?" + red[40:], "question": "Q?", "A": "yes", "B": "no", "answer": "A"},
    ])  # fmt: skip
    run(source, tmp_path / "out", val_fraction=1.0)
    assert rejected(tmp_path / "out") == {"multi:0": "multiple_images", "multi:2": "unreadable_image"}
    only = records(tmp_path / "out")["multi:1"]
    assert (only["width"], only["height"]) == (30, 90)
    assert Path(only["image"]).read_bytes() == base64.b64decode(blue)


def test_one_benchmark_name_for_several_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    for name in ("a", "b"):
        write_tsv(tmp_path / "raw" / f"{name}.tsv", ["index", "image", "question", "A", "answer"],
                  [{"index": 0, "image": png64(8, 8), "question": "Q?", "A": "x", "answer": "A"}])  # fmt: skip
    with pytest.raises(Exception, match="convert each file to its own output"):
        run(tmp_path / "raw", tmp_path / "out", benchmark_name="both")


def test_a_file_that_is_not_the_layout_is_refused(tmp_path: Path) -> None:
    source = write_tsv(tmp_path / "other.tsv", ["id", "text"], [{"id": 1, "text": "hello"}])
    with pytest.raises(Exception, match="none of the 1 items"):
        run(source, tmp_path / "out")
