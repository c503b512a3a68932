"""``vcot-leaderboard``: committed evaluate outputs -> one page and table of models x benchmarks (``vcot/evaluate/leaderboard.py``).

vcot-leaderboard --evals s3://vcot/evals/ --output s3://vcot/leaderboard
"""

from __future__ import annotations

import sys

from vcot.cli import run_stage
from vcot.evaluate.leaderboard import LeaderboardConfig, leaderboard


def main(argv: list[str] | None = None) -> int:
    return run_stage("leaderboard", LeaderboardConfig, leaderboard, argv)


if __name__ == "__main__":
    sys.exit(main())
