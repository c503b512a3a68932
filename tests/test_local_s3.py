"""The local S3 helper: reusing a server that another checkout started."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vcot import local_s3


@pytest.mark.integration
def test_up_reuses_a_running_server_from_a_folder_that_does_not_exist_yet(
    local_s3_server: local_s3.LocalS3, tmp_path: Path
) -> None:
    fresh = dataclasses.replace(local_s3_server, root=tmp_path / "fresh" / ".local-s3")
    assert local_s3.up(fresh) is False  # already running: nothing started, nothing to stop
    assert (fresh.root / "env.sh").read_text() == fresh.exports()
