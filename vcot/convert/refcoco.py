"""RefCOCO, RefCOCO+ and RefCOCOg (referring-expression grounding) into records, one per expression.

The layout is the Parquet one lmms-eval reads (its ``refcoco*/_default_template_bbox_rec_yaml`` and ``utils_rec.py``;
the Hugging Face datasets ``lmms-lab/RefCOCO``, ``RefCOCOplus``, ``RefCOCOg``): files named by split (``val-*``,
``test-*``, ``testA-*``, ``testB-*``), one row per annotated object with

- ``question_id``, ``image`` (``{"bytes": ..., "path": ...}``), ``file_name``;
- ``answer``: the referring expressions of the object (a list; lmms-eval asks each one separately);
- ``bbox``: the object's box ``[x, y, width, height]`` in pixels of the image (COCO's), ``iscrowd``, ``segmentation``.

Each expression becomes a record: the question asks for it, the answer and the object's ``ref`` are the expression,
the object is the box (0-1000), and the subset is ``<benchmark>_<split>`` (``RefCOCO_val``, ... : the eight splits the
papers report). Acc@0.5 of the first box read once in the model's frame is the score
(``first_box_acc_at_50``); evaluate reports the best-of-two reading beside it. The benchmark's name is
``--benchmark-name``, else the input folder's name (``RefCOCO``, ``RefCOCOplus``, ``RefCOCOg``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from vcot.convert.common import (
    Item,
    Owns,
    Rejection,
    clean_text,
    files_with_suffix,
    iter_parquet_rows,
    owned,
    require_input,
)
from vcot.convert.images import ImageProblem, size_from_bytes, store_content_addressed
from vcot.grounding.boxes import format_box, pixel_box_to_house
from vcot.io import storage

SOURCE = "refcoco"
SPLITS = ("testA", "testB", "test", "val", "train")
"""Split names a file's name may start with (longest first: ``testA`` is not ``test``)."""
QUESTION = "Locate {expression} in the image."


def split_of(file_uri: str) -> str:
    """The split a file holds, from its name (``val-00000-of-00002.parquet`` -> ``val``).

    >>> split_of("s3://b/RefCOCO/data/testA-00000-of-00001.parquet"), split_of("x/test-1.parquet")
    ('testA', 'test')
    >>> split_of("x/trainval-00000.parquet")
    'trainval'
    """
    name = file_uri.rsplit("/", 1)[-1]
    found = re.match(rf"({'|'.join(SPLITS)})(?=[-_.])", name)
    return found.group(1) if found else name.split("-", 1)[0].removesuffix(".parquet")


def house_box(bbox: Any, width: int, height: int) -> list[int] | str:
    """COCO's ``[x, y, w, h]`` pixel box as a house box, or why it cannot be one (COCO's boxes overrun the image by
    rounding: half a pixel is allowed).

    >>> house_box([10, 20, 90, 30], 200, 100), house_box([150, 0, 90, 10], 200, 100)
    ([50, 200, 500, 500], 'box_outside_image')
    >>> house_box([1, 2, None, 4], 200, 100), house_box([1, 2, float("nan"), 4], 200, 100), house_box([9, 9, -5, 4], 200, 100)
    ('missing_box', 'not_finite_box', 'inverted_box')
    """
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        return "missing_box"
    x, y, w, h = bbox
    box = pixel_box_to_house((x, y, x + w, y + h), width, height)
    return box if isinstance(box, str) else list(box)


def row_records(row: dict[str, Any], position: int, split: str, benchmark: str, images: str) -> Iterator[Item]:
    """The records of one annotated object: one per referring expression (or one rejection)."""
    qid = str(row.get("question_id") or position)
    subset = f"{benchmark}_{split}"
    raw = {k: v for k, v in row.items() if k not in ("image", "segmentation")}
    image = row.get("image")
    data = image.get("bytes") if isinstance(image, dict) else None
    try:
        if not data:
            raise ImageProblem("missing_image", "the row has no image bytes")
        width, height = size_from_bytes(data)
    except ImageProblem as problem:
        yield Rejection(problem.reason, problem.detail, position, id=f"{benchmark}:{split}:{qid}", subset=subset,
                        raw=raw)  # fmt: skip
        return
    box = house_box(row.get("bbox"), width, height)
    expressions = row.get("answer")
    expressions = [expressions] if isinstance(expressions, str) else list(expressions or [])
    expressions = [clean_text(e) for e in expressions if clean_text(e)]
    if isinstance(box, str) or not expressions:
        reason = box if isinstance(box, str) else "missing_answer"
        yield Rejection(reason, f"bbox {row.get('bbox')!r} on {width}x{height}, {len(expressions)} expressions",
                        position, id=f"{benchmark}:{split}:{qid}", subset=subset, raw=raw)  # fmt: skip
        return
    uri = store_content_addressed(data, images)
    for number, expression in enumerate(expressions):
        yield {
            "id": f"{benchmark}:{split}:{qid}:{number}",
            "source": SOURCE,
            "subset": subset,
            "image": uri,
            "width": width,
            "height": height,
            "question": QUESTION.format(expression=expression),
            "answer": expression,
            "choices": None,
            "answer_index": None,
            "objects": [{"ref": expression, "box": box}],
            "rationale": f"<ref>{expression}</ref><box>{format_box(box)}</box> Answer: {expression}",
            "needs_distillation": False,
            "provenance": {"dataset": SOURCE, "benchmark": benchmark, "source_split": split, "source_index": position,
                           "question_id": qid, "file_name": row.get("file_name"), "box_source": "bbox"},  # fmt: skip
        }


def dataset_name(input_uri: str) -> str:
    """The dataset's name from where it lies: the innermost folder that is not the Hugging Face layout's ``data/``.

    >>> dataset_name("s3://b/raw/RefCOCOplus/data"), dataset_name("/raw/RefCOCOg/data/val-0.parquet")
    ('RefCOCOplus', 'RefCOCOg')
    >>> dataset_name("/hf/hub/datasets--lmms-lab--RefCOCO/snapshots/0a1b2c3d/data")
    'RefCOCO'
    """
    parts = [p for p in input_uri.rstrip("/").split("/") if p and not p.endswith(".parquet") and p != "data"]
    cached = [p.rsplit("--", 1)[-1] for p in parts if p.startswith("datasets--")]  # the Hugging Face cache's layout
    return cached[-1] if cached else parts[-1] if parts else SOURCE


def iter_items(input_uri: str, *, images: str | None, output: str, owns: Owns, name: str | None) -> Iterator[Item]:
    """Every owned row of every Parquet file of ``input_uri`` (a file or a folder, e.g. the dataset's ``data/``)."""
    storage.check_access(input_uri)
    files = files_with_suffix(input_uri, ".parquet")
    if not files:
        require_input(storage.join(input_uri, "<split>-*.parquet"), "RefCOCO Parquet")
    benchmark = name or dataset_name(input_uri)
    root = images or storage.join(output, "images")

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        for file_uri in files:
            yield from ((file_uri, row) for row in iter_parquet_rows(file_uri, batch_size=16))

    for position, (file_uri, row) in owned(rows(), owns):
        yield from row_records(row, position, split_of(file_uri), benchmark, root)
