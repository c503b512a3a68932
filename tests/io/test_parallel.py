"""ordered_map keeps task order whatever the workers, fails loudly, and available_cpus obeys a cgroup limit."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from vcot.io.parallel import available_cpus, ordered_map


def _scaled(state: dict, task: int) -> tuple[int, int]:
    if task == state["fail_on"]:
        raise ValueError(f"task {task} failed")
    return task * state["factor"], os.getpid()


def test_results_come_back_in_task_order_from_several_processes() -> None:
    results = list(ordered_map(_scaled, {"factor": 3, "fail_on": None}, range(200), workers=3, window=4))
    assert [value for value, _ in results] == [3 * task for task in range(200)]
    assert len({pid for _, pid in results}) > 1 and os.getpid() not in {pid for _, pid in results}


def test_one_task_or_one_worker_runs_here() -> None:
    assert {pid for _, pid in ordered_map(_scaled, {"factor": 1, "fail_on": None}, [5], workers=4)} == {os.getpid()}
    assert {pid for _, pid in ordered_map(_scaled, {"factor": 1, "fail_on": None}, range(5), workers=1)} == {
        os.getpid()
    }


def test_a_failing_task_raises_in_order_after_the_results_before_it() -> None:
    seen = []
    with pytest.raises(ValueError, match="task 7 failed"):
        for value, _ in ordered_map(_scaled, {"factor": 1, "fail_on": 7}, range(50), workers=2):
            seen.append(value)
    assert seen == list(range(7))


def _slow_pid(state: None, task: int) -> int:
    time.sleep(0.005)
    return os.getpid()


def test_workers_die_on_sigterm_even_inside_a_stage() -> None:
    """The pool stops its workers with SIGTERM when one breaks: they must die on it, not ignore it nor raise
    the stage's own SIGTERM exception (inherited through fork)."""
    from vcot.cli import _sigterm_unwinds

    with _sigterm_unwinds(), pytest.raises(BrokenProcessPool):
        for pid in ordered_map(_slow_pid, None, range(2000), workers=2):
            os.kill(pid, signal.SIGTERM)


def test_stopping_early_reads_no_further_than_the_window() -> None:
    read = []

    def tasks():
        for task in range(1000):
            read.append(task)
            yield task

    results = ordered_map(_scaled, {"factor": 1, "fail_on": None}, tasks(), workers=2, window=4)
    assert [next(results)[0] for _ in range(3)] == [0, 1, 2]
    results.close()
    assert len(read) <= 8


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("150000 100000", 2), ("100000 100000", 1), ("50000 100000", 1), ("max 100000", None)],
)
def test_available_cpus_is_capped_by_the_cgroup_quota(tmp_path: Path, cpu_max: str, expected: int | None) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == min(affinity, expected or affinity)


def test_available_cpus_reads_cgroup_v1_and_no_cgroup(tmp_path: Path) -> None:
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(tmp_path) == 1
