"""The docstring examples of the convert package are true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["common", "images", "viscot", "scienceqa", "aokvqa", "llava_cot", "own_records", "quality", "stage"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(f"vcot.convert.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
