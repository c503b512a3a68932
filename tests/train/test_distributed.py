"""vcot-train under torchrun (gloo on CPU): two processes match one (each reading only its share of the rows),
two "nodes" train together, a dead rank fails the job and the rerun resumes, SIGTERM on one rank stops all at
one checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.train.train_helpers import WATCH
from vcot.dev.torchrun_workers import rank_pids
from vcot.io import manifest, storage
from vcot.train import TrainConfig, distributed, train
from vcot.train.checkpoints import complete_checkpoints
from vcot.train.distributed import free_port

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
# Global batch 4: 2 ranks x 2 rows, or 1 process x 4 rows; 44 train rows, so every step of the first epoch is full.
DDP_SET = "num_train_epochs=10,logging_steps=1,save_steps=5,eval_steps=5,per_device_train_batch_size=2"
RESTARTABLE = ("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
"""What k8s/components/multi-node sets so torchrun's restarts (``--max-restarts``) cannot hang: with the agents'
shared store, a worker's store prefix counts its agent's failures, and an agent that restarted for a failure and
one that restarted for a new member put their workers under different prefixes, where they wait for each other
forever (seen: 2 hangs in 10 runs of the test below). With it off, every round's rank 0 hosts a new store for
that round alone."""
LOSS_TOLERANCE = 0.01
"""Per logged step, |loss(2 ranks) - loss(1 process)|: the same rows per step; only float summation order differs
(seen: < 3e-4 after 10 steps)."""


def torchrun(
    launch: list[str], data: str, model: Path, output: str, run_set: str, *, recipe: str = "tiny-cpu",
    entry: str = "jobs.train", init_adapter: str = "",
) -> subprocess.Popen[str]:  # fmt: skip
    """Start ``torchrun LAUNCH -m ENTRY ...`` with JSON log lines on its stdout (both ranks' and its own)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "VCOT_LOG_FORMAT": "json"}
    argv = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", entry, "--data", data]
    argv += ["--model", str(model), "--output", output, "--recipe", recipe, "--threads", "1", "--set", run_set]
    argv += ["--init-adapter", init_adapter] if init_adapter else []
    return subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def events(lines: list[str], name: str) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in lines if line.startswith("{") and f'"{name}"' in line]
    return [event for event in found if event.get("event") == name]


def read_until_step(process: subprocess.Popen[str], step: int) -> list[str]:
    """Lines of ``process`` until rank 0 logged a training step >= ``step``."""
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if any(event.get("step", 0) >= step and "loss" in event for event in events([line], "train_log")):
            return lines
    raise AssertionError("training ended before step " + str(step) + ":\n" + "".join(lines[-30:]))


def finish(process: subprocess.Popen[str], lines: list[str]) -> int:
    """Wait for ``process``, collecting the rest of its lines; a hang fails the test with the lines it wrote (torchrun
    is stopped with SIGTERM, which it passes on to its ranks)."""
    try:
        rest, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.terminate()
        rest, _ = process.communicate(timeout=60)
        lines.extend(rest.splitlines(keepends=True))
        pytest.fail("the run hung for 300 s; its last lines:\n" + "".join(lines[-40:]))
    lines.extend(rest.splitlines(keepends=True))
    return process.returncode


def read_all(processes: list[subprocess.Popen[str]]) -> tuple[list[list[str]], list[threading.Thread]]:
    """Read the "nodes" of one job side by side, each into its own list (a node blocked writing to a full pipe would
    hold the others in their collectives)."""
    outputs: list[list[str]] = [[] for _ in processes]
    readers = [threading.Thread(target=lambda p=p, o=o: o.extend(p.stdout), daemon=True)  # type: ignore[misc]
               for p, o in zip(processes, outputs, strict=True)]  # fmt: skip
    for reader in readers:
        reader.start()
    return outputs, readers


def finish_all(processes: list[subprocess.Popen[str]], outputs: list[list[str]], readers: list[threading.Thread]
               ) -> list[int]:  # fmt: skip
    """:func:`finish` for the nodes :func:`read_all` reads: a hang stops every node and fails with their last lines."""
    try:
        codes = [process.wait(timeout=300) for process in processes]
    except subprocess.TimeoutExpired:
        for process in processes:
            process.terminate()
        for reader in readers:
            reader.join(timeout=60)
        pytest.fail("the job hung for 300 s; its nodes' last lines:\n" + "\n".join("".join(o[-30:]) for o in outputs))
    for reader in readers:
        reader.join()
    return codes


def wait_for_step(outputs: list[list[str]], step: int) -> None:
    """Until rank 0, on whichever node, logged a training step >= ``step``."""
    deadline = time.monotonic() + 300
    while not any(event["step"] >= step for lines in outputs for event in events(list(lines), "train_log")):
        assert time.monotonic() < deadline, f"no step {step} in 300 s"
        time.sleep(0.5)


def resumed_from(lines: list[str]) -> list[str]:
    """The checkpoint names a (re)run's ``resume_from`` events name: ``["checkpoint-5"]``."""
    return [event["checkpoint"].rsplit("/", 1)[-1] for event in events(lines, "resume_from")]


def losses(output: str) -> list[tuple[int, float]]:
    history = storage.read_json(storage.join(output, "metrics.json"))["log_history"]
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]


def test_two_ranks_match_one_process_and_commit_once(
    tokenized_data: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    run_set = DDP_SET + ",max_steps=10"
    one = str(tmp_path / "one")
    train(TrainConfig(data=tokenized_data, model=str(tiny_model_dir), output=one, recipe="tiny-cpu",
                      set=run_set + ",per_device_train_batch_size=4"))
    two = str(tmp_path / "two")
    process = torchrun(["--nproc-per-node", "2", "--master-port", str(free_port())], tokenized_data, tiny_model_dir,
                       two, run_set)
    lines: list[str] = []
    assert finish(process, lines) == 0, "".join(lines[-40:])

    assert len(losses(two)) == 10
    for (step, loss), (step_one, loss_one) in zip(losses(two), losses(one), strict=True):
        assert step == step_one and abs(loss - loss_one) < LOSS_TOLERANCE, (step, loss, loss_one)
    assert len(events(lines, "committed")) == 1  # only rank 0 wrote the adapter and committed
    # Each rank read only its share of the memory-mapped rows: 10 steps x 2 rows of the 44, plus the one batch
    # the data loader fetches ahead (accelerate's loader looks one batch ahead to know the last one).
    assert sorted((e["rank"], e["rows"], e["of"]) for e in events(lines, "rows_read")) == [(0, 22, 44), (1, 22, 44)]
    assert len(events(lines, "checkpoint_synced")) == 2  # steps 5 and 10, once each
    stats = manifest.read_manifest(two)["stats"]
    assert (stats["world_size"], stats["global_batch_size"], stats["gradient_accumulation_steps"]) == (2, 4, 1)
    assert manifest.read_manifest(one)["stats"]["world_size"] == 1
    assert (Path(two) / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("sharding", ["", ",sharding=fsdp2,optim=adamw_torch,generation_eval_samples=0"])
def test_two_nodes_train_together(tokenized_data: str, tiny_model_dir: Path, tmp_path: Path, sharding: str) -> None:
    """Sharded too: each node uploads its rank's shard, and the second node reloads the best checkpoint (step 5)
    from its own folder with the index only the first node wrote."""
    output = str(tmp_path / "nodes")
    port = free_port()
    nodes = [
        torchrun(["--nnodes", "2", "--node-rank", str(index), "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                  "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "vcot-test"],
                 tokenized_data, tiny_model_dir, output, DDP_SET + ",max_steps=5" + sharding)
        for index in (0, 1)
    ]
    outputs, readers = read_all(nodes)
    codes = finish_all(nodes, outputs, readers)
    assert codes == [0, 0], "".join(outputs[0][-30:] + outputs[1][-30:])
    assert manifest.read_manifest(output)["stats"]["world_size"] == 2
    assert [len(events(lines, "committed")) for lines in outputs] == [1, 0]  # rank 0 is on the first node
    assert len(events(outputs[1], "train_log")) == 0  # the second node's rank trained without writing


def test_with_restarts_a_dead_rank_on_one_node_restarts_every_rank_and_they_resume_together(
    tokenized_data: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What components/multi-node runs (``--max-restarts``): a rank killed on one node makes its agent restart its
    workers, the other node's agent sees the new rendezvous round and restarts its own, and all ranks resume from
    the newest complete checkpoint, in the same pods (no Job retry, no wait for a collective's timeout)."""
    output = str(tmp_path / "restarted")
    monkeypatch.setenv(*RESTARTABLE)
    port = free_port()
    nodes = [
        torchrun(["--nnodes", "2", "--node-rank", str(index), "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                  "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "vcot-restart", "--max-restarts", "3"],
                 tokenized_data, tiny_model_dir, output, DDP_SET + ",max_steps=20")
        for index in (0, 1)
    ]
    outputs, readers = read_all(nodes)
    wait_for_step(outputs, 7)
    (killed,) = rank_pids(nodes[1].pid).values()
    os.kill(killed, signal.SIGKILL)  # the second node's only rank: an OOM kill
    codes = finish_all(nodes, outputs, readers)
    assert codes == [0, 0], "".join(outputs[0][-30:] + outputs[1][-30:])
    resumed = [resumed_from(lines) for lines in outputs]
    assert all(resumed) and resumed[0][-1] == resumed[1][-1], resumed  # both ranks restarted, from one checkpoint
    stats = manifest.read_manifest(output)["stats"]
    assert (stats["world_size"], stats["global_step"]) == (2, 20)


VCOT_TORCHRUN = ["-c", "import sys; from vcot.train.distributed import torchrun; sys.exit(torchrun())"]
"""The ``vcot-torchrun`` console script, with this checkout's code."""


@pytest.mark.parametrize(("launcher", "code"), [(["-m", "torch.distributed.run"], 1), (VCOT_TORCHRUN, 2)],
                         ids=["torchrun", "vcot-torchrun"])  # fmt: skip
def test_vcot_torchrun_keeps_the_exit_code_of_invalid_settings(
    tokenized_data: str, tiny_model_dir: Path, tmp_path: Path, launcher: list[str], code: int
) -> None:
    """The pods' launcher (components/multi-gpu, multi-node): a setting no rank accepts exits 2 through it, after
    torchrun's restarts, so the Job's pod failure policy fails the run instead of retrying it; torchrun says 1."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, *launcher, "--nproc-per-node", "2", "--master-port", str(free_port()),
            "--max-restarts", "1", "-m", "jobs.train", "--data", tokenized_data, "--model", str(tiny_model_dir),
            "--output", str(tmp_path / "run"), "--recipe", "tiny-cpu", "--set", "learning_rate=fast"]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == code, done.stderr[-3000:]
    assert "learning_rate" in done.stderr  # the ranks' own line says what to fix


def test_a_dead_rank_fails_the_job_and_the_rerun_resumes(
    tokenized_data: str, tiny_model_dir: Path, real_s3: str
) -> None:
    output = storage.join(real_s3, "run")
    run_set = DDP_SET + ",max_steps=30"
    launch = ["--nproc-per-node", "2", "--master-port", str(free_port())]
    process = torchrun(launch, tokenized_data, tiny_model_dir, output, run_set)
    lines = read_until_step(process, 7)
    ranks = rank_pids(process.pid)
    os.kill(ranks[1], signal.SIGKILL)
    assert finish(process, lines) != 0
    assert not Path(f"/proc/{ranks[0]}").exists()  # rank 0 did not hang on its dead peer: it is gone too
    newest = max(complete_checkpoints(storage.join(output, "checkpoints")))  # 5 (10 on a very slow machine)

    rerun = torchrun(launch[:2] + ["--master-port", str(free_port())], tokenized_data, tiny_model_dir, output, run_set)
    again: list[str] = []
    assert finish(rerun, again) == 0, "".join(again[-40:])
    assert resumed_from(again) == [f"checkpoint-{newest}"]
    assert manifest.read_manifest(output)["stats"]["global_step"] == 30


def test_sigterm_on_one_rank_stops_all_ranks_at_one_checkpoint(
    tokenized_data: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    output = str(tmp_path / "term")
    process = torchrun(["--nproc-per-node", "2", "--master-port", str(free_port())], tokenized_data, tiny_model_dir,
                       output, DDP_SET + ",max_steps=30")
    lines = read_until_step(process, 7)
    os.kill(rank_pids(process.pid)[1], signal.SIGTERM)  # e.g. one container of a pod stopped
    assert finish(process, lines) == 1
    stopped = events(lines, "sigterm")
    assert len(stopped) == 2 and stopped[0]["step"] == stopped[1]["step"]  # both ranks, at the same step
    assert max(complete_checkpoints(storage.join(output, "checkpoints"))) == stopped[0]["step"]
    assert len(events(lines, "failed")) == 2, "".join(lines[-40:])  # each rank: "stopped by SIGTERM ... run again"


def test_grpo_under_torchrun_commits_once(record_data: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    output = str(tmp_path / "grpo")
    process = torchrun(["--nproc-per-node", "2", "--master-port", str(free_port())], record_data, tiny_model_dir,
                       output, f"max_steps=4,save_steps=2,eval_steps=2,per_device_train_batch_size=4,num_generations=4,"
                       f"{WATCH}", recipe="tiny-cpu-grpo")
    lines: list[str] = []
    assert finish(process, lines) == 0, "".join(lines[-40:])
    assert len(events(lines, "committed")) == 1
    stats = manifest.read_manifest(output)["stats"]
    assert (stats["world_size"], stats["global_batch_size"]) == (2, 8)


def test_generation_evaluation_under_torchrun_keeps_one_best_checkpoint_on_every_rank(
    tokenized_data: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Rank 0 generates and broadcasts: both ranks see the metric that picks the checkpoint (no hang, one decision).
    run_set = DDP_SET + (
        ",max_steps=4,eval_steps=2,save_steps=2,generation_eval_samples=4,generation_eval_steps=0,"
        "generation_eval_max_new_tokens=16,metric_for_best_model=eval_gen_answer_accuracy"
    )
    output = str(tmp_path / "gen")
    process = torchrun(["--nproc-per-node", "2", "--master-port", str(free_port())], tokenized_data, tiny_model_dir,
                       output, run_set)
    lines: list[str] = []
    assert finish(process, lines) == 0, "".join(lines[-40:])
    assert [event["step"] for event in events(lines, "generation_eval")] == [2, 4]  # rank 0's, none at the end
    best = manifest.read_manifest(output)["stats"]["best_metric"]
    assert best["name"] == "eval_gen_answer_accuracy" and best["step"] in (2, 4)


@pytest.fixture
def group_of_one_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The variables :func:`distributed.init` sets for a group of one, set here so the test undoes them; a group the
    test left behind is left."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "GROUP_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    yield
    distributed.leave()


@pytest.mark.usefixtures("group_of_one_env")
def test_the_process_group_is_left_when_the_block_ends_or_every_rank_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    # A process that exits still in a gloo group can abort at shutdown (SIGABRT instead of its exit code).
    import torch.distributed as dist

    with distributed.process_group(group_of_one=True):
        assert dist.is_initialized()
    assert not dist.is_initialized()
    with pytest.raises(ValueError), distributed.process_group(group_of_one=True):  # no other rank to wait for
        raise ValueError("a world of one")
    assert not dist.is_initialized()
    stopped = (KeyboardInterrupt,)  # as a SIGTERM stop every rank agreed on
    with pytest.raises(KeyboardInterrupt), distributed.process_group(group_of_one=True, stopped_together=stopped):
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        raise KeyboardInterrupt
    assert not dist.is_initialized()


@pytest.mark.usefixtures("group_of_one_env")
def test_after_an_error_of_its_own_a_rank_of_many_stays_in_the_group(monkeypatch: pytest.MonkeyPatch) -> None:
    # Leaving would wait on the ranks still in a collective: the process exits in the group, torchrun stops the rest.
    import torch.distributed as dist

    with pytest.raises(ValueError), distributed.process_group(group_of_one=True):
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        raise ValueError("this rank only")
    assert dist.is_initialized()


@pytest.mark.usefixtures("group_of_one_env")
def test_a_group_the_caller_joined_is_the_callers_to_leave() -> None:
    import torch.distributed as dist

    distributed.init(group_of_one=True)
    with distributed.process_group(group_of_one=True):
        pass
    assert dist.is_initialized()


@pytest.mark.usefixtures("group_of_one_env")
def test_a_sharded_run_stopped_by_sigterm_leaves_its_group(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch.distributed as dist

    from vcot.train import stage
    from vcot.train.common import TrainingInterrupted

    def stopped(config: TrainConfig, recipe: Any) -> None:
        assert dist.is_initialized()  # the sharded recipe's group of one
        raise TrainingInterrupted("stopped by SIGTERM at step 3")

    monkeypatch.setattr(stage, "_train", stopped)
    config = TrainConfig(data=str(tmp_path / "data"), model=str(tmp_path / "model"), output=str(tmp_path / "out"),
                         recipe="tiny-cpu", set="sharding=fsdp2,optim=adamw_torch")  # fmt: skip
    with pytest.raises(TrainingInterrupted):
        train(config)
    assert not dist.is_initialized()
