"""The local S3 server: idempotent start, credentials enforced, env printed for the user."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vcot.dev import local_s3


@pytest.mark.integration
def test_up_is_idempotent_and_enforces_credentials(local_s3_server: local_s3.LocalS3) -> None:
    assert local_s3.is_up(local_s3_server)
    assert local_s3.up(local_s3_server) is False  # already running: nothing started
    wrong = dataclasses.replace(local_s3_server, secret_key="not-the-secret")
    assert not local_s3.is_up(wrong)


def test_exports_name_every_variable_storage_reads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = local_s3.LocalS3(tmp_path, 8333, "k", "s", "b")
    exports = server.exports()
    for name in ("AWS_ACCESS_KEY_ID=k", "AWS_SECRET_ACCESS_KEY=s", "AWS_ENDPOINT_URL_S3=http://127.0.0.1:8333"):
        assert f"export {name}\n" in exports


def test_down_without_a_server_is_a_no_op(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert local_s3.down(local_s3.LocalS3(tmp_path, 1, "k", "s", "b")) is False

def test_up_is_idempotent_from_another_folder(local_s3_server: local_s3.LocalS3, tmp_path: Path) -> None:
    # A server is already up (started from another checkout): `up` from a fresh folder must just say so.
    elsewhere = dataclasses.replace(local_s3_server, root=tmp_path / "never-created")
    assert local_s3.up(elsewhere) is False
    assert (elsewhere.root / "env.sh").read_text() == elsewhere.exports()
