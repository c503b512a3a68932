"""A-OKVQA into records that need distillation (rationales, no boxes).

Input: one ``aokvqa_v1p0_<split>.json`` (a JSON array, streamed) or a folder holding them. Images are
COCO 2017: ``<images>/<split>2017/<image_id:012d>.jpg``. The record's rationale is A-OKVQA's own
(ungrounded) rationales ending with the answer, in one of two styles:

- ``plain``: ``"<r1> <r2> <r3> Answer: <answer>"``;
- ``step-by-step`` (seed 001): ``"Let me think step by step: <r1> <r2> <r3> Answer: <answer>"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from vcot.convert.common import (
    BadLine,
    Item,
    Owns,
    Rejection,
    clean_text,
    dedup_key,
    has_bad_encoding,
    iter_json_items,
    owned,
    require_input,
)
from vcot.convert.images import ImageProblem, size_from_uri
from vcot.io import storage

RationaleStyle = Literal["plain", "step-by-step"]


def rationale_text(rationales: list[str], answer: str, style: RationaleStyle) -> str:
    """A-OKVQA's rationales joined and ending with the answer.

    >>> rationale_text(["It is raining.", "People carry umbrellas."], "umbrella", "step-by-step")
    'Let me think step by step: It is raining. People carry umbrellas. Answer: umbrella'
    """
    body = " ".join(r.strip() for r in rationales if r.strip())
    prefix = "Let me think step by step: " if style == "step-by-step" else ""
    return f"{prefix}{body} Answer: {answer}".strip()


def input_files(uri: str) -> list[str]:
    """``uri`` itself when it is a file, else the ``aokvqa_*.json`` files under it (sorted)."""
    if uri.endswith((".json", ".jsonl")):
        require_input(uri, "A-OKVQA file")
        return [uri]
    files = [u for u in storage.list_uris(uri, suffix=".json") if u.rsplit("/", 1)[-1].startswith("aokvqa")]
    if not files:
        require_input(storage.join(uri, "aokvqa_v1p0_train.json"), "A-OKVQA file")
    return files


class AOKVQAConverter:
    def __init__(self, *, images: str, style: RationaleStyle) -> None:
        self.images = images
        self.style = style

    def convert(self, index: int, item: Any, source_file: str) -> Item:
        if not isinstance(item, dict):
            return Rejection("not_an_object", f"item is {type(item).__name__}", index, subset="aokvqa", raw=item)
        question_id = item.get("question_id")
        record_id = (
            f"aokvqa:{question_id}"
            if isinstance(question_id, (str, int)) and str(question_id)
            else f"aokvqa:item{index}"
        )

        def reject(reason: str, detail: str) -> Rejection:
            return Rejection(reason, detail, index, id=record_id, subset="aokvqa", raw=item)

        question = clean_text(item.get("question"))
        choices = item.get("choices")
        choice_index = item.get("correct_choice_idx")
        rationales = item.get("rationales") or []
        image_id = item.get("image_id")
        split = item.get("split") if isinstance(item.get("split"), str) else "train"
        if not question:
            return reject("missing_question", "no question text")
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            return reject("bad_choices", "choices is not a non-empty list of strings")
        if not isinstance(choice_index, int) or isinstance(choice_index, bool) or not 0 <= choice_index < len(choices):
            return reject("missing_answer", f"correct_choice_idx {choice_index!r} is not an index into the choices")
        if not isinstance(rationales, list) or not all(isinstance(r, str) for r in rationales):
            return reject("bad_rationales", "rationales is not a list of strings")
        if not isinstance(image_id, int) or isinstance(image_id, bool) or image_id < 0:
            return reject("missing_image", f"image_id {image_id!r} is not a COCO image id")
        if has_bad_encoding(question, *choices, *rationales):
            return reject("bad_encoding", "the item holds bytes that are not valid UTF-8")
        relative_path = f"{split}2017/{image_id:012d}.jpg"
        image_uri = storage.join(self.images, relative_path)
        try:
            width, height = size_from_uri(image_uri)
        except ImageProblem as problem:
            return reject(problem.reason, problem.detail)
        answer = choices[choice_index]
        return {
            "id": record_id,
            "source": "aokvqa",
            "subset": "aokvqa",
            "image": image_uri,
            "width": width,
            "height": height,
            "question": question,
            "answer": answer,
            "choices": list(choices),
            "answer_index": choice_index,
            "objects": [],
            "rationale": rationale_text(rationales, answer, self.style),
            "needs_distillation": True,
            "provenance": {
                "dataset": "aokvqa",
                "source_file": source_file,
                "source_index": index,
                "source_split": split,
                "image_id": image_id,
                "direct_answers": item.get("direct_answers"),
                "dedup_key": dedup_key(question, relative_path),
            },
        }


def iter_items(input_uri: str, *, images: str | None, owns: Owns, style: RationaleStyle = "plain") -> Iterator[Item]:
    files = input_files(input_uri)
    folder = input_uri if not input_uri.endswith((".json", ".jsonl")) else storage.parent(input_uri)
    converter = AOKVQAConverter(images=images or storage.join(folder, "images"), style=style)
    items = ((file_uri, item) for file_uri in files for item in iter_json_items(file_uri))
    for index, (file_uri, item) in owned(items, owns):
        if isinstance(item, BadLine):
            yield Rejection(item.reason, item.detail, index, subset="aokvqa", raw=item.raw)
        else:
            yield converter.convert(index, item, file_uri.rsplit("/", 1)[-1])
