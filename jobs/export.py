"""``vcot-export``: a committed train run -> a merged 16-bit model folder for ``vllm serve`` and the hub.

vcot-export --run s3://vcot/runs/r1/train --output s3://vcot/models/r1-merged
"""

from __future__ import annotations

import sys

from vcot.cli import run_stage
from vcot.export import ExportConfig, export


def main(argv: list[str] | None = None) -> int:
    return run_stage("export", ExportConfig, export, argv)


if __name__ == "__main__":
    sys.exit(main())
