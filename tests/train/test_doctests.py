"""The examples in the tokenize/train/prompt docstrings are checked, not just shown."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "vcot.grounding.prompts",
    "vcot.models.loading",
    "vcot.tokenize.encode",
    "vcot.tokenize.stage",
    "vcot.tokenize.mixture",
    "vcot.train.recipe",
    "vcot.train.pointer",
    "vcot.train.grpo",
    "vcot.train.checkpoints",
    "vcot.train.divergence",
    "vcot.train.options",
    "vcot.dev.summary",
    "vcot.dev.tiny_model",
    "vcot.scoring.gfn",
    "vcot.evaluate.bin",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
