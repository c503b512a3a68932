"""What every source converter shares: the owned-item loop, streaming readers and small text helpers.

A converter is a generator of items, one per input item: either a record (a plain dict in the
schema of ``docs/records.md``) or a :class:`Rejection` saying why the item cannot be used. It never
raises on bad data, so the pipeline can always account for every input item.
"""

from __future__ import annotations

import codecs
import gc
import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import orjson

from vcot.errors import VcotError, require
from vcot.grounding.records import Rejection
from vcot.io import storage
from vcot.log import get_logger

log = get_logger(__name__)

Owns = Callable[[int], bool]
"""Whether this shard converts the item at a given input position (``ShardSpec.owns``)."""

T = TypeVar("T")


def owned(items: Iterable[T], owns: Owns) -> Iterator[tuple[int, T]]:
    """``(input position, item)`` of the items this shard converts: the one loop every source shares.

    >>> list(owned("abcde", lambda position: position % 2 == 1))
    [(1, 'b'), (3, 'd')]
    """
    for position, item in enumerate(items):
        if owns(position):
            yield position, item

Item = dict[str, Any] | Rejection


def has_bad_encoding(*values: Any) -> bool:
    """Whether any string holds U+FFFD, which is what undecodable input bytes turn into on reading."""
    for value in values:  # a loop, not any(<generator>): this runs once per input item
        if isinstance(value, str) and "\ufffd" in value:
            return True
    return False


# --------------------------------------------------------------------------------------------------
# Streaming readers
# --------------------------------------------------------------------------------------------------


def ijson_backend() -> Any:
    """ijson's C backend (yajl2_c, several times faster) when built, else the best available one."""
    import ijson

    try:
        return ijson.get_backend("yajl2_c")
    except ImportError:  # pragma: no cover - depends on the wheel
        return ijson


_COUNTED_REPLACE = "vcot.counted_replace"
"""The codec error handler :class:`Utf8Repair` decodes with: ``replace``, counting each replacement per thread, so
that a stream knows whether it replaced a byte (a U+FFFD the file really holds is no replacement)."""
_counts = threading.local()


def _replace_counting(error: UnicodeError) -> tuple[str, int]:
    _counts.replaced = _replacements_in_this_thread() + 1
    return "\ufffd", error.end  # type: ignore[attr-defined]


def _replacements_in_this_thread() -> int:
    return getattr(_counts, "replaced", 0)


codecs.register_error(_COUNTED_REPLACE, _replace_counting)


class Utf8Repair:
    """A byte stream re-encoded with undecodable bytes replaced by U+FFFD (and a leading byte-order mark dropped).

    yajl stops the whole parse at the first invalid UTF-8 byte; behind this wrapper the parse goes on
    and only the record holding the bad bytes is rejected (``bad_encoding``). Valid UTF-8 passes
    through unchanged. Each replacement is counted in the decoding thread (:func:`_replacements_in_this_thread`):
    until one is, a U+FFFD in the text is a real character of the file (an OCR result, say), not a bad byte.

    >>> import io
    >>> before = _replacements_in_this_thread()
    >>> Utf8Repair(io.BytesIO(codecs.BOM_UTF8 + "caf\ufffd".encode())).read().decode()
    'caf\ufffd'
    >>> _replacements_in_this_thread() - before, Utf8Repair(io.BytesIO(b"caf\\xe9")).read().decode()
    (0, 'caf\ufffd')
    >>> _replacements_in_this_thread() - before
    1
    """

    def __init__(self, source: IO[bytes], chunk_size: int = 1 << 16) -> None:
        self._source = source
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors=_COUNTED_REPLACE)  # -sig: a BOM goes
        self._chunk_size = chunk_size
        self._pending = b""
        self._offset = 0
        self._done = False

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            return b"".join(iter(lambda: self.read(self._chunk_size), b""))
        while self._offset >= len(self._pending) and not self._done:
            chunk = self._source.read(self._chunk_size)
            self._done = not chunk
            self._pending = self._decoder.decode(chunk, final=self._done).encode("utf-8")
            self._offset = 0
        data = self._pending[self._offset : self._offset + size]
        self._offset += len(data)
        return data


def require_input(uri: str, what: str) -> None:
    """Fail with one clear line when an input file is missing (a typo, or an upload that never happened)."""
    storage.check_access(uri)
    if not storage.exists(uri):
        raise VcotError(f"{what} {uri} does not exist: check --input (and that the data was uploaded)")


class _Prefixed:
    """A byte stream that reads ``prefix`` first, then ``source`` (an array resumed mid-file: ``b"["`` + the rest)."""

    def __init__(self, prefix: bytes, source: IO[bytes]) -> None:
        self._prefix = prefix
        self._source = source

    def read(self, size: int = -1) -> bytes:
        if not self._prefix:
            return self._source.read(size)
        data, self._prefix = self._prefix, b""
        return data + self._source.read(size - len(data) if size > 0 else size)


def iter_json_array(uri: str, prefix: str = "item", *, start: int = 0) -> Iterator[Any]:
    """Stream the items of a (possibly multi-GB) JSON array without loading it: one item in memory at a time.

    ``start``: the byte offset of an element to resume from (what :mod:`vcot.convert.array_chunks` found);
    the items before it are not read. A syntax error (a truncated download, a file that is not JSON)
    stops with a :class:`VcotError` naming the file: a partial conversion of a broken file must not be
    committed as if it were complete. A leading UTF-8 byte-order mark is skipped.
    """
    import ijson

    backend = ijson_backend()
    with storage.open_uri(uri, "rb") as handle:
        if start:
            handle.seek(start)
        stream = Utf8Repair(_Prefixed(b"[", handle) if start else handle)
        try:
            yield from backend.items(stream, prefix, use_float=True)
        except ijson.JSONError as exc:
            raise VcotError(
                f"{uri} is not a valid JSON array ({str(exc).splitlines()[0]}): the file is truncated or corrupt; "
                "download it again (records converted so far were not committed)"
            ) from exc


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside the block: for parsing and converting a batch of records.

    Tens of thousands of freshly parsed dicts trigger collection after collection, each walking
    every live container, for no gain (records hold no reference cycles; reference counting frees
    them): measured at ~1.9 us of a ~3.6 us parse per VisCOT item. Collection resumes after the block.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def iter_json_object(uri: str) -> Iterator[tuple[str, Any]]:
    """Stream the ``(key, value)`` pairs of a top-level JSON object (ScienceQA's ``problems.json``)."""
    import ijson

    backend = ijson_backend()
    with storage.open_uri(uri, "rb") as handle:
        try:
            yield from backend.kvitems(Utf8Repair(handle), "", use_float=True)
        except ijson.JSONError as exc:
            raise VcotError(
                f"{uri} is not a valid JSON object ({str(exc).splitlines()[0]}): download it again"
            ) from exc


@dataclass
class BadLine:
    """A JSONL line that could not be read as a JSON value."""

    reason: str
    detail: str
    raw: str


def iter_jsonl(uri: str) -> Iterator[Any | BadLine]:
    """Yield each non-blank line of a JSONL file parsed, or a :class:`BadLine` (the reading goes on).

    orjson reads a valid line ~1.5x faster (the metadata index reads one line per image); a line it refuses
    goes through ``json`` as before, which also takes what orjson does not (NaN, integers beyond 64 bits).
    """
    with storage.open_uri(uri, "rb", compression="infer_from_extension") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line_number == 1 and line.startswith(codecs.BOM_UTF8):  # Windows editors write one; JSON refuses it
                line = line[len(codecs.BOM_UTF8) :]
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                pass
            else:
                yield value
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield BadLine("bad_encoding", f"line {line_number}: {exc}", line.decode("utf-8", "replace"))
                continue
            try:
                yield json.loads(text)
            except (json.JSONDecodeError, RecursionError) as exc:
                yield BadLine("malformed_json", f"line {line_number}: {exc}", text)


def iter_json_items(uri: str) -> Iterator[Any | BadLine]:
    """Items of a ``.jsonl`` file (line by line) or of a JSON array (streamed), chosen by the file name."""
    name = uri.rsplit("/", 1)[-1]
    if name.endswith((".jsonl", ".jsonl.gz")):
        return iter_jsonl(uri)
    return iter_json_array(uri)


def iter_json_items_marked(uri: str) -> Iterator[tuple[Any | BadLine, bool]]:
    """:func:`iter_json_items` as ``(item, whether its strings may hold U+FFFD put in for invalid bytes)``.

    A JSONL line with invalid bytes is a :class:`BadLine` (never an item); an array's bytes are repaired
    (:class:`Utf8Repair`), so its items are marked once the file has had a byte replaced: a U+FFFD before
    that is a character the file really holds.
    """
    name = uri.rsplit("/", 1)[-1]
    if name.endswith((".jsonl", ".jsonl.gz")):
        for item in iter_jsonl(uri):
            yield item, False
        return
    before = _replacements_in_this_thread()  # the array is decoded in this thread, as its items are pulled
    for item in iter_json_array(uri):
        yield item, _replacements_in_this_thread() != before


# --------------------------------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------------------------------

_SPACES = re.compile(r"\s+")
_NOT_WORD = re.compile(r"[^a-z0-9 ]+")


def files_with_suffix(uri: str, suffix: str) -> list[str]:
    """``uri`` itself when it names a ``suffix`` file, else every ``suffix`` file under it (sorted): an input given as
    a file or as the folder holding them."""
    return [uri] if uri.endswith(suffix) else storage.list_uris(uri, suffix=suffix)


def iter_parquet_rows(uri: str, batch_size: int = 64) -> Iterator[dict[str, Any]]:
    """The rows of one Parquet file as dicts, read a few at a time (embedded images stay out of memory)."""
    pq = require("pyarrow.parquet", "convert")
    with storage.open_uri(uri, "rb") as handle:
        try:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_size):
                yield from batch.to_pylist()
        except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) on corrupt files
            raise VcotError(f"{uri} is not a readable Parquet file ({exc}): download or write it again") from exc


def clean_text(value: Any) -> str:
    """A source string stripped of the ``<image>`` placeholder and outer whitespace ("" for non-strings)."""
    if not isinstance(value, str):
        return ""
    return value.replace("<image>", "").strip()


def normalize_question(text: str) -> str:
    """Question text reduced for duplicate detection: first paragraph, lower case, words only.

    >>> normalize_question("<image>\\nWhat is  the Man holding?\\nOptions: A. bat")
    'what is the man holding'
    """
    text = clean_text(text)
    for marker in ("\nOptions", "\nChoices", "\nContext", "\nHint", "\n"):
        text = text.split(marker, 1)[0]
    return _SPACES.sub(" ", _NOT_WORD.sub(" ", text.lower())).strip()


def image_identity(path: str) -> str:
    """What names an image across datasets: the file stem, or its folder when the stem is generic.

    ScienceQA names every image ``<pid>/image.png``; COCO names carry the image id.

    >>> image_identity("coco/train2017/000000123456.jpg"), image_identity("sqa/train/17/image.png")
    ('000000123456', '17')
    """
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    if not parts:
        return ""
    stem = parts[-1].rsplit(".", 1)[0]
    if stem.lower() in ("image", "img", "0") and len(parts) > 1:
        return parts[-2]
    return stem


def dedup_key(question: str, image_path: str | None) -> str:
    """The key LLaVA-CoT items are matched on against A-OKVQA/ScienceQA records (``docs/convert.md``)."""
    return f"{normalize_question(question)}|{image_identity(image_path) if image_path else ''}"
