"""``vcot-convert``: source datasets into canonical grounded records (see ``docs/convert.md``).

vcot-convert --source viscot --input s3://vcot/raw/viscot --output s3://vcot/runs/r1/convert
"""

from __future__ import annotations

from collections.abc import Sequence

from vcot.cli import run_stage
from vcot.convert import ConvertConfig, convert


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("convert", ConvertConfig, convert, argv)


if __name__ == "__main__":
    raise SystemExit(main())
