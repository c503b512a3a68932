"""The JSON array chunker: chunks that pass parse_chunk are exactly the array's elements, and a miss says where to resume."""

from __future__ import annotations

import io
import json

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from vcot.convert.array_chunks import ArrayChunk, Unchunkable, iter_array_chunks, parse_chunk

# Strings that look like structure: element separators, the marker with and without escapes, brackets, quotes.
tricky_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(['}, {"id": 1}', '{"id"', '"}, {"', "\\", '\\"', "]", "[", "},\n{", "\u00e9\u4e2d", "\n"]),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**62), 2**62)
    | st.floats(allow_nan=False, allow_infinity=False)
    | tricky_text,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.one_of(st.just("id"), st.text(max_size=4)), children, max_size=3)
    ),
    max_leaves=10,
)
# Mostly homogeneous objects (all start with "id", as real datasets do), sometimes other keys or a nested "id" object.
elements = st.lists(
    st.builds(
        lambda rest, value: {"id": value, **rest},
        st.dictionaries(st.text(max_size=4), json_values, max_size=3),
        json_values,
    )
    | st.dictionaries(st.text(max_size=4), json_values, max_size=3),
    max_size=12,
)
layouts = st.sampled_from([{}, {"indent": 2}, {"separators": (",", ":")}, {"ensure_ascii": False}])


def _read(data: bytes, chunk_bytes: int) -> tuple[list, Unchunkable | None]:
    """The elements the chunker proves, and where it stopped (if it did)."""
    parsed: list = []
    for chunk in iter_array_chunks(io.BytesIO(data), chunk_bytes):
        items = parse_chunk(chunk) if isinstance(chunk, ArrayChunk) else chunk
        if isinstance(items, Unchunkable):
            return parsed, items
        assert len(parsed) == chunk.base
        parsed.extend(items)
    return parsed, None


@given(elements, layouts, st.integers(8, 400), st.sampled_from([b"", b"\n", b"  \r\n", b"\xef\xbb\xbf"]))
def test_chunks_are_the_elements_and_a_miss_points_at_the_next_element(
    items: list, layout: dict, chunk_bytes: int, lead: bytes
) -> None:
    data = lead + json.dumps(items, **layout).encode("utf-8") + b"\n"
    parsed, stop = _read(data, chunk_bytes)
    if stop is None:
        assert parsed == items
        return
    assert parsed == items[: stop.base]
    rest = orjson.loads(b"[" + data[stop.offset :]) if stop.offset else json.loads(data.decode("utf-8-sig"))
    assert rest == items[stop.base :], stop.why


plain_values = st.recursive(  # integers under 19 digits: longer ones go to the streaming parser (see below)
    st.none() | st.integers(-(10**18) + 1, 10**18 - 1) | st.floats(allow_nan=False, allow_infinity=False) | tricky_text,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=4).filter(lambda k: k != "id"), children, max_size=3)
    ),
    max_leaves=10,
)


@given(st.lists(st.builds(lambda v: {"id": 1, "v": v}, plain_values), max_size=30), layouts, st.integers(8, 400))
@example([{"id": 1, "v": 0.00017185172903924284}], {}, 8)  # a fraction's 19+ digits are no 64-bit integer
def test_a_homogeneous_array_never_misses(items: list, layout: dict, chunk_bytes: int) -> None:
    """Whatever the strings hold, elements that all start with the same key are cut, counted and parsed exactly."""
    assert _read(json.dumps(items, **layout).encode("utf-8"), chunk_bytes) == (items, None)


def test_a_homogeneous_file_is_read_in_many_chunks_without_a_miss() -> None:
    items = [
        {"id": i, "text": '"}, {"id": ' * (i % 4) + "[{", "turns": [{"from": "a"}, {"x": [1, 2]}]} for i in range(200)
    ]
    data = json.dumps(items).encode()
    chunks = list(iter_array_chunks(io.BytesIO(data), 256))
    assert len(chunks) > 20 and all(isinstance(chunk, ArrayChunk) for chunk in chunks)
    assert _read(data, 256) == (items, None)


def test_a_nested_object_with_the_first_key_is_a_miss_not_a_wrong_count() -> None:
    items = [{"id": i, "turns": [{"id": 0}]} for i in range(50)]
    parsed, stop = _read(json.dumps(items).encode(), 256)
    assert parsed == [] and stop is not None and stop.base == 0 and "whole elements" in stop.why


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"[1, 2]", "not JSON objects"),
        (b'{"a": 1}', "does not start with a JSON array"),
        (b'[{"a": 1}, {"a": 2}', "does not end with ']'"),
        (b"[{}]", "no key"),
        (b"[] x", "follows the empty array"),  # yajl calls that trailing garbage
        (b'\xef\xbb\xbf[{"a": 1}]', "does not start with a JSON array"),  # yajl refuses a byte-order mark too
    ],
)
def test_what_cannot_be_chunked_says_why(data: bytes, why: str) -> None:
    chunks = list(iter_array_chunks(io.BytesIO(data), 64))
    assert isinstance(chunks[-1], Unchunkable) and why in chunks[-1].why


def test_an_empty_array_has_no_chunks() -> None:
    assert list(iter_array_chunks(io.BytesIO(b" [ \n ] \n"))) == []


@pytest.mark.parametrize(
    ("data", "count", "why"),
    [
        (b'{"a": 18446744073709551616}', 1, "19+ digit"),  # orjson would read a float, yajl refuses it: yajl decides
        (b'{"a": "\xff"}', 1, "whole elements"),  # invalid UTF-8: the streaming parser marks that one record
        (b'{"a": 1}, {"a": 2}', 3, "whole elements"),  # a count the heuristic got wrong
        (b'{"a": 1}, {"a": ', 2, "whole elements"),  # a cut inside an element
    ],
)
def test_chunks_the_fast_parser_must_not_read_go_to_the_streaming_parser(data: bytes, count: int, why: str) -> None:
    result = parse_chunk(ArrayChunk(10, 5, count, data))
    assert isinstance(result, Unchunkable) and why in result.why and (result.offset, result.base) == (10, 5)
