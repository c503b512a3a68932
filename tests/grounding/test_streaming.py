"""The incremental stream parser: cut anywhere, it reads exactly the boxes ``ModelFormat.read`` reads in the whole
text, in every box syntax and both frames, and it never reports a box before its mention is complete."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vcot.grounding.model_format import HOUSE, ModelFormat
from vcot.grounding.streaming import GroundedStream

WIDTH, HEIGHT = 391, 500
HOUSE_TEXT = (
    "First the <ref>red gear</ref><box>[100, 200, 300, 400]</box>, then the "
    "<ref>blue gear</ref> <box>[500, 500, 900, 950]</box>, a <box>[30, 20, 10, 40]</box> and "
    "<box>[0, 0, 1000, 1000]</box>. 3 < 4 <b>. Answer: red"
)
ABSOLUTE = ModelFormat.for_family(coords="qwen2.5-absolute", min_pixels=56 * 56, max_pixels=112 * 112)
FORMATS = {
    "house/norm1000": HOUSE,
    "house/absolute": ABSOLUTE,
    "json/norm1000": dataclasses.replace(HOUSE, box_syntax="json"),
    "json/absolute": dataclasses.replace(ABSOLUTE, box_syntax="json"),
    "qwen/norm1000": dataclasses.replace(HOUSE, box_syntax="qwen"),
    "obj/absolute": dataclasses.replace(ABSOLUTE, box_syntax="obj"),
}


def _stream(fmt: ModelFormat, chunks: list[str]) -> GroundedStream:
    stream = GroundedStream(fmt, width=WIDTH, height=HEIGHT)
    for chunk in chunks:
        stream.feed(chunk)
    stream.finish()
    return stream


def _cut(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def _assert_reads_as_whole(fmt: ModelFormat, text: str, chunks: list[str]) -> None:
    whole = fmt.read(text, WIDTH, HEIGHT)
    stream = _stream(fmt, chunks)
    assert stream.text == text
    assert stream.boxes == whole.boxes
    assert stream.invalid == whole.invalid


@pytest.mark.parametrize("name", FORMATS)
def test_a_stream_cut_in_two_at_every_position_reads_as_the_whole_text(name: str) -> None:
    fmt = FORMATS[name]
    text = fmt.render(HOUSE_TEXT, WIDTH, HEIGHT)
    whole = fmt.read(text, WIDTH, HEIGHT)
    assert len(whole.boxes) == 3  # the inverted box is invalid in every format
    for cut in range(len(text) + 1):
        _assert_reads_as_whole(fmt, text, _cut(text, [cut]))
    _assert_reads_as_whole(fmt, text, list(text))  # one character at a time


@pytest.mark.parametrize("name", FORMATS)
def test_a_box_appears_exactly_when_its_mention_is_complete(name: str) -> None:
    fmt = FORMATS[name]
    text = fmt.render(HOUSE_TEXT, WIDTH, HEIGHT)
    whole = fmt.read(text, WIDTH, HEIGHT)
    stream = GroundedStream(fmt, width=WIDTH, height=HEIGHT)
    for end, char in enumerate(text, start=1):
        stream.feed(char)
        assert stream.boxes == [box for box in whole.boxes if box.span[1] <= end]


def test_the_parser_resumes_where_an_unfinished_mention_begins() -> None:
    stream = GroundedStream(HOUSE, width=WIDTH, height=HEIGHT)
    stream.feed("a long preamble, 3 < 4, <b>bold</b> and <ref>cat</ref><box>[1, 2, 3, 4]</box> then")
    assert stream.resume == len(stream.text)  # nothing left open: the next chunk is scanned alone
    opened = len(stream.text) + 1
    stream.feed(" <ref>dog</ref><box>[5, 6")
    assert stream.resume == opened
    assert stream.feed(", 7, 8]</box>.")[0].ref == "dog"
    assert stream.resume == len(stream.text)


def test_an_unclosed_json_value_is_held_back_until_the_stream_ends() -> None:
    fmt = FORMATS["json/norm1000"]
    stream = GroundedStream(fmt, width=WIDTH, height=HEIGHT)
    assert stream.feed('Boxes: [{"bbox_2d": [1, 2, 3, 4], "label": "a"}, ') == []  # the list may go on
    assert [b.ref for b in stream.feed('{"bbox_2d": [5, 6, 7, 8], "label": "b"}] done')] == ["a", "b"]
    found = stream.feed(' [see {"bbox_2d": [1, 1, 9, 9]}')  # "[see" fails whatever follows: the object is read
    assert [b.box for b in found] == [(1, 1, 9, 9)]
    assert stream.feed(' [{"bbox_2d": [2, 2, 8, 8]}') == []
    assert [b.box for b in stream.finish()] == [(2, 2, 8, 8)]  # the list never closed: read as the whole text reads it


# Random texts built from the pieces that make parsers stumble: partial tags, stray brackets, escapes, literals.
HOUSE_PIECES = ["<ref>", "</ref>", "<box>", "</box>", "[1, 2, 30, 40]", "[5, 6", "<", "<bo", "ref>", " ", "cat", "\n"]
JSON_PIECES = ['{"bbox_2d": [1, 2, 30, 40]}', '{"bbox_2d": [1, 2, 30, 40], "label": "a\\"b"}', '{"bbox_2d": ',
               "[1, 2, 30, 40]", "[5.5, 6e1, 7", "]", "}", "{", "[", ", ", '"label": ', '"\\u00e9"', "tr", "ue",
               "null", "-", "1.", "see ", '"', "\\"]


@settings(max_examples=300)
@given(st.lists(st.sampled_from(HOUSE_PIECES), max_size=24), st.lists(st.integers(0, 400), max_size=8))
def test_random_house_texts_cut_anywhere_read_as_the_whole_text(pieces: list[str], cuts: list[int]) -> None:
    text = "".join(pieces)
    _assert_reads_as_whole(HOUSE, text, _cut(text, [c for c in cuts if c <= len(text)]))
    _assert_reads_as_whole(HOUSE, text, list(text))


@settings(max_examples=300)
@given(st.lists(st.sampled_from(JSON_PIECES), max_size=24), st.lists(st.integers(0, 400), max_size=8))
def test_random_json_texts_cut_anywhere_read_as_the_whole_text(pieces: list[str], cuts: list[int]) -> None:
    text = "".join(pieces)
    fmt = FORMATS["json/norm1000"]
    _assert_reads_as_whole(fmt, text, _cut(text, [c for c in cuts if c <= len(text)]))
    _assert_reads_as_whole(fmt, text, list(text))
