"""Helpers for the distill tests: tiny committed input records with PIL images, a scripted teacher, fast configs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from PIL import Image

from vcot.dev.fake_openai import FakeOpenAI
from vcot.distill.config import DistillConfig
from vcot.grounding.records import split_for
from vcot.io import manifest, shards

API_KEY = "sk-test-SECRET-0123456789abcdef"
_QUESTION = re.compile(r"Q(\d+):")


def make_record(
    root: Path, index: int, *, objects: list[dict[str, Any]] | None = None, grounded: bool = False
) -> dict[str, Any]:
    """A canonical record (docs/records.md) whose question is ``Q<i>: ...`` and answer ``answer<i>``."""
    image = root / "images" / f"{index}.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), ((index * 40) % 256, 90, 160)).save(image)
    record_id = f"synthetic:train:{index}"
    record: dict[str, Any] = {
        "id": record_id,
        "source": "synthetic",
        "subset": "synthetic",
        "split": split_for(record_id, 0.25),
        "image": str(image),
        "width": 64,
        "height": 48,
        "question": f"Q{index}: what is in the picture?",
        "answer": f"answer{index}",
        "choices": None,
        "answer_index": None,
        "objects": objects or [],
        "rationale": "",
        "needs_distillation": not grounded,
        "provenance": {"dataset": "synthetic", "source_index": index},
    }
    if grounded:
        record["objects"] = objects or [{"ref": "thing", "box": [10, 10, 500, 500]}]
        record["rationale"] = f"The <ref>thing</ref><box>[10, 10, 500, 500]</box> is there.\nAnswer: answer{index}"
    return record


def commit_input(uri: str, records: list[dict[str, Any]]) -> str:
    """Write ``records`` as a committed convert output (train/ and val/ by their split)."""
    files = [
        shards.write_jsonl(uri, f"{split}/00000-of-00001.jsonl.gz", [r for r in records if r["split"] == split])
        for split in ("train", "val")
    ]
    manifest.commit(uri, stage="convert", files=files, config={})
    return uri


def question_number(text: str) -> int:
    match = _QUESTION.search(text)
    return int(match.group(1)) if match else -1


def good_answer(text: str) -> str:
    """A valid grounded answer to ``Q<i>``; captions and verification like ``echo_answer``."""
    from vcot.dev.fake_openai import echo_answer

    index = question_number(text)
    if index < 0:
        return echo_answer(text)
    return f"The <ref>blue square</ref><box>[100, 150, 600, 700]</box> shows it.\nAnswer: answer{index}"


def fast_config(input_uri: str, output: str, server: FakeOpenAI, **overrides: Any) -> DistillConfig:
    """A config with test-sized timeouts and backoff."""
    values: dict[str, Any] = {
        "input": input_uri,
        "output": output,
        "model": "gpt-4o",
        "base_url": server.base_url,
        "concurrency": 4,
        "request_timeout": 5.0,
        "backoff_base": 0.01,
        "backoff_max": 0.2,
        "max_attempts": 4,
        "batch_poll_seconds": 0.01,
        "shard_index": 0,
    }
    values.update(overrides)
    return DistillConfig(**values)
