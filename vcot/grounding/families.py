"""The model families vcot fine-tunes, as one table of facts: everything that differs between Qwen2.5-VL and
Qwen3-VL and is a number or a name, so that no code branches on a family's name to learn it.

Behaviour lives elsewhere (``vcot.grounding.model_format`` reads this table); what needs a family-specific
*class* (transformers' config, model and processor classes) stays where those classes are used
(``vcot/models/loading.py``, ``vcot/dev/tiny_model.py``). Adding a family is one row here and its tests
(docs/models.md, "Adding a model family").
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from vcot.grounding.boxes import BoxFormat

Family = str
"""A family's name: a key of :data:`FAMILIES` (a plain string, so that a new row is all a new family needs)."""


@dataclass(frozen=True)
class ModelFamily:
    """What one family's released checkpoints are: read wherever a processor, a config or a record does not say."""

    model_types: tuple[str, ...]
    """``config.json`` ``model_type`` values of its checkpoints (how a model's family is found, never from a name
    the user typed); the first is the plain one, which a tiny build is saved as and TRL names its chat template by."""
    patch_size: int
    """Pixels per side of one vision patch (``preprocessor_config.json``): with ``merge_size``, the resize factor."""
    merge_size: int
    """Patches merged per side into one language-model token (``preprocessor_config.json``)."""
    min_pixels: int
    """The released processor's smallest resized image, in pixels (``size.shortest_edge``)."""
    max_pixels: int
    """The released processor's largest resized image, in pixels (``size.longest_edge``): the default budget."""
    image_mean: tuple[float, float, float]
    """Per-channel normalization mean of the released processor (what an offline-built processor must use)."""
    image_std: tuple[float, float, float]
    """Per-channel normalization std of the released processor."""
    native_coords: str
    """The frame the family was pretrained to ground in (one of ``model_format.COORDS``); vcot's default stays the
    house frame ``norm1000`` whatever the family; this is the ``--coords`` that matches pretraining."""
    native_box_syntax: BoxFormat
    """How the family was pretrained to write a box (one of ``boxes.BOX_FORMATS``): the ``--box-syntax`` that
    matches pretraining (the default stays ``house``)."""

    @property
    def model_type(self) -> str:
        """The plain ``model_type`` (the first of :attr:`model_types`)."""
        return self.model_types[0]


_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

FAMILIES: OrderedDict[Family, ModelFamily] = OrderedDict(
    {
        # preprocessor_config.json of the released Qwen2.5-VL checkpoints (OpenAI CLIP's normalization)
        "qwen2.5-vl": ModelFamily(
            model_types=("qwen2_5_vl",),
            patch_size=14,
            merge_size=2,
            min_pixels=56 * 56,
            max_pixels=28 * 28 * 16384,
            image_mean=_CLIP_MEAN,
            image_std=_CLIP_STD,
            native_coords="qwen2.5-absolute",
            native_box_syntax="json",
        ),
        # preprocessor_config.json of the released Qwen3-VL checkpoints (dense and MoE)
        "qwen3-vl": ModelFamily(
            model_types=("qwen3_vl", "qwen3_vl_moe"),
            patch_size=16,
            merge_size=2,
            min_pixels=65536,
            max_pixels=16777216,
            image_mean=(0.5, 0.5, 0.5),
            image_std=(0.5, 0.5, 0.5),
            native_coords="norm1000",
            native_box_syntax="json",
        ),
    }
)
"""The families, one row each. Ordered on purpose: the order is the documented one, and property tests sample
families from it (hypothesis samples only from ordered collections)."""

DEFAULT_FAMILY: Family = "qwen2.5-vl"
"""The family when nothing says (the house format, score mode, the tiny model)."""


def is_vision(name: str) -> bool:
    """Whether a parameter (or a saved weight) belongs to the vision tower or its merger: ``visual`` in every family
    vcot knows, base checkpoints and adapters alike.

    >>> is_vision("base_model.model.model.visual.merger.mlp.0.weight"), is_vision("model.language_model.embed_tokens.weight")
    (True, False)
    """
    return ".visual." in f".{name}"
