"""The GPU images (the Dockerfile's ``gpu`` and ``vllm`` targets), built and checked on this CPU by
``make image-gpu-smoke`` and ``make image-vllm-smoke``.

Building them takes minutes and ~9 GB each (torch's CUDA build, vLLM), too slow for every CI run: the build-and-check
test runs when ``VCOT_IMAGE_TESTS=1`` (after each change of the Dockerfile), and a fast test holds docs/k8s.md to
the Dockerfile they were last checked on, so a change of the Dockerfile without a new check fails CI.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def dockerfile_digest() -> str:
    return hashlib.sha256((REPO_ROOT / "Dockerfile").read_bytes()).hexdigest()[:12]


def test_the_docs_report_the_gpu_image_of_this_dockerfile() -> None:
    docs = (REPO_ROOT / "docs" / "k8s.md").read_text(encoding="utf-8")
    recorded = re.search(r"Both last passed on the Dockerfile with SHA-256 `([0-9a-f]{12})`", docs)
    assert recorded, "docs/k8s.md lost its record of the GPU images' check"
    assert recorded[1] == dockerfile_digest(), (
        f"the Dockerfile changed since the GPU images were last checked: run VCOT_IMAGE_TESTS=1 pytest {__file__} "
        f"(make image-gpu-smoke image-vllm-smoke), then record {dockerfile_digest()} and the figures in docs/k8s.md"
    )


@pytest.mark.integration
@pytest.mark.skipif(os.environ.get("VCOT_IMAGE_TESTS") != "1", reason="builds two 9 GB GPU images: VCOT_IMAGE_TESTS=1")
def test_the_gpu_images_build_and_load_on_a_cpu() -> None:
    make = ["make", "image-gpu-smoke", "image-vllm-smoke"]
    done = subprocess.run(make, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    for line in ("every entrypoint answers --help", "LoRA backward pass", "takes the component's flags"):
        assert line in done.stdout, done.stdout[-4000:]
