"""LaCoT's released data (the 250k SFT file and the 3k RL file) into records, rationale and answer kept apart.

Each item is llava-style ``{"id"?, "image", "conversations": [human, reason, gpt]}``: the question (with the
``<image>`` placeholder), the rationale in a turn of its own (LaCoT trains it as the ``Analyzer`` turn), and the
answer. The record's ``answer`` is the gpt turn; its ``rationale`` is the reasoning followed by ``Answer: <answer>``
(the record convention, docs/records.md), which ``vcot.grounding.prompts.split_rationale`` splits back into the two turns of
the ``rationale_turn`` layout. LaCoT's rationales are plain text without boxes: the records say
``needs_distillation`` so distill can ground them; RGFN can also train on them as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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


class LacotConverter:
    def __init__(self, *, images: str) -> None:
        self.images = images

    def convert(self, index: int, item: Any, source_file: str) -> Item:
        if not isinstance(item, dict):
            return Rejection("not_an_object", f"item is {type(item).__name__}", index, subset="lacot", raw=item)
        raw_id = item.get("id")
        record_id = f"lacot:{raw_id}" if isinstance(raw_id, (str, int)) and str(raw_id) else f"lacot:item{index}"
        image = item.get("image")
        subset = image.split("/", 1)[0].lower() if isinstance(image, str) and "/" in image else "lacot"

        def reject(reason: str, detail: str) -> Rejection:
            return Rejection(reason, detail, index, id=record_id, subset=subset, raw=item)

        turns = item.get("conversations")
        if not isinstance(turns, list) or len(turns) != 3 or not all(
            isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns
        ):
            return reject("bad_conversations", "conversations is not three {from, value} turns: human, reason, gpt")
        if turns[0].get("from") != "human" or turns[1].get("from") in ("human", "gpt"):
            return reject("bad_conversations", "the turns are not human, then the reasoning, then the answer")
        if not isinstance(image, str) or not image.strip():
            return reject("missing_image", "the item names no image")
        question, reasoning, answer = (clean_text(t["value"]) for t in turns)
        if not question:
            return reject("missing_question", "the human turn is empty")
        if not reasoning:
            return reject("missing_rationale", "the reasoning turn is empty")
        if not answer:
            return reject("missing_answer", "the gpt turn is empty")
        if has_bad_encoding(question, reasoning, answer, image):
            return reject("bad_encoding", "the item holds bytes that are not valid UTF-8")
        image_uri = storage.join(self.images, image)
        try:
            width, height = size_from_uri(image_uri)
        except ImageProblem as problem:
            return reject(problem.reason, problem.detail)
        return {
            "id": record_id,
            "source": "lacot",
            "subset": subset,
            "image": image_uri,
            "width": width,
            "height": height,
            "question": question,
            "answer": answer,
            "choices": None,
            "answer_index": None,
            "objects": [],
            "rationale": f"{reasoning} Answer: {answer}",
            "needs_distillation": True,
            "provenance": {
                "dataset": "lacot",
                "source_file": source_file,
                "source_index": index,
                "reason_role": turns[1].get("from"),
                "dedup_key": dedup_key(question, image),
            },
        }


def iter_items(input_uri: str, *, images: str | None, owns: Owns) -> Iterator[Item]:
    require_input(input_uri, "LaCoT file")
    converter = LacotConverter(images=images or storage.join(storage.parent(input_uri), "images"))
    source_file = input_uri.rsplit("/", 1)[-1]
    for index, item in owned(iter_json_items(input_uri), owns):
        if isinstance(item, BadLine):
            yield Rejection(item.reason, item.detail, index, subset="lacot", raw=item.raw)
        else:
            yield converter.convert(index, item, source_file)
