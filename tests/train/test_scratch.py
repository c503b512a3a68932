"""Train says, before the first step, what it will write to its scratch disk, and warns where it does not fit."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from vcot.train.common import RunFolders, check_scratch
from vcot.train.recipe import Recipe


class Model:
    """What check_scratch reads of a PEFT model: (trainable, total) parameters."""

    def __init__(self, trainable: int, total: int) -> None:
        self.counts = trainable, total

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        return self.counts


def test_a_run_larger_than_the_scratch_disk_is_warned_about(tmp_path: Path) -> None:
    folders = RunFolders(tmp_path, "s3://b/runs/r1")
    recipe = Recipe(merge_adapter=True)
    with capture_logs() as logs:
        small = check_scratch(folders, recipe, Model(1_000, 10_000), rows_bytes=8_000)
        huge = check_scratch(folders, recipe, Model(10**14, 10**15))
    assert small == recipe.scratch_bytes(1_000, 10_000) + 8_000
    assert huge > 2 * 10**15
    events = [(e["event"], e["log_level"]) for e in logs]
    assert events == [("scratch", "info"), ("scratch", "info"), ("scratch_too_small", "warning")]
