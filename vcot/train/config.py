"""The train stage's settings: :class:`TrainConfig`, read from flags and ``VCOT_*`` variables.

Its own module, importing no torch, transformers or TRL (the recipe is checked with YAML and dataclasses alone),
so that ``vcot-train --help`` and a bad flag answer at once; the stage imports the libraries when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from vcot.config import option
from vcot.grounding.model_format import COORDS
from vcot.io import layout, storage
from vcot.train.options import check_vision_learning_rate
from vcot.train.recipe import DEFAULT_RECIPE, load_recipe, recipe_names


@dataclass
class TrainConfig:
    """Train a LoRA adapter (SFT, GRPO or RGFN, by the recipe's method), resumable from checkpoints in storage."""

    data: str = option(
        help="sft: a committed tokenize output; grpo, gfn: committed records (convert or distill output). "
        "s3:// or a path."
    )
    model: str = option(help="Base model: a folder, an s3:// prefix (synced to a local cache) or a hub id.")
    output: str = option(help="Run folder to write (adapter/, checkpoints/, tensorboard/, metrics.json, _SUCCESS).")
    recipe: str = option(
        DEFAULT_RECIPE,
        help=f"Recipe preset ({', '.join(recipe_names())}) or a YAML file/URI.",
    )
    set: str = option("", help="Recipe overrides, key=value pairs with YAML values: 'lora_r=16,max_steps=100'.")
    init_adapter: str = option(
        "",
        help="Continue this committed run's adapter (its own LoRA settings; its vcot-model.json gives the model "
        "format, which for sft must be the tokenize output's); empty: a new LoRA on --model.",
    )
    grpo_coords: str = option(
        "",
        help="grpo, gfn without --init-adapter: the box frame to prompt and score (norm1000 or qwen2.5-absolute; "
        "default norm1000). With --init-adapter it may only repeat the adapter's. Not --coords: tokenize and "
        "evaluate read VCOT_COORDS, and sft takes its frame from the tokenize output.",
    )
    pointer: str = option("", help="Newest-model pointer JSON (default: <parent of --output>/latest.json).")
    update_pointer: bool = option(
        False,
        help="Move the pointer to this run once it is committed (scheduled re-evaluation follows it). Off by "
        "default: a trial or a sweep never replaces the production model.",
    )
    force_pointer: bool = option(
        False,
        help="grpo, gfn: move the pointer (with --update-pointer) even when the run's held-out score ends below the "
        "adapter it started from or the model the pointer names.",
    )
    overwrite: bool = option(False, help="Retrain an output that is already committed (deletes it first).")
    threads: int = option(
        0, help="On CPU: torch threads (0: torch's default, the node's cores; 1 is fastest on a busy shared CPU)."
    )

    def __post_init__(self) -> None:
        if self.output.rstrip("/") == self.data.rstrip("/"):
            raise ValueError("--output must differ from --data")
        if self.pointer and not self.pointer.endswith(".json"):
            raise ValueError("--pointer must name a .json file")
        if self.threads < 0:
            raise ValueError("--threads must be >= 0 (0 keeps torch's default)")
        if self.grpo_coords and self.grpo_coords not in COORDS:
            raise ValueError(f"--grpo-coords {self.grpo_coords!r} is not one of {', '.join(COORDS)}")
        recipe = load_recipe(self.recipe, self.set)  # a bad recipe or override fails here, before any model loads (exit 2)
        if recipe.method == "sft" and self.grpo_coords:
            raise ValueError("--grpo-coords is for methods grpo and gfn; sft reads its model format from the tokenize output")
        if recipe.finetune == "full" and self.init_adapter:
            raise ValueError("--init-adapter continues a LoRA adapter, and finetune=full trains the whole model: drop "
                             "--init-adapter (a full fine-tune starts from --model; merge an adapter into a model with "
                             "vcot-export to start from it), or keep finetune=lora")
        if recipe.method != "sft" and not self.init_adapter:  # a new LoRA: the recipe decides what trains
            check_vision_learning_rate(recipe)
        unchecked = not recipe.generation_eval_samples and not self.force_pointer
        if recipe.method != "sft" and self.update_pointer and unchecked:
            raise ValueError(
                f"--update-pointer with method {recipe.method} compares the run's held-out score with its start: set "
                "generation_eval_samples > 0 in the recipe, or pass --force-pointer to move it unchecked"
            )

    @property
    def pointer_uri(self) -> str:
        return self.pointer or default_pointer(self.output)

    @property
    def input_runs(self) -> list[str]:
        """What the manifest records as the run's inputs: the data, and the run whose adapter it continues."""
        return [self.data] + ([storage.parent(self.init_adapter)] if self.init_adapter else [])


def default_pointer(output: str) -> str:
    """
    >>> default_pointer("s3://bucket/runs/run-7/")
    's3://bucket/runs/latest.json'
    """
    return storage.join(storage.parent(output), layout.POINTER)
