"""``vcot-distill``: an OpenAI-compatible teacher writes grounded rationales for records that need them.

    vcot-distill --input s3://bucket/convert --output s3://bucket/distill --model gpt-4o \
        [--base-url URL] [--concurrency 10] [--strategy direct|zoom] [--mode live|batch]

The key comes from ``OPENAI_API_KEY`` only and is never logged. See ``vcot/distill/stage.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

from vcot.cli import run_stage
from vcot.distill import DistillConfig, distill


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("distill", DistillConfig, distill, argv)


if __name__ == "__main__":
    raise SystemExit(main())
