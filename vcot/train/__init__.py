"""Train: a LoRA adapter by SFT on tokenized rationales, GRPO or RGFN on records (recipes, data, checkpoints, the stage).

Importing this package (or :class:`TrainConfig`) loads no torch, transformers or TRL: ``vcot-train --help`` answers
at once. :func:`train` imports the stage, and with it the libraries, when it is called.
"""

from __future__ import annotations

from typing import Any

from vcot.train.config import TrainConfig
from vcot.train.recipe import DEFAULT_RECIPE, Recipe, load_recipe, recipe_names

__all__ = ["DEFAULT_RECIPE", "Recipe", "TrainConfig", "load_recipe", "recipe_names", "train"]


def train(config: TrainConfig) -> dict[str, Any] | None:
    """The stage (:func:`vcot.train.stage.train`): returns the manifest written, or ``None`` when already committed."""
    from vcot.train.stage import train as run

    return run(config)
