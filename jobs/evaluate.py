"""``vcot-evaluate``: score grounded responses (a predictions file, a model, or the newest model) against records.

Exit codes: 0 done (or already committed), 1 a problem to fix (one line on stderr), 2 invalid flags,
3 a regression flagged in scheduled mode.
"""

from __future__ import annotations

from vcot.cli import run_stage
from vcot.evaluate.config import EvaluateConfig
from vcot.evaluate.stage import evaluate


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", EvaluateConfig, evaluate, argv)


if __name__ == "__main__":
    raise SystemExit(main())
