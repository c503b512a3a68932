"""Your own grounded data (``--source records``): JSONL, a JSON array or Parquet, in one of three layouts.

Each item's layout is read from its keys (a fact of the item, not a guess about its numbers):

- ``vcot`` (it has ``rationale``): our record schema (``docs/records.md``), boxes 0-1000 of the original image;
- ``swift`` (its ``objects`` holds ``bbox``): ms-swift's grounding layout, ``messages`` with ``<ref-object>`` and
  ``<bbox>`` placeholders filled in order from ``objects: {ref, bbox, bbox_type}``; ``bbox_type`` says the frame
  (``real``: pixels of the original image, ms-swift's default; ``norm1``: 0-1; ``norm1000``: 0-1000);
- ``chat`` (``messages`` or ``conversations`` and no such ``objects``): one user and one assistant turn, the
  assistant's boxes written as Qwen's JSON ``{"bbox_2d": [x1, y1, x2, y2], "label": ...}`` or Qwen2-VL's special
  tokens (``<|object_ref_start|>cat<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``). Neither says its
  frame (Qwen2.5-VL writes pixels, Qwen3-VL and Qwen2-VL 0-1000), so ``--bbox-2d-frame`` must: the stage stops at
  the first chat item without it.

Image paths are relative to ``--images`` (default: the input's folder) unless they are absolute (``s3://``,
``/``); Parquet's embedded images (``{"bytes": ...}``) are written content-addressed under ``<output>/images``.
Every box becomes house text (``<ref>label</ref><box>[...]</box>``) and every item then goes through the same
quality filter, split and report as any other source (``vcot.convert.routing``).
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import posixpath
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any, Literal

from vcot.convert.common import (
    BadLine,
    Item,
    Owns,
    Rejection,
    clean_text,
    has_bad_encoding,
    iter_json_items_marked,
    iter_parquet_rows,
    owned,
    require_input,
)
from vcot.convert.images import ImageProblem, header_from_bytes, header_from_uri, store_content_addressed
from vcot.convert.quality import quality_problem
from vcot.convert.viscot import box_problem
from vcot.errors import ConfigError, VcotError
from vcot.grounding.answers import final_answer
from vcot.grounding.boxes import (
    BOX_TAGS,
    BoxFormat,
    IntBox,
    parse_grounded,
    pixels_to_norm1000,
    render_grounded,
    validate_box,
)
from vcot.grounding.model_format import ModelFormat
from vcot.io import storage

Bbox2dFrame = Literal["norm1000", "pixels", "qwen2.5-resized"]
MissingAnswer = Literal["refs", "reject"]
"""What an ms-swift or chat item with no answer of its own becomes: ``refs`` answers with the names of the objects
it locates (a pure grounding item, "Find the cat" -> a box, answers ``cat``), counted as ``answers_from_refs`` in the
quality report; ``reject`` rejects it as ``no_answer``."""
SWIFT_BBOX_TYPES = {"real": "pixels", "norm1": "norm1", "norm1000": "norm1000"}
"""ms-swift's ``bbox_type`` -> the frame its values are read in (ms-swift itself knows ``real`` and ``norm1``)."""
SWIFT_NORM1_FIX = 'give the item objects.bbox_type "norm1" (ms-swift reads a missing bbox_type as "real": pixels)'
CHAT_NORM1_FIX = "--bbox-2d-frame has no 0-1 frame: multiply the values by 1000 and pass --bbox-2d-frame norm1000"
OURS_NORM1_FIX = "our schema's boxes are 0-1000 of the original image (multiply by 1000)"
QWEN25_VISION = ModelFormat.for_family("qwen2.5-vl").vision
"""The image geometry Qwen2.5-VL's released processor resizes with: the frame of ``qwen2.5-resized`` boxes."""
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")
_QWEN_SYNTAXES: tuple[BoxFormat, ...] = ("json", "qwen")
"""The box syntaxes of chat turns: Qwen2.5-VL's and Qwen3-VL's ``bbox_2d`` JSON, and Qwen2-VL's special tokens."""
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_PLACEHOLDERS = re.compile(r"(<ref-object>[ \t]*)?<bbox>|<ref-object>")
"""ms-swift's grounding placeholders: a ``<ref-object>`` right before a ``<bbox>`` (or a space before it) names it."""
_SWIFT_JSON_BOX = re.compile(r'"bbox_2d"\s*:\s*<bbox>')
_MENTION = r"(?:<ref>[^<]*</ref>)?<box>[^<]*</box>"
_PROSE_ANSWER = re.compile(r"\banswer\s+(?:is|was|would be|will be)\b", re.IGNORECASE)
"""A text that says "the answer is ..." without the ``Answer:`` marker: it answers something other than its boxes."""
_FENCE = re.compile(rf"```(?:json)?\s*({_MENTION}(?:\s*{_MENTION})*)\s*```")
"""A code fence left holding only house mentions (where Qwen's JSON was): the fence goes, the mentions stay."""


class Unusable(Exception):
    """An item that cannot become a record; ``reason`` is its rejection code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------------------------------
# Reading the input
# --------------------------------------------------------------------------------------------------


def input_files(uri: str) -> list[str]:
    """``uri`` itself when it is a file, else the JSONL, JSON and Parquet files under it (sorted)."""
    if uri.endswith(FILE_SUFFIXES):
        require_input(uri, "records file")
        return [uri]
    storage.check_access(uri)
    files = sorted(u for u in storage.list_uris(uri) if u.endswith(FILE_SUFFIXES))
    if not files:
        raise VcotError(f"{uri} holds no .jsonl, .json or .parquet file: check --input (and that the data is there)")
    return files


def iter_raw(files: list[str]) -> Iterator[tuple[str, int, Any, bool]]:
    """``(file, position in the file, item or BadLine, whether it may hold repaired bytes)`` of every input item,
    file by file. Parquet strings are valid UTF-8 (pyarrow refuses the file otherwise): never repaired."""
    for file_uri in files:
        if file_uri.endswith(".parquet"):
            items: Iterator[tuple[Any, bool]] = ((row, False) for row in iter_parquet_rows(file_uri))
        else:
            items = iter_json_items_marked(file_uri)
        for position, (item, repaired) in enumerate(items):
            yield file_uri, position, item, repaired


def file_stem(uri: str) -> str:
    """
    >>> file_stem("s3://b/own/receipts.jsonl.gz"), file_stem("charts.parquet")
    ('receipts', 'charts')
    """
    name = uri.rsplit("/", 1)[-1]
    for suffix in FILE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def file_key(uri: str, folder: str | None) -> str:
    """What names ``uri`` in ids: its path under the input ``folder`` without the extension, so that
    ``a/train.jsonl`` and ``b/train.jsonl`` differ; the stem for a file given as ``--input`` (``folder`` None).

    >>> file_key("s3://b/own/a/train.jsonl", "s3://b/own/"), file_key("s3://b/own/x.json", None)
    ('a/train', 'x')
    """
    if folder is None:
        return file_stem(uri)
    inner = storage.relative(uri, folder)  # input_files lists the folder in the form it was given
    return posixpath.join(posixpath.dirname(inner), file_stem(inner))


def file_keys(files: list[str], folder: str | None) -> dict[str, str]:
    """Each file's :func:`file_key`, with its extension where two files differ by it alone (``train.jsonl`` and
    ``train.json`` would give their id-less items the same ids).

    >>> file_keys(["own/a.jsonl", "own/a.json", "own/b.json"], "own")
    {'own/a.jsonl': 'a.jsonl', 'own/a.json': 'a.json', 'own/b.json': 'b'}
    """
    keys = {uri: file_key(uri, folder) for uri in files}
    taken = Counter(keys.values())
    return {uri: key if taken[key] == 1 else key + uri.rsplit("/", 1)[-1][len(file_stem(uri)) :]
            for uri, key in keys.items()}


# --------------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------------


def to_house(values: Any, frame: str, width: int, height: int, fix: str = "write them in the frame") -> IntBox:
    """One box read in ``frame`` (``pixels``, ``qwen2.5-resized``, ``norm1``, ``norm1000``) as a house box.

    Values a little outside the image are clamped, more is ``box_outside_image`` (as for VisCOT). 0-1 fractions in
    any other frame than ``norm1`` are ``box_looks_normalized``, with ``fix`` (the setting that reads them) as the
    detail: read as they are, they would be a box of a pixel or less.

    >>> to_house([50, 25, 100, 50], "pixels", 200, 100), to_house([0.25, 0.25, 0.5, 0.5], "norm1", 200, 100)
    ((250, 250, 500, 500), (250, 250, 500, 500))
    >>> to_house([56, 28, 112, 56], "qwen2.5-resized", 200, 100)  # Qwen2.5-VL resizes 200x100 to 196x112
    (286, 250, 571, 500)
    >>> to_house([0.1, 0.2, 0.8, 0.9], "pixels", 200, 100, fix="set bbox_type: norm1")
    Traceback (most recent call last):
    ...
    vcot.convert.own_records.Unusable: box [0.1, 0.2, 0.8, 0.9] (pixels) looks like 0-1 fractions: set bbox_type: norm1
    """
    if not isinstance(values, (list, tuple)) or len(values) != 4:
        raise Unusable("bad_box", f"a box must be 4 numbers, got {values!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise Unusable("bad_box", f"a box must be 4 numbers, got {values!r}")
    if frame != "norm1" and looks_normalized(values):
        raise Unusable("box_looks_normalized", f"box {list(values)} ({frame}) looks like 0-1 fractions: {fix}")
    if frame == "pixels":
        frame_w, frame_h = width, height
    elif frame == "qwen2.5-resized":
        frame_w, frame_h = qwen25_resized(width, height)
    else:
        values = [v * 1000 for v in values] if frame == "norm1" else list(values)
        frame_w = frame_h = 1000
    problem = box_problem([float(v) for v in values], frame_w, frame_h)
    if problem is not None:
        raise Unusable(problem, f"box {list(values)} ({frame}) does not fit the {frame_w}x{frame_h} frame")
    box = pixels_to_norm1000(values, frame_w, frame_h)
    reason = validate_box(box)
    if reason is not None:
        raise Unusable(f"{reason}_box", f"box {list(values)} ({frame}) is {box} in 0-1000: {reason}")
    return box


def looks_normalized(values: list[Any] | tuple[Any, ...]) -> bool:
    """Whether four numbers are 0-1 fractions (all within 0-1, one at least not whole): no pixel or 0-1000 box.

    >>> looks_normalized([0.1, 0.2, 0.8, 0.9]), looks_normalized([0, 0, 1, 1]), looks_normalized([10, 10, 10.4, 11])
    (True, False, False)
    """
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return (
        len(numbers) == 4
        and all(0 <= v <= 1 for v in numbers)
        and any(not float(v).is_integer() for v in numbers)
    )


def qwen25_resized(width: int, height: int) -> tuple[int, int]:
    """The image's size as Qwen2.5-VL's processor resizes it; ``extreme_aspect_ratio`` when it refuses the image."""
    try:
        return QWEN25_VISION.resized(width, height)
    except ValueError as exc:  # one image's shape, not the stage's settings: reject the item, go on
        raise Unusable(
            "extreme_aspect_ratio",
            f"the image is {width}x{height} ({exc}): Qwen's processor refuses an aspect ratio over 200, so it "
            "has no qwen2.5-resized frame (crop or pad the image, or give its boxes in pixels)",
        ) from exc


# --------------------------------------------------------------------------------------------------
# Chat turns (swift and chat layouts)
# --------------------------------------------------------------------------------------------------


def layout_of(item: dict[str, Any]) -> str | None:
    """``vcot``, ``swift``, ``chat`` or ``None``, from the item's keys (module docstring).

    >>> layout_of({"rationale": "..."}), layout_of({"messages": [], "objects": {"bbox": []}})
    ('vcot', 'swift')
    >>> layout_of({"messages": []}), layout_of({"prompt": [], "completion": []}), layout_of({"question": "?"})
    ('chat', 'chat', None)
    """
    if "rationale" in item:
        return "vcot"
    objects = _maybe_json(item.get("objects"))
    if isinstance(objects, dict) and "bbox" in objects:
        return "swift"
    if "messages" in item or "conversations" in item or ("prompt" in item and "completion" in item):
        return "chat"
    if "query" in item and "response" in item:  # ms-swift's other layout: no objects, so not its grounding one
        return "chat"
    return None


def _maybe_json(value: Any) -> Any:
    """A value Parquet writers often store as a JSON string (``objects``, ``messages``), parsed; else as is."""
    if isinstance(value, str) and value.lstrip().startswith(("{", "[")):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _turns_or_text(value: Any) -> Any:
    """A list of turns (maybe stored as JSON text, as Parquet writers do), else the value as it is: a text, which may
    itself be JSON (Qwen's boxes, a list of them too)."""
    parsed = _maybe_json(value)
    turns = isinstance(parsed, list) and all(isinstance(t, dict) and ("role" in t or "from" in t) for t in parsed)
    return parsed if turns else value


_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


def _content(content: Any, images: list[Any]) -> str:
    """A turn's text; image parts that name an image (``{"type": "image", "image": ...}``) are appended to
    ``images``. A bare ``{"type": "image"}`` (Hugging Face, TRL) only marks where the ``images`` column's image goes."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Unusable("bad_conversations", "a turn's content is neither text nor a list of parts")
    texts = []
    for part in content:
        if not isinstance(part, dict):
            raise Unusable("bad_conversations", "a content part is not an object")
        if part.get("type") == "text":
            texts.append(str(part.get("text") or ""))
        elif part.get("type") == "image":
            named = part.get("image") or part.get("url") or part.get("path")
            if named:
                images.append(named)
        elif part.get("type") == "image_url":  # OpenAI's: {"image_url": {"url": path, URL or data: URL}}
            url = part.get("image_url")
            images.append(_data_url_bytes(url.get("url") if isinstance(url, dict) else url))
    return "".join(texts)


def _data_url_bytes(url: Any) -> Any:
    """An OpenAI image URL: a ``data:`` URL's image as embedded bytes (``{"bytes": ...}``), any other as it is.

    >>> _data_url_bytes("data:image/png;base64,iVBO"), _data_url_bytes("photos/cat.png")
    ({'bytes': b'\\x89PN'}, 'photos/cat.png')
    """
    if not isinstance(url, str) or not url.startswith("data:"):
        return url
    header, _, payload = url.partition(",")
    try:
        encoded = "".join(payload.split())  # some encoders wrap base64 over lines
        return {"bytes": base64.b64decode(encoded, validate=True) if header.endswith(";base64") else payload.encode()}
    except ValueError as exc:
        raise ImageProblem("unreadable_image", f"the data: URL is not valid base64: {exc}") from exc


def chat_turns(item: dict[str, Any]) -> tuple[str, str, list[Any]]:
    """``(user text, assistant text, image parts of the turns)`` of a single-turn chat (system turns are dropped):
    ``messages`` (OpenAI, Hugging Face), ``conversations`` (LLaVA, LLaMA-Factory), TRL's ``prompt`` and
    ``completion`` (turns, or two texts) or ms-swift's ``query`` and ``response``."""
    turns = _maybe_json(item.get("messages") if "messages" in item else item.get("conversations"))
    if "messages" not in item and "conversations" not in item:
        if item.get("history"):  # ms-swift's earlier turns
            raise Unusable("multi_turn", "the item has a history: one user turn then one assistant turn")
        asked, answered = ("prompt", "completion") if "prompt" in item else ("query", "response")
        prompt, completion = _turns_or_text(item.get(asked)), _turns_or_text(item.get(answered))
        if isinstance(prompt, str) and isinstance(completion, str):
            prompt, completion = [{"role": "user", "content": prompt}], [{"role": "assistant", "content": completion}]
        turns = [*prompt, *completion] if isinstance(prompt, list) and isinstance(completion, list) else None
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise Unusable("bad_conversations", "messages/conversations is not a list of turns")
    images: list[Any] = []
    said: list[tuple[str, str]] = []
    for turn in turns:
        role = _ROLES.get(str(turn.get("role") or turn.get("from") or "").lower())
        if role is None:
            raise Unusable("bad_conversations", f"unknown role {turn.get('role') or turn.get('from')!r}")
        text = _content(turn["content"] if "content" in turn else turn.get("value"), images)
        if role != "system":
            said.append((role, text))
    if [role for role, _ in said] != ["user", "assistant"]:
        raise Unusable("multi_turn", f"expected one user turn then one assistant turn, got {[r for r, _ in said]}")
    return said[0][1], said[1][1], images


def answer_and_target(
    item: dict[str, Any], text: str, refs: list[str], missing: MissingAnswer = "refs"
) -> tuple[str, str, bool]:
    """``(answer, rationale ending with 'Answer: ...', answered from the refs)``: the item's ``answer`` field, else the
    assistant's own ``Answer:`` line, else (``missing="refs"``) the grounded refs: a pure grounding item's answer is
    what it located. That last one is a choice (``--missing-answer``), so it is reported, never silent; a text that
    states an answer in its prose ("so the answer is yes") is no pure grounding item, and is rejected instead of
    being given a contradicting ``Answer:`` line.

    >>> answer_and_target({}, "<ref>a</ref><box>[1, 2, 3, 4]</box>", ["a"])
    ('a', '<ref>a</ref><box>[1, 2, 3, 4]</box> Answer: a', True)
    >>> answer_and_target({}, "It is red. Answer: red", [])
    ('red', 'It is red. Answer: red', False)
    """
    text = text.strip()
    after = final_answer(text)  # any case and spacing, as evaluate reads it
    found = after is not None
    given = item.get("answer")
    from_refs = False
    if isinstance(given, (str, int, float)) and not isinstance(given, bool) and str(given).strip():
        answer = str(given).strip()
    elif after is not None:
        answer = after
    elif missing == "reject":
        raise Unusable(
            "no_answer", "no answer field and no 'Answer:' line (--missing-answer refs answers with the object names)"
        )
    elif _PROSE_ANSWER.search(re.sub(_MENTION, " ", text)):
        raise Unusable("no_answer", "the text states an answer in prose but has no 'Answer:' line: end it with "
                       "'Answer: <answer>' or give the item an answer field (its boxes' names would contradict it)")
    else:
        answer, from_refs = ", ".join(dict.fromkeys(refs)), True
    if not answer:
        raise Unusable("missing_answer", "no answer field, no 'Answer:' line and no named box: give each box a name "
                       '(bbox_2d\'s "label", ms-swift\'s <ref-object>) or the item an answer field')
    return answer, text if found else f"{text} Answer: {answer}", from_refs


# --------------------------------------------------------------------------------------------------
# The three layouts: each returns the record's fields that depend on the layout
# --------------------------------------------------------------------------------------------------


def vcot_fields(item: dict[str, Any]) -> dict[str, Any]:
    """Our record schema: boxes rounded to integers, the answer and final ``Answer:`` line as for the other layouts
    (:func:`answer_and_target`); the quality filter then checks its boxes and rationale."""
    objects = item.get("objects") or []
    if not isinstance(objects, list) or not all(isinstance(o, dict) for o in objects):
        raise Unusable("bad_objects", "objects is not a list of {ref, box}")
    answer = item.get("answer")
    answer = str(answer).strip() if answer is not None else ""
    rationale = _integer_mentions(str(item.get("rationale") or ""))
    if rationale.strip():
        answer, rationale, _ = answer_and_target(item, rationale, [])  # refs: [] -- no answer is missing_answer
    return {
        "question": _integer_mentions(clean_text(item.get("question")), "question"),
        "answer": answer,
        "objects": [{"ref": str(o.get("ref") or ""), "box": _integer_box(o.get("box"))} for o in objects],
        "rationale": rationale,
        "needs_distillation": bool(item.get("needs_distillation")),
    }


def _integer_box(box: Any) -> Any:
    """Four finite numbers rounded to integers (the house frame is integers 0-1000); anything else as it is, for
    the quality filter to reject. 0-1 fractions are ``box_looks_normalized``: rounded, they would be a dot.

    >>> _integer_box([100.4, 200.6, 500, 600]), _integer_box([None, 1, 2, 3])
    ([100, 201, 500, 600], [None, 1, 2, 3])
    """
    if not isinstance(box, list) or len(box) != 4:
        return box
    if looks_normalized(box):
        raise Unusable("box_looks_normalized", f"box {box} looks like 0-1 fractions: {OURS_NORM1_FIX}")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
    return [round(v) for v in box] if numbers else box


def _integer_mentions(text: str, where: str = "rationale") -> str:
    """A rationale's ``text`` (or a question's: ``where``) with each house box that holds a fraction rewritten with
    the integers it is read as.

    >>> _integer_mentions("The <ref>cat</ref><box>[100.4, 200, 500, 600]</box> sits.")
    'The <ref>cat</ref><box>[100, 200, 500, 600]</box> sits.'
    """
    if "." not in text:
        return text
    parsed = parse_grounded(text)
    for mention in [*parsed.boxes, *parsed.invalid]:  # rounded, 0-1 fractions are a dot (or no box at all)
        written = text[mention.span[0] : mention.span[1]].split("<box>")[-1]
        if looks_normalized([float(v) for v in _NUMBER.findall(written)]):
            box = written.removesuffix("</box>")
            raise Unusable("box_looks_normalized", f"the {where}'s box {box} looks like 0-1 fractions: "
                           f"{OURS_NORM1_FIX}")
    out, cursor = [], 0
    for found in parsed.boxes:
        start, end = found.span
        if "." in text[start:end]:
            out += [text[cursor:start], render_grounded(found.ref, found.box)]
            cursor = end
    return "".join(out) + text[cursor:]


def swift_fields(
    item: dict[str, Any], user: str, assistant: str, width: int, height: int, missing: MissingAnswer = "refs"
) -> dict[str, Any]:
    """ms-swift's grounding layout: placeholders filled in order over both turns, as ms-swift fills them (the
    question's first), ``<ref-object><bbox>`` as one house mention. A bare ``<bbox>`` in the question is the box
    alone (a name there could give the answer away); the objects are the boxes the answer names."""
    objects = _maybe_json(item.get("objects"))
    refs, boxes = objects.get("ref") or [], objects.get("bbox") or []
    bbox_type, image_ids = objects.get("bbox_type") or "real", objects.get("image_id") or []
    if not all(isinstance(v, list) for v in (refs, boxes, image_ids)) or not all(isinstance(r, str) for r in refs):
        raise Unusable("bad_objects", "objects.ref must be a list of strings and objects.bbox a list of boxes")
    if not isinstance(bbox_type, str) or bbox_type not in SWIFT_BBOX_TYPES:
        raise Unusable("bad_bbox_type", f"bbox_type {bbox_type!r} is not one of {', '.join(SWIFT_BBOX_TYPES)}")
    if any(image_id not in (0, None) for image_id in image_ids):
        raise Unusable("multiple_images", "objects refer to a second image: one image per record")
    house = [to_house(box, SWIFT_BBOX_TYPES[bbox_type], width, height, SWIFT_NORM1_FIX) for box in boxes]
    next_ref, next_box = itertools.count(), itertools.count()
    named: list[dict[str, Any]] = []  # the answer's boxes, with the name each is given

    def ref_at(position: int) -> str:
        if position >= len(refs):
            raise Unusable("placeholder_mismatch", f"more <ref-object> placeholders than the {len(refs)} refs")
        return refs[position]

    def next_ref_text(in_json: bool) -> str:
        ref = ref_at(next(next_ref))
        return json.dumps(ref)[1:-1] if in_json else ref  # inside a JSON string: its quotes escaped

    def fill(match: re.Match[str], *, asked: bool, in_json: bool) -> str:
        if match.group(0) == "<ref-object>":
            return next_ref_text(in_json)
        position = next(next_box)
        if position >= len(house):
            raise Unusable("placeholder_mismatch", f"more <bbox> placeholders than the {len(house)} boxes")
        if in_json:  # the value itself: the filled JSON is read as chat's bbox_2d, in house (0-1000) values
            return (next_ref_text(in_json) if match.group(1) else "") + json.dumps(list(house[position]))
        if match.group(1):
            ref = ref_at(next(next_ref))
        elif asked:  # the box alone: a name could give the answer away
            ref = None
        else:
            ref = refs[position] if position < len(refs) else None
        if not asked:
            named.append({"ref": ref or "", "box": list(house[position])})
        return render_grounded(ref or None, house[position])

    def turn(text: str, *, asked: bool) -> str:
        """One turn filled; in ms-swift's Qwen JSON (``{"bbox_2d": <bbox>, "label": "<ref-object>"}``, its
        QWENVL_BBOX_FORMAT=new) each filled box object becomes a house mention."""
        in_json = _SWIFT_JSON_BOX.search(text) is not None
        filled = _PLACEHOLDERS.sub(lambda match: fill(match, asked=asked, in_json=in_json), text)
        if not in_json:
            return filled
        filled, objects = _house_bbox_2d(filled, width, height, "norm1000", asked=asked)
        if len(objects) != text.count("<bbox>"):
            raise Unusable("bbox_2d_with_numbers", "a bbox_2d with written numbers beside objects.bbox: give every "
                           "box of the item as <bbox>, filled from objects.bbox")
        if not asked:
            named.extend(objects)
        return filled

    question = turn(clean_text(user), asked=True)
    text = turn(assistant, asked=False)
    answer, rationale, from_refs = answer_and_target(item, text, [o["ref"] for o in named if o["ref"]], missing)
    return {"question": question, "answer": answer, "objects": named, "rationale": rationale,
            "answer_from_refs": from_refs}


def chat_fields(
    item: dict[str, Any],
    user: str,
    assistant: str,
    width: int,
    height: int,
    frame: Bbox2dFrame,
    missing: MissingAnswer = "refs",
) -> dict[str, Any]:
    """Chat turns with Qwen's boxes (``bbox_2d`` JSON or special tokens): each becomes house mentions, in the
    question as in the answer; the objects are the answer's boxes."""
    question, _ = _house_bbox_2d(clean_text(user), width, height, frame, asked=True)
    text, objects = _house_bbox_2d(assistant, width, height, frame)
    answer, rationale, from_refs = answer_and_target(item, text, [o["ref"] for o in objects if o["ref"]], missing)
    return {"question": question, "answer": answer, "objects": objects, "rationale": rationale,
            "answer_from_refs": from_refs}


def _house_bbox_2d(
    text: str, width: int, height: int, frame: Bbox2dFrame, *, asked: bool = False
) -> tuple[str, list[dict[str, Any]]]:
    """``text`` with each Qwen box replaced by house mentions (a code fence left holding only them goes), and those
    boxes as objects, in order: each ``bbox_2d`` JSON value (one box object or a list) and each of Qwen2-VL's
    special-token mentions (``<|object_ref_start|>cat<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``).
    In a question (``asked``) a value that is no box at all (a format example such as ``[0, 0, 0, 0]``) stays as
    written; any other box is converted or rejects the item, as in the answer."""
    found = {syntax: parse_grounded(text, syntax, upper=float("inf")) for syntax in _QWEN_SYNTAXES}
    syntax_at = {mention.span: syntax
                 for syntax, parsed in found.items() for mention in [*parsed.boxes, *parsed.invalid]}
    examples: set[tuple[int, int]] = set()
    for bad in [bad for parsed in found.values() for bad in parsed.invalid]:
        if bad.reason == "out_of_range":  # a negative value is left to to_house: a little past the edge is fine
            continue
        if not asked:
            reason = {"inverted": "inverted_box", "zero_area": "zero_area_box", "not_finite": "not_finite_box"}
            raise Unusable(reason.get(bad.reason, "bad_box"), f"box {bad.raw} is not a box ({bad.reason})")
        written = [values for _, values in _raw_boxes(text[bad.span[0] : bad.span[1]], syntax_at[bad.span])]
        if not any(isinstance(values, list) and looks_normalized(values) for values in written):
            examples.add(bad.span)  # 0-1 fractions are no example: to_house names the frame to set
    examples -= {mention.span for parsed in found.values() for mention in parsed.boxes}  # a box and an example: refused
    out, objects, cursor = [], [], 0
    for start, end in sorted(set(syntax_at) - examples):
        boxes = [(ref, to_house(values, frame, width, height, CHAT_NORM1_FIX))
                 for ref, values in _raw_boxes(text[start:end], syntax_at[(start, end)])]  # unrounded, in order
        if boxes:
            out += [text[cursor:start], " ".join(render_grounded(ref, box) for ref, box in boxes)]
            objects += [{"ref": ref or "", "box": list(box)} for ref, box in boxes]
            cursor = end
    return _FENCE.sub(r"\1", "".join(out) + text[cursor:]), objects


def _raw_boxes(mention: str, syntax: BoxFormat) -> list[tuple[str | None, Any]]:
    """``(label, values)`` of each box of one mention, unrounded: a ``bbox_2d`` JSON value (a box object or a list
    of them) or one special-token mention; labels read as :func:`vcot.grounding.boxes.parse_grounded` reads them."""
    if syntax == "qwen":
        tags = BOX_TAGS["qwen"]
        ref = re.search(f"{re.escape(tags.ref_open)}(.*?){re.escape(tags.ref_close)}", mention, re.DOTALL)
        box = mention[mention.index(tags.box_open) :]
        return [(ref.group(1).strip() or None if ref else None, [float(v) for v in _NUMBER.findall(box)])]
    value = json.loads(mention)
    items = value if isinstance(value, list) else [value]
    boxes = [item for item in items if isinstance(item, dict) and "bbox_2d" in item]
    return [(str(box["label"]).strip() or None if box.get("label") is not None else None, box["bbox_2d"])
            for box in boxes]


# --------------------------------------------------------------------------------------------------
# One item -> one record
# --------------------------------------------------------------------------------------------------


def resolve(uri: str) -> str:
    """``uri`` with its ``.`` and ``..`` segments worked out (other segments, empty ones too, kept: on S3 ``a//b``
    is a key of its own): S3 refuses keys holding them, and the refusal stops the stage; ``bad_image_path`` for one
    that leads above its bucket (or above the root of an absolute local path).

    >>> resolve("s3://b/own/./photos/../x.png"), resolve("s3://b/own/../x.png"), resolve("own/./a//x.png")
    ('s3://b/own/x.png', 's3://b/x.png', 'own/a//x.png')
    >>> resolve("../data/a/../x.png")
    '../data/x.png'
    """
    scheme, found, rest = uri.partition("://")
    head, key = (f"{scheme}://" + rest.partition("/")[0] + "/", rest.partition("/")[2]) if found else ("", uri)
    if not found and key.startswith("/"):
        head, key = "/", key[1:]  # an absolute local path: its root is the "bucket"
    kept: list[str] = []
    for segment in key.split("/"):
        if segment == ".." and (not kept or kept[-1] == ".."):
            if head:
                raise ImageProblem("bad_image_path", f"{uri} leads above {head}: fix the path")
            kept.append(segment)  # a path relative to the working folder may start above it
        elif segment == "..":
            kept.pop()
        elif segment != ".":
            kept.append(segment)
    return head + "/".join(kept)


class OwnRecordConverter:
    def __init__(
        self, *, images: str, embedded: str, bbox_2d_frame: Bbox2dFrame | None, missing_answer: MissingAnswer = "refs"
    ) -> None:
        self.images = images
        self.embedded = embedded
        self.bbox_2d_frame = bbox_2d_frame
        self.missing_answer = missing_answer
        self.first_with_id: dict[str, tuple[str, int]] = {}
        """Record id -> (file, position) of the item that had it first (about 150 bytes a record). Per process: a
        sharded run deals items round-robin to its shards, so a repeat that falls to another shard is not seen here
        (within a shard, --workers does not split records)."""

    def image(self, value: Any) -> tuple[str, tuple[int, int, int]]:
        """``(URI, (width, height, EXIF orientation))`` of an image path (relative to --images unless absolute) or
        embedded bytes; the size is as displayed (the orientation applied)."""
        if isinstance(value, dict) and value.get("bytes"):
            if not isinstance(value["bytes"], (bytes, bytearray, memoryview)):  # bytes(5) would be five zero bytes
                raise ImageProblem("unreadable_image", f"embedded image bytes are a {type(value['bytes']).__name__}")
            data = bytes(value["bytes"])
            header = header_from_bytes(data)
            return store_content_addressed(data, self.embedded), header
        if isinstance(value, dict):
            value = value.get("path") or value.get("url")
        if not isinstance(value, str) or not value.strip():
            raise ImageProblem("missing_image", "the item names no image")
        problem = storage.uri_problem(value)
        if problem is not None:  # s3:/bucket/x.png, s3://, gs://...: this item's path, not the stage's settings
            raise ImageProblem("bad_image_path", problem)
        uri = storage.canonical(value) if "://" in value or value.startswith("/") else storage.join(self.images, value)
        uri = resolve(uri)
        return uri, header_from_uri(uri)

    def convert(
        self, index: int, item: Any, source_file: str, position: int, key: str | None = None, repaired: bool = False
    ) -> Item:
        """One item as a record or a rejection; ``key`` names the file in ids (:func:`file_key`), ``repaired``: the
        item may hold U+FFFD put in for invalid bytes (:func:`vcot.convert.common.iter_json_items_marked`)."""
        stem = file_stem(source_file)
        if not isinstance(item, dict):
            return Rejection("not_an_object", f"item is {type(item).__name__}", index, subset=stem, raw=item)
        subset = str(item.get("subset") or stem)
        raw_id = item.get("id")
        has_id = isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) and str(raw_id)
        record_id = f"records:{raw_id}" if has_id else f"records:{key or stem}:{position}"
        first = self.first_with_id.get(record_id)
        try:
            if first is not None:  # evaluation joins predictions to records by id: a wrong score
                raise Unusable("duplicate_id", f"id {record_id} was already given to item {first[1]} of {first[0]}: "
                               "give every item an id of its own, unique across all the input files")
            record = self._record(item, record_id, subset, repaired)
        except (Unusable, ImageProblem) as problem:
            return Rejection(problem.reason, problem.detail, index, id=record_id, subset=subset, raw=item)
        # Only a record the quality filter will accept holds its id (routing gives the split after this).
        if quality_problem({**record, "split": "train"}) is None:
            self.first_with_id[record_id] = (source_file, position)  # the file's one string, shared
        turned = record.pop("exif_orientation")  # shown turned: its boxes are right if drawn as displayed
        record["provenance"] = json_safe({
            **(item.get("provenance") if isinstance(item.get("provenance"), dict) else {}),
            "dataset": "records",
            "layout": record.pop("layout"),
            **({"answer_from": "refs"} if record.pop("answer_from_refs", False) else {}),
            **({"exif_orientation": turned} if turned != 1 else {}),
            "source_file": source_file.rsplit("/", 1)[-1],
            "source_index": index,
            "source_id": raw_id if has_id else None,
            "source_split": item.get("split"),
        })
        return record

    def _record(self, item: dict[str, Any], record_id: str, subset: str, repaired: bool) -> dict[str, Any]:
        layout = layout_of(item)
        if layout is None:
            raise Unusable("unknown_layout", "no rationale (our schema), objects.bbox (ms-swift) or messages (chat)")
        if layout == "chat" and self.bbox_2d_frame is None:
            raise ConfigError(
                "the records hold chat turns with Qwen boxes (bbox_2d JSON or <|box_start|> tokens), whose frame "
                "the file does not say: pass --bbox-2d-frame norm1000 (Qwen3-VL, Qwen2-VL: 0-1000), pixels (of the "
                "original image) or "
                "qwen2.5-resized (Qwen2.5-VL's own output: pixels of its resized image) (nothing was committed)"
            )
        user = assistant = ""
        parts: list[Any] = []
        if layout != "vcot":
            user, assistant, parts = chat_turns(item)
        image, (width, height, turned) = self.image(_one_image(item, parts))
        given = (item.get("width"), item.get("height"))
        if given != (None, None) and given != (width, height):
            raise Unusable("size_mismatch", f"width/height {given} but the image is {width}x{height}")
        if layout == "vcot":
            fields = vcot_fields(item)
        elif layout == "swift":
            fields = swift_fields(item, user, assistant, width, height, self.missing_answer)
        else:
            fields = chat_fields(item, user, assistant, width, height, self.bbox_2d_frame, self.missing_answer)
        if repaired and has_bad_encoding(fields["question"], fields["answer"], fields["rationale"]):
            raise Unusable("bad_encoding", "the item holds U+FFFD and its JSON file has bytes that are not valid UTF-8 "
                           "(read as U+FFFD): write the file as UTF-8")
        choices = item.get("choices")
        choices_ok = isinstance(choices, list) and bool(choices) and all(isinstance(c, str) for c in choices)
        answer_index = item.get("answer_index")
        index_ok = choices_ok and isinstance(answer_index, int) and 0 <= answer_index < len(choices or [])
        return {
            "id": record_id,
            "source": "records",
            "subset": subset,
            "image": image,
            "width": width,
            "height": height,
            "choices": list(choices) if choices_ok else None,
            "answer_index": answer_index if index_ok else None,
            "needs_distillation": False,
            **fields,
            "layout": layout,
            "exif_orientation": turned,
        }


def json_safe(value: Any) -> Any:
    """``value`` as is when JSON can write it, else with what it cannot (a Parquet row's bytes) as their ``str()``.

    >>> json_safe({"split": "train"}), json_safe({"note": b"raw"})
    ({'split': 'train'}, {'note': "b'raw'"})
    """
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return json.loads(json.dumps(value, default=str))
    return value


def _one_image(item: dict[str, Any], parts: list[Any]) -> Any:
    """The item's one image: ``images`` (a list), ``image``, or an image part of the turns."""
    images = _maybe_json(item.get("images"))
    named = [*(images if isinstance(images, list) else [images] if images else []), *parts]
    if item.get("image") is not None:
        named.append(item["image"])
    found = [image for i, image in enumerate(named) if image not in named[:i]]  # one image named twice is one
    if len(found) > 1:
        raise Unusable("multiple_images", f"{len(found)} images: one image per record")
    if not found:
        raise ImageProblem("missing_image", "the item names no image")
    return found[0]


def iter_items(
    input_uri: str,
    *,
    images: str | None,
    output: str,
    owns: Owns,
    bbox_2d_frame: Bbox2dFrame | None,
    missing_answer: MissingAnswer = "refs",
) -> Iterator[Item]:
    files = input_files(input_uri)
    given_file = input_uri.endswith(FILE_SUFFIXES)
    folder = storage.parent(input_uri) if given_file else input_uri
    keys = file_keys(files, None if given_file else input_uri)
    converter = OwnRecordConverter(
        images=images or folder,
        embedded=storage.join(output, "images"),
        bbox_2d_frame=bbox_2d_frame,
        missing_answer=missing_answer,
    )
    for index, (file_uri, position, item, repaired) in owned(iter_raw(files), owns):
        if isinstance(item, BadLine):
            yield Rejection(item.reason, item.detail, index, subset=file_stem(file_uri), raw=item.raw)
        else:
            yield converter.convert(index, item, file_uri, position, keys[file_uri], repaired)
