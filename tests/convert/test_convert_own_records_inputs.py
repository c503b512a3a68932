"""Your own data (--source records) as users bring it: Hugging Face chat items, 0-1 boxes, relative paths, byte-order
marks, repeated ids, replacement characters, phone photos stored turned; one test per case."""

from __future__ import annotations

import codecs
import json
import uuid
from pathlib import Path

import pytest

from tests.convert.own_data import png
from vcot.convert import ConvertConfig, convert
from vcot.convert.quality import QualityStats, render_markdown, report
from vcot.io import manifest, shards, storage

FIND_CAT = [{"role": "user", "content": "<image>Find the <ref-object>."}, {"role": "assistant", "content": "<bbox>"}]


def _swift(box: list, **extra: object) -> dict:
    """An ms-swift item on the 300x300 ``photos/cat.png``."""
    return {"messages": FIND_CAT, "images": ["photos/cat.png"], "objects": {"ref": ["cat"], "bbox": [box]}, **extra}


def _chat(bbox_2d: list, **extra: object) -> dict:
    answer = json.dumps({"bbox_2d": bbox_2d, "label": "cat"})
    turns = [{"role": "user", "content": "<image>Find the cat."}, {"role": "assistant", "content": answer}]
    return {"messages": turns, "images": ["photos/cat.png"], **extra}


def _ours(box: list, rationale: str, **extra: object) -> dict:
    return {"image": "photos/cat.png", "question": "Where is the cat?", "objects": [{"ref": "cat", "box": box}],
            "rationale": rationale, **extra}


def _images(root: Path, sizes: dict[str, tuple[int, int]] | None = None) -> None:
    for path, size in (sizes or {"photos/cat.png": (300, 300)}).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(png(size))


def _run(tmp_path: Path, items: list, name: str = "own.jsonl", **config: object) -> tuple[list, dict]:
    """Convert ``items`` (JSONL lines, or raw text for ``name``): ``(accepted records, {id: (reason, detail)})``."""
    _images(tmp_path)
    path = tmp_path / name
    if isinstance(items, (str, bytes)):
        path.write_bytes(items if isinstance(items, bytes) else items.encode())
    else:
        path.write_text("".join(json.dumps(item) + "\n" for item in items))
    output = str(tmp_path.parent / f"{tmp_path.name}-out-{uuid.uuid4().hex[:8]}")  # a fresh one: a committed is skipped
    convert(ConvertConfig(source="records", input=str(path), output=output, val_fraction=0.0, **config))
    return _read(output)


def _read(output: str) -> tuple[list, dict]:
    accepted = [r for uri in manifest.committed_files(output, "train/") for r in shards.read_jsonl(uri)]
    rejected = {r["id"]: (r["reason"], r["detail"])
                for uri in manifest.committed_files(output, "rejected/") for r in shards.read_jsonl(uri)}
    return accepted, rejected


def test_a_bare_image_part_is_a_placeholder_for_the_images_column(tmp_path: Path) -> None:
    """Hugging Face / TRL write ``{"type": "image"}`` in the user turn and the image in ``images`` (or ``image``)."""
    def hf(id_: str, **image: object) -> dict:
        user = [{"type": "image"}, {"type": "text", "text": "Find the cat."}]
        assistant = [{"type": "text", "text": json.dumps({"bbox_2d": [30, 60, 240, 270], "label": "cat"})}]
        turns = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return {"id": id_, "messages": turns, **image}

    two = {**hf("two", images=["photos/cat.png"]), "image": "photos/dog.png"}
    twice = {**hf("twice", images=["photos/cat.png"]), "image": "photos/cat.png"}  # one image, named twice
    accepted, rejected = _run(tmp_path, [hf("images", images=["photos/cat.png"]), hf("image", image="photos/cat.png"),
                                         hf("none"), two, twice], bbox_2d_frame="pixels")
    assert sorted(r["id"] for r in accepted) == ["records:image", "records:images", "records:twice"]
    assert accepted[0]["objects"] == [{"ref": "cat", "box": [100, 200, 800, 900]}]
    assert {i: reason for i, (reason, _) in rejected.items()} == {
        "records:none": "missing_image", "records:two": "multiple_images"
    }


def test_0_1_fractions_outside_the_norm1_frame_are_rejected_naming_the_setting(tmp_path: Path) -> None:
    """Read as pixels (ms-swift's default) or 0-1000 they became a box of a pixel; ``norm1`` reads them right."""
    items = [
        _swift([0.1, 0.2, 0.8, 0.9], id="swift-default"),
        _swift([0.1, 0.2, 0.8, 0.9], id="swift-1000") | {"objects": {"ref": ["cat"], "bbox": [[0.1, 0.2, 0.8, 0.9]],
                                                                    "bbox_type": "norm1000"}},
        _swift([0.1, 0.2, 0.8, 0.9], id="swift-norm1") | {"objects": {"ref": ["cat"], "bbox": [[0.1, 0.2, 0.8, 0.9]],
                                                                     "bbox_type": "norm1"}},
        _swift([10, 10, 10.4, 11], id="swift-small"),  # a fraction, but values above 1: pixels it is
        _chat([0.1, 0.2, 0.8, 0.9], id="chat"),
        _ours([0.1, 0.2, 0.8, 0.9], "The <ref>cat</ref><box>[0.1, 0.2, 0.8, 0.9]</box>. Answer: left", id="ours"),
    ]
    accepted, rejected = _run(tmp_path, items, bbox_2d_frame="pixels")
    assert sorted(r["id"] for r in accepted) == ["records:swift-norm1", "records:swift-small"]
    assert {i: reason for i, (reason, _) in rejected.items()} == dict.fromkeys(
        ["records:swift-default", "records:swift-1000", "records:chat", "records:ours"], "box_looks_normalized"
    )
    assert 'bbox_type "norm1"' in rejected["records:swift-default"][1]
    assert "--bbox-2d-frame norm1000" in rejected["records:chat"][1]
    assert "0-1000" in rejected["records:ours"][1]
    chat = [_chat([0.1, 0.2, 0.8, 0.9], id="chat"), _chat([100, 200, 800, 900], id="ok")]
    _, rejected = _run(tmp_path, chat, bbox_2d_frame="norm1000")
    assert rejected["records:chat"][0] == "box_looks_normalized"


def test_dots_in_relative_image_paths_are_resolved(tmp_path: Path) -> None:
    accepted, _ = _run(tmp_path, [_swift([30, 60, 240, 270], id="dots", images=["./sub/../photos/cat.png"])])
    assert [r["image"] for r in accepted] == [str(tmp_path / "photos" / "cat.png")]


@pytest.mark.integration
def test_dots_in_relative_image_paths_on_s3_do_not_stop_the_stage(real_s3: str) -> None:
    """S3 refuses a key holding ``..`` (InvalidRequest), which stopped the whole stage."""
    storage.write_bytes(f"{real_s3}/own/photos/cat.png", png((300, 300)))
    storage.write_bytes(f"{real_s3}/shared/cat.png", png((300, 300)))
    items = [_swift([30, 60, 240, 270], id="dots", images=["sub/../photos/./cat.png"]),
             _swift([30, 60, 240, 270], id="above", images=["../shared/cat.png"]),
             _swift([30, 60, 240, 270], id="bucket", images=["../../../../x.png"]),  # own, <test>, tests
             _swift([30, 60, 240, 270], id="absolute", images=[f"{real_s3}/own/sub/../photos/cat.png"])]
    storage.write_text(f"{real_s3}/own/own.jsonl", "".join(json.dumps(item) + "\n" for item in items))
    output = f"{real_s3}/out"
    convert(ConvertConfig(source="records", input=f"{real_s3}/own/own.jsonl", output=output, val_fraction=0.0))
    accepted, rejected = _read(output)
    assert {r["id"]: r["image"] for r in accepted} == {
        "records:dots": f"{real_s3}/own/photos/cat.png", "records:above": f"{real_s3}/shared/cat.png",
        "records:absolute": f"{real_s3}/own/photos/cat.png",
    }
    assert rejected["records:bucket"][0] == "bad_image_path"


def test_an_aspect_ratio_qwen_refuses_rejects_the_item_not_the_stage(tmp_path: Path) -> None:
    _images(tmp_path, {"photos/banner.png": (2500, 10)})
    items = [_chat([10, 1, 200, 9], id="banner", images=["photos/banner.png"]), _chat([10, 10, 200, 200], id="ok")]
    accepted, rejected = _run(tmp_path, items, bbox_2d_frame="qwen2.5-resized")
    assert [r["id"] for r in accepted] == ["records:ok"]
    reason, detail = rejected["records:banner"]
    assert reason == "extreme_aspect_ratio" and "2500x10" in detail and "over 200" in detail


def test_bbox_2d_boxes_a_little_past_the_edge_are_clamped_as_ms_swift_ones_are(tmp_path: Path) -> None:
    items = [_chat([-2, 5, 100, 200], id="chat-neg"), _chat([0, 5, 303, 200], id="chat-past"),
             _chat([-60, 5, 100, 200], id="chat-far"), _swift([-2, 5, 100, 200], id="swift-neg")]
    accepted, rejected = _run(tmp_path, items, bbox_2d_frame="pixels")
    boxes = {r["id"]: r["objects"][0]["box"] for r in accepted}
    assert boxes == {"records:chat-neg": [0, 17, 333, 667], "records:chat-past": [0, 17, 1000, 667],
                     "records:swift-neg": [0, 17, 333, 667]}
    assert rejected["records:chat-far"][0] == "box_outside_image"


@pytest.mark.parametrize("name", ["own.jsonl", "own.json"])
def test_a_byte_order_mark_at_the_start_of_the_file_is_skipped(tmp_path: Path, name: str) -> None:
    items = [_swift([30, 60, 240, 270], id=f"bom-{n}") for n in range(3)]
    text = "\r\n".join(map(json.dumps, items)) + "\r\n" if name.endswith(".jsonl") else json.dumps(items)
    accepted, rejected = _run(tmp_path, codecs.BOM_UTF8 + text.encode(), name=name)
    assert sorted(r["id"] for r in accepted) == ["records:bom-0", "records:bom-1", "records:bom-2"]
    assert rejected == {}


def test_a_repeated_id_is_rejected_as_duplicate_id(tmp_path: Path) -> None:
    """Per-file ids repeat across files (and lines get pasted twice): evaluation would join the wrong records."""
    _images(tmp_path)
    folder = tmp_path / "in"
    for path, items in {
        "part-a.jsonl": [_swift([30, 60, 240, 270], id=0), _swift([0, 0, 100, 100], id=1)],
        "part-b.jsonl": [_swift([200, 200, 290, 290], id=0), _swift([10, 10, 20, 20], id=2)] * 2,
        "a/train.jsonl": [_swift([30, 60, 240, 270])],  # no ids: named by the path under --input
        "b/train.jsonl": [_swift([30, 60, 240, 270])],
        "b/train.json": [_swift([30, 60, 240, 270])],  # differs from b/train.jsonl by its extension alone
    }.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(items) if path.endswith(".json") else "".join(json.dumps(item) + "\n" for item in items)
        (folder / path).write_text(text)
    output = str(tmp_path.parent / f"{tmp_path.name}-out")
    convert(ConvertConfig(source="records", input=str(folder), output=output, val_fraction=0.0, images=str(tmp_path)))
    accepted, _ = _read(output)
    assert sorted(r["id"] for r in accepted) == [
        "records:0", "records:1", "records:2", "records:a/train:0", "records:b/train.json:0", "records:b/train.jsonl:0"
    ]
    rejections = [r for uri in manifest.committed_files(output, "rejected/") for r in shards.read_jsonl(uri)]
    assert [(r["id"], r["reason"]) for r in rejections] == [
        ("records:0", "duplicate_id"), ("records:0", "duplicate_id"), ("records:2", "duplicate_id")
    ]
    assert "item 0 of" in rejections[0]["detail"] and "part-a.jsonl" in rejections[0]["detail"]
    assert "unique across all the input files" in rejections[0]["detail"]


def test_an_item_that_is_rejected_holds_no_id(tmp_path: Path) -> None:
    """A broken first try, fixed further down the file: the fixed item is the record, not a duplicate."""
    items = [_swift([30, 60, 240, 270], id="cat", images=["photos/dog.png"]),  # no such image
             _swift([30, 60, 240, 900], id="cat"),  # outside the image
             _ours([100, 200, 800, 900], "The cat. Answer: cat", id="cat"),  # the quality filter: no box
             _swift([30, 60, 240, 270], id="cat"), _swift([0, 0, 100, 100], id="cat")]
    accepted, rejected = _run(tmp_path, items)
    assert [r["objects"][0]["box"] for r in accepted] == [[100, 200, 800, 900]]
    assert rejected["records:cat"][0] == "duplicate_id" and "item 3 of" in rejected["records:cat"][1]


def test_ids_without_an_id_field_count_items_not_lines(tmp_path: Path) -> None:
    """docs/convert.md: ``records:<file>:<n>``, n the item's 0-based place in its file (blank lines do not count)."""
    text = json.dumps(_swift([30, 60, 240, 270])) + "\n\n" + json.dumps(_swift([0, 0, 100, 100])) + "\n"
    accepted, _ = _run(tmp_path, text)
    assert sorted(r["id"] for r in accepted) == ["records:own:0", "records:own:1"]


def test_a_real_replacement_character_is_text_only_repaired_bytes_are_bad_encoding(tmp_path: Path) -> None:
    ocr = _ours([100, 200, 500, 600], "The <ref>sign</ref><box>[100, 200, 500, 600]</box>. Answer: cafe",
                id="ocr", question="What does the sign say? (OCR: caf\ufffd)", answer="cafe")
    ok = _ours([100, 200, 500, 600], "The <ref>sign</ref><box>[100, 200, 500, 600]</box>. Answer: a", id="ok")
    accepted, rejected = _run(tmp_path, [ocr, ok])
    assert sorted(r["id"] for r in accepted) == ["records:ocr", "records:ok"] and rejected == {}
    accepted, rejected = _run(tmp_path, json.dumps([ocr, ok], ensure_ascii=False), name="own.json")
    assert sorted(r["id"] for r in accepted) == ["records:ocr", "records:ok"] and rejected == {}

    latin1 = json.dumps([ok, {**ocr, "question": "What does the sign say? (OCR: caf\u00e9)"}], ensure_ascii=False)
    accepted, rejected = _run(tmp_path, latin1.encode("latin-1"), name="own.json")
    assert [r["id"] for r in accepted] == ["records:ok"]
    reason, detail = rejected["records:ocr"]
    assert reason == "bad_encoding" and "not valid UTF-8" in detail


def test_our_schema_gets_its_answer_line_and_integer_boxes(tmp_path: Path) -> None:
    """docs/convert.md: a rationale without ``Answer: ...`` gets it; docs/records.md: boxes are integers 0-1000."""
    items = [
        _ours([100, 200, 500, 600], "The <ref>cat</ref><box>[100, 200, 500, 600]</box> is on the left.",
              id="no-answer-line", answer="left"),
        _ours([100, 200, 500, 600], "The <ref>cat</ref><box>[100, 200, 500, 600]</box> is left. Answer: left",
              id="answer-only-in-rationale"),
        _ours([100.4, 200.6, 500.2, 600.9], "The <ref>cat</ref><box>[100.4, 200.6, 500.2, 600.9]</box>. Answer: left",
              id="floats", answer="left"),
        _ours([100, 200, 500, 600], "The <ref>cat</ref><box>[100, 200, 500, 600]</box> is on the left.", id="none"),
        _ours([100, 200, 500, 600], "The <ref>cat</ref><box>[100, 200, 500, 600]</box> is left. answer : left",
              id="lower-case-marker", answer="left"),  # read as evaluate reads it: no second Answer: line
        _ours([100, 200, 500, 600], "The <ref>cat</ref><box>[0.1, 0.2, 0.8, 0.9]</box> is left. Answer: left",
              id="fractions-in-rationale"),
    ]
    accepted, rejected = _run(tmp_path, items)
    by_id = {r["id"]: r for r in accepted}
    assert by_id["records:no-answer-line"]["rationale"] == (
        "The <ref>cat</ref><box>[100, 200, 500, 600]</box> is on the left. Answer: left"
    )
    assert by_id["records:answer-only-in-rationale"]["answer"] == "left"
    assert by_id["records:floats"]["objects"] == [{"ref": "cat", "box": [100, 201, 500, 601]}]
    assert by_id["records:floats"]["rationale"] == "The <ref>cat</ref><box>[100, 201, 500, 601]</box>. Answer: left"
    assert rejected["records:none"][0] == "missing_answer"
    assert by_id["records:lower-case-marker"]["rationale"].endswith("is left. answer : left")
    assert rejected["records:fractions-in-rationale"][0] == "box_looks_normalized"


def test_a_phone_photo_stored_turned_is_read_as_displayed(tmp_path: Path) -> None:
    """A JPEG stored 400x300 with EXIF orientation 6 shows 300x400: its boxes, drawn on what a viewer shows, and its
    size are of the upright image, which is what training loads (vcot.io.images.upright) and vLLM serves."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (400, 300), "gray").save(buffer, "JPEG", exif=exif.tobytes())
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "phone.jpg").write_bytes(buffer.getvalue())
    item = {"id": "phone", "messages": FIND_CAT, "images": ["photos/phone.jpg"],
            "objects": {"ref": ["cup"], "bbox": [[30, 320, 270, 395]]}}  # near the bottom of the upright image
    sized = _ours([100, 100, 900, 700], "<ref>cat</ref><box>[100, 100, 900, 700]</box> Answer: cat", id="sized",
                  image="photos/phone.jpg", width=300, height=400, answer="cat")  # the size as displayed: no mismatch
    accepted, rejected = _run(tmp_path, [item, sized])
    assert rejected == {}
    by_id = {record["id"]: record for record in accepted}
    assert (by_id["records:phone"]["width"], by_id["records:phone"]["height"]) == (300, 400)
    assert by_id["records:phone"]["objects"] == [{"ref": "cup", "box": [100, 800, 900, 988]}]
    assert by_id["records:sized"]["objects"] == [{"ref": "cat", "box": [100, 100, 900, 700]}]
    # Said, not silent: boxes drawn on the stored pixels (ms-swift ignores the tag) would be wrong here.
    assert [by_id[i]["provenance"].get("exif_orientation") for i in ("records:phone", "records:sized")] == [6, 6]
    upright, _ = _run(tmp_path, [_swift([30, 60, 240, 270], id="upright")])
    assert "exif_orientation" not in upright[0]["provenance"]
    stats = QualityStats()
    for record in [*accepted, *upright]:
        stats.accepted(record)
    quality = report(stats.to_dict(), source="records", shards=1)
    assert quality["total"]["exif_turned"] == 2
    assert "with an EXIF orientation (read upright, as displayed): 2 of 3 accepted" in render_markdown(quality)


def test_a_relative_input_gives_records_that_name_their_images_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Converted from ``data/own.jsonl``, the records' images were ``data/photos/cat.png``: training from another
    folder could not find them."""
    (tmp_path / "data").mkdir()
    _images(tmp_path / "data")
    (tmp_path / "data" / "own.jsonl").write_text(json.dumps(_swift([30, 60, 240, 270], id="cat")) + "\n")
    monkeypatch.chdir(tmp_path)
    convert(ConvertConfig(source="records", input="data/own.jsonl", output="out", val_fraction=0.0))
    accepted, _ = _read(str(tmp_path / "out"))
    assert [r["image"] for r in accepted] == [str(tmp_path / "data" / "photos" / "cat.png")]


def test_a_box_in_the_question_becomes_a_house_box_and_is_not_an_object(tmp_path: Path) -> None:
    """Region questions: ms-swift fills the user turn's <bbox> first, so the answer's box is the second; a box the
    question gives is not one the model must find (no object), and a bare one is not named (it would give the
    answer away)."""
    left_of = [{"role": "user", "content": "<image>What is left of <bbox>?"},
               {"role": "assistant", "content": "A <ref-object><bbox>. Answer: cat"}]
    swift = {"messages": left_of, "images": ["photos/cat.png"], "id": "swift",
             "objects": {"ref": ["cat"], "bbox": [[150, 60, 240, 270], [30, 60, 140, 270]]}}
    chat = {"id": "chat", "images": ["photos/cat.png"], "messages": [
        {"role": "user", "content": '<image>What is at {"bbox_2d": [30, 60, 240, 270]}?'},
        {"role": "assistant", "content": 'A [{"bbox_2d": [30, 60, 240, 270], "label": "cat"}]. Answer: cat'}]}
    ours = {**_ours([100, 200, 800, 900], "The <ref>cat</ref><box>[100, 200, 800, 900]</box>. Answer: cat"),
            "id": "ours", "question": "What is in <box>[100.4, 200, 800, 900]</box>?"}
    inverted = {**ours, "id": "inverted", "question": "What is in <box>[800, 200, 100, 900]</box>?"}
    to_distill = {"id": "to-distill", "image": "photos/cat.png", "question": inverted["question"], "answer": "cat",
                  "rationale": "", "needs_distillation": True}
    example = '<image>Find the cat, as {"bbox_2d": [0, 0, 0, 0], "label": "cat"}.'  # a format example: no box
    chat_example = {**chat, "id": "chat-example", "messages": [{"role": "user", "content": example},
                                                               chat["messages"][1]]}
    caption = {**swift, "id": "caption", "objects": {"ref": ["cat"], "bbox": [[30, 60, 240, 270]]},
               "messages": [{"role": "user", "content": "<image>What is in <bbox>?"},
                            {"role": "assistant", "content": "A <ref-object>. Answer: cat"}]}
    items = [swift, chat, ours, inverted, to_distill, chat_example, caption]
    accepted, rejected = _run(tmp_path, items, bbox_2d_frame="pixels")
    got = {r["id"]: (r["question"], r["objects"], r["rationale"]) for r in accepted}
    assert got == {
        "records:swift": ("What is left of <box>[500, 200, 800, 900]</box>?",
                          [{"ref": "cat", "box": [100, 200, 467, 900]}],
                          "A <ref>cat</ref><box>[100, 200, 467, 900]</box>. Answer: cat"),
        "records:chat": ("What is at <box>[100, 200, 800, 900]</box>?", [{"ref": "cat", "box": [100, 200, 800, 900]}],
                         "A <ref>cat</ref><box>[100, 200, 800, 900]</box>. Answer: cat"),
        "records:ours": ("What is in <box>[100, 200, 800, 900]</box>?", [{"ref": "cat", "box": [100, 200, 800, 900]}],
                         "The <ref>cat</ref><box>[100, 200, 800, 900]</box>. Answer: cat"),
        "records:chat-example": ('Find the cat, as {"bbox_2d": [0, 0, 0, 0], "label": "cat"}.',
                                 [{"ref": "cat", "box": [100, 200, 800, 900]}],
                                 "A <ref>cat</ref><box>[100, 200, 800, 900]</box>. Answer: cat"),
    }
    assert {k: v[0] for k, v in rejected.items()} == {
        "records:inverted": "question_invalid_box", "records:to-distill": "question_invalid_box",
        "records:caption": "no_objects",
    }


@pytest.mark.parametrize(("question", "reason"), [
    ('Which is bigger, [{"bbox_2d": [64, 48, 120, 240]}, {"bbox_2d": [0, 0, 0, 0]}]?', "zero_area_box"),  # mixed
    ('What color is {"bbox_2d": [0.1, 0.2, 0.5, 0.6]}?', "box_looks_normalized"),  # the frame named, as in answers
    ('What is in {"bbox_2d": [200, 100, 600, 290]}?', "box_outside_image"),  # the image is 300x300
])
def test_a_real_box_in_the_question_is_checked_as_the_answers_are(tmp_path: Path, question: str, reason: str) -> None:
    """Only a value that is no box at all (a format example) stays as written; a region the item gets wrong is no
    example: left raw, it would reach the model in another frame, unseen."""
    item = _chat([30, 60, 240, 270], id="asked")
    item["messages"] = [{"role": "user", "content": "<image>" + question}, item["messages"][1]]
    accepted, rejected = _run(tmp_path, [item, _chat([30, 60, 240, 270], id="plain")], bbox_2d_frame="pixels")
    assert [r["id"] for r in accepted] == ["records:plain"] and rejected["records:asked"][0] == reason


def test_ms_swift_qwen_json_placeholders_become_house_mentions(tmp_path: Path) -> None:
    """ms-swift's QWENVL_BBOX_FORMAT=new items (its custom-dataset docs): the placeholders sit inside Qwen's bbox_2d
    JSON, which ms-swift fills with the values; each filled box object is one house mention, not JSON around one."""
    two_sheep = '[\n\t{"bbox_2d": <bbox>, "label": "<ref-object>"},\n\t{"bbox_2d": <bbox>, "label": "<ref-object>"}\n]'
    new_format = {"id": "new", "images": ["photos/cat.png"],
                  "messages": [{"role": "user", "content": "<image>Locate the <ref-object> in the image"},
                               {"role": "assistant", "content": two_sheep}],
                  "objects": {"ref": ["sheep", "sheep", "sheep"], "bbox": [[90.9, 160.8, 135, 212.8],
                                                                           [160.9, 180.8, 195, 232.8]]}}
    quoted = {**new_format, "id": "quoted",
              "objects": {"ref": ['a "big" cat', 'a "big" cat'], "bbox": [[30, 60, 240, 270]]},
              "messages": [new_format["messages"][0], {"role": "assistant", "content":
                                                       '{"bbox_2d": <bbox>, "label": "<ref-object>"}. Answer: cat'}]}
    written = {**quoted, "id": "written", "messages": [new_format["messages"][0], {"role": "assistant", "content":
               '[{"bbox_2d": <bbox>, "label": "<ref-object>"}, {"bbox_2d": [1, 2, 30, 40], "label": "dog"}]'}]}
    accepted, rejected = _run(tmp_path, [new_format, quoted, written])
    got = {r["id"]: (r["question"], r["objects"], r["rationale"]) for r in accepted}
    assert got == {
        "records:new": ("Locate the sheep in the image",
                        [{"ref": "sheep", "box": [303, 536, 450, 709]}, {"ref": "sheep", "box": [536, 603, 650, 776]}],
                        "<ref>sheep</ref><box>[303, 536, 450, 709]</box> "
                        "<ref>sheep</ref><box>[536, 603, 650, 776]</box> Answer: sheep"),
        "records:quoted": ('Locate the a "big" cat in the image', [{"ref": 'a "big" cat', "box": [100, 200, 800, 900]}],
                           '<ref>a "big" cat</ref><box>[100, 200, 800, 900]</box>. Answer: cat'),
    }
    assert rejected["records:written"][0] == "bbox_2d_with_numbers"  # numbers in an unknown frame: never guessed
    spaced = {**_swift([30, 60, 240, 270], id="spaced"),
              "objects": {"ref": ["cat", "cat"], "bbox": [[30, 60, 240, 270]]},
              "messages": [FIND_CAT[0], {"role": "assistant", "content": "The <ref-object> <bbox>. Answer: cat"}]}
    accepted, _ = _run(tmp_path, [spaced])  # a space between them: still the one named box, its name not doubled
    assert accepted[0]["rationale"] == "The <ref>cat</ref><box>[100, 200, 800, 900]</box>. Answer: cat"


def test_a_text_that_answers_in_prose_is_not_given_its_boxes_names_as_answer(tmp_path: Path) -> None:
    """--missing-answer refs is for pure grounding items; a chain of thought that says its answer without the
    Answer: marker would get a target that contradicts itself ("... the answer is yes. Answer: red sign")."""
    sign = '{"bbox_2d": [56, 50, 192, 163], "label": "red sign"}'

    def item(name: str, text: str) -> dict:
        turns = [{"role": "user", "content": "<image>Is the shop open?"}, {"role": "assistant", "content": text}]
        return {"id": name, "messages": turns, "images": ["photos/cat.png"]}

    items = [item("prose", f"The {sign} reads OPEN, so the answer is yes."),
             item("bold", f"The {sign} reads OPEN.\n\n**Answer:** yes"), item("grounding", f"The sign: {sign}."),
             item("sheet", f"The answer sheet, with its {sign}.")]  # the word alone states nothing
    accepted, rejected = _run(tmp_path, items, bbox_2d_frame="pixels")
    assert {r["id"]: r["answer"] for r in accepted} == {
        "records:bold": "yes", "records:grounding": "red sign", "records:sheet": "red sign"}
    assert rejected["records:prose"][0] == "no_answer" and "states an answer in prose" in rejected["records:prose"][1]


def test_qwen2_vl_special_token_boxes_are_read_as_bbox_2d_json_is(tmp_path: Path) -> None:
    """Qwen2-VL's grounding syntax (ms-swift's and LLaMA-Factory's users write it): the same frame setting, the same
    house mentions and objects, in the question as in the answer."""
    def tokens(ref: str | None, x1: int, y1: int, x2: int, y2: int) -> str:
        named = f"<|object_ref_start|>{ref}<|object_ref_end|>" if ref else ""
        return f"{named}<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"

    turns = [{"role": "user", "content": f"<image>What is at {tokens(None, 100, 200, 800, 900)}?"},
             {"role": "assistant", "content": f"The {tokens('cat', 100, 200, 800, 900)} sits. Answer: cat"}]
    inverted = [turns[0], {"role": "assistant", "content": f"The {tokens('cat', 800, 200, 100, 900)}. Answer: cat"}]
    items = [{"id": "tokens", "messages": turns, "images": ["photos/cat.png"]},
             {"id": "inverted", "messages": inverted, "images": ["photos/cat.png"]}]
    accepted, rejected = _run(tmp_path, items, bbox_2d_frame="norm1000")
    assert [(r["question"], r["objects"], r["rationale"]) for r in accepted] == [(
        "What is at <box>[100, 200, 800, 900]</box>?", [{"ref": "cat", "box": [100, 200, 800, 900]}],
        "The <ref>cat</ref><box>[100, 200, 800, 900]</box> sits. Answer: cat")]
    assert rejected["records:inverted"][0] == "inverted_box"
    in_pixels = [{"role": "user", "content": "<image>Find the cat."},
                 {"role": "assistant", "content": tokens("cat", 30, 60, 240, 270)}]  # of the 300x300 image
    pixels, _ = _run(tmp_path, [{"id": "pixels", "messages": in_pixels, "images": ["photos/cat.png"]}],
                     bbox_2d_frame="pixels")
    assert pixels[0]["objects"] == [{"ref": "cat", "box": [100, 200, 800, 900]}]


def test_trl_prompt_completion_swift_query_response_and_openai_image_url_items_are_read(tmp_path: Path) -> None:
    """TRL's prompt-completion datasets (conversational, or two texts), ms-swift's query-response ones (with its
    grounding objects or not) and OpenAI's image_url parts (a path, or a data: URL) were unknown_layout,
    bad_conversations and missing_image."""
    import base64

    answer = json.dumps({"bbox_2d": [30, 60, 240, 270], "label": "cat"})
    asked = [{"type": "image"}, {"type": "text", "text": "Find the cat."}]
    conversational = {"id": "trl", "images": ["photos/cat.png"], "prompt": [{"role": "user", "content": asked}],
                      "completion": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]}
    standard = {"id": "texts", "images": ["photos/cat.png"], "prompt": "Find the cat.", "completion": answer}
    data_url = "data:image/png;base64," + base64.b64encode(png((300, 300))).decode()

    def openai(id_: str, url: str, **extra: object) -> dict:
        user = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Find the cat."}]
        return {"id": id_, "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                **extra}

    swift_query = {"id": "query", "images": ["photos/cat.png"], "query": "<image>Find the cat.",
                   "response": f"[{answer}]"}  # a JSON list of boxes: the text, not turns
    swift_objects = {**_swift([30, 60, 240, 270]), "id": "swift-query", "query": "<image>Find the <ref-object>.",
                     "response": "<bbox>"}
    del swift_objects["messages"]
    history = {**swift_query, "id": "history", "history": [["<image>What is here?", "A cat."]]}
    wrapped = data_url[:40] + "\n" + data_url[40:]  # base64 over lines, as some encoders write it
    items = [conversational, standard, openai("path", "photos/cat.png"), openai("data", wrapped),
             openai("same", "photos/cat.png", images=["photos/cat.png", "photos/cat.png"]), swift_query, swift_objects,
             history]
    accepted, rejected = _run(tmp_path, items, bbox_2d_frame="pixels")
    assert {i: reason for i, (reason, _) in rejected.items()} == {"records:history": "multi_turn"}  # not its last turn
    names = ("trl", "texts", "path", "data", "same", "query", "swift-query")
    assert {r["id"]: r["objects"] for r in accepted} == {
        f"records:{name}": [{"ref": "cat", "box": [100, 200, 800, 900]}] for name in names
    }
    assert {r["id"]: r["question"] for r in accepted}["records:trl"] == "Find the cat."
