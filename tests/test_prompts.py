"""Chats built from records: the one prompt format tokenize and evaluate share."""

from __future__ import annotations

import pytest

from vcot.boxes import parse_grounded, smart_resize
from vcot.prompts import build_messages, rationale_in_coords

RECORD = {
    "id": "t:1",
    "image": "s3://bucket/img.png",
    "width": 640,
    "height": 480,
    "question": "What color is the gear?",
    "choices": ["red", "blue"],
    "answer": "red",
    "rationale": "The <ref>gear</ref><box>[100, 200, 300, 400]</box> is red. Answer: red",
}


def test_multimodal_chat_has_image_question_choices_and_rationale() -> None:
    user, assistant = build_messages(RECORD, mode="multimodal")
    assert user["content"][0] == {"type": "image", "image": "s3://bucket/img.png"}
    text = user["content"][1]["text"]
    assert text.startswith("What color is the gear?\nOptions:\n(A) red\n(B) blue\n")
    assert assistant["content"] == [{"type": "text", "text": RECORD["rationale"]}]


def test_text_mode_has_no_image_and_evaluate_gets_no_answer() -> None:
    messages = build_messages(RECORD, mode="text", with_answer=False)
    assert len(messages) == 1
    assert [c["type"] for c in messages[0]["content"]] == ["text"]


def test_qwen25_absolute_boxes_are_pixels_of_the_resized_image() -> None:
    text = rationale_in_coords(RECORD, "qwen2.5-absolute", min_pixels=56 * 56, max_pixels=112 * 112)
    resized_h, resized_w = smart_resize(480, 640, min_pixels=56 * 56, max_pixels=112 * 112)
    box = parse_grounded(text).boxes[0].box
    assert box == (
        round(100 * resized_w / 1000),
        round(200 * resized_h / 1000),
        round(300 * resized_w / 1000),
        round(400 * resized_h / 1000),
    )
    assert text.endswith("is red. Answer: red")


def test_unknown_mode_or_coords_is_refused() -> None:
    with pytest.raises(ValueError, match="mode"):
        build_messages(RECORD, mode="video")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="coords"):
        build_messages(RECORD, mode="text", coords="pixels")  # type: ignore[arg-type]
