"""Small committed record sets with real images, for the evaluate tests (imported by their conftest and tests)."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageDraw

from vcot.io import manifest, shards, storage


def draw_image(width: int, height: int, boxes: list[list[int]], color: tuple[int, int, int]) -> bytes:
    """A PNG with a filled rectangle at each house box."""
    image = Image.new("RGB", (width, height), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    for x1, y1, x2, y2 in boxes:
        draw.rectangle([x1 * width / 1000, y1 * height / 1000, x2 * width / 1000, y2 * height / 1000], fill=color)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_record(root: str, index: int, subset: str, boxes: list[list[int]], answer: str, **extra: Any) -> dict[str, Any]:
    width, height = extra.pop("width", 160), extra.pop("height", 120)
    image = storage.join(root, "images", f"{index}.png")
    storage.write_bytes(image, draw_image(width, height, boxes, ((50 * index) % 255, 90, 160)))
    objects = [{"ref": f"object {n}", "box": box} for n, box in enumerate(boxes)]
    rationale = " ".join(f"<ref>{o['ref']}</ref><box>{o['box']}</box>" for o in objects) + f" Answer: {answer}"
    return {
        "id": f"test:{subset}:{index}",
        "source": "synthetic",
        "subset": subset,
        "split": "val",
        "image": image,
        "width": width,
        "height": height,
        "question": f"What is shown in picture {index}?",
        "answer": answer,
        "choices": None,
        "answer_index": None,
        "objects": objects,
        "rationale": rationale,
        **extra,
    }


def commit_records(root: str, records: list[dict[str, Any]], train: list[dict[str, Any]] = ()) -> str:
    """Write ``records`` as the committed val split of ``root/data`` (and ``train`` as its train split)."""
    data = storage.join(root, "data")
    files = [shards.write_jsonl(data, "val/00000-of-00001.jsonl.gz", records)]
    if train:
        files.append(shards.write_jsonl(data, "train/00000-of-00001.jsonl.gz", list(train)))
    manifest.commit(data, stage="convert", files=files, config={})
    return data


KNOWN_RECORDS = [
    # index, subset, ground-truth boxes, answer, extra fields
    (0, "gqa", [[100, 100, 300, 300]], "red", {}),
    (1, "gqa", [[100, 100, 300, 300]], "blue", {}),
    (2, "gqa", [[0, 0, 500, 500], [500, 500, 1000, 1000]], "2", {}),
    (3, "docvqa", [[200, 200, 400, 400]], "total", {}),
    (4, "docvqa", [[0, 0, 100, 100]], "yes", {"choices": ["yes", "no"], "answer_index": 0}),
    (5, "docvqa", [[0, 0, 100, 100]], "no", {}),
]
