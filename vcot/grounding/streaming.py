"""Boxes of a response as it streams in, each read once: the live demo draws every box the moment it is complete.

The parser keeps its position: each chunk is scanned from where an unfinished mention may begin (a few
characters back at most, see :func:`vcot.grounding.boxes.scan_grounded`), not from the start of the text. Boxes are
read through the model's :class:`~vcot.grounding.model_format.ModelFormat` (its box syntax and frame), so what it
reports equals ``fmt.read`` of the whole text once the stream has ended.
"""

from __future__ import annotations

from vcot.grounding.boxes import GroundedBox, InvalidBox, scan_grounded
from vcot.grounding.model_format import ModelFormat


class GroundedStream:
    """Feed a response chunk by chunk; get each complete grounded mention once, in house coordinates.

    >>> from vcot.grounding.model_format import HOUSE
    >>> stream = GroundedStream(HOUSE, width=640, height=480)
    >>> [len(stream.feed(chunk)) for chunk in ["See <ref>cat</ref><box>[1", "0, 20, 30, 40]</bo", "x> done"]]
    [0, 0, 1]
    >>> stream.boxes[0].ref, stream.boxes[0].box, stream.finish()
    ('cat', (10, 20, 30, 40), [])
    """

    def __init__(self, fmt: ModelFormat, *, width: int, height: int) -> None:
        self.fmt = fmt
        self.width = width
        self.height = height
        self.text = ""
        self.boxes: list[GroundedBox] = []
        self.invalid: list[InvalidBox] = []
        self.resume = 0
        """Where the next scan starts: the beginning of a mention still being written, else the end of the text."""
        self._upper = fmt.read_upper(width, height)

    def feed(self, chunk: str) -> list[GroundedBox]:
        """Append ``chunk``; returns the boxes it completed (a mention cut mid-tag waits for its closing tag)."""
        self.text += chunk
        return self._scan(final=False)

    def finish(self) -> list[GroundedBox]:
        """The stream has ended: read what was held back in case more text completed it (only an unclosed
        JSON value can be); afterwards :attr:`boxes` equals ``fmt.read(text, width, height).boxes``."""
        return self._scan(final=True)

    def _scan(self, *, final: bool) -> list[GroundedBox]:
        scan = scan_grounded(self.text, self.fmt.box_syntax, upper=self._upper, start=self.resume, final=final)
        self.resume = scan.resume
        found = self.fmt.to_house(scan.result, self.text, self.width, self.height)
        self.boxes.extend(found.boxes)
        self.invalid.extend(found.invalid)
        return found.boxes
