"""``vcot-tokenize``: grounded records -> Parquet token shards (see ``vcot/tokenize/stage.py``)."""

from __future__ import annotations

import sys

from vcot.cli import run_stage
from vcot.tokenize import TokenizeConfig, tokenize


def main(argv: list[str] | None = None) -> int:
    return run_stage("tokenize", TokenizeConfig, tokenize, argv)


if __name__ == "__main__":
    sys.exit(main())
