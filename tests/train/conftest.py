"""Fixtures for the tokenize and train tests: a committed record output with real images, written here."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image, ImageDraw

from vcot.grounding.boxes import pixels_to_norm1000
from vcot.grounding.records import split_for
from vcot.io import manifest, shards, storage

COLORS = ("red", "green", "blue", "yellow")
SIZES = ((112, 112), (160, 120), (90, 200), (300, 100), (64, 64))


def make_record(index: int, image_root: str, rng: random.Random, colors: tuple[str, ...] = COLORS) -> dict[str, Any]:
    """A synthetic grounded record: one colored square (one of ``colors``) on a gray image; the question asks its
    color among :data:`COLORS`."""
    width, height = SIZES[index % len(SIZES)]
    color = colors[rng.randrange(len(colors))]
    side = max(8, min(width, height) // 3)
    x1, y1 = rng.randrange(0, width - side), rng.randrange(0, height - side)
    image = Image.new("RGB", (width, height), "gray")
    ImageDraw.Draw(image).rectangle((x1, y1, x1 + side, y1 + side), fill=color)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    uri = storage.join(image_root, f"{index:04d}.png")
    storage.write_bytes(uri, buffer.getvalue())
    box = list(pixels_to_norm1000((x1, y1, x1 + side, y1 + side), width, height))
    record_id = f"synthetic:shapes:{index}"
    return {
        "id": record_id,
        "source": "synthetic",
        "subset": "shapes",
        "split": split_for(record_id, 0.25),
        "image": uri,
        "width": width,
        "height": height,
        "question": "What color is the square?",
        "answer": color,
        "choices": list(COLORS),
        "answer_index": COLORS.index(color),
        "objects": [{"ref": f"{color} square", "box": box}],
        "rationale": f"I find the <ref>{color} square</ref><box>[{', '.join(map(str, box))}]</box>. Answer: {color}",
        "needs_distillation": False,
        "provenance": {"dataset": "test"},
    }


def write_record_output(
    root: str, count: int, *, seed: int = 0, unusable: int = 0, colors: tuple[str, ...] = COLORS
) -> str:
    """Write and commit ``root/{train,val}/...jsonl.gz`` like convert does; ``unusable`` records lack a rationale."""
    rng = random.Random(seed)
    records = [make_record(i, storage.join(root, "images"), rng, colors) for i in range(count)]
    for record in records[:unusable]:
        record["rationale"] = ""
    files = []
    for split in ("train", "val"):
        chosen = [r for r in records if r["split"] == split]
        files.append(shards.write_jsonl(root, f"{split}/00000-of-00001.jsonl.gz", chosen))
    manifest.commit(root, stage="convert", files=files, config={"source": "test"})
    return root


@pytest.fixture
def record_output(tmp_path: Any) -> Callable[..., str]:
    """Factory: ``record_output(count, seed=0, unusable=0, root=None)`` returns a committed record output URI."""

    def factory(count: int, *, seed: int = 0, unusable: int = 0, root: str | None = None) -> str:
        return write_record_output(
            root or str(tmp_path / f"records-{seed}-{count}"), count, seed=seed, unusable=unusable
        )

    return factory


@pytest.fixture
def one_record(tmp_path: Any) -> Callable[[int, int], dict[str, Any]]:
    """Factory: ``one_record(index, seed)`` writes one record's image under tmp_path and returns the record."""
    return lambda index, seed=0: make_record(index, str(tmp_path / "images"), random.Random(seed))


@pytest.fixture(scope="session")
def record_data(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A committed record output of 64 synthetic records (seed 0): what tokenized_data tokenizes and GRPO prompts with."""
    return write_record_output(str(tmp_path_factory.mktemp("records") / "records"), 64, seed=0)


@pytest.fixture(scope="session")
def tokenized_data(record_data: str, tiny_model_dir: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A committed multimodal tokenize output of ``record_data`` (tiny model, norm1000)."""
    from vcot.tokenize import TokenizeConfig, tokenize

    output = str(tmp_path_factory.mktemp("tokenized") / "tokens")
    tokenize(TokenizeConfig(input=[record_data], output=output, model=str(tiny_model_dir)))
    return output


SFT_FOR_RL = (
    "max_steps=60,learning_rate=5e-3,num_train_epochs=100,early_stopping_patience=0,save_steps=60,eval_steps=60"
)
"""60 SFT steps at a high rate: the tiny model then writes the format and answers right sometimes, so rewards differ
within a group and a held-out score has something to lose."""


@pytest.fixture(scope="session")
def sft_adapter(tokenized_data: str, tiny_model_dir: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The adapter of a short SFT run on ``tokenized_data``: what the GRPO tests continue."""
    from vcot.train import TrainConfig, train

    output = str(tmp_path_factory.mktemp("sft") / "run")
    config = TrainConfig(data=tokenized_data, model=str(tiny_model_dir), output=output, recipe="tiny-cpu",
                         set=SFT_FOR_RL, threads=1)  # fmt: skip
    assert train(config)
    return f"{output}/adapter"


@pytest.fixture(scope="session")
def analyzer_adapter(record_data: str, tiny_model_dir: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A short SFT run in LaCoT's layout (the rationale in an Analyzer turn): what the RGFN tests start from."""
    from vcot.tokenize import TokenizeConfig, tokenize
    from vcot.train import TrainConfig, train

    root = tmp_path_factory.mktemp("analyzer")
    tokens = str(root / "tokens")
    tokenize(TokenizeConfig(input=[record_data], output=tokens, model=str(tiny_model_dir), layout="rationale_turn"))
    output = str(root / "sft")
    short = "max_steps=30,learning_rate=5e-3,num_train_epochs=100,early_stopping_patience=0,save_steps=30,eval_steps=30"
    config = TrainConfig(data=tokens, model=str(tiny_model_dir), output=output, recipe="tiny-cpu", set=short, threads=1)
    assert train(config)
    return f"{output}/adapter"
