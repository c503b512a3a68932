"""Where this process stands in a ``torchrun`` job: rank, world size, local device; and the few collectives
the train stage needs around the Trainer (which runs DDP itself).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``GROUP_RANK`` (the node's index); a plain
``vcot-train`` is rank 0 of a world of 1 and none of these calls does anything. Only rank 0 writes to
storage; every rank restores the same checkpoint (:mod:`vcot.train.common`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from vcot.log import get_logger

T = TypeVar("T")
log = get_logger(__name__)

COLLECTIVE_TIMEOUT_MINUTES = 120
"""How long a rank waits in a collective for the others before the run fails. Torch's NCCL default is 10 minutes,
and vcot's ranks wait on rank 0's long single-rank work: uploading a checkpoint or a 145 GB merged 72B, syncing
checkpoints down at a restart, a data-parallel generation evaluation. ``VCOT_COLLECTIVE_TIMEOUT_MINUTES`` sets it."""


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


def init(*, group_of_one: bool = False) -> None:
    """Join the process group now (nccl on GPUs, gloo on CPU) so the stage can agree before the Trainer starts
    (the Trainer then uses this group). Nothing to do in a world of 1, unless ``group_of_one``: a process outside
    torchrun then forms a group of its own (sharded training needs one, whatever the world size)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized() or (world_size() == 1 and not group_of_one):
        return
    if "MASTER_ADDR" not in os.environ:  # not under torchrun: this process is the whole world
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", LOCAL_RANK="0",
                          WORLD_SIZE="1", GROUP_RANK="0")  # fmt: skip
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo", timeout=collective_timeout())


def leave() -> None:
    """Leave the process group, if this process is in one. A process that exits still in a gloo group can abort
    as the interpreter shuts down (SIGABRT, "terminate called without an active exception": the group's threads
    outlive it), which turns the stage's exit code into a crash; NCCL warns of a leak. NCCL's destroy is
    collective: every rank must call it, none waiting in a collective."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(
    *, group_of_one: bool = False, stopped_together: tuple[type[BaseException], ...] = ()
) -> Iterator[None]:
    """:func:`init` for the block, then leave the group it joined when the block ends: normally or by one of
    ``stopped_together`` (errors every rank raises at the same point, such as a stop they agreed on) after a
    barrier, so no rank tears the group down while another still talks to it; by any error in a world of one. After
    another error a rank exits in the group: a barrier or a collective destroy would wait, until the collective
    timeout or torchrun stops it, on ranks still in a collective. A group that cannot be left is logged, not raised:
    the stage's outcome (its result, or the error that ended it) is decided."""
    import torch.distributed as dist

    if dist.is_initialized():  # a caller's own group is the caller's to leave
        yield
        return
    init(group_of_one=group_of_one)
    try:
        yield
    except stopped_together:
        _leave_after_the_others()
        raise
    except BaseException:
        if world_size() == 1:
            _leave_after_the_others()
        raise
    _leave_after_the_others()


def _leave_after_the_others() -> None:
    try:
        barrier()
        leave()
    except Exception as exc:  # cleanup: the stage's own outcome must come through
        log.warning("process_group_not_left", error=str(exc))


def collective_timeout() -> Any:
    """:data:`COLLECTIVE_TIMEOUT_MINUTES`, or ``VCOT_COLLECTIVE_TIMEOUT_MINUTES`` when set.

    >>> collective_timeout()
    datetime.timedelta(seconds=7200)
    """
    from datetime import timedelta

    return timedelta(minutes=float(os.environ.get("VCOT_COLLECTIVE_TIMEOUT_MINUTES") or COLLECTIVE_TIMEOUT_MINUTES))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now: a process group's, or a local server's (the tests, the benchmarks)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def most_over_ranks(count: int, device: Any) -> int:
    """The largest ``count`` over the ranks (``count`` outside torchrun): how many forward passes every rank of a
    sharded model runs when each has its own number to do (each pass gathers every layer from all ranks)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return count
    value = torch.tensor([count], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def rendezvous_host(argv: list[str], index: str | None) -> list[str]:
    """``argv`` saying which pod of an indexed Job hosts the c10d rendezvous store: index 0, whose pod the endpoint
    names (``components/multi-node``). Left to torch, an agent hosts it only if the endpoint's name resolves to one
    of its own addresses, which fails while index 0's DNS record is not yet published: then no pod hosts it, and
    every pod fails after the read timeout. A ``--rdzv-conf`` given on the command line is left as it is.

    >>> rendezvous_host(["--rdzv-backend=c10d", "--rdzv-endpoint=j-0.j:29400", "vcot-train"], "0")
    ['--rdzv-conf=is_host=1', '--rdzv-backend=c10d', '--rdzv-endpoint=j-0.j:29400', 'vcot-train']
    >>> rendezvous_host(["--rdzv-backend", "c10d", "vcot-train"], "2")[0], rendezvous_host(["--standalone"], "0")
    ('--rdzv-conf=is_host=0', ['--standalone'])
    """
    options = [token.replace("_", "-") for token in argv]
    c10d = "--rdzv-backend=c10d" in options or any(
        a == "--rdzv-backend" and b == "c10d" for a, b in zip(options, options[1:]))  # fmt: skip
    if index is None or not c10d or any(token.startswith("--rdzv-conf") for token in options):
        return argv
    return [f"--rdzv-conf=is_host={int(index == '0')}", *argv]


def torchrun(argv: list[str] | None = None) -> int:
    """``vcot-torchrun``: ``torchrun`` with these arguments (the command line's by default), whose exit code keeps
    the ranks' meaning: 2 when a rank exited 2 (invalid settings, a diverged run: a retry cannot help), 1 on any
    other failure. Plain torchrun exits 1 for all, and a Job's pod failure policy (``FailJob`` on 2) could not tell
    "fix the settings" from "retry" (``components/multi-gpu``, ``multi-node``)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from vcot.errors import ConfigError

    args = rendezvous_host(sys.argv[1:] if argv is None else argv, os.environ.get("JOB_COMPLETION_INDEX"))
    try:
        run(parse_args(args))
    except ChildFailedError as failed:
        codes = sorted({failure.exitcode for failure in failed.failures.values()})
        print(f"{failed}\nvcot-torchrun: ranks failed with exit codes {codes}", file=sys.stderr)
        return ConfigError.exit_code if ConfigError.exit_code in codes else 1
    return 0
