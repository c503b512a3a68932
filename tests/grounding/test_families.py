"""The family table: its rows are consistent and documented, and a new family is one row (a hypothetical third
family, added to the table alone, works end to end through the model contract)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from vcot.grounding.boxes import BOX_FORMATS
from vcot.grounding.families import DEFAULT_FAMILY, FAMILIES, ModelFamily
from vcot.grounding.model_format import COORDS, ModelFormat, VisionGeometry, family_of_model_type

DOCS = Path(__file__).resolve().parents[2] / "docs" / "models.md"
NEW = "qwen9-vl"
"""A family vcot does not have: the hypothetical third row."""


@pytest.fixture
def third_family(monkeypatch: pytest.MonkeyPatch) -> ModelFamily:
    """A copy of Qwen3-VL's row under another name and ``model_type``, with another geometry (12 px patches, 3x3
    merges, its own budget) so that nothing can pass by falling back on an existing family's numbers."""
    row = dataclasses.replace(
        FAMILIES["qwen3-vl"],
        model_types=("qwen9_vl",),
        patch_size=12,
        merge_size=3,
        min_pixels=36 * 36,
        max_pixels=144 * 144,
    )
    monkeypatch.setitem(FAMILIES, NEW, row)
    return row


def test_rows_are_consistent() -> None:
    model_types = [model_type for row in FAMILIES.values() for model_type in row.model_types]
    assert len(model_types) == len(set(model_types)), "a model_type names one family"
    assert DEFAULT_FAMILY in FAMILIES
    for name, row in FAMILIES.items():
        assert family_of_model_type(row.model_type) == name
        assert row.native_coords in COORDS and row.native_box_syntax in BOX_FORMATS
        assert 0 < row.min_pixels <= row.max_pixels and row.patch_size > 0 and row.merge_size > 0


def test_every_row_is_in_the_docs_table() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for name, row in FAMILIES.items():
        types = ", ".join(f"`{model_type}`" for model_type in row.model_types)
        factor = row.patch_size * row.merge_size
        expected = (
            f"| `{name}` | {types} | {row.patch_size} | {row.merge_size} | {factor} | "
            f"{row.min_pixels:,} - {row.max_pixels:,} | `{row.native_coords}` | `{row.native_box_syntax}` |"
        )
        assert expected in text, f"docs/models.md lacks (or has another) row for {name}: {expected}"


def test_a_third_family_is_one_row(third_family: ModelFamily) -> None:
    """From a ``config.json`` with its ``model_type`` to a stored format and a rationale rendered and read back in
    its own geometry, with nothing but the row added."""
    config = {"model_type": "qwen9_vl", "architectures": ["Qwen9VLForConditionalGeneration"]}
    family = family_of_model_type(config["model_type"])
    assert family == NEW

    fmt = ModelFormat.for_family(family, coords="qwen2.5-absolute", box_syntax="json")
    assert fmt.vision == VisionGeometry(patch_size=12, merge_size=3, min_pixels=36 * 36, max_pixels=144 * 144)
    assert fmt.vision.factor == 36 and fmt.vision.resized(640, 480) == (144, 108)  # multiples of 36 within 144²
    assert ModelFormat.from_dict({"base_model": "m", "model_format": fmt.to_dict()}) == fmt

    house = "First the <ref>red gear</ref><box>[100, 200, 500, 1000]</box> is red. Answer: red"
    text = fmt.render(house, 640, 480)  # pixels of the 144x108 resized image
    assert text == 'First the {"bbox_2d": [14, 22, 72, 108], "label": "red gear"} is red. Answer: red'
    parsed = fmt.read(text, 640, 480)
    assert not parsed.invalid and [(b.ref, b.box) for b in parsed.boxes] == [("red gear", (97, 204, 500, 1000))]


def test_a_third_family_takes_its_processors_geometry(third_family: ModelFamily) -> None:
    """What tokenize does with a real processor: its saved budget and sizes, the family checked against the table."""
    size = {"shortest_edge": 48 * 48, "longest_edge": 96 * 96}
    image_processor = SimpleNamespace(size=size, patch_size=12, merge_size=3)
    fmt = ModelFormat.for_processor(SimpleNamespace(image_processor=image_processor), NEW)
    assert (fmt.family, fmt.vision) == (NEW, VisionGeometry(12, 3, 48 * 48, 96 * 96))
    assert fmt.vision.image_tokens(300, 200) == 6  # resized to 108x72 within 96²: 9x6 patches, merged 3x3


def test_a_family_without_a_row_is_refused() -> None:
    with pytest.raises(ValueError, match="not a supported family"):
        family_of_model_type("qwen9_vl")
    with pytest.raises(ValueError, match=f"family='{NEW}' is not one of qwen2.5-vl, qwen3-vl"):
        ModelFormat.for_family(NEW)
