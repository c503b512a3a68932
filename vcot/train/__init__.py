"""Train: a LoRA adapter by SFT on tokenized rationales or GRPO on records (recipes, data, checkpoints, the stage)."""

from vcot.train.recipe import DEFAULT_RECIPE, Recipe, load_recipe, recipe_names
from vcot.train.stage import TrainConfig, train

__all__ = ["DEFAULT_RECIPE", "Recipe", "TrainConfig", "load_recipe", "recipe_names", "train"]
