"""Scoring one response (``vcot.scoring.response``): the informational second reading never stops a run."""

from __future__ import annotations

from vcot.grounding.model_format import ModelFormat
from vcot.scoring.response import score_response


def test_an_image_over_200_to_1_is_scored_without_the_second_reading() -> None:
    """The best-of-two figure reads the box again in the other frame, which resizes the image and refuses an aspect
    over 200:1: one such record stopped a whole norm1000 score run, though its own reading needs no resize."""
    record = {"id": "r", "subset": "s", "answer": "x", "width": 4100, "height": 20,
              "objects": [{"ref": "a", "box": [0, 0, 500, 1000]}]}  # fmt: skip
    row, _ = score_response(record, "<ref>a</ref><box>[0, 0, 500, 1000]</box> Answer: x", ModelFormat.for_family(),
                            best_of_two=True)  # fmt: skip
    assert row["first_box_iou"] > 0.99 and "other_frame_first_box_iou" not in row
