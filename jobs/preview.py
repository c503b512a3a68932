"""``vcot-preview``: a committed record output -> one HTML page of records with their boxes drawn (``vcot/pages/preview.py``).

vcot-preview --data s3://vcot/runs/r1/records --output preview.html --max 48
"""

from __future__ import annotations

import sys

from vcot.cli import run_stage
from vcot.pages.preview import PreviewConfig, preview


def main(argv: list[str] | None = None) -> int:
    return run_stage("preview", PreviewConfig, preview, argv)


if __name__ == "__main__":
    sys.exit(main())
