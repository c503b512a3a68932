"""Where this process stands in a ``torchrun`` job: rank, world size, local device; and the few collectives
the train stage needs around the Trainer (which runs DDP itself).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``GROUP_RANK`` (the node's index); a plain
``vcot-train`` is rank 0 of a world of 1 and none of these calls does anything. Only rank 0 writes to
storage; every rank restores the same checkpoint (:mod:`vcot.train.common`).
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """The index of this process's GPU on its node."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def node_rank() -> int:
    return int(os.environ.get("GROUP_RANK", "0"))


def is_main() -> bool:
    """Rank 0: the one process that writes to storage."""
    return rank() == 0


def init() -> None:
    """Join the process group now (nccl on GPUs, gloo on CPU) so the stage can agree before the Trainer starts
    (the Trainer then uses this group). Nothing to do in a world of 1."""
    import torch
    import torch.distributed as dist

    if world_size() == 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (what rank 0 decided, e.g. whether the output is already committed)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, device: Any) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. SIGTERM reached one rank only)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
