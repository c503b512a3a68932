"""Your own data, all three layouts (the docs' ten lines), mixed with another record output: convert -> tokenize
(mixture) -> train on the tiny model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.convert.own_data import write_own_data
from tests.train.test_tokenize_mixture import _train_rows
from vcot.convert import ConvertConfig, convert
from vcot.io import manifest
from vcot.tokenize import TokenizeConfig, tokenize
from vcot.train import TrainConfig, train

pytestmark = pytest.mark.integration


def test_own_data_in_three_layouts_trains_in_a_mixture(
    tiny_model_dir: Path, record_output: Callable[..., str], tmp_path: Path
) -> None:
    data = write_own_data(str(tmp_path / "own"), street=str(tmp_path / "elsewhere" / "street.png"))
    records = str(tmp_path / "records")
    convert(ConvertConfig(source="records", input=data, output=records, bbox_2d_frame="norm1000", val_fraction=0.0))
    layouts = {r["id"]: r["provenance"]["layout"] for r in manifest.committed_records(records, ("train/",))}
    assert Counter(layouts.values()) == {"vcot": 4, "swift": 3, "chat": 3}

    shapes = record_output(16, seed=0, root=str(tmp_path / "shapes"))
    (tmp_path / "mix.yaml").write_text(
        f"seed: 1\nsources:\n  own: {{data: {records}, weight: 2}}\n"
        f"  shapes: {{data: {shapes}, samples: 12, max_pixels: 50176}}\n"
    )
    tokens = str(tmp_path / "tokens")
    tokenize(TokenizeConfig(mixture=str(tmp_path / "mix.yaml"), output=tokens, model=str(tiny_model_dir)))
    stats = manifest.read_manifest(tokens)["stats"]["mixture"]
    assert stats["own"]["train"]["rows"] == 20 and stats["shapes"]["train"]["rows"] == 12
    rows = _train_rows(tokens)
    assert Counter(layouts[r["id"]] for r in rows if r["id"] in layouts) == {"vcot": 8, "swift": 6, "chat": 6}

    output = str(tmp_path / "run")
    settings = "max_steps=2,save_steps=10,eval_steps=10,logging_steps=1"
    assert train(TrainConfig(data=tokens, model=str(tiny_model_dir), output=output, recipe="tiny-cpu", set=settings))
    assert manifest.read_manifest(output)["stage"] == "train"
    assert (Path(output) / "adapter" / "adapter_model.safetensors").exists()
