"""Worker processes for CPU-bound record work: results in input order, bounded memory, a CPU count that obeys the pod.

One function does it (:func:`ordered_map`) rather than a framework: a stage hands it a module-level
function, a shared read-only state and an iterator of tasks, and gets the results back in task order,
so what it writes does not depend on how many processes did the work.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

Task = TypeVar("Task")
Result = TypeVar("Result")

_STATE: Any = None
"""The shared state of this worker process, set once when it starts (inherited through fork, never pickled)."""


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU limit (a pod's ``resources.limits.cpu``).

    ``os.cpu_count()`` is the node's count: on a 64-core node a pod limited to 2 CPUs would start 64
    processes and be throttled.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup)
    return max(1, min(cpus, math.ceil(quota))) if quota else max(1, cpus)


def _cgroup_cpu_quota(cgroup: Path) -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``), or ``None`` without a limit."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 else None
    except (OSError, ValueError):
        return None


def resolve_workers(workers: int) -> int:
    """``workers`` if positive, else :func:`available_cpus` (``0`` means "what the pod has")."""
    return workers if workers > 0 else available_cpus()


PARENT_CHECK_SECONDS = 0.5
"""How often a worker checks that the process that started it is still there."""


def _init_worker(state: Any, parent: int) -> None:
    """Keep the shared state, die on SIGTERM, and exit when the parent is gone.

    SIGTERM gets its default action back: the parent's handler (it unwinds the stage) is inherited
    through fork, and the pool terminates the other workers with SIGTERM when one dies. A parent killed
    outright (SIGKILL, out of memory) leaves its workers waiting forever on a queue nobody writes to; in
    a container they die with PID 1, on a workstation they would not. So a thread watches for the worker
    being reparented, and ends it.
    """
    global _STATE
    _STATE = state
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="vcot-parent-watch", daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)  # nobody is left to read what this worker would return


def _call(function: Callable[[Any, Any], Any], task: Any) -> Any:
    return function(_STATE, task)


def ordered_map(
    function: Callable[[Any, Task], Result],
    state: Any,
    tasks: Iterable[Task],
    *,
    workers: int,
    window: int | None = None,
) -> Iterator[Result]:
    """``function(state, task)`` for every task, yielded in task order, by up to ``workers`` processes.

    ``function`` must be importable (module level); ``state`` reaches the workers through fork, so it
    may be large (an index of image sizes) at no copying cost. At most ``window`` tasks (default
    ``2 * workers``) are in flight, so a multi-GB input is never read ahead. One task, or
    ``workers <= 1``, runs here without starting processes. Closing the iterator early (a caller that
    stops reading) cancels what is queued. A failing task raises here, in order; a worker killed by the
    OS (out of memory) raises ``BrokenProcessPool``. Workers exit when this process does, however it ends.

    >>> list(ordered_map(pow, 2, [1, 2, 3], workers=1))
    [2, 4, 8]
    """
    iterator = iter(tasks)
    first = next(iterator, _END)
    second = next(iterator, _END) if first is not _END else _END
    if workers <= 1 or second is _END:
        for task in _chain(first, second, iterator):
            yield function(state, task)
        return
    context = multiprocessing.get_context("fork")  # the state is inherited, not pickled
    limit = window or 2 * workers
    pending: deque[Future[Result]] = deque()
    initargs = (state, os.getpid())
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=initargs) as pool:
        try:
            for task in _chain(first, second, iterator):
                pending.append(pool.submit(_call, function, task))
                if len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


_END: Any = object()


def _chain(first: Any, second: Any, rest: Iterator[Any]) -> Iterator[Any]:
    for task in (first, second):
        if task is not _END:
            yield task
    yield from rest
