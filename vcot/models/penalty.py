"""A repetition penalty that leaves box coordinates alone (evaluate and the demo decode with it).

The seed decodes with ``repetition_penalty=1.2``. That also penalizes coordinate digits already emitted
(in the prompt or in earlier boxes), pushing the model away from the right numbers; on a small trained
model it lowered held-out IoU from 0.108 to 0.088 (NOTES). This processor applies the same penalty as
transformers' ``RepetitionPenaltyLogitsProcessor`` everywhere except to *coordinate tokens* (tokens made
only of digits and the box punctuation ``[ ] , .`` and spaces) while the response is inside an open box of
the run's box syntax (``<box>`` or ``<|box_start|>``, ``<bbox>``, or a JSON ``"bbox_2d"`` up to its ``]``).

This module holds the defaults and what is spared, without torch (evaluate's and the demo's configs read the
defaults, and ``--help`` must not load torch); the processor itself, ``BoxAwareRepetitionPenalty``, is in
:mod:`vcot.models.generation`.
"""

from __future__ import annotations

from typing import Any

from vcot.grounding.boxes import BOX_TAGS, JSON_BOX_KEY, BoxFormat

_HOUSE, _QWEN = BOX_TAGS["house"], BOX_TAGS["qwen"]
_EITHER_PAIR = ((_HOUSE.box_open, _QWEN.box_open), (_HOUSE.box_close, _QWEN.box_close))
BOX_MARKERS: dict[BoxFormat, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "house": _EITHER_PAIR,
    "qwen": _EITHER_PAIR,
    "obj": ((BOX_TAGS["obj"].box_open,), (BOX_TAGS["obj"].box_close,)),
    "json": ((f'"{JSON_BOX_KEY}"',), ("]",)),
}
"""What opens and what closes a box, per box syntax, from :data:`vcot.grounding.boxes.BOX_TAGS`: house and qwen
models are spared inside either tag pair, as before syntaxes were told apart; a JSON box runs from its key to
the ``]`` that ends its list."""
_COORDINATE_CHARS = set("0123456789[],.() ")
REPETITION_PENALTY = 1.2
"""The seed's repetition penalty: the default of evaluate (all its modes, the CronJob's), the lmms-eval plugin and
the demo."""
BOX_AWARE = True
"""Whether the penalty spares coordinates inside a box, by default, everywhere it is applied: the plain penalty
lowered held-out IoU (NOTES, docs/bench-evaluate.md). ``--no-box-aware-penalty`` brings the plain one back."""
TAIL_TOKENS = 48
"""How many recent tokens are decoded to tell whether a box is open (a box is far shorter)."""


def is_coordinate_text(text: str) -> bool:
    """Whether a token's text can only be part of box coordinates.

    >>> is_coordinate_text(" 12"), is_coordinate_text("], "), is_coordinate_text("12a"), is_coordinate_text(" ")
    (True, True, False, False)
    """
    return bool(text.strip()) and set(text) <= _COORDINATE_CHARS


def coordinate_token_ids(tokenizer: Any) -> list[int]:
    """Ids of every token in ``tokenizer``'s vocabulary whose text is coordinate text."""
    return [
        index
        for index in range(len(tokenizer))
        if is_coordinate_text(tokenizer.decode([index], clean_up_tokenization_spaces=False))
    ]


def inside_open_box(text: str, box_syntax: BoxFormat = "house") -> bool:
    """Whether ``text`` ends inside a box of ``box_syntax`` that has been opened but not closed.

    >>> inside_open_box("the <ref>cat</ref><box>[12, 3"), inside_open_box("<box>[1, 2, 3, 4]</box> and")
    (True, False)
    >>> inside_open_box('{"bbox_2d": [12, 3', "json"), inside_open_box('{"bbox_2d": [1, 2, 3, 4], "label"', "json")
    (True, False)
    """
    opens, closes = BOX_MARKERS[box_syntax]
    last_open = max(text.rfind(tag) for tag in opens)
    last_close = max(text.rfind(tag) for tag in closes)
    return last_open > last_close
