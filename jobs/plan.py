"""``vcot-plan``: will a training run fit? A recipe's peak memory per GPU on a model, part by part.

vcot-plan --recipe qwen2.5-vl-7b-qlora --model qwen2.5-vl-7b --gpu-memory-gib 24
"""

from __future__ import annotations

import sys

from vcot.cli import run_stage
from vcot.train.plan import PlanConfig, plan_command


def main(argv: list[str] | None = None) -> int:
    return run_stage("plan", PlanConfig, plan_command, argv)


if __name__ == "__main__":
    sys.exit(main())
