"""The published configurations of the checkpoints vcot ships recipes for: facts, kept as data.

Each ``published/<name>.json`` is the checkpoint's ``config.json`` as its publisher released it, plus one key of
our own, ``_vcot``: where the values were read (``source``), the hub id (``checkpoint``) and the released image
processor's pixel budget (``processor``). Nothing is downloaded: the memory plan (:mod:`vcot.train.plan`) and the
true-width slices the tests train (:mod:`vcot.dev.model_slice`) read these files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vcot.errors import ConfigError

PUBLISHED_DIR = Path(__file__).with_name("published")
OWN_KEY = "_vcot"


def published_names() -> list[str]:
    """
    >>> published_names()[:2]
    ['qwen2.5-vl-32b', 'qwen2.5-vl-3b']
    """
    return sorted(path.stem for path in PUBLISHED_DIR.glob("*.json"))


def _read(name: str) -> dict[str, Any]:
    path = PUBLISHED_DIR / f"{name}.json"
    if not path.exists():
        raise ConfigError(f"no published configuration named {name!r}: use one of {', '.join(published_names())}")
    return json.loads(path.read_text(encoding="utf-8"))


def published_config(name: str) -> dict[str, Any]:
    """The checkpoint's ``config.json`` as released (our ``_vcot`` key removed).

    >>> published_config("qwen2.5-vl-7b")["vision_config"]["fullatt_block_indexes"]
    [7, 15, 23, 31]
    """
    config = _read(name)
    config.pop(OWN_KEY)
    return config


def provenance(name: str) -> dict[str, Any]:
    """Where ``name``'s values come from and its released processor's pixel budget (the ``_vcot`` key)."""
    return _read(name)[OWN_KEY]


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's fields: nested under ``text_config`` (Qwen3-VL) or at the top level (Qwen2.5-VL).

    >>> text_config({"hidden_size": 8})["hidden_size"], text_config({"text_config": {"hidden_size": 4}})["hidden_size"]
    (8, 4)
    """
    return config.get("text_config", config)
