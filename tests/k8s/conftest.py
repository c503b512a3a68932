"""The train tests' committed records, for the export the vLLM component serves (test_k8s_vllm.py)."""

from tests.train.conftest import record_data  # noqa: F401 - a fixture
