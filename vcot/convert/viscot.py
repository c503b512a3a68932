"""VisCOT (llava-format JSON array + metadata JSONL) into grounded records.

Boxes come from the absolute ``###`` box when the record has one, otherwise from the normalized box
string un-padded with the image size (VisCOT normalizes to the image padded to a centered square:
``docs/convert.md`` and NOTES). The image size comes from the metadata, else from the image header.
Every conversion goes through :mod:`vcot.grounding.boxes`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Literal

from vcot.convert.array_chunks import (
    DEFAULT_CHUNK_BYTES,
    ArrayChunk,
    Unchunkable,
    iter_array_chunks,
    parse_chunk,
    stream_chunk,
)
from vcot.convert.common import (
    BadLine,
    Item,
    Owns,
    Rejection,
    clean_text,
    has_bad_encoding,
    iter_json_array,
    iter_jsonl,
    paused_gc,
)
from vcot.convert.images import ImageProblem, size_from_uri
from vcot.convert.routing import RoutedBlock, route_block, route_blocks
from vcot.grounding.boxes import (
    pixel_box_problem,
    pixels_to_norm1000,
    validate_box,
    viscot_padded_to_pixels,
)
from vcot.io import storage
from vcot.io.images import TOO_LARGE, decodable_pixels, too_large
from vcot.io.parallel import ordered_map
from vcot.log import get_logger

log = get_logger(__name__)

BoxScale = Literal["unit", "norm1000"]

PROMPT_SUFFIX = "Please provide the bounding box coordinate of the region that can help you answer the question better."
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")

# Subsets whose regions are text on a page or sign: a question rarely names a better label than "text".
TEXT_SUBSETS = frozenset({"docvqa", "infographicsvqa", "sroie", "dude", "textvqa", "textcap"})
DEFAULT_LABELS = {"cub": "bird", "emotic": "person"}

OUTSIDE_TOLERANCE = 0.02
"""How far (fraction of the side, at least 2 px) a pixel box may poke out of the image before it is rejected.

VisCOT's boxes are truncated/unioned annotations: a few are slightly negative or a pixel past the edge.
Those are clamped; anything further out means the box or the size is wrong.
"""


# --------------------------------------------------------------------------------------------------
# Image sizes
# --------------------------------------------------------------------------------------------------


def size_key(path: str) -> str:
    """The key an image is looked up by: its path without the leading ``cot/`` (or ``./``).

    >>> size_key("cot/gqa/2316539.jpg"), size_key("./gqa/2316539.jpg")
    ('gqa/2316539.jpg', 'gqa/2316539.jpg')
    """
    path = path.strip().lstrip("./")
    return path[4:] if path.startswith("cot/") else path


FOLDER_ALIASES = {"v7w": "visual7w"}
"""Folder names VisCOT's own files disagree on: the benchmark JSON's images are ``cot/v7w/...``, its detection
JSONL (the natural source of sizes) says ``cot/visual7w/...``. Sizes are matched across an alias by the image's
file name within the subset (:func:`alias_key`)."""
_ALIASED = frozenset(FOLDER_ALIASES) | frozenset(FOLDER_ALIASES.values())


def alias_key(key: str) -> str | None:
    """The key an image of an aliased folder is also indexed by: the canonical folder and the file name.

    >>> alias_key("v7w/images/v7w_2385.jpg") == alias_key("visual7w/v7w_2385.jpg") == "visual7w#v7w_2385.jpg"
    True
    >>> alias_key("gqa/2316539.jpg") is None
    True
    """
    folder, _, rest = key.partition("/")
    if folder not in _ALIASED or not rest:
        return None
    return f"{FOLDER_ALIASES.get(folder, folder)}#{rest.rsplit('/', 1)[-1]}"


def _pack(width: int, height: int) -> int:
    return width << 32 | height


def load_sizes(uri: str) -> dict[str, int]:
    """Read image sizes from a VisCOT metadata or detection JSONL into ``{size_key: packed (w, h)}``.

    Metadata lines carry ``dataset`` + ``image`` (relative to ``cot/<dataset>/``), detection lines
    ``img_path`` (``cot/<dataset>/...``); both carry ``width`` and ``height``. Bad lines are counted and
    skipped: they only mean that those images fall back to their header. The index holds one small
    entry per distinct image (see ``docs/bench-convert.md`` for its memory).
    """
    sizes: dict[str, int] = {}
    bad = 0
    with paused_gc():  # half the time of building the index went to collections that find nothing
        for line in iter_jsonl(uri):
            key = _metadata_key(line) if isinstance(line, dict) else None
            width, height = (line.get("width"), line.get("height")) if isinstance(line, dict) else (None, None)
            if key is None or not _is_size(width) or not _is_size(height):
                bad += 1
                continue
            sizes[key] = _pack(int(width), int(height))  # type: ignore[arg-type]
            alias = alias_key(key)
            if alias is not None:
                sizes[alias] = sizes[key]
    log.info("metadata_sizes", uri=uri, images=len(sizes), skipped_lines=bad)
    return sizes


def _is_size(value: Any) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1 << 31 and value == int(value)
    )


def _metadata_key(line: dict[str, Any]) -> str | None:
    if isinstance(line.get("img_path"), str):
        return size_key(line["img_path"])
    image, dataset = line.get("image"), line.get("dataset")
    if not isinstance(image, str):
        return None
    if image.startswith("cot/") or not isinstance(dataset, str):
        return size_key(image)
    return f"{dataset}/{image.lstrip('/')}"


# --------------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------------


def parse_box_values(text: str) -> list[float] | None:
    """The four numbers of a box string like ``[0.542, 0.686, 0.592, 0.786]``, or ``None``.

    >>> parse_box_values("[217, 343, 242, 393]")
    [217.0, 343.0, 242.0, 393.0]
    >>> parse_box_values("a red car") is None
    True
    """
    parts = text.strip().strip("[]").split(",")
    if len(parts) == 4:  # the usual "[x1, y1, x2, y2]": plain float() is several times faster than the regex
        try:
            return [float(part) for part in parts]
        except ValueError:
            pass
    numbers = _NUMBER.findall(text)
    if len(numbers) != 4:
        return None
    return [float(n) for n in numbers]


def box_string_scale(text: str, values: list[float]) -> BoxScale:
    """Which convention a VisCOT box string uses: 0-1 floats or 0-1000 integers.

    Values written with a decimal point and none above 1.5 are 0-1; anything else (integers, or floats
    above 1.5) is 0-1000. The rule never looks at the image, so it is the same for every record.

    >>> box_string_scale("[0.0, 0.5, 1.0, 1.0]", [0, 0.5, 1, 1])
    'unit'
    >>> box_string_scale("[0, 500, 1000, 1000]", [0, 500, 1000, 1000])
    'norm1000'
    """
    has_decimals = "." in text or "e" in text or "E" in text
    return "unit" if has_decimals and max(map(abs, values)) <= 1.5 else "norm1000"


def string_box_to_pixels(
    values: list[float], scale: BoxScale, width: int, height: int, frame: Literal["padded", "original"] = "padded"
) -> tuple[float, float, float, float]:
    """A VisCOT box string's values to absolute pixels of the original image.

    ``frame="padded"`` (VisCOT's own convention, for both scales): relative to the image padded to a
    centered square. ``frame="original"``: relative to the original image (some re-exports do that).

    >>> [round(v) for v in string_box_to_pixels([0.542, 0.686, 0.592, 0.786], "unit", 391, 500)]
    [217, 343, 242, 393]
    >>> [round(v) for v in string_box_to_pixels([542, 686, 592, 786], "norm1000", 391, 500)]
    [217, 343, 242, 393]
    """
    unit = values if scale == "unit" else [v / 1000 for v in values]
    if frame == "original":
        return (unit[0] * width, unit[1] * height, unit[2] * width, unit[3] * height)
    return viscot_padded_to_pixels(unit, width, height)


def viscot_slack(width: int, height: int) -> tuple[float, float]:
    """How far (pixels, x and y) a VisCOT box may poke out of its image and be clamped (:data:`OUTSIDE_TOLERANCE`, at
    least 2 px and a 3-decimal padded string's precision).

    >>> viscot_slack(100, 50), viscot_slack(4000, 3000)
    ((2.0, 2.0), (80.0, 60.0))
    """
    string_step = 0.001 * (width if width > height else height)
    return max(2.0, OUTSIDE_TOLERANCE * width, string_step), max(2.0, OUTSIDE_TOLERANCE * height, string_step)


def box_problem(pixels: tuple[float, ...] | list[float], width: int, height: int) -> str | None:
    """Why a pixel box cannot be used on a ``width`` x ``height`` image (reason code), or ``None``."""
    return pixel_box_problem(pixels, width, height, slack=viscot_slack(width, height))


def _pixel_box(
    box_string: str, box_text: str | None, width: int, height: int, frame: Literal["padded", "original"]
) -> tuple[tuple[float, ...], str, tuple[float, float, float, float] | None] | None:
    """``(pixels, box_source, the box string's pixels)`` of an item; ``None`` when it has no box at all.

    The absolute ``###`` box wins when there is one; the first gpt turn's box string (``box_string``) is still
    read, for the data check in provenance (``string_box_delta``).
    """
    string_values = parse_box_values(box_string)
    from_string: tuple[float, float, float, float] | None = None
    string_source = ""
    if string_values is not None:
        scale = box_string_scale(box_string, string_values)
        from_string, string_source = string_box_to_pixels(string_values, scale, width, height, frame), scale
    absolute = parse_box_values(box_text) if box_text is not None else None
    if absolute is not None:
        return tuple(absolute), "absolute", from_string
    if from_string is not None:
        return from_string, f"string_{string_source}", from_string
    return None


# --------------------------------------------------------------------------------------------------
# Reference label and rationale
# --------------------------------------------------------------------------------------------------

_DETERMINER = re.compile(r"\b(?:the|this|that|these|those)\s+")
_TOKEN = re.compile(r"[a-z][a-z\-']*|\S")
_STOP_WORDS = frozenset(
    "in on of at to with from for by near behind under above below over beside between into onto inside outside "
    "next and or but is are was were be been being has have had do does did can could will would should shown "
    "seen visible that which who whom whose what where when why how this these those there here it its "
    "left right front back top bottom side middle center o read reads say says consist consists parallel "
    "perpendicular located written doing wearing holding".split()
)
_GENERIC_NOUNS = frozenset(
    "name picture image photo photograph document page invoice receipt form question scene area region "
    "kind type color colour number no one ones thing things".split()
)
_KIND_OF = re.compile(r"\b(?:kind|type|sort|brand) of ([a-z][a-z\-']*)")
_MAX_LABEL_WORDS = 4


def ref_label(question: str, subset: str) -> str:
    """A short name for the region a VisCOT box marks (VisCOT gives a box, never a label).

    The first noun phrase after a determiner in the question (``the``/``this``/...), cut at the first
    preposition or verb, skipping generic nouns (``name``, ``picture``...); else the noun after
    ``kind of``/``type of``; else ``text`` for document
    and scene-text subsets, ``bird`` for CUB, ``person`` for EMOTIC, ``relevant region`` otherwise.
    Deterministic, so reruns give the same label (``docs/convert.md``).

    >>> ref_label("What are the tree branches in front of?", "gqa")
    'tree branches'
    >>> ref_label("What is the name of the Dealer ?", "docvqa")
    'dealer'
    >>> ref_label("what kind of comupter is this?", "textvqa")
    'comupter'
    >>> ref_label("Is it sunny?", "sroie")
    'text'
    """
    lowered = question.lower()
    for match in _DETERMINER.finditer(lowered):
        words: list[str] = []
        for token in _TOKEN.finditer(lowered, match.end(), match.end() + 80):
            word = token.group()
            if not word[0].isalpha() or word in _STOP_WORDS or (words and word.endswith(("ing", "ed"))):
                break
            words.append(word)
            if len(words) == _MAX_LABEL_WORDS:
                break
        if words and not all(w in _GENERIC_NOUNS for w in words):
            return " ".join(words)
    kind_of = _KIND_OF.search(lowered)
    if kind_of and kind_of.group(1) not in _STOP_WORDS | _GENERIC_NOUNS:
        return kind_of.group(1)
    if subset in TEXT_SUBSETS:
        return "text"
    return DEFAULT_LABELS.get(subset, "relevant region")


def grounded_rationale(label: str, box: tuple[int, int, int, int] | list[int], answer: str) -> str:
    """The training target: a short grounded rationale naming the region, ending with the answer.

    >>> grounded_rationale("tree branches", (555, 686, 619, 786), "window")
    'I find the <ref>tree branches</ref><box>[555, 686, 619, 786]</box> and read the answer there. Answer: window'
    """
    x1, y1, x2, y2 = box  # format_box, written out
    return (
        f"I find the <ref>{label}</ref><box>[{x1}, {y1}, {x2}, {y2}]</box> and read the answer there. Answer: {answer}"
    )


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


def strip_prompt(question: str) -> str:
    """The question without VisCOT's request for a box.

    >>> strip_prompt("What is it? " + PROMPT_SUFFIX)
    'What is it?'
    """
    if question.endswith(PROMPT_SUFFIX):
        return question[: -len(PROMPT_SUFFIX)].rstrip()
    if question.endswith(PROMPT_SUFFIX[:-1]):
        return question[: -len(PROMPT_SUFFIX) + 1].rstrip()
    return question


def _split_image_field(image: Any) -> tuple[str | None, str | None]:
    """``(path, absolute box text)`` from ``image``: a string or ``[path, "path###[x1, y1, x2, y2]"]``."""
    entries = image if isinstance(image, list) else [image]
    path: str | None = None
    box_text: str | None = None
    for entry in entries:
        if not isinstance(entry, str):
            continue
        head, sep, tail = entry.partition("###")
        path = path or head.strip() or None
        if sep and box_text is None:
            box_text = tail
    return path, box_text


def _viscot_shape(conversations: list[dict[str, Any]]) -> bool:
    """Whether the turns are VisCoT's: a question asking for the box, the box, the image again, the answer.

    ``viscot_mixed_2m.json`` also holds LLaVA-1.5's and Shikra's items: several question/answer pairs, so the first
    question, first box and last answer would belong to different exchanges.

    >>> turn = lambda who, text: {"from": who, "value": text}
    >>> _viscot_shape([turn("human", "Q?"), turn("gpt", "[1, 2, 3, 4]"), turn("human", "<image>"), turn("gpt", "A")])
    True
    >>> _viscot_shape([turn("human", "Q?"), turn("gpt", "[1, 2, 3, 4]"), turn("human", "Q2?"), turn("gpt", "A2")])
    False
    """
    roles = [turn.get("from") for turn in conversations]
    return roles == ["human", "gpt", "human", "gpt"] and conversations[2]["value"].replace("<image>", "").strip() == ""


def _turns(conversations: Any) -> tuple[list[str], list[str]] | None:
    """Human and gpt turn texts, or ``None`` when the conversation is not a list of turns."""
    if not isinstance(conversations, list):
        return None
    human: list[str] = []
    gpt: list[str] = []
    for turn in conversations:
        value = turn.get("value") if isinstance(turn, dict) else None
        if not isinstance(value, str):
            return None
        (human if turn.get("from") == "human" else gpt).append(value)
    return human, gpt


def _subset(item: dict[str, Any], path: str | None) -> str:
    dataset = item.get("dataset")
    if isinstance(dataset, str) and dataset.strip():
        return dataset.strip().lower()
    parts = size_key(path or "").split("/")
    return parts[0].lower() if len(parts) > 1 and parts[0] else "unknown"


def _record_id(item: dict[str, Any], subset: str, index: int) -> str:
    split = item.get("split")
    prefix = f"viscot:{subset}:{split}:" if isinstance(split, str) and split else f"viscot:{subset}:"
    for key in ("question_id", "id"):
        value = item.get(key)
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            text = str(value).strip()
            if text:
                return prefix + text
    return f"viscot:{subset}:item{index}"


class VisCotConverter:
    """Turns one VisCOT item into a record or a rejection; holds the size index and settings."""

    def __init__(
        self,
        *,
        images: str,
        sizes: dict[str, int],
        source_file: str,
        read_headers: bool = True,
        check_images: bool = False,
        frame: Literal["padded", "original"] = "padded",
    ) -> None:
        self.images = images
        self.sizes = sizes
        self.source_file = source_file
        self.read_headers = read_headers
        self.check_images = check_images
        self.frame = frame
        self.max_pixels = decodable_pixels()

    def image_size(self, path: str, subset: str) -> tuple[int, int, str] | Rejection | None:
        """``(width, height, where from)``; ``None`` when unknown; a rejection when the image is bad."""
        key = size_key(path)
        packed = self.sizes.get(key)
        if packed is None and "/" in key:  # metadata filed under the item's dataset (textcap under textvqa)
            packed = self.sizes.get(f"{subset}/{key.split('/', 1)[1]}")
        if packed is None:  # metadata filed under the folder's other name (v7w / visual7w)
            packed = self.sizes.get(alias_key(key) or "")
        if packed is not None and not self.check_images:
            width, height = packed >> 32, packed & 0xFFFFFFFF
            if self.max_pixels is not None and width * height > self.max_pixels:  # train could never load it
                return Rejection(TOO_LARGE, f"metadata: {too_large(width, height, self.max_pixels)}", -1)
            return width, height, "metadata"
        if not (self.read_headers or self.check_images):
            return None
        try:
            width, height = size_from_uri(storage.join(self.images, path))
        except ImageProblem as problem:
            return Rejection(problem.reason, problem.detail, -1)
        if packed is not None and (width, height) != (packed >> 32, packed & 0xFFFFFFFF):
            return Rejection(
                "size_mismatch",
                f"metadata says {packed >> 32}x{packed & 0xFFFFFFFF}, the image header {width}x{height}",
                -1,
            )
        return width, height, "header"

    def _provenance(
        self, item: dict[str, Any], index: int, subset: str, box_source: str, size_source: str
    ) -> dict[str, Any]:
        """Where a record came from (file, index, ids) and how its box and size were read, for audits."""
        return {
            "dataset": subset,
            "source_file": self.source_file,
            "source_index": index,
            "source_split": item.get("split"),
            "question_id": item.get("question_id"),
            "box_source": box_source,
            "size_source": size_source,
        }

    def convert(self, index: int, item: Any) -> Item:
        """The item's record, or a rejection with the first reason it gives none."""
        if not isinstance(item, dict):
            return Rejection("not_an_object", f"item is {type(item).__name__}, not an object", index, raw=item)
        path, box_text = _split_image_field(item.get("image"))
        subset = _subset(item, path)
        record_id = _record_id(item, subset, index)

        def reject(reason: str, detail: str) -> Rejection:
            return Rejection(reason, detail, index, id=record_id, subset=subset, raw=item)

        turns = _turns(item.get("conversations"))
        if turns is None:
            return reject("bad_conversations", "conversations is not a list of {from, value} turns")
        if not _viscot_shape(item["conversations"]):
            return reject("not_viscot_item", "not VisCoT's four turns (question, box, <image>, answer): a LLaVA or "
                          "Shikra item of the mixed file, whose box is no reasoning step for its answer")
        human, gpt = turns
        question = strip_prompt(clean_text(human[0])) if human else ""
        answer = gpt[-1].strip() if len(gpt) >= 2 else ""
        if path is None:
            return reject("missing_image", "the item names no image")
        if not question:
            return reject("missing_question", "no human turn with a question")
        if not answer:
            return reject("missing_answer", "no final gpt turn with the answer")
        if has_bad_encoding(path, question, answer, box_text, gpt[0]):
            return reject("bad_encoding", "the item holds bytes that are not valid UTF-8")

        size = self.image_size(path, subset)
        if isinstance(size, Rejection):
            return reject(size.reason, size.detail)
        if size is None:
            return reject("missing_size", f"no width/height for {path} in the metadata, and image headers are off")
        width, height, size_source = size

        found = _pixel_box(gpt[0], box_text, width, height, self.frame)  # gpt has 2+ turns: answer is not empty
        if found is None:
            return reject("missing_box", "neither a ###[x1, y1, x2, y2] box nor a box string in the first gpt turn")
        pixels, box_source, from_string = found

        problem = box_problem(pixels, width, height)
        if problem is not None:
            return reject(problem, f"pixel box {[round(v, 1) for v in pixels]} on a {width}x{height} image")
        box = pixels_to_norm1000(pixels, width, height)
        problem = validate_box(box)
        if problem is not None:
            return reject(f"{problem}_box", f"box {list(box)} (0-1000) from pixels {[round(v, 1) for v in pixels]}")

        provenance = self._provenance(item, index, subset, box_source, size_source)
        if box_source == "absolute" and from_string is not None and box_problem(from_string, width, height) is None:
            # Both present: record how far the padded-string reading is from the absolute box (a data check).
            x1, y1, x2, y2 = pixels_to_norm1000(from_string, width, height)
            provenance["string_box_delta"] = max(abs(x1 - box[0]), abs(y1 - box[1]), abs(x2 - box[2]), abs(y2 - box[3]))

        label = ref_label(question, subset)
        return {
            "id": record_id,
            "source": "viscot",
            "subset": subset,
            "image": storage.join(self.images, path),
            "width": width,
            "height": height,
            "question": question,
            "answer": answer,
            "choices": None,
            "answer_index": None,
            "objects": [{"ref": label, "box": list(box)}],
            "rationale": grounded_rationale(label, box, answer),
            "needs_distillation": False,
            "provenance": provenance,
        }


def iter_blocks(
    input_uri: str,
    *,
    images: str,
    metadata: str | None,
    owns: Owns,
    val_fraction: float,
    compresslevel: int | None,
    workers: int = 1,
    read_headers: bool = True,
    check_images: bool = False,
    frame: Literal["padded", "original"] = "padded",
    chunk_bytes: int | None = None,
) -> Iterator[RoutedBlock]:
    """Convert and route every owned item of a VisCOT file, in input order, in blocks of routed lines.

    A JSON array is cut into chunks (:mod:`vcot.convert.array_chunks`) that ``workers`` processes parse,
    convert and route in parallel; the blocks come back in input order, so the output does not depend
    on ``workers``. Where the chunking heuristic misses (or the file is JSONL), the items are streamed
    here instead, from that point on, and give the same records.
    """
    sizes = load_sizes(metadata) if metadata else {}
    job = ChunkJob(
        VisCotConverter(
            images=images,
            sizes=sizes,
            source_file=input_uri.rsplit("/", 1)[-1],
            read_headers=read_headers,
            check_images=check_images,
            frame=frame,
        ),
        owns,
        val_fraction,
        compresslevel,
    )
    if input_uri.endswith((".jsonl", ".jsonl.gz")):
        yield from route_blocks(_convert(job, enumerate(iter_jsonl(input_uri))), val_fraction, compresslevel)
        return
    fallback: Unchunkable | None = None
    with storage.open_uri(input_uri, "rb") as handle:
        chunks = iter_array_chunks(handle, chunk_bytes or CHUNK_BYTES)
        results = ordered_map(_route_chunk, job, chunks, workers=workers)
        with closing(results):
            for result in results:
                if isinstance(result, Unchunkable):
                    fallback = result
                    break
                yield result
    if fallback is not None:
        log.info("streaming_fallback", uri=input_uri, from_item=fallback.base, byte=fallback.offset, why=fallback.why)
        items = iter_json_array(input_uri, start=fallback.offset)
        yield from route_blocks(_convert(job, enumerate(items, start=fallback.base)), val_fraction, compresslevel)


@dataclass(frozen=True)
class ChunkJob:
    """What converting any part of one VisCOT file needs; worker processes inherit it through fork."""

    converter: VisCotConverter
    owns: Owns
    val_fraction: float
    compresslevel: int | None


def _route_chunk(job: ChunkJob, chunk: ArrayChunk | Unchunkable) -> RoutedBlock | Unchunkable:
    """One chunk parsed, converted and routed; an :class:`Unchunkable` when it is not whole elements (see there)."""
    if isinstance(chunk, Unchunkable):
        return chunk
    with paused_gc():
        items = parse_chunk(chunk)
        if isinstance(items, Unchunkable):  # orjson refused it: yajl decides, for this chunk only if it can
            items = stream_chunk(chunk, refused=items)
            if isinstance(items, Unchunkable):
                return items
        return route_block(_convert(job, enumerate(items, start=chunk.base)), job.val_fraction, job.compresslevel)


CHUNK_BYTES = DEFAULT_CHUNK_BYTES
"""Bytes of the JSON array per chunk handed to a worker (tests make it small to exercise many chunks)."""


def _convert(job: ChunkJob, indexed_items: Iterable[tuple[int, Any]]) -> Iterator[Item]:
    convert, owns = job.converter.convert, job.owns
    for index, item in indexed_items:
        if not owns(index):
            continue
        if isinstance(item, BadLine):
            yield Rejection(item.reason, item.detail, index, raw=item.raw)
        else:
            yield convert(index, item)
