"""ScienceQA (both layouts), A-OKVQA and LLaVA-CoT: kept for distillation, deduplicated, bad items rejected."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from vcot.convert import ConvertConfig, convert
from vcot.convert.common import dedup_key
from vcot.io import manifest, shards


def _png(width: int, height: int, color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def _records(output: str, prefixes: tuple[str, ...] = ("train/", "val/")) -> list[dict]:
    return [r for p in prefixes for uri in manifest.committed_files(output, p) for r in shards.read_jsonl(uri)]


def _problem(question: str, image: str | None, split: str = "train") -> dict:
    return {
        "question": question,
        "choices": ["north", "south"],
        "answer": 1,
        "hint": "Look at the map.",
        "image": image,
        "task": "closed choice",
        "grade": "grade3",
        "subject": "social science",
        "topic": "geography",
        "category": "Geography",
        "skill": "Read a map",
        "lecture": "Maps.",
        "solution": "The arrow points down.",
        "split": split,
    }


@pytest.fixture
def scienceqa_original(tmp_path: Path) -> Path:
    root = tmp_path / "sqa"
    problems = {
        "1": _problem("Which direction is the arrow?", "image.png"),
        "2": _problem("Which is colder?", None),  # text-only: rejected no_image
        "3": _problem("Which way is up?", "image.png", "val"),  # its image is missing
        "4": {"question": "broken", "choices": "nope", "answer": 0, "image": None},
    }
    (root / "images" / "train" / "1").mkdir(parents=True)
    (root / "images" / "train" / "1" / "image.png").write_bytes(_png(40, 30))
    (root / "problems.json").write_text(json.dumps(problems))
    return root


def test_scienceqa_original_layout(scienceqa_original: Path, tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    convert(ConvertConfig(source="scienceqa", input=str(scienceqa_original), output=output))
    [record] = _records(output)
    assert record["id"] == "scienceqa:1" and record["needs_distillation"] is True and record["objects"] == []
    assert (record["width"], record["height"]) == (40, 30) and record["image"].endswith("images/train/1/image.png")
    assert record["answer"] == "south" and record["answer_index"] == 1 and record["choices"] == ["north", "south"]
    assert record["question"] == "Which direction is the arrow?\nContext: Look at the map."
    assert record["rationale"] == "The arrow points down. Answer: south"
    assert record["provenance"]["dedup_key"] == "which direction is the arrow|1"
    reasons = sorted(r["reason"] for r in _records(output, ("rejected/",)))
    assert reasons == ["bad_choices", "missing_image", "no_image"]


def test_scienceqa_parquet_layout_writes_images_content_addressed(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    image = _png(24, 16)
    rows = [
        {**_problem("Which direction is the arrow?", None), "image": {"bytes": image, "path": None}},
        {**_problem("Same picture again?", None), "image": {"bytes": image, "path": None}},
        {**_problem("No picture?", None), "image": None},
        {**_problem("Broken picture?", None), "image": {"bytes": b"garbage", "path": None}},
    ]
    for row in rows:
        row.pop("split")
    folder = tmp_path / "hf" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "train-00000-of-00001.parquet")
    output = str(tmp_path / "out")
    convert(ConvertConfig(source="scienceqa", input=str(tmp_path / "hf"), output=output))
    records = sorted(_records(output), key=lambda r: r["id"])
    digest = hashlib.sha256(image).hexdigest()
    assert [r["id"] for r in records] == ["scienceqa:train:0", "scienceqa:train:1"]
    assert {r["image"] for r in records} == {f"{output}/images/{digest[:2]}/{digest}.png"}
    assert Path(records[0]["image"]).read_bytes() == image and (records[0]["width"], records[0]["height"]) == (24, 16)
    assert sorted(r["reason"] for r in _records(output, ("rejected/",))) == ["no_image", "unreadable_image"]


def test_scienceqa_parquet_ids_count_rows_within_their_split(tmp_path: Path) -> None:
    """A row's id is its place in its split (the docs' promise): the same problem from the folder and from its
    split's file alone, even though the test split's file sorts first; a split in two files counts on."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    folder = tmp_path / "data"
    folder.mkdir()
    for name, questions in {"test-00000-of-00001": ["t0?", "t1?", "t2?"], "train-00000-of-00002": ["a0?", "a1?"],
                            "train-00001-of-00002": ["a2?"], "validation-00000-of-00001": ["v0?"]}.items():  # fmt: skip
        rows = [{**_problem(q, None), "image": {"bytes": _png(24 + i, 16), "path": None}} for i, q in enumerate(questions)]
        pq.write_table(pa.Table.from_pylist([{k: v for k, v in row.items() if k != "split"} for row in rows]),
                       folder / f"{name}.parquet")  # fmt: skip
    convert(ConvertConfig(source="scienceqa", input=str(folder), output=str(tmp_path / "all"), val_fraction=0.5))
    ids = {r["question"].split("\n")[0]: r["id"] for r in _records(str(tmp_path / "all"))}
    assert ids == {"t0?": "scienceqa:test:0", "t1?": "scienceqa:test:1", "t2?": "scienceqa:test:2",
                   "a0?": "scienceqa:train:0", "a1?": "scienceqa:train:1", "a2?": "scienceqa:train:2",
                   "v0?": "scienceqa:val:0"}  # fmt: skip
    alone = str(tmp_path / "train-only")
    convert(ConvertConfig(source="scienceqa", input=str(folder / "train-00000-of-00002.parquet"), output=alone,
                          val_fraction=0.5))  # fmt: skip
    assert {r["question"].split("\n")[0]: r["id"] for r in _records(alone)} == {
        "a0?": "scienceqa:train:0", "a1?": "scienceqa:train:1"}


@pytest.fixture
def aokvqa_input(tmp_path: Path) -> Path:
    root = tmp_path / "aokvqa"
    (root / "images" / "val2017").mkdir(parents=True)
    (root / "images" / "val2017" / "000000000042.jpg").write_bytes(_png(64, 48))
    items = [
        {
            "split": "val",
            "image_id": 42,
            "question_id": "q1",
            "question": "What is the man holding?",
            "choices": ["bat", "kite", "cup", "phone"],
            "correct_choice_idx": 1,
            "direct_answers": ["kite"] * 10,
            "difficult_direct_answer": False,
            "rationales": ["It flies.", "It has a string."],
        },
        {
            "split": "val",
            "image_id": 7,
            "question_id": "q2",
            "question": "Missing image?",
            "choices": ["a", "b"],
            "correct_choice_idx": 0,
            "rationales": [],
        },
        {
            "split": "test",
            "image_id": 42,
            "question_id": "q3",
            "question": "No answer in test?",
            "choices": ["a", "b"],
            "rationales": [],
        },
    ]
    (root / "aokvqa_v1p0_val.json").write_text(json.dumps(items))
    return root


@pytest.mark.parametrize(("style", "prefix"), [("plain", ""), ("step-by-step", "Let me think step by step: ")])
def test_aokvqa_rationales_in_both_styles(aokvqa_input: Path, tmp_path: Path, style: str, prefix: str) -> None:
    output = str(tmp_path / style)
    convert(ConvertConfig(source="aokvqa", input=str(aokvqa_input), output=output, rationale_style=style))
    [record] = _records(output)
    assert record["id"] == "aokvqa:q1" and record["needs_distillation"] and record["answer"] == "kite"
    assert record["rationale"] == f"{prefix}It flies. It has a string. Answer: kite"
    assert (record["width"], record["height"]) == (64, 48)
    assert sorted(r["reason"] for r in _records(output, ("rejected/",))) == ["missing_answer", "missing_image"]


def _llava(item_id: str, image: str, question: str, conclusion: str = "kite") -> dict:
    answer = (
        f"<SUMMARY>I will look.</SUMMARY><CAPTION>A man in a park.</CAPTION>"
        f"<REASONING>The object in the sky is a kite.</REASONING><CONCLUSION>{conclusion}</CONCLUSION>"
    )
    return {
        "id": item_id,
        "image": image,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
    }


def test_llava_cot_is_deduplicated_against_committed_aokvqa_and_scienceqa(
    aokvqa_input: Path, scienceqa_original: Path, tmp_path: Path
) -> None:
    aokvqa_out, sqa_out = str(tmp_path / "aokvqa-out"), str(tmp_path / "sqa-out")
    convert(ConvertConfig(source="aokvqa", input=str(aokvqa_input), output=aokvqa_out))
    convert(ConvertConfig(source="scienceqa", input=str(scienceqa_original), output=sqa_out))
    root = tmp_path / "llava"
    for path, size in (
        ("coco/val2017/000000000042.jpg", (64, 48)),
        ("sqa/train/1/image.png", (40, 30)),
        ("ai2d/abc.png", (30, 50)),
    ):
        (root / "images" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / path).write_bytes(_png(*size))
    items = [
        _llava(
            "a", "coco/val2017/000000000042.jpg", "What is the man holding?\nOptions: A. bat B. kite"
        ),  # A-OKVQA duplicate
        _llava("b", "sqa/train/1/image.png", "<image>\nWhich direction is the arrow?"),  # ScienceQA duplicate
        _llava("c", "ai2d/abc.png", "Which part is the leaf?", "B"),
        _llava("d", "coco/val2017/000000000042.jpg", "What color is the kite?"),  # same image, new question
        {
            "id": "e",
            "image": "ai2d/abc.png",
            "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "no sections"}],
        },
    ]
    data = root / "llava_cot.json"
    data.write_text(json.dumps(items))
    output = str(tmp_path / "out")
    convert(ConvertConfig(source="llava-cot", input=str(data), output=output, dedup_against=[aokvqa_out, sqa_out]))
    records = {r["id"]: r for r in _records(output)}
    assert sorted(records) == ["llava-cot:c", "llava-cot:d"]
    assert records["llava-cot:c"]["rationale"] == "The object in the sky is a kite. Answer: B"
    assert (
        records["llava-cot:c"]["provenance"]["caption"] == "A man in a park."
        and records["llava-cot:c"]["subset"] == "ai2d"
    )
    rejected = {r["id"]: r["reason"] for r in _records(output, ("rejected/",))}
    assert rejected == {"llava-cot:a": "duplicate", "llava-cot:b": "duplicate", "llava-cot:e": "missing_conclusion"}
    # Without --dedup-against nothing is dropped as a duplicate.
    plain = str(tmp_path / "plain")
    convert(ConvertConfig(source="llava-cot", input=str(data), output=plain))
    assert len(_records(plain)) == 4


def test_dedup_key_matches_across_sources() -> None:
    assert dedup_key("What is the man holding?", "train2017/000000000042.jpg") == dedup_key(
        "<image>\nWhat is the man holding?\nOptions: A. bat", "coco/train2017/000000000042.jpg"
    )


def test_missing_inputs_are_clear_errors(tmp_path: Path) -> None:
    from vcot.errors import VcotError

    for source in ("scienceqa", "aokvqa", "llava-cot"):
        with pytest.raises(VcotError, match="does not exist"):
            convert(
                ConvertConfig(source=source, input=str(tmp_path / "none" / "x.json"), output=str(tmp_path / source))
            )


def _lacot(item_id: str, image: str, reasoning: str, answer: str, reason_role: str = "reason") -> dict:
    return {
        "id": item_id,
        "image": image,
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is the man holding?"},
            {"from": reason_role, "value": reasoning},
            {"from": "gpt", "value": answer},
        ],
    }


def test_lacot_keeps_rationale_and_answer_apart_and_splits_back_into_two_turns(tmp_path: Path) -> None:
    from vcot.grounding.prompts import build_messages

    root = tmp_path / "lacot"
    (root / "images" / "coco").mkdir(parents=True)
    (root / "images" / "coco" / "1.png").write_bytes(_png(64, 48))
    items = [
        _lacot("a", "coco/1.png", "The man raises a bat over his shoulder.", "bat"),
        _lacot("b", "coco/1.png", "", "bat"),  # no reasoning
        {"id": "c", "image": "coco/1.png", "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "x"}]},
    ]
    data = root / "lacot_rl_3k.json"
    data.write_text(json.dumps(items))
    output = str(tmp_path / "out")
    convert(ConvertConfig(source="lacot", input=str(data), output=output))
    records = {r["id"]: r for r in _records(output)}
    assert list(records) == ["lacot:a"]
    record = records["lacot:a"]
    assert (record["question"], record["answer"], record["width"], record["height"]) == ("What is the man holding?", "bat", 64, 48)
    assert record["rationale"] == "The man raises a bat over his shoulder. Answer: bat"
    assert record["provenance"]["reason_role"] == "reason" and record["needs_distillation"]
    rejected = {r["id"]: r["reason"] for r in _records(output, ("rejected/",))}
    assert rejected == {"lacot:b": "missing_rationale", "lacot:c": "bad_conversations"}
    turns = build_messages(record, _analyzer_format())
    assert [m["role"] for m in turns] == ["user", "Analyzer", "assistant"]
    assert turns[1]["content"][0]["text"] == "The man raises a bat over his shoulder."
    assert turns[2]["content"][0]["text"] == "Answer: bat"


def _analyzer_format():  # type: ignore[no-untyped-def]
    import dataclasses

    from vcot.grounding.model_format import ModelFormat

    return dataclasses.replace(ModelFormat.for_family(), layout="rationale_turn")
