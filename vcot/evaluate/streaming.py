"""Boxes as a response streams in: for a live demo that draws each box the moment it is complete."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from vcot.boxes import BoxFormat, GroundedBox, parse_grounded


def stream_grounded(text_chunks: Iterable[str], fmt: BoxFormat = "house") -> Iterator[tuple[str, list[GroundedBox]]]:
    """Yield ``(text so far, valid boxes complete so far)`` after every chunk.

    A box cut mid-tag is not reported until its closing tag arrives; the list only ever grows.

    >>> chunks = ["See <ref>cat</ref><box>[1", "0, 20, 30, 40]</bo", "x> done"]
    >>> [len(boxes) for _, boxes in stream_grounded(chunks)]
    [0, 0, 1]
    """
    text = ""
    for chunk in text_chunks:
        text += chunk
        yield text, parse_grounded(text, fmt).boxes
