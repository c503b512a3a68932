"""ScienceQA into records that need distillation (it has no boxes).

Two layouts:

- the original release: ``problems.json`` (a dict keyed by problem id, streamed) with images at
  ``<images>/<split>/<pid>/image.png``;
- the Hugging Face copy: Parquet files (``train-*.parquet``, ``validation-*``, ``test-*``) whose
  ``image`` column embeds the encoded bytes; each image is written once to ``<images>/<sha[:2]>/<sha>.<ext>``.

Problems without an image are rejected (``no_image``): there is nothing to ground.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from vcot.convert.common import (
    Item,
    Owns,
    Rejection,
    clean_text,
    dedup_key,
    files_with_suffix,
    has_bad_encoding,
    iter_json_object,
    iter_parquet_rows,
    owned,
    require_input,
)
from vcot.convert.images import ImageProblem, size_from_bytes, size_from_uri, store_content_addressed
from vcot.io import storage

HF_SPLITS = {"train": "train", "validation": "val", "val": "val", "test": "test", "minival": "minival"}


def source_rationale(problem: dict[str, Any], answer: str) -> str:
    """ScienceQA's own explanation (ungrounded), ending with the answer: a hint for the distill teacher."""
    solution = clean_text(problem.get("solution"))
    return f"{solution} Answer: {answer}".strip() if solution else f"Answer: {answer}"


def problem_record(
    problem: Any,
    *,
    record_id: str,
    index: int,
    image_uri: str | None,
    size: tuple[int, int] | None,
    source_file: str,
    image_identity_path: str | None,
) -> Item:
    """One ScienceQA problem as a record (or a rejection); the image is already located and measured."""
    if not isinstance(problem, dict):
        return Rejection(
            "not_an_object", f"problem is {type(problem).__name__}", index, id=record_id, subset="scienceqa"
        )
    subset = str(problem.get("subject") or "scienceqa")

    def reject(reason: str, detail: str) -> Rejection:
        return Rejection(reason, detail, index, id=record_id, subset=subset, raw=problem)

    question = clean_text(problem.get("question"))
    choices = problem.get("choices")
    answer_index = problem.get("answer")
    if not question:
        return reject("missing_question", "no question text")
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
        return reject("bad_choices", "choices is not a non-empty list of strings")
    if not isinstance(answer_index, int) or isinstance(answer_index, bool) or not 0 <= answer_index < len(choices):
        return reject("bad_answer_index", f"answer {answer_index!r} is not an index into {len(choices)} choices")
    if image_uri is None or size is None:
        return reject("no_image", "text-only problem: nothing to ground")
    hint = clean_text(problem.get("hint"))
    if has_bad_encoding(question, hint, *choices):
        return reject("bad_encoding", "the problem holds bytes that are not valid UTF-8")
    answer = choices[answer_index]
    return {
        "id": record_id,
        "source": "scienceqa",
        "subset": subset,
        "image": image_uri,
        "width": size[0],
        "height": size[1],
        "question": f"{question}\nContext: {hint}" if hint else question,
        "answer": answer,
        "choices": list(choices),
        "answer_index": answer_index,
        "objects": [],
        "rationale": source_rationale(problem, answer),
        "needs_distillation": True,
        "provenance": {
            "dataset": "scienceqa",
            "source_file": source_file,
            "source_index": index,
            "source_split": problem.get("split"),
            "grade": problem.get("grade"),
            "topic": problem.get("topic"),
            "dedup_key": dedup_key(question, image_identity_path),
        },
    }


def iter_problems_json(uri: str, *, images: str, owns: Owns) -> Iterator[Item]:
    """The original layout: ``problems.json`` streamed, images read for their size (header only)."""
    for index, (pid, problem) in owned(iter_json_object(uri), owns):
        record_id = f"scienceqa:{pid}"
        image_uri = size = None
        relative_path = None
        if isinstance(problem, dict) and isinstance(problem.get("image"), str) and problem["image"]:
            relative_path = f"{problem.get('split', 'train')}/{pid}/{problem['image']}"
            image_uri = storage.join(images, relative_path)
            try:
                size = size_from_uri(image_uri)
            except ImageProblem as problem_with_image:
                yield Rejection(
                    problem_with_image.reason,
                    problem_with_image.detail,
                    index,
                    id=record_id,
                    subset=str(problem.get("subject") or "scienceqa"),
                    raw=problem,
                )
                continue
        yield problem_record(
            problem,
            record_id=record_id,
            index=index,
            image_uri=image_uri,
            size=size,
            source_file=uri.rsplit("/", 1)[-1],
            image_identity_path=relative_path,
        )


def _split_of(file_uri: str) -> str:
    name = file_uri.rsplit("/", 1)[-1]
    for prefix, split in HF_SPLITS.items():
        if name.startswith(prefix):
            return split
    return "train"


def iter_parquet(files: list[str], *, images: str, owns: Owns, batch_size: int = 64) -> Iterator[Item]:
    """The Hugging Face layout: rows read in small batches, embedded images written content-addressed."""

    def rows() -> Iterator[tuple[str, int, dict[str, Any]]]:
        """``(file, the row's position in its split, row)``: a split's files (``train-00000-of-00002``, ...) in
        order, so a problem's id is the same whether its split is converted alone or beside the others."""
        in_split: Counter[str] = Counter()
        for file_uri in files:
            split = _split_of(file_uri)
            for problem in iter_parquet_rows(file_uri, batch_size):
                yield file_uri, in_split[split], problem
                in_split[split] += 1

    for index, (file_uri, position, problem) in owned(rows(), owns):
        split = _split_of(file_uri)
        yield _parquet_row(problem, index, f"scienceqa:{split}:{position}", split, file_uri, images)


def _parquet_row(
    problem: dict[str, Any], index: int, record_id: str, split: str, file_uri: str, images: str
) -> Item:
    image = problem.pop("image", None)
    data = image.get("bytes") if isinstance(image, dict) else None
    image_uri = size = None
    if data:
        try:
            size = size_from_bytes(data)
        except ImageProblem as bad:
            return Rejection(
                bad.reason,
                bad.detail,
                index,
                id=record_id,
                subset=str(problem.get("subject") or "scienceqa"),
                raw=problem,
            )
        image_uri = store_content_addressed(data, images)
    problem.setdefault("split", split)
    # The HF copy has no problem id: duplicates are matched on the question alone (docs/convert.md).
    return problem_record(
        problem,
        record_id=record_id,
        index=index,
        image_uri=image_uri,
        size=size,
        source_file=file_uri.rsplit("/", 1)[-1],
        image_identity_path=None,
    )


def iter_items(input_uri: str, *, images: str | None, output: str, owns: Owns) -> Iterator[Item]:
    """Pick the layout: ``problems.json`` (file or folder holding it), else Parquet files."""
    problems = input_uri if input_uri.endswith(".json") else storage.join(input_uri, "problems.json")
    storage.check_access(input_uri)
    if storage.exists(problems):
        images = images or storage.join(storage.parent(problems), "images")
        yield from iter_problems_json(problems, images=images, owns=owns)
        return
    files = files_with_suffix(input_uri, ".parquet")
    if not files:
        require_input(problems, "ScienceQA problems.json (or Parquet files)")
    yield from iter_parquet(files, images=images or storage.join(output, "images"), owns=owns)
