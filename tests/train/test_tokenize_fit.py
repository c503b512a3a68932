"""Large pages at a token limit: tokenize warns per subset how many rows --max-length dropped, and
--fit-to-budget lowers such a row's image budget until it fits (the processor agrees with the row's grid)."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from PIL import Image
from structlog.testing import capture_logs

from tests.train.conftest import make_record
from vcot.io import manifest, shards, storage
from vcot.models.loading import load_processor
from vcot.tokenize import TokenizeConfig, tokenize

PAGE = (560, 784)  # a document page: 64 image tokens at the budget below, 4 for the small images
BUDGET = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 64}


def _records(root: str) -> str:
    """4 small 'shapes' images and 4 'docs' pages, all in train/, committed like convert does."""
    rng = random.Random(0)
    records = []
    for index in range(8):
        record = make_record(index, storage.join(root, "images"), rng)
        record["split"] = "train"
        if index % 2:
            record["subset"], (record["width"], record["height"]) = "docs", PAGE
            buffer = io.BytesIO()
            Image.new("RGB", PAGE, "white").save(buffer, format="PNG")
            storage.write_bytes(record["image"], buffer.getvalue())
        else:
            record["subset"], (record["width"], record["height"]) = "shapes", (64, 64)
        records.append(record)
    files = [shards.write_jsonl(root, "train/00000-of-00001.jsonl.gz", records)]
    manifest.commit(root, stage="convert", files=files, config={"source": "test"})
    return root


def _rows(output: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for uri in manifest.committed_files(output, "train/"):
        with storage.open_uri(uri, "rb") as handle:
            rows.extend(pq.read_table(handle).to_pylist())
    return rows


@pytest.fixture(scope="module")
def limit(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int]:
    """The records, and a --max-length every small row fits and no page row does at the budget."""
    records = _records(str(tmp_path_factory.mktemp("pages") / "records"))
    output = str(tmp_path_factory.mktemp("unlimited") / "tokens")
    tokenize(TokenizeConfig(input=[records], output=output, model=str(tiny_model_dir), max_length=4096, **BUDGET))
    lengths = {subset: [r["length"] for r in _rows(output) if (r["width"], r["height"]) == size]
               for subset, size in (("shapes", (64, 64)), ("docs", PAGE))}  # fmt: skip
    assert max(lengths["shapes"]) < min(lengths["docs"])
    return records, max(lengths["shapes"]) + 8


def test_rows_dropped_as_too_long_are_reported_per_subset(
    limit: tuple[str, int], tiny_model_dir: Path, tmp_path: Path
) -> None:
    records, max_length = limit
    config = TokenizeConfig(
        input=[records], output=str(tmp_path / "t"), model=str(tiny_model_dir), max_length=max_length, **BUDGET
    )
    with capture_logs() as logs:
        committed = tokenize(config)
    assert committed is not None and len(_rows(config.output)) == 4
    warnings = [e for e in logs if e["event"] == "too_long_dropped"]
    assert [(w["log_level"], w["subset"], w["dropped"], w["of"]) for w in warnings] == [("warning", "docs", 4, 4)]
    assert "--fit-to-budget" in warnings[0]["hint"]
    assert committed["stats"]["train"]["subsets"] == {"docs": {"records": 4, "too_long": 4}, "shapes": {"records": 4}}


def test_fit_to_budget_shrinks_the_image_instead_of_dropping_the_row(
    limit: tuple[str, int], tiny_model_dir: Path, tmp_path: Path
) -> None:
    records, max_length = limit
    output = str(tmp_path / "t")
    config = TokenizeConfig(
        input=[records], output=output, model=str(tiny_model_dir), max_length=max_length, fit_to_budget=True, **BUDGET
    )
    with capture_logs() as logs:
        committed = tokenize(config)
    rows = _rows(output)
    assert len(rows) == 8 and all(r["length"] <= max_length for r in rows)
    assert committed["stats"]["train"]["subsets"]["docs"] == {"fitted": 4, "records": 4}
    assert not [e for e in logs if e["event"] == "too_long_dropped"]
    assert [e["subset"] for e in logs if e["event"] == "image_budget_lowered"] == ["docs"]

    processor = load_processor(str(tiny_model_dir))
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for row in rows:
        if (row["width"], row["height"]) != PAGE:
            assert row["max_pixels"] is None  # the run's budget
            continue
        assert row["max_pixels"] < BUDGET["max_pixels"]
        # What the collator will do: the processor at the row's own budget cuts the image into the row's grid.
        processor.image_processor.size = {"shortest_edge": row["min_pixels"], "longest_edge": row["max_pixels"]}
        out = processor(text=["<|image_pad|>"], images=[Image.new("RGB", PAGE)], return_tensors="pt")
        assert out["image_grid_thw"][0].tolist() == row["image_grid_thw"]
        assert row["input_ids"].count(image_pad) == int(out["image_grid_thw"][0].prod()) // 4


def test_fit_to_budget_needs_images(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="--fit-to-budget"):
        TokenizeConfig(input=["x"], output="y", model=str(tiny_model_dir), mode="text", fit_to_budget=True)
