"""VisCoT's benchmark as Ground-R1 evaluates it (``visualCoT_eval_subset150_choice.jsonl``) into records.

Ground-R1 (its ``eval/eval_dataset/``) takes the first 150 questions of each of VisCoT's 13 subsets and turns GQA's
and Open Images' into four-option multiple choice. One JSON object per line:

- ``image``: the image's path on their machine, ``.../Visual-CoT/cot_image_data/<folder>/<file>``: the part after
  ``cot_image_data/`` is looked up under ``--images`` (the folder VisCoT's images were unpacked into);
- ``width``, ``height``: the image's size; ``bboxs``: the evidence boxes, ``[x1, y1, x2, y2]`` pixels of it;
- ``dataset``: the subset (``textcap`` questions use ``textvqa`` images); ``split``, ``problem_id``;
- ``problem``: the question; in the choice subsets followed by ``A. ...`` to ``D. ...`` lines (after a stray ``"``);
- ``solution``: the answer, or ``<answer>B</answer>`` (the right option's letter) in the choice subsets.

Records: ``source`` ``ground-r1`` (``vcot-evaluate --benchmark ground-r1`` scores them by Ground-R1's rules,
:mod:`vcot.evaluate.ground_r1`), multiple choice as ``choices`` + ``answer_index`` with ``answer`` the option's text,
the boxes in the house frame with VisCoT's labels, the grounded rationale VisCoT's converter writes. A question whose
box is unusable (10 of DUDE's, 1 of DocVQA's in the published file) is kept without one (``provenance.box_problem``),
since the rules score answers and Ground-R1 counts it.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from typing import Any

from vcot.convert.common import BadLine, Item, Owns, Rejection, clean_text, iter_jsonl, owned, require_input
from vcot.convert.images import ImageProblem, size_from_uri
from vcot.convert.viscot import grounded_rationale, ref_label, viscot_slack
from vcot.grounding.boxes import pixel_box_to_house
from vcot.io import storage

SOURCE = "ground-r1"
BENCHMARK = "VisCoT (Ground-R1)"
_OPTION = re.compile(r"^\s*([A-Z])[.)]\s*(.*?)\s*$")
_TAGGED = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
_IMAGE_FOLDERS = ("cot_image_data/", "cot/")


def split_problem(problem: str) -> tuple[str, list[str]]:
    """The question and its options (``[]`` for an open question) of a ``problem``.

    >>> split_problem('What contains the tea?"  \\nA. Coffee cup  \\nB. Soup bowl  \\n')
    ('What contains the tea?', ['Coffee cup', 'Soup bowl'])
    >>> split_problem('What is it?"\\nA) Hamburger\\nB) Pizza\\n')
    ('What is it?', ['Hamburger', 'Pizza'])
    >>> split_problem("What is behind the bench?"), split_problem("Is B. the answer?")
    (('What is behind the bench?', []), ('Is B. the answer?', []))
    """
    lines = problem.splitlines()
    found = [match for match in map(_OPTION.match, lines) if match]
    if [match.group(1) for match in found] != list(string.ascii_uppercase[: len(found)]):
        return problem.strip(), []  # not an A, B, C... list: an open question that has such a line
    question = "\n".join(line for line in lines if not _OPTION.match(line)).strip()
    return (question.rstrip('"').rstrip() if found else question), [match.group(2) for match in found]


def answer_of(solution: str, choices: list[str]) -> tuple[str, int | None] | None:
    """``(answer text, its option's index)``: the tagged letter's option, or the solution itself for an open
    question; ``None`` when the letter names no option.

    >>> answer_of("<answer>B</answer>", ["cup", "bowl"]), answer_of("Foliage.", [])
    (('bowl', 1), ('Foliage.', None))
    >>> answer_of("<answer>E</answer>", ["a"]) is None
    True
    """
    tagged = _TAGGED.search(solution)
    given = (tagged.group(1) if tagged else solution).strip()
    if not choices:
        return given, None
    index = string.ascii_uppercase.find(given.upper()) if len(given) == 1 else -1
    return (choices[index], index) if 0 <= index < len(choices) else None


def image_path(path: str) -> str:
    """Where an image lies under ``--images``: the part of their path after ``cot_image_data/`` (or ``cot/``), else the
    last folder and the file.

    >>> image_path("/home/meng/data/Visual-CoT/cot_image_data/textvqa/13ff6bdce7db9094.jpg")
    'textvqa/13ff6bdce7db9094.jpg'
    >>> image_path("/data/gqa/2316539.jpg")
    'gqa/2316539.jpg'
    """
    for folder in _IMAGE_FOLDERS:
        if folder in path:
            return path.rsplit(folder, 1)[1]
    return "/".join(path.replace("\\", "/").split("/")[-2:])


def evidence(boxes: Any, size: tuple[int, int]) -> tuple[list[list[int]], str | None]:
    """The evidence boxes in the house frame, or none and why: a question whose box is unusable is still asked (the
    rules score answers only; Ground-R1 counts it), with no box to score.

    >>> evidence([[0, 0, 50, 25]], (100, 50)), evidence([[0, 0, 150, 25]], (100, 50)), evidence([], (100, 50))
    (([[0, 0, 500, 500]], None), ([], 'box_outside_image'), ([], 'missing_box'))
    """
    if not isinstance(boxes, list) or not boxes or not all(isinstance(box, list) and len(box) == 4 for box in boxes):
        return [], "missing_box"
    house = [pixel_box_to_house(box, *size, slack=viscot_slack(*size)) for box in boxes]
    problems = [box for box in house if isinstance(box, str)]
    return ([], problems[0]) if problems else ([list(box) for box in house if not isinstance(box, str)], None)


def _size(item: dict[str, Any]) -> tuple[int, int] | None:
    width, height = item.get("width"), item.get("height")
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        return width, height
    return None


def convert(item: Any, position: int, images: str, source_file: str, check_images: bool = False) -> Item:
    """One line as a record, or a rejection with the first reason it gives none (``check_images``: also when its
    image does not open or is not the size the line says)."""
    if not isinstance(item, dict):
        return Rejection("not_an_object", f"line is {type(item).__name__}, not an object", position, raw=item)
    subset = clean_text(item.get("dataset")).lower() or "unknown"
    record_id = f"{SOURCE}:{subset}:{item.get('problem_id', position)}"

    def reject(reason: str, detail: str) -> Rejection:
        return Rejection(reason, detail, position, id=record_id, subset=subset, raw=item)

    question, choices = split_problem(str(item.get("problem") or ""))
    question = clean_text(question)
    if not question:
        return reject("missing_question", "no problem text")
    answer = answer_of(str(item.get("solution") or ""), choices)
    if answer is None or not answer[0]:
        return reject("bad_answer" if choices else "missing_answer",
                      f"solution {item.get('solution')!r} for {len(choices)} options")  # fmt: skip
    if not isinstance(item.get("image"), str) or not item["image"].strip():
        return reject("missing_image", "the line names no image")
    size = _size(item)
    if size is None:
        return reject("missing_size", f"width {item.get('width')!r}, height {item.get('height')!r}")
    house, box_problem = evidence(item.get("bboxs"), size)
    image = storage.join(images, image_path(item["image"].strip()))
    if check_images:
        try:
            found = size_from_uri(image)
        except ImageProblem as problem:
            return reject(problem.reason, problem.detail)
        if found != size:
            return reject("size_mismatch", f"the line says {size[0]}x{size[1]}, the image header {found[0]}x{found[1]}")
    label = ref_label(question, subset)
    return {
        "id": record_id,
        "source": SOURCE,
        "subset": subset,
        "image": image,
        "width": size[0],
        "height": size[1],
        "question": question,
        "answer": answer[0],
        "choices": choices or None,
        "answer_index": answer[1],
        "objects": [{"ref": label, "box": box} for box in house],
        "rationale": grounded_rationale(label, house[0], answer[0]) if house else "",
        "needs_distillation": not house,
        "provenance": {"dataset": subset, "benchmark": BENCHMARK, "source_file": source_file, "source_index": position,
                       "problem_id": item.get("problem_id"), "box_source": "bboxs" if house else None,
                       "box_problem": box_problem},  # fmt: skip
    }


def iter_items(input_uri: str, *, images: str | None, owns: Owns, check_images: bool = False) -> Iterator[Item]:
    """Every owned line of the file; images under ``--images``, default the file's folder's ``cot_image_data/``."""
    require_input(input_uri, "Ground-R1 VisCoT JSONL")
    root = images or storage.join(storage.parent(input_uri), "cot_image_data")
    source_file = input_uri.rsplit("/", 1)[-1]
    for position, item in owned(iter_jsonl(input_uri), owns):
        if isinstance(item, BadLine):
            yield Rejection(item.reason, item.detail, position, subset="unknown", raw=item.raw)
        else:
            yield convert(item, position, root, source_file, check_images)
