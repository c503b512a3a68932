"""torchrun's worker processes by rank, for the tests and benchmarks that stop, kill or measure one rank."""

from __future__ import annotations

from pathlib import Path


def rank_pids(torchrun_pid: int) -> dict[int, int]:
    """``{rank: pid}`` of the workers torchrun ``torchrun_pid`` started (their ``RANK`` variable); empty until they
    start, and after they end (Linux ``/proc`` only)."""
    found: dict[int, int] = {}
    try:
        children = Path(f"/proc/{torchrun_pid}/task/{torchrun_pid}/children").read_text().split()
    except OSError:
        return found
    for pid in map(int, children):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # it ended meanwhile
            continue
        rank = next((item[len(b"RANK=") :] for item in environ if item.startswith(b"RANK=")), None)
        if rank is not None:
            found[int(rank)] = pid
    return found
