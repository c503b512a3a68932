"""Benchmarks in VLMEvalKit's TSV layout into records: TreeBench, V* Bench, HR-Bench 4K/8K, MME-RealWorld-Lite, ...

VLMEvalKit ships its benchmarks as one TSV file each (``TreeBench.tsv``, ``VStarBench.tsv``, ``hr_bench_4k.tsv``,
``hr_bench_8k.tsv``, ``mme_realworld_lite.tsv``); the layout its loader reads (``vlmeval/dataset/image_base.py``,
``image_mcq.py``): a header row, then one question per row, tab separated, with the columns

- ``index``: the question's id;
- ``image``: the image, base64-encoded; or, to save space, the ``index`` of another row that holds it (a short cell);
- ``question``, and ``hint`` when given;
- ``A``, ``B``, ...: the options (empty cells: none), or ``multi-choice options``: a list literal of ``"(A) text"``
  strings (MME-RealWorld-Lite's file);
- ``answer``: the right option's letter (an open question: the answer itself);
- ``category`` (the subset), and any others (``l2-category``, HR-Bench's ``cycle_category``), kept in provenance;
- ``target_instances`` (TreeBench): a list literal of the evidence boxes, ``[x1, y1, x2, y2]`` in pixels of the
  original image (VLMEvalKit compares them with a model's boxes as they are), which become the record's objects.

Records: ``source`` ``vlmevalkit``, ``provenance.benchmark`` the benchmark's name (``--benchmark-name``, else the
file's name), multiple choice as ``choices`` + ``answer_index`` with ``answer`` the right option's text. A question
without evidence boxes has nothing to train on (``needs_distillation``): it is evaluation data. Images are written
once, content-addressed, under ``--images`` (default ``<output>/images``).
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import io
import re
import string
import sys
from collections.abc import Iterator

from vcot.convert.common import Item, Owns, Rejection, clean_text, files_with_suffix, require_input
from vcot.convert.images import ImageProblem, size_from_bytes, store_content_addressed
from vcot.errors import ConfigError
from vcot.grounding.boxes import format_box, pixel_box_to_house
from vcot.io import storage

SOURCE = "vlmevalkit"
REFERENCE_CHARS = 64
"""An image cell this short names another row's image (VLMEvalKit's rule)."""
EVIDENCE_REF = "evidence"
_LISTED_OPTION = re.compile(r"^\(([A-Z])\)\s*(.*)$", re.DOTALL)


def benchmark_name(file_uri: str, given: str | None) -> str:
    """The benchmark's name in the records: ``--benchmark-name``, else the file's name without ``.tsv``.

    >>> benchmark_name("s3://b/raw/hr_bench_4k.tsv", None), benchmark_name("x/TreeBench.tsv", "treebench")
    ('hr_bench_4k', 'treebench')
    """
    return given or file_uri.rsplit("/", 1)[-1].removesuffix(".tsv")


def rows(file_uri: str) -> Iterator[dict[str, str]]:
    """The rows of one TSV file as dicts (the header's names), read as a stream: one image in memory at a time."""
    csv.field_size_limit(sys.maxsize)  # a base64 image is one cell of many megabytes
    with storage.open_uri(file_uri, "rb") as raw:
        yield from csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""), delimiter="\t")


def text(row: dict[str, str], column: str) -> str:
    """A cell's text, stripped; ``""`` for a missing cell and for ``nan`` (what pandas writes for an empty one).

    >>> text({"hint": " nan "}, "hint"), text({"hint": "Look left."}, "hint"), text({}, "hint")
    ('', 'Look left.', '')
    """
    value = (row.get(column) or "").strip()
    return "" if value.lower() == "nan" else value


def options(row: dict[str, str]) -> list[str] | None:
    """The options, in letter order: the ``A``, ``B``, ... columns, else the ``multi-choice options`` list (each
    ``"(A) text"``); ``None`` when that list cannot be read.

    >>> options({"A": "cat", "B": "dog", "C": ""}), options({"multi-choice options": "['(A) red', '(B) blue']"})
    (['cat', 'dog'], ['red', 'blue'])
    >>> options({"multi-choice options": "['(A) red', "}) is None
    True
    """
    columns = []
    for letter in string.ascii_uppercase:
        if not text(row, letter):
            break
        columns.append(text(row, letter))
    if columns:
        return columns
    listed = text(row, "multi-choice options")
    if not listed.startswith("["):
        items = [_LISTED_OPTION.match(line.strip()) for line in listed.splitlines()]
        return [match.group(2).strip() for match in items if match]
    try:
        items = [_LISTED_OPTION.match(str(item).strip()) for item in ast.literal_eval(listed)]
    except (ValueError, SyntaxError):
        return None
    return [match.group(2).strip() for match in items if match]


def evidence_boxes(cell: str, width: int, height: int) -> list[list[int]] | str:
    """TreeBench's ``target_instances`` (pixel boxes) as house boxes, or the reason they cannot be.

    >>> evidence_boxes("[[0, 0, 50, 25]]", 100, 50), evidence_boxes("[[0, 0, 150, 25]]", 100, 50)
    ([[0, 0, 500, 500]], 'evidence_box_outside_image')
    """
    try:
        boxes = ast.literal_eval(cell) if cell.strip() else []
    except (ValueError, SyntaxError):
        return "unreadable_evidence_boxes"
    house = []
    for box in boxes:
        if not isinstance(box, (list, tuple)):
            return "unreadable_evidence_boxes"
        converted = pixel_box_to_house(box, width, height, slack=(0, 0))  # as VLMEvalKit compares them: no overrun
        if converted in ("wrong_arity_box", "not_a_number_box", "not_finite_box"):
            return "unreadable_evidence_boxes"
        if isinstance(converted, str):
            return "evidence_box_outside_image" if converted == "box_outside_image" else "invalid_evidence_box"
        house.append(list(converted))
    return house


def answer_of(row: dict[str, str], choices: list[str]) -> tuple[str, int | None] | None:
    """``(answer text, its option's index)``; the text alone for an open question; ``None`` when the letter names
    no option.

    >>> answer_of({"answer": "B"}, ["cat", "dog"]), answer_of({"answer": "42"}, []), answer_of({"answer": "E"}, ["a"])
    (('dog', 1), ('42', None), None)
    """
    given = text(row, "answer")
    if not choices:
        return given, None
    index = string.ascii_uppercase.find(given.strip("()").upper()) if len(given.strip("()")) == 1 else -1
    return (choices[index], index) if 0 <= index < len(choices) else None


def without_image(row: dict[str, str]) -> dict[str, str]:
    """A row as ``rejected/`` keeps it: without its image (megabytes of base64)."""
    return {key: value for key, value in row.items() if key != "image"}


class ImageStore:
    """The images of one file, written once each (content-addressed) and remembered by row index, so a row that
    names another row's image finds it."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.by_index: dict[str, tuple[str, tuple[int, int]]] = {}

    def store(self, index: str, cell: str) -> tuple[str, tuple[int, int]]:
        """Decode, measure and write one image cell; raises :class:`ImageProblem`."""
        data = _image_bytes(cell)
        size = size_from_bytes(data)
        self.by_index[index] = (store_content_addressed(data, self.root), size)
        return self.by_index[index]


def _image_bytes(cell: str) -> bytes:
    """The one image of a cell; raises :class:`ImageProblem`. A cell ``['<base64>', ...]`` is VLMEvalKit's list of
    images (``toliststr``: BLINK, MUIRBench): one of them is that image, more are ``multiple_images``.

    >>> _image_bytes("aGk="), _image_bytes("['aGk=']")
    (b'hi', b'hi')
    >>> _image_bytes("['aGk=', 'aGk=']")
    Traceback (most recent call last):
    vcot.convert.images.ImageProblem: the image cell holds 2 images: one image per record
    """
    if cell.startswith("[") and cell.endswith("]"):
        try:
            images = ast.literal_eval(cell)
        except (ValueError, SyntaxError) as exc:
            raise ImageProblem("unreadable_image", "the image cell looks like a list but is not one") from exc
        if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
            raise ImageProblem("unreadable_image", "the image cell is a list, but not of base64 strings")
        if len(images) > 1:
            raise ImageProblem("multiple_images", f"the image cell holds {len(images)} images: one image per record")
        cell = images[0]
    try:
        return base64.b64decode("".join(cell.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageProblem("unreadable_image", f"the image cell is not base64: {exc}") from exc


def row_record(row: dict[str, str], position: int, image: tuple[str, tuple[int, int]], *, benchmark: str,
               file_uri: str) -> Item:  # fmt: skip
    """One question as a record (or a rejection); its image already written."""
    index = text(row, "index") or str(position)
    record_id = f"{benchmark}:{index}"
    subset = text(row, "category") or benchmark

    def reject(reason: str, detail: str) -> Rejection:
        return Rejection(reason, detail, position, id=record_id, subset=subset, raw=without_image(row))

    question = clean_text(text(row, "question"))
    if not question:
        return reject("missing_question", "no question text")
    choices = options(row)
    if choices is None:
        return reject("unreadable_options", f"multi-choice options {text(row, 'multi-choice options')[:200]!r}")
    answer = answer_of(row, choices)
    if answer is None or not answer[0]:
        return reject("bad_answer", f"answer {row.get('answer')!r} names none of {len(choices)} options")
    (uri, (width, height)) = image
    boxes = evidence_boxes(text(row, "target_instances"), width, height)
    if isinstance(boxes, str):
        found = str(row.get("target_instances"))[:200]
        return reject(boxes, f"target_instances {found!r} for a {width}x{height} image")
    hint = clean_text(text(row, "hint"))
    objects = [{"ref": EVIDENCE_REF, "box": box} for box in boxes]
    rationale = " ".join(f"<ref>{EVIDENCE_REF}</ref><box>{format_box(box)}</box>" for box in boxes)
    kept = {k: v for k, v in row.items() if k in ("l2-category", "cycle_category", "category")}
    return {
        "id": record_id,
        "source": SOURCE,
        "subset": subset,
        "image": uri,
        "width": width,
        "height": height,
        "question": f"Hint: {hint}\n{question}" if hint else question,
        "answer": answer[0],
        "choices": choices or None,
        "answer_index": answer[1],
        "objects": objects,
        "rationale": f"{rationale} Answer: {answer[0]}".strip() if objects else "",
        "needs_distillation": not objects,
        "provenance": {"dataset": SOURCE, "benchmark": benchmark, "source_file": file_uri.rsplit("/", 1)[-1],
                       "source_index": position, "index": index, "box_source": "target_instances" if objects else None,
                       **kept},  # fmt: skip
    }


def file_items(file_uri: str, *, images: ImageStore, owns: Owns, benchmark: str) -> Iterator[Item]:
    """The owned rows of one file. A row that names another row's image not yet read waits for the end; then one
    more pass writes the images such rows name (a shard may not own the row that holds one)."""
    waiting: list[tuple[int, dict[str, str]]] = []
    for position, row in enumerate(rows(file_uri)):
        if not owns(position):
            continue
        cell = text(row, "image")
        if 0 < len(cell) <= REFERENCE_CHARS and cell not in images.by_index:
            waiting.append((position, row))
            continue
        yield _converted(row, position, images, benchmark=benchmark, file_uri=file_uri)
    if not waiting:
        return
    named = {text(row, "image") for _, row in waiting}
    for row in rows(file_uri):
        index, cell = text(row, "index"), text(row, "image")
        if index in named and len(cell) > REFERENCE_CHARS and index not in images.by_index:
            try:
                images.store(index, cell)
            except ImageProblem:
                pass  # the rows naming it are rejected below, with the reason
    for position, row in waiting:
        yield _converted(row, position, images, benchmark=benchmark, file_uri=file_uri)


def _converted(row: dict[str, str], position: int, images: ImageStore, *, benchmark: str, file_uri: str) -> Item:
    index = text(row, "index") or str(position)
    cell = text(row, "image")
    subset = text(row, "category") or benchmark
    try:
        if not cell:
            raise ImageProblem("no_image", "the image cell is empty")
        if len(cell) <= REFERENCE_CHARS:
            if cell not in images.by_index:
                raise ImageProblem("image_reference_unresolved", f"no row {cell!r} holds an image in {file_uri}")
            image = images.by_index[cell]
        else:
            image = images.store(index, cell)
    except ImageProblem as problem:
        return Rejection(problem.reason, problem.detail, position, id=f"{benchmark}:{index}", subset=subset,
                         raw=without_image(row))  # fmt: skip
    return row_record(row, position, image, benchmark=benchmark, file_uri=file_uri)


def iter_items(input_uri: str, *, images: str | None, output: str, owns: Owns, name: str | None) -> Iterator[Item]:
    """Every owned row of every TSV file of ``input_uri``, file by file (a shard owns the same positions in each)."""
    storage.check_access(input_uri)
    files = files_with_suffix(input_uri, ".tsv")
    if name and len(files) > 1:
        raise ConfigError(f"--benchmark-name {name} names one benchmark, but {input_uri} holds {len(files)} TSV files: "
                          "convert each file to its own output (each is one benchmark, named by its file)")  # fmt: skip
    if not files:
        expected = input_uri if input_uri.endswith(".tsv") else storage.join(input_uri, "<name>.tsv")
        require_input(expected, "VLMEvalKit TSV")
    root = images or storage.join(output, "images")
    for file_uri in files:  # row indexes are per file: so is the store that resolves them
        yield from file_items(file_uri, images=ImageStore(root), owns=owns, benchmark=benchmark_name(file_uri, name))
