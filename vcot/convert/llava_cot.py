"""LLaVA-CoT-100k into records that need distillation, without the items A-OKVQA/ScienceQA already gave.

Each item is ``{id, image, conversations: [human, gpt]}``; the gpt answer has ``<SUMMARY>``,
``<CAPTION>``, ``<REASONING>`` and ``<CONCLUSION>`` sections. The conclusion is the answer, the
reasoning (ungrounded) becomes the rationale, summary and caption stay in the provenance.

Duplicates: LLaVA-CoT contains A-OKVQA and ScienceQA items. The converter learns what was converted
from the *committed outputs* of those runs (``--dedup-against URI[,URI]``): every record there carries
``provenance.dedup_key`` (normalized question + image identity, :func:`vcot.convert.common.dedup_key`),
and an item with the same key is rejected as ``duplicate``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
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
from vcot.io import manifest, storage
from vcot.log import get_logger

log = get_logger(__name__)

SECTIONS = ("SUMMARY", "CAPTION", "REASONING", "CONCLUSION")
_SECTION_RE = {name: re.compile(rf"<{name}>(.*?)</{name}>", re.DOTALL) for name in SECTIONS}


def parse_sections(text: str) -> dict[str, str]:
    """The sections found in a LLaVA-CoT answer (stripped), by name.

    >>> parse_sections("<SUMMARY>s</SUMMARY><CONCLUSION> B </CONCLUSION>")
    {'SUMMARY': 's', 'CONCLUSION': 'B'}
    """
    found: dict[str, str] = {}
    for name, pattern in _SECTION_RE.items():
        match = pattern.search(text)
        if match:
            found[name] = match.group(1).strip()
    return found


def load_dedup_keys(outputs: Iterable[str]) -> set[str]:
    """Every ``provenance.dedup_key`` of the accepted records of committed convert outputs."""
    keys: set[str] = set()
    for output in outputs:
        for record in manifest.committed_records(output, expect_stage=manifest.RECORD_STAGES):
            key = (record.get("provenance") or {}).get("dedup_key")
            if key:
                keys.add(key)
    log.info("dedup_keys", outputs=list(outputs), keys=len(keys))
    return keys


def is_duplicate(key: str, known: set[str]) -> bool:
    """Same question and image identity, or the same question where the known record had no image name."""
    return key in known or f"{key.rsplit('|', 1)[0]}|" in known


class LlavaCotConverter:
    def __init__(self, *, images: str, known: set[str]) -> None:
        self.images = images
        self.known = known

    def convert(self, index: int, item: Any, source_file: str) -> Item:
        if not isinstance(item, dict):
            return Rejection("not_an_object", f"item is {type(item).__name__}", index, subset="llava-cot", raw=item)
        raw_id = item.get("id")
        record_id = (
            f"llava-cot:{raw_id}" if isinstance(raw_id, (str, int)) and str(raw_id) else f"llava-cot:item{index}"
        )
        image = item.get("image")
        subset = image.split("/", 1)[0].lower() if isinstance(image, str) and "/" in image else "llava-cot"

        def reject(reason: str, detail: str) -> Rejection:
            return Rejection(reason, detail, index, id=record_id, subset=subset, raw=item)

        conversations = item.get("conversations")
        if not isinstance(conversations, list) or not all(
            isinstance(t, dict) and isinstance(t.get("value"), str) for t in conversations
        ):
            return reject("bad_conversations", "conversations is not a list of {from, value} turns")
        human = [t["value"] for t in conversations if t.get("from") == "human"]
        gpt = [t["value"] for t in conversations if t.get("from") != "human"]
        if not isinstance(image, str) or not image.strip():
            return reject("missing_image", "the item names no image")
        if not human or not clean_text(human[0]):
            return reject("missing_question", "no human turn")
        if not gpt:
            return reject("missing_answer", "no gpt turn")
        question = clean_text(human[0])
        sections = parse_sections(gpt[0])
        if "CONCLUSION" not in sections or not sections["CONCLUSION"]:
            return reject("missing_conclusion", "the answer has no <CONCLUSION> section")
        if "REASONING" not in sections:
            return reject("missing_reasoning", "the answer has no <REASONING> section")
        if has_bad_encoding(question, gpt[0], image):
            return reject("bad_encoding", "the item holds bytes that are not valid UTF-8")
        key = dedup_key(question, image)
        if is_duplicate(key, self.known):
            return reject("duplicate", "already converted from A-OKVQA/ScienceQA (--dedup-against)")
        image_uri = storage.join(self.images, image)
        try:
            width, height = size_from_uri(image_uri)
        except ImageProblem as problem:
            return reject(problem.reason, problem.detail)
        answer = sections["CONCLUSION"]
        return {
            "id": record_id,
            "source": "llava-cot",
            "subset": subset,
            "image": image_uri,
            "width": width,
            "height": height,
            "question": question,
            "answer": answer,
            "choices": None,
            "answer_index": None,
            "objects": [],
            "rationale": f"{sections['REASONING']} Answer: {answer}",
            "needs_distillation": True,
            "provenance": {
                "dataset": "llava-cot",
                "source_file": source_file,
                "source_index": index,
                "summary": sections.get("SUMMARY"),
                "caption": sections.get("CAPTION"),
                "dedup_key": key,
            },
        }


def iter_items(input_uri: str, *, images: str | None, owns: Owns, dedup_against: list[str]) -> Iterator[Item]:
    require_input(input_uri, "LLaVA-CoT file")
    known = load_dedup_keys(dedup_against)
    converter = LlavaCotConverter(images=images or storage.join(storage.parent(input_uri), "images"), known=known)
    source_file = input_uri.rsplit("/", 1)[-1]
    for index, item in owned(iter_json_items(input_uri), owns):
        if isinstance(item, BadLine):
            yield Rejection(item.reason, item.detail, index, subset="llava-cot", raw=item.raw)
        else:
            yield converter.convert(index, item, source_file)
