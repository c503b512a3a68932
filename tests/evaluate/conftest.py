"""Fixtures for the evaluate tests."""

from __future__ import annotations

from typing import Any

import pytest

from tests.evaluate.evaluate_helpers import KNOWN_RECORDS, commit_records, make_record


@pytest.fixture
def known_data(tmp_path: Any) -> tuple[str, list[dict[str, Any]]]:
    root = str(tmp_path)
    records = [make_record(root, i, subset, boxes, answer, **extra) for i, subset, boxes, answer, extra in KNOWN_RECORDS]
    return commit_records(root, records), records
