"""``python -m vcot.export.fetch``: what the vLLM pod's init container serves, and what it refuses to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vcot.export.fetch import main
from vcot.io import manifest
from vcot.io.shards import file_entry


def folder(root: Path, *names: str) -> Path:
    root.mkdir(parents=True)
    for name in names:
        (root / name).write_text("{}")
    return root


def test_a_committed_export_and_a_plain_model_folder_are_fetched(tmp_path: Path) -> None:
    export = folder(tmp_path / "export", "config.json", "vcot-model.json", "model.safetensors")
    manifest.commit(str(export), stage="export", files=[], config={})
    assert main([str(export), str(tmp_path / "served")]) == 0
    assert json.loads((tmp_path / "served" / "vcot-model.json").read_text()) == {}
    hub_model = folder(tmp_path / "teacher", "config.json", "model.safetensors")  # no vcot files at all
    assert main([str(hub_model), str(tmp_path / "teacher-served")]) == 0
    assert (tmp_path / "teacher-served" / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("names", "stage", "refusal"),
    [
        (("config.json", "vcot-model.json"), None, "never committed"),  # vcot-export stopped half way
        (("adapter_config.json", "vcot-model.json"), None, "is an adapter"),  # a run's adapter/
        (("config.json", "adapter_config.json"), "train", "is a train output"),
        ((), None, "holds no model"),
    ],
)
def test_what_must_not_be_served_is_refused(
    names: tuple[str, ...], stage: str | None, refusal: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = folder(tmp_path / "source", *names)
    if stage:
        manifest.commit(str(source), stage=stage, files=[], config={})
    assert main([str(source), str(tmp_path / "served")]) == 2
    assert refusal in capsys.readouterr().err and not (tmp_path / "served").exists()


def test_a_committed_train_runs_own_model_folders_are_fetched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A full fine-tune's model/ (what vcot-export says to serve as it is) and a merged/ model: the run's _SUCCESS
    commits them. They were refused as never-committed exports, so neither could be served."""
    run = tmp_path / "run"
    for name in ("model", "merged"):
        folder(run / name, "config.json", "vcot-model.json", "model.safetensors")
    files = [file_entry(path, f"{path.parent.name}/{path.name}") for path in sorted(run.glob("*/*"))]
    assert main([str(run / "model"), str(tmp_path / "early")]) == 2  # the run has not committed yet
    assert "never committed" in capsys.readouterr().err
    manifest.commit(str(run), stage="train", files=files, config={})
    for name in ("model", "merged"):
        assert main([str(run / name), str(tmp_path / f"served-{name}")]) == 0
        assert (tmp_path / f"served-{name}" / "model.safetensors").exists()


def test_fetching_over_another_model_leaves_none_of_its_files(tmp_path: Path) -> None:
    """A sharded model's index left in DEST made the server load the earlier model's shards."""
    older = folder(tmp_path / "older", "config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors")
    newer = folder(tmp_path / "newer", "config.json", "model.safetensors", ".gitattributes")
    dest = tmp_path / "served"
    assert main([str(older), str(dest)]) == 0 and main([str(newer), str(dest)]) == 0
    assert sorted(p.name for p in dest.iterdir()) == [".gitattributes", "config.json", "model.safetensors"]
