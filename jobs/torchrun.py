"""``vcot-torchrun``: ``torchrun`` for vcot's jobs (the same flags), exiting 2 when a rank exited 2, so that a
Job's pod failure policy fails the run on invalid settings instead of retrying it (``components/multi-node``).

vcot-torchrun --nnodes=2 --nproc-per-node=8 ... --no-python vcot-train
"""

from __future__ import annotations

import sys

from vcot.train.distributed import torchrun


def main(argv: list[str] | None = None) -> int:
    return torchrun(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
