"""Cut a JSON array of objects into chunks of whole elements, cheaply, so several processes can parse it.

A multi-GB array (VisCOT's ``viscot_mixed_2m.json``) has no index: finding where each element ends
normally takes a full parse, which is what ijson does at ~4 us per item in one process. This module
cuts it without parsing, then proves every cut with the parse that has to happen anyway:

1. The first element's opening bytes up to its first key (``{"dataset"``) are the *marker*. In valid
   JSON that byte sequence can only be structural: the ``"`` after ``{`` cannot sit unescaped inside
   a string. Elements of a homogeneous array all start with it.
2. The reader cuts each chunk just before the last marker preceded by a ``,`` in a block of about
   ``chunk_bytes`` and counts the markers in it (both C-speed ``bytes`` methods).
3. Whoever parses the chunk checks it (:func:`parse_chunk`): ``b"[" + chunk + b"]"`` must be valid
   JSON (a valid completion by one ``]`` means the cut fell right after a complete top-level
   element, given the chunk started at one) and hold exactly ``count`` elements (so the global item
   indices of every later chunk are right). A chunk orjson refuses (invalid UTF-8, a lone surrogate,
   a 19-digit number) is read by yajl instead (:func:`stream_chunk`), under the same two checks.
   A check failing means the heuristic missed, never a wrong result: the caller then streams the rest
   of the file from that chunk's byte offset (:func:`vcot.convert.common.iter_json_array` with ``start=``).

Heterogeneous arrays, elements that are not objects and syntax errors take that fallback, which reads
them exactly as before (``docs/convert.md``).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

DEFAULT_CHUNK_BYTES = 1 << 19
"""Target chunk size (512 KiB, ~1,000 VisCOT items): enough work per hand-over (~30 ms), little memory per worker."""
MAX_CHUNK_BYTES = 1 << 26
"""A chunk that finds no cut in 64 MiB (one giant element) stops the chunking: the streaming parser takes over."""

_WHITESPACE = b" \t\r\n"
_COMMA = ord(",")
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19
_ZERO, _DOT = ord("0"), ord(".")
_FIRST_KEY = re.compile(rb'\{[ \t\r\n]*"(?:[^"\\]|\\.)*"')


@dataclass(frozen=True)
class ArrayChunk:
    """Whole elements ``base .. base + count - 1`` of the array, comma-separated, from byte ``offset`` of the file."""

    offset: int
    base: int
    count: int
    data: bytes


@dataclass(frozen=True)
class Unchunkable:
    """Where chunking stopped: the streaming parser must read the file from ``offset`` (element ``base`` on)."""

    offset: int
    base: int
    why: str


def iter_array_chunks(handle: IO[bytes], chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[ArrayChunk | Unchunkable]:
    """Chunks of the JSON array read from ``handle``; the last item is an :class:`Unchunkable` when cutting stops.

    Nothing here is trusted: every chunk must still pass :func:`parse_chunk`.

    >>> import io
    >>> chunks = list(iter_array_chunks(io.BytesIO(b'[{"a": 1}, {"a": 2},\\n {"a": 3}]'), chunk_bytes=12))
    >>> [(c.offset, c.base, c.count, c.data) for c in chunks]
    [(1, 0, 1, b'{"a": 1}'), (11, 1, 1, b'{"a": 2}'), (22, 2, 1, b'{"a": 3}')]
    >>> list(iter_array_chunks(io.BytesIO(b'[1, 2]')))
    [Unchunkable(offset=1, base=0, why='the elements are not JSON objects')]
    """
    buffer = handle.read(chunk_bytes)
    start = buffer.find(b"[")  # only a BOM or whitespace may come before it; a parser will say if not
    if start < 0 or buffer[:start].strip(_WHITESPACE):  # like yajl, no byte-order mark
        yield Unchunkable(0, 0, "the file does not start with a JSON array")
        return
    offset = start + 1  # file offset of buffer[0]
    buffer = buffer[start + 1 :]
    while True:  # read until the first element's first key is whole (or there is no more)
        stripped = buffer.lstrip(_WHITESPACE)
        first_key = _FIRST_KEY.match(stripped)
        if first_key or stripped.startswith(b"]") or (stripped and stripped[:1] != b"{"):
            break
        more = handle.read(chunk_bytes) if len(buffer) <= MAX_CHUNK_BYTES else b""
        if not more:
            break
        buffer += more
    offset += len(buffer) - len(stripped)
    buffer = stripped
    if buffer.startswith(b"]"):  # an empty array: nothing but whitespace may follow
        if (buffer[1:] + handle.read()).strip(_WHITESPACE):
            yield Unchunkable(0, 0, "something follows the empty array")
        return
    if first_key is None:
        why = "the elements are not JSON objects" if buffer[:1] != b"{" else "the first element has no key"
        yield Unchunkable(offset, 0, why)
        return
    marker = first_key.group()
    base = 0
    eof = False
    while True:
        cut = -1 if eof else _last_cut(buffer, marker)
        if cut <= 0 and not eof:
            if len(buffer) > MAX_CHUNK_BYTES:
                yield Unchunkable(offset, base, f"no element boundary within {MAX_CHUNK_BYTES >> 20} MiB")
                return
            more = handle.read(chunk_bytes)
            eof = not more
            buffer += more
            continue
        if eof:  # the rest is the last chunk: it must end with the array's "]"
            data = buffer.rstrip(_WHITESPACE)
            if not data.endswith(b"]"):
                yield Unchunkable(offset, base, "the file does not end with ']'")
                return
            data = data[:-1].rstrip(_WHITESPACE)
            if data:
                yield ArrayChunk(offset, base, data.count(marker), data)
            return
        data = buffer[:cut].rstrip(_WHITESPACE)[:-1].rstrip(_WHITESPACE)  # drop the "," between elements
        count = data.count(marker)
        yield ArrayChunk(offset, base, count, data)
        base += count
        offset += cut
        buffer = buffer[cut:]
        if len(buffer) < chunk_bytes:
            more = handle.read(chunk_bytes)
            eof = not more
            buffer += more


def _last_cut(buffer: bytes, marker: bytes) -> int:
    """Position of the last marker after position 0 that follows a ``,`` (an element start, if the heuristic holds)."""
    end = len(buffer)
    while True:
        position = buffer.rfind(marker, 1, end)
        if position <= 0:
            return -1
        before = position - 1
        while before >= 0 and buffer[before] in _WHITESPACE:
            before -= 1
        if before >= 0 and buffer[before] == _COMMA:
            return position
        end = position


def _has_long_integer(data: bytes) -> bool:
    """Whether ``data`` holds a run of 19+ digits that is not a fraction's (after a ``.``): what yajl may refuse.

    >>> _has_long_integer(b'{"v": 0.00017185172903924284}'), _has_long_integer(b'{"v": 12345678901234567890}')
    (False, True)
    """
    digits = data.translate(_DIGITS_AS_ZERO)  # ~20x faster than re's [0-9]{19}
    position = digits.find(_LONG_NUMBER)
    while position >= 0:
        if position == 0 or data[position - 1] != _DOT:
            return True
        end = position
        while end < len(digits) and digits[end] == _ZERO:
            end += 1
        position = digits.find(_LONG_NUMBER, end)
    return False


def parse_chunk(chunk: ArrayChunk) -> list[Any] | Unchunkable:
    """The chunk's elements, or an :class:`Unchunkable` when the streaming parser must read it instead.

    That is when the chunk is not exactly ``count`` whole elements, when orjson refuses it (invalid
    UTF-8, a syntax error, a lone surrogate) and when it holds a run of 19 or more digits (not a fraction's): yajl refuses
    integers beyond 64 bits where orjson reads them as floats, so those chunks go to yajl to be read
    exactly as before (a long digit string inside a text only costs speed).

    >>> parse_chunk(ArrayChunk(0, 0, 2, b'{"a": 1}, {"a": 2}'))
    [{'a': 1}, {'a': 2}]
    >>> parse_chunk(ArrayChunk(7, 0, 2, b'{"a": [{"a": 1}')).why
    'the chunk at byte 7 is not 2 whole elements'
    """
    if _has_long_integer(chunk.data):
        return Unchunkable(chunk.offset, chunk.base, f"the chunk at byte {chunk.offset} has a 19+ digit number")
    try:
        items = orjson.loads(b"[" + chunk.data + b"]")
    except orjson.JSONDecodeError:
        items = None
    if items is None or len(items) != chunk.count:
        return Unchunkable(
            chunk.offset, chunk.base, f"the chunk at byte {chunk.offset} is not {chunk.count} whole elements"
        )
    return items


def stream_chunk(chunk: ArrayChunk, refused: Unchunkable) -> list[Any] | Unchunkable:
    """A chunk orjson refused, read by the streaming parser (yajl, undecodable bytes replaced) instead.

    A long digit string in a text, a lone surrogate or one bad byte then costs this chunk's speed, not the rest
    of the file's. The same two checks prove the cut (yajl must read ``[chunk]`` whole, with ``count`` items);
    if they fail, the cut or the file is wrong and ``refused`` sends the rest of the file to the streaming parser,
    which raises on a real syntax error.

    >>> stream_chunk(ArrayChunk(0, 0, 1, b'{"a": "\\xff"}'), Unchunkable(0, 0, "refused")).pop()["a"]
    '\\ufffd'
    """
    import ijson

    from vcot.convert.common import Utf8Repair, ijson_backend

    try:
        items = list(ijson_backend().items(Utf8Repair(io.BytesIO(b"[" + chunk.data + b"]")), "item", use_float=True))
    except ijson.JSONError:
        return refused
    return items if len(items) == chunk.count else refused
