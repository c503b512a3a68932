"""``python -m tests.train.late_rank ARGS``: ``jobs.train ARGS`` with rank 1 looking for checkpoint folders 2 s
late, the timing of a busy node. Under FSDP the Trainer picks the best checkpoint by whether its folder exists
right after a barrier; a rank that looks late must see what an early one sees, or at the end one loads the best
checkpoint while the other waits for it forever (what hung CI)."""

from __future__ import annotations

import os
import runpy
import time

LATE_S = 2.0


def look_late() -> None:
    exists = os.path.exists

    def late(path: object) -> bool:
        if os.path.basename(str(path)).startswith("checkpoint-"):
            time.sleep(LATE_S)
        return exists(path)  # type: ignore[arg-type]

    os.path.exists = late  # type: ignore[assignment]


if __name__ == "__main__":
    if os.environ.get("RANK") == "1":
        look_late()
    runpy.run_module("jobs.train", run_name="__main__")
