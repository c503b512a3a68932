"""Sharded training (``sharding: fsdp2``, :mod:`vcot.train.sharding`) under torchrun with gloo ranks on the CPU:
the same losses as one whole-model process on the same global batch, each rank holding half of the model and of
the optimizer state, outputs people load as they load a data-parallel run's, sharded checkpoints that resume on
another world size, and a rank killed mid-run that the rerun recovers from."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.test_distributed import (
    DDP_SET,
    REPO_ROOT,
    events,
    finish,
    losses,
    read_until_step,
    resumed_from,
    torchrun,
)
from vcot.dev.torchrun_workers import rank_pids
from vcot.io import manifest, storage
from vcot.train import TrainConfig, train
from vcot.train.checkpoints import complete_checkpoints
from vcot.train.distributed import free_port

pytestmark = pytest.mark.integration

SHARDED = "sharding=fsdp2,optim=adamw_torch,generation_eval_samples=0"
"""tiny-cpu sharded: its base is fp32 already; bitsandbytes' 8-bit AdamW is not for sharded runs (the recipe refuses
it); the generation evaluation is off to keep these runs short (GRPO's test below runs it sharded)."""
LOSS_TOLERANCE = 0.01
"""Per logged step, |loss(sharded, 2 ranks) - loss(whole model, 1 process)| on the same rows: only the order of
float sums differs (the gradients are reduce-scattered instead of all-reduced)."""
WEIGHT_TOLERANCE = 0.01
"""Per saved tensor after those 10 steps, ||sharded - whole|| / ||whole|| (seen: < 0.003)."""
FUSED_TOLERANCE = 1e-3
"""Per logged step, |loss(sharded, fused LM head) - loss(sharded, the model's own loss)|: the same ranks and rows,
only the head's tiling differs (seen: < 1e-4)."""
RESUME_TOLERANCE = 1e-4
"""Per logged step after a resume on the same world size: the same computation from the same saved state."""


RUN_SET = DDP_SET + ",max_steps=10," + SHARDED
"""Global batch 4 (2 ranks x 2 rows), checkpoints at steps 5 and 10."""


def sharded_events(lines: list[str]) -> dict[int, dict[str, int]]:
    return {event["rank"]: event for event in events(lines, "sharded")}


def two_ranks(data: str, model: Path, output: str, run_set: str = RUN_SET, *, entry: str = "jobs.train"
              ) -> subprocess.Popen[str]:  # fmt: skip
    return torchrun(["--nproc-per-node", "2", "--master-port", str(free_port())], data, model, output, run_set,
                    entry=entry)  # fmt: skip


def one_process(data: str, model: Path, output: str, run_set: str = RUN_SET) -> subprocess.Popen[str]:
    """``vcot-train`` outside torchrun (a sharded recipe forms a group of one), 4 rows per step: the same batch."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "VCOT_LOG_FORMAT": "json"}
    argv = [sys.executable, "-m", "jobs.train", "--data", data, "--model", str(model), "--output", output,
            "--recipe", "tiny-cpu", "--threads", "1", "--set", run_set + ",per_device_train_batch_size=4"]  # fmt: skip
    return subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def reference(
    tokenized_data: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[str]]:
    """An uninterrupted sharded run on 2 ranks, rank 1 looking for checkpoint folders late (``late_rank``: the
    ranks still agree on the best checkpoint and finish): its output and its log lines."""
    output = str(tmp_path_factory.mktemp("sharded") / "reference")
    lines: list[str] = []
    run = two_ranks(tokenized_data, tiny_model_dir, output, entry="tests.train.late_rank")
    assert finish(run, lines) == 0, "".join(lines[-40:])
    return output, lines


def assert_continues(resumed: str, reference: str, after: int, tolerance: float) -> None:
    """The resumed run's losses after step ``after`` are the uninterrupted run's, to ``tolerance``."""
    expected = dict(losses(reference))
    later = [(step, loss) for step, loss in losses(resumed) if step > after]
    assert [step for step, _ in later] == [step for step in expected if step > after]
    for step, loss in later:
        assert abs(loss - expected[step]) < tolerance, (step, loss, expected[step])


def test_two_sharded_ranks_match_one_whole_process_and_each_holds_half(
    tokenized_data: str, tiny_model_dir: Path, tmp_path: Path, reference: tuple[str, list[str]]
) -> None:
    one = str(tmp_path / "one")
    train(TrainConfig(data=tokenized_data, model=str(tiny_model_dir), output=one, recipe="tiny-cpu",
                      set=DDP_SET + ",max_steps=10,optim=adamw_torch,per_device_train_batch_size=4"))  # fmt: skip
    two, lines = reference

    assert len(losses(two)) == 10
    for (step, loss), (step_one, loss_one) in zip(losses(two), losses(one), strict=True):
        assert step == step_one and abs(loss - loss_one) < LOSS_TOLERANCE, (step, loss, loss_one)
    # Each rank holds half of the parameters and of the optimizer state (dim-0 shards: within a row per tensor).
    held = sharded_events(lines)
    assert sorted(held) == [0, 1]
    for key in ("parameters", "optimizer_state"):
        total = held[0][f"{key}_total"]
        assert held[0][f"{key}_total"] == held[1][f"{key}_total"] > 0
        assert held[0][key] + held[1][key] == total, (key, held)
        assert abs(held[0][key] - total / 2) < 0.02 * total, (key, held)
    # Only rank 0 read the weights; rank 1's came from it when the model was sharded (the losses above say they did).
    assert sorted(event["weights"] for event in events(lines, "load_model")) == ["rank 0's, at sharding", "read"]
    stats = manifest.read_manifest(two)["stats"]
    assert (stats["world_size"], stats["global_batch_size"]) == (2, 4)
    assert manifest.read_manifest(two)["config"]["recipe_values"]["sharding"] == "fsdp2"

    # The outputs are a data-parallel run's: the same adapter files and tensors, loadable by plain peft.
    from safetensors.torch import load_file

    sharded = load_file(Path(two) / "adapter" / "adapter_model.safetensors")
    whole = load_file(Path(one) / "adapter" / "adapter_model.safetensors")
    assert sharded.keys() == whole.keys() and all(sharded[k].shape == whole[k].shape for k in whole)
    for key in whole:  # the gathered weights are the trained ones: the whole-model run's, to float-sum order
        drift = ((sharded[key] - whole[key]).norm() / whole[key].norm()).item()
        assert drift < WEIGHT_TOLERANCE, (key, drift)


def test_a_sharded_checkpoint_resumes_on_the_same_world_within_1e_4(
    tokenized_data: str, tiny_model_dir: Path, tmp_path: Path, reference: tuple[str, list[str]]
) -> None:
    output = str(tmp_path / "again")
    process = two_ranks(tokenized_data, tiny_model_dir, output)
    lines = read_until_step(process, 2)  # early: a busy machine's late signal still lands before step 10 ends the run
    os.kill(rank_pids(process.pid)[1], signal.SIGTERM)  # a preemption: finish the step, save, stop
    assert finish(process, lines) == 1, "".join(lines[-40:])
    stopped = events(lines, "sigterm")[0]["step"]
    assert max(complete_checkpoints(storage.join(output, "checkpoints"))) == stopped
    listed = storage.list_uris(storage.join(output, "checkpoints", f"checkpoint-{stopped}"))
    assert {Path(uri).name for uri in listed} >= {"__0_0.distcp", "__1_0.distcp"}  # each rank wrote its shard

    rerun: list[str] = []
    assert finish(two_ranks(tokenized_data, tiny_model_dir, output), rerun) == 0, "".join(rerun[-40:])
    assert resumed_from(rerun) == [f"checkpoint-{stopped}"]
    assert_continues(output, reference[0], stopped, RESUME_TOLERANCE)


def test_a_rank_killed_mid_run_then_one_process_resumes_its_sharded_checkpoint(
    tokenized_data: str, tiny_model_dir: Path, tmp_path: Path, reference: tuple[str, list[str]]
) -> None:
    output = str(tmp_path / "killed")
    process = two_ranks(tokenized_data, tiny_model_dir, output)
    lines = read_until_step(process, 7)
    ranks = rank_pids(process.pid)
    os.kill(ranks[1], signal.SIGKILL)  # an OOM kill, a lost node: no checkpoint of its own
    assert finish(process, lines) != 0
    assert not Path(f"/proc/{ranks[0]}").exists()  # rank 0 did not hang on its dead peer
    newest = max(complete_checkpoints(storage.join(output, "checkpoints")))  # 5 (10 on a very slow machine)

    rerun: list[str] = []  # the restart, on 1 rank: the 2 ranks' shards resharded into one
    assert finish(one_process(tokenized_data, tiny_model_dir, output), rerun) == 0, "".join(rerun[-40:])
    assert resumed_from(rerun) == [f"checkpoint-{newest}"]
    assert_continues(output, reference[0], newest, LOSS_TOLERANCE)
    stats = manifest.read_manifest(output)["stats"]
    assert (stats["world_size"], stats["global_batch_size"], stats["global_step"]) == (1, 4, 10)


def test_one_process_checkpoint_resumes_on_two_sharded_ranks(
    tokenized_data: str, tiny_model_dir: Path, tmp_path: Path, reference: tuple[str, list[str]]
) -> None:
    output = str(tmp_path / "grown")
    process = one_process(tokenized_data, tiny_model_dir, output)
    lines = read_until_step(process, 2)  # early: a late signal still lands before the run ends
    process.send_signal(signal.SIGTERM)
    assert finish(process, lines) == 1, "".join(lines[-40:])
    stopped = events(lines, "sigterm")[0]["step"]

    rerun: list[str] = []
    assert finish(two_ranks(tokenized_data, tiny_model_dir, output), rerun) == 0, "".join(rerun[-40:])
    assert resumed_from(rerun) == [f"checkpoint-{stopped}"]
    assert_continues(output, reference[0], stopped, LOSS_TOLERANCE)
    assert manifest.read_manifest(output)["stats"]["world_size"] == 2



def test_sfts_fused_lm_head_trains_a_sharded_model_as_the_models_own_loss_does(
    tokenized_data: str, tiny_model_dir: Path, tmp_path: Path, reference: tuple[str, list[str]]
) -> None:
    """The fused head reads the output layer's weight without calling the layer; sharded, that layer is gathered
    when the final norm runs (``vcot.train.sharding.gather_output_layer_with_final_norm``). Without it each rank's
    output layer learned from that rank's rows alone: the loss was 0.0027 off the reference's at step 3 on this
    data. tiny-cpu trains that layer (``modules_to_save``), so a gradient left unreduced shows in the loss."""
    fused, lines = str(tmp_path / "fused"), []
    assert finish(two_ranks(tokenized_data, tiny_model_dir, fused, RUN_SET + ",fused_lm_head=true"), lines) == 0, (
        "".join(lines[-40:]))
    assert len(events(lines, "fused_lm_head")) == 2 and not events(lines, "fused_lm_head_off")  # on, on both ranks
    assert len(losses(fused)) == 10
    for (step, loss), (step_own, loss_own) in zip(losses(fused), losses(reference[0]), strict=True):
        assert step == step_own and abs(loss - loss_own) < FUSED_TOLERANCE, (step, loss, loss_own)


def test_a_sharded_full_finetune_matches_one_whole_process(
    tokenized_data: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Also with what must keep working under sharding: gradient checkpointing, a vision learning rate."""
    full = ",finetune=full,gradient_checkpointing=true,vision_learning_rate=1.0e-4"
    one = str(tmp_path / "one")
    whole_set = DDP_SET + ",max_steps=10,optim=adamw_torch,per_device_train_batch_size=4" + full
    train(TrainConfig(data=tokenized_data, model=str(tiny_model_dir), output=one, recipe="tiny-cpu", set=whole_set))
    two, lines = str(tmp_path / "two"), []
    run = two_ranks(tokenized_data, tiny_model_dir, two, RUN_SET + full, entry="tests.train.late_rank")
    assert finish(run, lines) == 0, "".join(lines[-40:])

    for (step, loss), (step_one, loss_one) in zip(losses(two), losses(one), strict=True):
        assert step == step_one and abs(loss - loss_one) < LOSS_TOLERANCE, (step, loss, loss_one)
    assert {event["lr"] for event in events(lines, "vision_learning_rate")} == {1e-4}
    held = sharded_events(lines)
    assert abs(held[0]["parameters"] - held[0]["parameters_total"] / 2) < 0.02 * held[0]["parameters_total"]
    # The whole model, gathered from the shards, in the files a one-process full fine-tune writes.
    from safetensors.torch import load_file

    sharded = load_file(Path(two) / "model" / "model.safetensors")
    whole = load_file(Path(one) / "model" / "model.safetensors")
    assert sharded.keys() == whole.keys()
    for key in whole:
        drift = ((sharded[key] - whole[key]).norm() / whole[key].norm().clamp_min(1e-12)).item()
        assert drift < WEIGHT_TOLERANCE, (key, drift)


def test_generate_with_a_sharded_model_steps_every_rank_until_all_ended(tiny_model_dir: Path) -> None:
    """Rank 0 generates 3 tokens, rank 1 8, from the tiny model sharded over both: each gets the whole model's
    answer (rank 0 keeps stepping with rank 1, as transformers does for the modules ``fully_shard`` marks). What
    GRPO's rollouts, RGFN's samples and the held-out evaluation rely on when a sharded run generates."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
            "-m", "tests.train.lockstep_generation", str(tiny_model_dir)]  # fmt: skip
    run = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    printed = re.findall(r'\{"rank": [^}]*\}', run.stdout)  # the ranks' lines may run together
    answers = sorted((json.loads(answer) for answer in printed), key=lambda answer: answer["rank"])
    assert answers == [{"rank": 0, "tokens": 3, "same": True}, {"rank": 1, "tokens": 8, "same": True}]


def test_sharded_grpo_matches_data_parallel_grpo_with_its_reference_sharded_too(
    record_data: str, tiny_model_dir: Path, sft_adapter: str, tmp_path: Path
) -> None:
    """GRPO from an SFT adapter (rewards differ within a group: real advantages, real gradients), 2 ranks, data
    parallel vs sharded, same seed: every rank samples the same completions from the same (gathered) weights, so the
    steps agree to float-sum order: losses, gradient norms, rewards and the KL to the reference adapter, which lives
    in the same sharded model. The held-out evaluation runs sharded too (every rank answering in lockstep, with
    gradients off but not in inference mode, which FSDP2's gathered buffers refuse) and scores as data parallel
    does; this short SFT start's greedy answers hold no box yet, so the scores agree at 0 (the lockstep generation
    itself is compared token for token in the test above)."""
    run_set = ("max_steps=4,save_steps=2,eval_steps=2,per_device_train_batch_size=4,num_generations=4,"
               "gradient_accumulation_steps=2,"  # one rollout, two backward passes: the second reads a resharded head
               "generation_eval_samples=4,generation_eval_max_new_tokens=32,optim=adamw_torch")  # fmt: skip
    histories, held_out, outputs = {}, {}, {}
    for mode, sharding in (("ddp", ""), ("fsdp2", ",sharding=fsdp2")):
        outputs[mode] = output = str(tmp_path / mode)
        run = torchrun(["--nproc-per-node", "2", "--master-port", str(free_port())], record_data, tiny_model_dir,
                       output, run_set + sharding, recipe="tiny-cpu-grpo", init_adapter=sft_adapter)  # fmt: skip
        lines: list[str] = []
        assert finish(run, lines) == 0, "".join(lines[-40:])
        history = storage.read_json(storage.join(output, "metrics.json"))["log_history"]
        histories[mode] = [e for e in history if "loss" in e]
        held_out[mode] = [e for e in history if "eval_gen_first_object_iou" in e]
        if sharding:
            held = sharded_events(lines)
            assert held[0]["parameters"] + held[1]["parameters"] == held[0]["parameters_total"] > 0
            assert abs(held[0]["parameters"] - held[1]["parameters"]) < 0.02 * held[0]["parameters_total"]
    assert len(histories["ddp"]) == len(histories["fsdp2"]) == 4
    assert any(abs(entry["loss"]) > 1e-3 for entry in histories["ddp"])  # advantages were not all zero
    assert [e["step"] for e in held_out["ddp"]] == [e["step"] for e in held_out["fsdp2"]] == [0, 2, 4]
    assert held_out["ddp"][0] == {**held_out["fsdp2"][0], "epoch": held_out["ddp"][0]["epoch"]}  # the same start
    for whole, sharded in zip(held_out["ddp"], held_out["fsdp2"], strict=True):
        for key in ("eval_gen_first_object_iou", "eval_gen_answer_accuracy", "eval_gen_box_detection_rate"):
            assert abs(whole[key] - sharded[key]) < LOSS_TOLERANCE, (whole["step"], key, whole[key], sharded[key])
    for whole, sharded in zip(histories["ddp"], histories["fsdp2"], strict=True):
        for key in ("loss", "grad_norm", "reward", "kl", "completions/mean_length"):
            assert abs(whole[key] - sharded[key]) < LOSS_TOLERANCE, (whole["step"], key, whole[key], sharded[key])
    import torch
    from safetensors.torch import load_file

    sharded = load_file(Path(outputs["fsdp2"]) / "adapter" / "adapter_model.safetensors")
    whole = load_file(Path(outputs["ddp"]) / "adapter" / "adapter_model.safetensors")
    assert sharded.keys() == whole.keys()
    # Each tensor's change over the 4 steps is compared, not the weights: a wrong update hides in their norm. The
    # output layer trains (TRL's fused head reads its weight: vcot.train.sharding.gather_output_layer_with_final_norm).
    start = load_file(Path(sft_adapter) / "adapter_model.safetensors")
    changes = {key: (whole[key] - start[key]).norm() for key in whole}
    assert changes["base_model.model.lm_head.weight"] > 0
    for key, change in changes.items():
        if change > 0:  # frozen tensors PEFT saves beside the adapter (the base embeddings) stay equal anyway
            assert ((sharded[key] - whole[key]).norm() / change).item() < WEIGHT_TOLERANCE, key
        else:
            assert torch.equal(sharded[key], whole[key]), key


def resident_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_the_output_layer_is_gathered_from_each_familys_final_norm_through_peft(family: str) -> None:
    """Where the hook goes (the sharded runs above check what it does): the text model's final norm of a PEFT
    model with a trained output layer, for both families; a model with no such norm is reported, not guessed."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    from vcot.dev import tiny_model
    from vcot.train.sharding import gather_output_layer_with_final_norm

    config = tiny_model.tiny_config(tiny_model.build_tokenizer(), family=family)
    model_class = {"qwen2.5-vl": transformers.Qwen2_5_VLForConditionalGeneration,
                   "qwen3-vl": transformers.Qwen3VLForConditionalGeneration}[family]  # fmt: skip
    model = get_peft_model(model_class._from_config(config), LoraConfig(target_modules=["q_proj"],
                                                                        modules_to_save=["lm_head"]))  # fmt: skip
    norm = model.get_base_model().model.language_model.norm
    assert not norm._forward_pre_hooks
    assert gather_output_layer_with_final_norm(model)
    assert len(norm._forward_pre_hooks) == 1
    assert not gather_output_layer_with_final_norm(torch.nn.Linear(2, 2))


def test_a_receiving_rank_upcasts_its_trainable_weights_without_writing_them() -> None:
    """Accelerate's fp32 upcast copies what trains; on a rank that holds unwritten weights (rank 0's arrive later)
    the copy would write a whole fp32 model into host memory. ``upcast_unwritten`` first: nothing is written."""
    import torch

    from vcot.train.sharding import upcast_unwritten

    def unwritten_bf16() -> torch.nn.Parameter:  # 512 MiB, as empty_model leaves a layer's weights
        return torch.nn.Parameter(torch.empty(2**28, dtype=torch.bfloat16))

    copied, skipped = unwritten_bf16(), unwritten_bf16()
    before = resident_mib()
    copied.data = copied.data.to(torch.float32)  # accelerate's upcast: 1 GiB written
    after_copy = resident_mib()
    module = torch.nn.Module()
    module.weight = skipped
    assert upcast_unwritten(module) == 1 and skipped.dtype == torch.float32
    after_upcast = resident_mib()
    assert after_copy - before > 900, (before, after_copy)  # the measure sees a write
    assert after_upcast - after_copy < 64, (after_copy, after_upcast)


def test_sharded_rgfn_matches_data_parallel_rgfn(
    record_data: str, tiny_model_dir: Path, analyzer_adapter: str, tmp_path: Path
) -> None:
    """RGFN (its own sampling, reward scoring with the reference adapter and balance loss) from an Analyzer-turn SFT
    adapter, 2 ranks, data parallel vs sharded, same seed. Every rank scores its rationales' rewards at every token
    (``reward_every=1``), one sequence per forward pass (``per_device_eval_batch_size=1``): the ranks' reference
    rationales differ in length, so they have different numbers of passes to make (seen: 139 and 140 at step 2),
    and sharded they must still meet at every gathered layer (without the lockstep gloo fails: "Received data size
    doesn't match expected size"). The steps agree to float-sum order, as GRPO's."""
    run_set = ("max_steps=3,save_steps=3,eval_steps=3,per_device_eval_batch_size=1,reward_every=1,"
               "generation_eval_samples=0,metric_for_best_model=eval_loss")  # fmt: skip
    histories = {}
    for mode, sharding in (("ddp", ""), ("fsdp2", ",sharding=fsdp2")):
        output = str(tmp_path / mode)
        run = torchrun(["--nproc-per-node", "2", "--master-port", str(free_port())], record_data, tiny_model_dir,
                       output, run_set + sharding, recipe="tiny-cpu-rgfn", init_adapter=analyzer_adapter)  # fmt: skip
        lines: list[str] = []
        assert finish(run, lines) == 0, "".join(lines[-40:])
        histories[mode] = [e for e in storage.read_json(storage.join(output, "metrics.json"))["log_history"]
                           if "loss" in e]  # fmt: skip
    assert len(histories["ddp"]) == len(histories["fsdp2"]) == 3
    for whole, sharded in zip(histories["ddp"], histories["fsdp2"], strict=True):
        for key in ("loss", "grad_norm", "rgfn/reward_reference", "rgfn/length_samples", "rgfn/kept_fraction"):
            tolerance = LOSS_TOLERANCE * max(1.0, abs(whole[key]))  # relative: RGFN's loss is in the hundreds
            assert abs(whole[key] - sharded[key]) < tolerance, (whole["step"], key, whole[key], sharded[key])


def test_a_sharded_rank_with_no_readable_image_keeps_generating_with_the_others(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Rank 1 cannot read its batch's only image (a storage error on one node) while rank 0 answers its own: rank 1
    must still step through rank 0's generation, whose every forward pass gathers rank 1's shards. Before, it
    returned at once and both ranks waited on each other until the process group's timeout (1 minute here)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "VCOT_COLLECTIVE_TIMEOUT_MINUTES": "1"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
            "-m", "tests.train.idle_rank_generation", str(tiny_model_dir), str(tmp_path)]  # fmt: skip
    run = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    printed = re.findall(r'\{"rank": [^}]*\}', run.stdout)
    answers = sorted((json.loads(answer) for answer in printed), key=lambda answer: answer["rank"])
    assert [(answer["rank"], answer["skipped"]) for answer in answers] == [(0, False), (1, True)], answers
