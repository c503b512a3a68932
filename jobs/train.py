"""``vcot-train``: a LoRA adapter by SFT (tokenize output), GRPO or RGFN (records), resumable from checkpoints in
storage (``vcot/train/stage.py``; the recipe's ``method`` picks). ``vcot.train.train`` imports torch, transformers and
TRL when it runs, so ``--help`` answers at once."""

from __future__ import annotations

import sys

from vcot.cli import run_stage
from vcot.train import TrainConfig, train


def main(argv: list[str] | None = None) -> int:
    return run_stage("train", TrainConfig, train, argv)


if __name__ == "__main__":
    sys.exit(main())
