"""The local S3 server helper."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vcot import local_s3


@pytest.mark.integration
def test_up_is_idempotent_from_another_folder(local_s3_server: local_s3.LocalS3, tmp_path: Path) -> None:
    # A server is already up (started from another checkout): `up` from a fresh folder must just say so.
    elsewhere = dataclasses.replace(local_s3_server, root=tmp_path / "never-created")
    assert local_s3.up(elsewhere) is False
    assert (elsewhere.root / "env.sh").read_text() == elsewhere.exports()
