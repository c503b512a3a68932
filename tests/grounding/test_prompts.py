"""Chats built from records: the one prompt format tokenize and evaluate share."""

from __future__ import annotations

from vcot.grounding.boxes import parse_grounded, smart_resize
from vcot.grounding.model_format import HOUSE, ModelFormat
from vcot.grounding.prompts import build_messages

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
    user, assistant = build_messages(RECORD)
    assert user["content"][0] == {"type": "image", "image": "s3://bucket/img.png"}
    text = user["content"][1]["text"]
    assert text.startswith("What color is the gear?\nOptions:\n(A) red\n(B) blue\n")
    assert assistant["content"] == [{"type": "text", "text": RECORD["rationale"]}]


def test_text_mode_has_no_image_and_evaluate_gets_no_answer() -> None:
    messages = build_messages(RECORD, ModelFormat.for_family(mode="text"), with_answer=False)
    assert len(messages) == 1
    assert [c["type"] for c in messages[0]["content"]] == ["text"]


def test_qwen25_absolute_boxes_are_pixels_of_the_resized_image() -> None:
    fmt = ModelFormat.for_family(coords="qwen2.5-absolute", min_pixels=56 * 56, max_pixels=112 * 112)
    text = build_messages(RECORD, fmt)[1]["content"][0]["text"]
    resized_h, resized_w = smart_resize(480, 640, min_pixels=56 * 56, max_pixels=112 * 112)
    box = parse_grounded(text).boxes[0].box
    assert box == (
        round(100 * resized_w / 1000),
        round(200 * resized_h / 1000),
        round(300 * resized_w / 1000),
        round(400 * resized_h / 1000),
    )
    assert text.endswith("is red. Answer: red")


def test_the_instruction_names_the_formats_frame_and_syntax() -> None:
    assert "integers 0-1000" in build_messages(RECORD)[0]["content"][1]["text"]
    native = ModelFormat.for_family("qwen3-vl", box_syntax="json", coords="qwen2.5-absolute")
    text = build_messages(RECORD, native)[0]["content"][1]["text"]
    assert '{"bbox_2d": [x1, y1, x2, y2], "label": "label"}' in text and "absolute pixels" in text
    assert HOUSE.instruction() in build_messages(RECORD)[0]["content"][1]["text"]


def test_a_box_in_the_question_is_shown_in_the_models_frame_and_syntax_as_the_rationales() -> None:
    record = {**RECORD, "question": "What is left of <box>[500, 200, 700, 400]</box>?"}
    fmt = ModelFormat.for_family(coords="qwen2.5-absolute", box_syntax="json", min_pixels=56 * 56, max_pixels=112 * 112)
    user, assistant = build_messages(record, fmt)
    question = user["content"][1]["text"].split("\n")[0]
    width, height = fmt.vision.resized(640, 480)
    asked = parse_grounded(question, "json", upper=max(width, height)).boxes
    answered = parse_grounded(assistant["content"][0]["text"], "json", upper=max(width, height)).boxes
    assert "<box>" not in question and len(asked) == len(answered) == 1
    assert asked[0].box == tuple(fmt.to_model_box((500, 200, 700, 400), 640, 480))
    assert build_messages(record)[0]["content"][1]["text"].startswith(record["question"])  # house: as written
    spaced = {**record, "question": "What is left of <box> [500, 200, 700, 400] </box>?"}  # as every reader reads it
    assert build_messages(spaced, fmt)[0]["content"][1]["text"].split("\n")[0] == question
    typed = build_messages({"image": "upload", "question": record["question"]}, fmt, with_answer=False)  # the demo's
    assert typed[0]["content"][1]["text"].startswith(record["question"])  # no record size: as typed


def test_a_box_template_the_question_quotes_stays_as_written() -> None:
    """Users copy the instruction's own pattern into questions: its letters are no coordinates."""
    record = {**RECORD, "question": "Answer as <ref>name</ref><box>[x1, y1, x2, y2]</box>."}
    fmt = ModelFormat.for_family(coords="qwen2.5-absolute", box_syntax="json", min_pixels=56 * 56, max_pixels=112 * 112)
    assert build_messages(record, fmt)[0]["content"][1]["text"].startswith(record["question"])
