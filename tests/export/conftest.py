"""The train tests' committed records and tokenized data (tiny model), for a run to export."""

from tests.train.conftest import record_data, tokenized_data  # noqa: F401 - fixtures
