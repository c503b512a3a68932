"""VisCOT boxes: the real sample records, both box-string conventions, and the VisCOT converter's rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.convert.own_data import bomb_png, png
from vcot.convert import ConvertConfig, convert
from vcot.convert.viscot import (
    PROMPT_SUFFIX,
    VisCotConverter,
    box_string_scale,
    load_sizes,
    parse_box_values,
    ref_label,
)
from vcot.grounding.boxes import pixels_to_norm1000, pixels_to_viscot_padded, validate_box, viscot_padding
from vcot.io import shards, storage

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "viscot"
SAMPLE = json.loads((FIXTURES / "benchmark_sample.json").read_text())
DET = [json.loads(line) for line in (FIXTURES / "benchmark_det_sample.jsonl").read_text().splitlines()]


def _records(output: Path) -> dict[str, dict]:
    found = {}
    for split in ("train", "val"):
        for path in sorted((output / split).glob("*.jsonl.gz")):
            for record in shards.read_jsonl(str(path)):
                found[record["id"]] = record
    return found


def _convert_sample(tmp_path: Path, items: list[dict], name: str) -> dict[str, dict]:
    data = tmp_path / name / "viscot.json"
    data.parent.mkdir(parents=True)
    data.write_text(json.dumps(items))
    output = tmp_path / f"{name}-out"
    convert(
        ConvertConfig(
            source="viscot",
            input=str(data),
            output=str(output),
            metadata=str(FIXTURES / "benchmark_det_sample.jsonl"),
            read_image_headers=False,
        )
    )
    return _records(output)


def _close(a: list[int], b: tuple[int, ...], tolerance: int = 1) -> bool:
    return max(abs(x - y) for x, y in zip(a, b)) <= tolerance


def test_sample_absolute_box_path_is_within_one_unit(tmp_path: Path) -> None:
    records = _convert_sample(tmp_path, SAMPLE, "absolute")
    assert len(records) == len(SAMPLE) == 36
    for item, det in zip(SAMPLE, DET):
        record = records[f"viscot:{item['dataset']}:val:{item['question_id']}"]
        absolute = parse_box_values(item["image"][1].split("###")[1])
        expected = pixels_to_norm1000(absolute, det["width"], det["height"])
        assert record["provenance"]["box_source"] == "absolute"
        assert _close(record["objects"][0]["box"], expected), (record["id"], record["objects"], expected)
        assert (record["width"], record["height"]) == (det["width"], det["height"])


def test_sample_padded_string_path_matches_the_detection_boxes(tmp_path: Path) -> None:
    # Drop the ### box: the converter must un-pad the normalized string with the image size.
    string_only = [{**item, "image": [item["image"][0]]} for item in SAMPLE]
    records = _convert_sample(tmp_path, string_only, "string")
    assert len(records) == 36
    for item, det in zip(SAMPLE, DET):
        record = records[f"viscot:{item['dataset']}:val:{item['question_id']}"]
        assert record["provenance"]["box_source"] == "string_unit"
        expected = pixels_to_norm1000(det["bbox"], det["width"], det["height"])
        assert _close(record["objects"][0]["box"], expected), (record["id"], record["objects"], expected)


def test_reading_the_string_relative_to_the_original_image_would_be_wrong() -> None:
    # The NOTES example: a tall image, so x is shifted by the padding. The naive reading is far off.
    item = SAMPLE[0]
    values = parse_box_values(item["conversations"][1]["value"])
    naive = [round(v * 1000) for v in values]
    record = VisCotConverter(
        images="/x", sizes={"gqa/2316539.jpg": 391 << 32 | 500}, source_file="f", read_headers=False
    ).convert(0, {**item, "image": [item["image"][0]]})
    assert record["objects"][0]["box"] == [555, 686, 619, 786]
    assert naive[0] - record["objects"][0]["box"][0] < -10


def test_metadata_formats_give_the_same_sizes() -> None:
    det = load_sizes(str(FIXTURES / "benchmark_det_sample.jsonl"))
    assert det["gqa/2316539.jpg"] == 391 << 32 | 500
    meta = load_sizes(str(FIXTURES / "metadata_sample.jsonl"))
    assert meta["cub/001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg"] == 500 << 32 | 336


def _tolerance(width: int, height: int) -> tuple[float, float]:
    """The string's 1/1000-of-the-padded-side quantization in 0-1000 units of each axis, plus two roundings."""
    side, _, _ = viscot_padding(width, height)
    return 0.5 * side / width + 1, 0.5 * side / height + 1


@st.composite
def _image_and_box(draw: st.DrawFn) -> tuple[int, int, list[int]]:
    width = draw(st.integers(20, 5000))
    height = draw(st.integers(20, 5000))
    x1 = draw(st.integers(0, width - 1))
    y1 = draw(st.integers(0, height - 1))
    x2 = draw(st.integers(x1 + 1, width))
    y2 = draw(st.integers(y1 + 1, height))
    return width, height, [x1, y1, x2, y2]


def _item(box_string: str, absolute: list[int] | None = None) -> dict:
    image = ["cot/gqa/x.jpg"] + ([f"cot/gqa/x.jpg###{absolute}"] if absolute else [])
    return {
        "dataset": "gqa",
        "split": "train",
        "question_id": 1,
        "image": image,
        "conversations": [
            {
                "from": "human",
                "value": f"<image>\nWhat is the cat on? {PROMPT_SUFFIX}",
            },
            {"from": "gpt", "value": box_string},
            {"from": "human", "value": "<image>"},
            {"from": "gpt", "value": "mat"},
        ],
    }


@given(_image_and_box(), st.sampled_from(["unit", "norm1000"]))
def test_property_both_string_conventions_recover_the_box(case: tuple[int, int, list[int]], convention: str) -> None:
    width, height, pixels = case
    truth = pixels_to_norm1000(pixels, width, height)
    if validate_box(truth) is not None:
        return  # a box thinner than one unit has no house box to recover
    unit = pixels_to_viscot_padded(pixels, width, height, decimals=None)
    text = "[" + ", ".join(f"{v:.3f}" if convention == "unit" else str(round(v * 1000)) for v in unit) + "]"
    assert box_string_scale(text, parse_box_values(text)) == convention
    converter = VisCotConverter(
        images="/none", sizes={"gqa/x.jpg": width << 32 | height}, source_file="f", read_headers=False
    )
    record = converter.convert(0, _item(text))
    if not isinstance(record, dict):  # quantization can collapse a box a few units wide: rejected, never wrong
        assert record.reason in ("zero_area_box", "inverted_box"), record
        return
    box = record["objects"][0]["box"]
    tol_x, tol_y = _tolerance(width, height)
    assert abs(box[0] - truth[0]) <= tol_x and abs(box[2] - truth[2]) <= tol_x, (box, truth)
    assert abs(box[1] - truth[1]) <= tol_y and abs(box[3] - truth[3]) <= tol_y, (box, truth)
    # With the absolute ### box present, the conversion is exact whatever the string says.
    exact = converter.convert(0, _item(text, pixels))
    assert exact["objects"][0]["box"] == list(truth)


@pytest.mark.parametrize(
    ("string", "absolute", "size", "reason"),
    [
        ("[0.1, 0.1, 0.2, 0.2]", [0, 0, 900, 50], (400, 300), "box_outside_image"),
        ("[0.1, 0.1, 0.2, 0.2]", [10, 10, 10, 50], (400, 300), "zero_area_box"),
        ("[0.3, 0.3, 0.2, 0.5]", None, (400, 300), "inverted_box"),
        ("[1.9, 0.1, 2.2, 0.2]", None, (400, 300), "box_outside_image"),
        ("a red car", None, (400, 300), "missing_box"),
        ("[0.1, 0.1, 0.2, 0.2]", None, None, "missing_size"),
    ],
)
def test_bad_boxes_and_sizes_are_rejected_with_a_reason(
    string: str, absolute: list[int] | None, size: tuple[int, int] | None, reason: str
) -> None:
    sizes = {"gqa/x.jpg": size[0] << 32 | size[1]} if size else {}
    result = VisCotConverter(images="/none", sizes=sizes, source_file="f", read_headers=False).convert(
        3, _item(string, absolute)
    )
    assert not isinstance(result, dict) and result.reason == reason and result.source_index == 3


def test_missing_image_is_rejected_when_its_header_is_needed(tmp_path: Path) -> None:
    result = VisCotConverter(images=str(tmp_path), sizes={}, source_file="f").convert(0, _item("[0.1, 0.1, 0.2, 0.2]"))
    assert result.reason == "missing_image"
    (tmp_path / "cot" / "gqa").mkdir(parents=True)
    (tmp_path / "cot" / "gqa" / "x.jpg").write_bytes(b"not an image")
    result = VisCotConverter(images=str(tmp_path), sizes={}, source_file="f").convert(0, _item("[0.1, 0.1, 0.2, 0.2]"))
    assert result.reason == "unreadable_image"


def test_ref_labels_are_short_and_deterministic() -> None:
    labels = [ref_label(item["conversations"][0]["value"], item["dataset"]) for item in SAMPLE]
    assert labels[0] == "tree branches" and labels == [
        ref_label(i["conversations"][0]["value"], i["dataset"]) for i in SAMPLE
    ]
    assert all(0 < len(label.split()) <= 4 for label in labels)


def test_non_finite_box_values_are_rejected_not_crashed() -> None:
    from vcot.convert.viscot import box_problem

    assert box_problem([0.0, 0.0, float("nan"), 10.0], 100, 100) == "not_finite_box"
    assert box_problem([0.0, 0.0, float("inf"), 10.0], 100, 100) == "not_finite_box"
    assert box_problem([0.0, 0.0, 10.0, 10.0], 100, 100) is None


def test_v7w_sizes_are_found_under_the_detection_files_visual7w_name(tmp_path: Path) -> None:
    """VisCOT's benchmark JSON says cot/v7w/..., its detection JSONL cot/visual7w/...: without images, every v7w
    question used to be rejected as missing_size."""
    items, det_lines = [], []
    for n, (item, det) in enumerate(zip(SAMPLE[:6], DET[:6])):
        name = f"v7w_{2385 + n}.jpg"
        box = item["image"][1].split("###")[1]
        items.append({**item, "dataset": "v7w", "image": [f"cot/v7w/images/{name}", f"cot/v7w/images/{name}###{box}"]})
        det_lines.append({**det, "img_path": f"cot/visual7w/{name}"})
    data, metadata = tmp_path / "bench" / "viscot.json", tmp_path / "benchmark_det.jsonl"
    data.parent.mkdir()
    data.write_text(json.dumps(items))
    metadata.write_text("".join(json.dumps(line) + "\n" for line in det_lines))
    output = tmp_path / "out"
    convert(ConvertConfig(source="viscot", input=str(data), output=str(output), metadata=str(metadata),
                          read_image_headers=False, val_fraction=1.0))
    records = _records(output)
    rejected = [r for path in (output / "rejected").glob("*.jsonl.gz") for r in shards.read_jsonl(str(path))]
    assert len(records) == 6 and rejected == []
    for item, det in zip(items, det_lines):
        record = records[f"viscot:v7w:val:{item['question_id']}"]
        assert (record["width"], record["height"]) == (det["width"], det["height"])
        assert record["subset"] == "v7w" and record["image"].endswith(item["image"][0])


@pytest.mark.parametrize("check_images", [False, True])
def test_an_image_over_the_decompression_bomb_limit_is_rejected_and_counted(tmp_path: Path, check_images: bool) -> None:
    """Its size from the metadata (train could never load it), from its header, or checked (--check-images)."""
    folder = tmp_path / "in"
    (folder / "images" / "cot" / "gqa").mkdir(parents=True)
    for name in ("huge-listed", "huge-unlisted"):
        (folder / "images" / "cot" / "gqa" / f"{name}.png").write_bytes(bomb_png())
    (folder / "images" / "cot" / "gqa" / "fine.png").write_bytes(png((400, 300)))
    items = []
    for n, name in enumerate(("huge-listed", "huge-unlisted", "fine")):
        item = _item("[0.1, 0.3, 0.2, 0.4]")  # inside the 400x300 image once un-padded
        items.append({**item, "question_id": n, "image": [f"cot/gqa/{name}.png"]})
    (folder / "viscot.json").write_text(json.dumps(items))
    sizes = [{"img_path": "cot/gqa/huge-listed.png", "width": 20_000, "height": 20_000},
             {"img_path": "cot/gqa/fine.png", "width": 400, "height": 300}]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in sizes))
    output = tmp_path / "out"
    convert(ConvertConfig(source="viscot", input=str(folder), output=str(output), check_images=check_images))

    rejected = [r for path in (output / "rejected").glob("*.jsonl.gz") for r in shards.read_jsonl(str(path))]
    assert sorted((r["id"], r["reason"]) for r in rejected) == [
        ("viscot:gqa:train:0", "image_too_large"), ("viscot:gqa:train:1", "image_too_large")
    ]
    assert list(_records(output)) == ["viscot:gqa:train:2"]
    total = storage.read_json(str(output / "quality.json"))["total"]
    assert total["reasons"] == {"image_too_large": 2} and total["accepted"] == 1
