"""Benchmark of GRPO (vcot-train, method grpo) on the tiny offline Qwen2.5-VL, on CPU: steps/s, completions/s and
where a step's time goes.

The stage runs as it ships (``vcot.train.train`` with the ``tiny-cpu-grpo`` recipe, continuing a short SFT run's
adapter, as ``make local-grpo`` does), with timers wrapped around the phases of a step by patching methods of
TRL's ``GRPOTrainer`` and of the prompt transform in this process only:

- ``prompts``: the dataset transform (image read and decode, the chat built by ``vcot.grounding.prompts``);
- ``rollout.processor``: chat template + image processor (pixels, image tokens) for the generation batch;
- ``rollout.generate``: ``generate`` sampling ``num_generations`` completions per prompt (vision tower in the
  prefill, then one forward per new token);
- ``rewards``: the reward functions (``vcot.scoring.rewards``) on every completion;
- ``reference``: the no-grad log-probs of the reference policy (only with ``beta > 0``: the KL term) and, with
  vLLM rollouts, the policy's own (TRL's importance-sampling correction of vLLM's sampling);
- ``update``: the policy's forward + backward on prompt + completion (the loss), inside ``training_step``;
- ``other``: the rest of the train loop (optimizer step, logging, the trainer's own work).

Runs with ``beta`` 0.04 (the recipe's) and 0 show what the KL term costs. ``--rollouts generate,vllm`` runs one
beta twice, side by side: rollouts by transformers' ``generate``, then by TRL's colocated vLLM (``use_vllm: true``;
``rollout.sync`` is then the weight sync into vLLM before each step's rollout, and ``setup_s`` holds the engine's
start). vLLM needs its environment: run the benchmark with ``make vllm-env``'s Python, which has both. It measures
mechanics on a tiny model, not what a 7B costs on a GPU; on a shared machine wall times swing with the load (the load
average is recorded).

    PYTHONPATH=. .venv/bin/python bench/grpo_bench.py [--size local] [--records 64] [--sft-steps 100] [--steps 20]
        [--betas 0.04,0] [--rollouts generate] [--threads 1] [--output results.json]
    PYTHONPATH=. ~/.cache/vcot/venv-vllm-0.30.0/bin/python bench/grpo_bench.py --rollouts generate,vllm --betas 0
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from vcot.dev.tiny_model import build_tiny_qwen25vl
from vcot.tokenize import TokenizeConfig, tokenize
from vcot.train import TrainConfig, train
from vcot.train.recipe import load_recipe

sys.path.insert(0, str(Path(__file__).parent))
from train_bench import write_records  # noqa: E402  (the train benchmark's synthetic grounded records)

PHASES = ("prompts", "rollout.processor", "rollout.sync", "rollout.generate", "rewards", "reference", "update", "other")
ROLLOUTS = ("generate", "vllm")


class PhaseTimer:
    """Wall seconds per phase, from wrappers around the methods that do each phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.scoring = False  # inside _generate_and_score_completions: log-prob calls there are the reference's

    def wrap(self, owner: Any, name: str, phase: str | Callable[[], str]) -> Callable[[], None]:
        """Time every call of ``owner.name`` under ``phase`` (a name, or a function choosing one per call)."""
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[phase() if callable(phase) else phase] += time.perf_counter() - started

        setattr(owner, name, timed)
        return lambda: setattr(owner, name, original)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from trl import GRPOTrainer

        from vcot.train.grpo import PromptTransform

        def scoring(flag: bool) -> Callable[[Any], Any]:
            def wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
                @functools.wraps(original)
                def inner(*args: Any, **kwargs: Any) -> Any:
                    self.scoring = flag
                    try:
                        return original(*args, **kwargs)
                    finally:
                        self.scoring = False

                return inner

            return wrapper

        score = GRPOTrainer._generate_and_score_completions
        GRPOTrainer._generate_and_score_completions = scoring(True)(score)  # type: ignore[method-assign]
        undo = [
            *self.vllm_sync(),
            self.wrap(PromptTransform, "__call__", "prompts"),
            self.wrap(GRPOTrainer, "_tokenize_prompts", "rollout.processor"),
            self.wrap(GRPOTrainer, "_generate_single_turn", "rollout.generate"),
            self.wrap(GRPOTrainer, "_calculate_rewards", "rewards"),
            self.wrap(GRPOTrainer, "_get_per_token_logps_and_entropies", lambda: "reference" if self.scoring else "update"),
            self.wrap(GRPOTrainer, "training_step", "step"),
        ]
        try:
            yield
        finally:
            for restore in undo:
                restore()
            GRPOTrainer._generate_and_score_completions = score  # type: ignore[method-assign]

    def vllm_sync(self) -> list[Callable[[], None]]:
        """Time TRL's weight sync into vLLM (inside ``_generate_single_turn``) on its own, where vLLM is installed."""
        if importlib.util.find_spec("vllm") is None:
            return []
        from trl.generation.vllm_generation import VLLMGeneration

        return [self.wrap(VLLMGeneration, "sync_weights", "rollout.sync")]

    def phases(self, train_runtime: float) -> dict[str, float]:
        """Each phase's seconds; ``update`` is the training step minus the rollout, rewards and reference inside it,
        ``rollout.generate`` the rollout minus the weight sync inside it."""
        inside_step = sum(self.seconds[p] for p in ("rollout.processor", "rollout.generate", "rewards", "reference"))
        found = {phase: self.seconds[phase] for phase in PHASES[:6]}
        found["rollout.generate"] -= found["rollout.sync"]
        found["update"] = max(0.0, self.seconds["step"] - inside_step)
        found["other"] = max(0.0, train_runtime - self.seconds["step"] - found["prompts"])
        return {phase: round(value, 3) for phase, value in found.items()}


def grpo_run(records: str, model: Path, adapter: str, output: Path, *, steps: int, beta: float, rollouts: str,
             threads: int) -> dict[str, Any]:  # fmt: skip
    """One timed GRPO run of ``steps`` steps; its throughput and phase breakdown."""
    # Throughput only: no held-out watch (its generation would be timed as "other").
    unwatched = "generation_eval_samples=0,metric_for_best_model=eval_loss"
    # top_p=1.0 for both: TRL's importance correction of vLLM's rollouts takes no nucleus cut (docs/train.md)
    settings = f"max_steps={steps},save_steps={steps},beta={beta},use_vllm={rollouts == 'vllm'},top_p=1.0,{unwatched}"
    timer = PhaseTimer()
    started = time.perf_counter()
    with timer.installed():
        train(TrainConfig(data=records, model=str(model), output=str(output), recipe="tiny-cpu-grpo", set=settings,
                          init_adapter=adapter, threads=threads))  # fmt: skip
    wall = time.perf_counter() - started
    metrics = json.loads((output / "metrics.json").read_text())
    runtime = metrics["train"]["train_runtime"]
    recipe = load_recipe("tiny-cpu-grpo", settings)
    completions = steps * recipe.per_device_train_batch_size * recipe.gradient_accumulation_steps
    logged = [entry for entry in metrics["log_history"] if "completions/mean_length" in entry]
    phases = timer.phases(runtime)
    gap = "sampling/sampling_logp_difference/mean"  # logged only when vLLM sampled
    gaps = [entry[gap] for entry in logged if gap in entry]
    return {
        "rollouts": rollouts,
        "beta": beta,
        "steps": steps,
        # loading, the trainer's set-up (vLLM's engine start) and the commit: the whole call minus the train loop
        "setup_s": round(wall - runtime, 2),
        "torch_threads_after": torch.get_num_threads(),  # vLLM's CPU worker may set the process's threads
        # vLLM's log-probs against the trainer's: the worst step's mean gap per token (TRL's .../mean)
        "vllm_logp_gap_mean_max": round(max(gaps), 4) if gaps else None,
        "completions": completions,
        "train_runtime_s": round(runtime, 2),
        "steps_per_s": round(steps / runtime, 3),
        "completions_per_s": round(completions / runtime, 2),
        "mean_completion_tokens": round(sum(e["completions/mean_length"] for e in logged) / max(1, len(logged)), 1),
        "phases_s": phases,
        "phases_share": {phase: round(value / runtime, 3) for phase, value in phases.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="local", choices=("test", "local"), help="tiny model size (vcot.dev.tiny_model)")
    parser.add_argument("--records", type=int, default=64, help="synthetic records (about 9 in 10 land in train)")
    parser.add_argument("--sft-steps", type=int, default=100, help="SFT steps before GRPO (its adapter is the start)")
    parser.add_argument("--steps", type=int, default=20, help="timed GRPO steps per run")
    parser.add_argument("--betas", default="0.04,0", help="KL coefficients to compare (0: no reference forward)")
    parser.add_argument("--rollouts", default="generate",
                        help="rollout engines, comma-separated: generate (transformers), vllm (colocated)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on a busy shared CPU)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    requested = set(args.rollouts.split(","))
    engines = [engine for engine in ROLLOUTS if engine in requested]  # generate first (below)
    if unknown := requested - set(ROLLOUTS):
        parser.error(f"--rollouts: unknown {sorted(unknown)}; choose from {', '.join(ROLLOUTS)}")
    if "vllm" in engines and importlib.util.find_spec("vllm") is None:
        parser.error("--rollouts vllm needs vLLM beside vcot: run this script with `make vllm-env`'s Python")
    if "vllm" in engines and "," in args.betas:
        parser.error("--rollouts vllm takes one beta (--betas 0.04): TRL's colocated engine is built once per process")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; else vLLM takes a share of the machine's RAM
    with tempfile.TemporaryDirectory(prefix="vcot-grpo-bench-") as tmp:
        work = Path(tmp)
        model = build_tiny_qwen25vl(work / "tiny", size=args.size)
        records = write_records(work / "records", args.records)
        tokens = str(work / "tokens")
        tokenize(TokenizeConfig(input=[records], output=tokens, model=str(model)))
        sft = work / "sft"
        steps = max(1, args.sft_steps)
        settings = f"max_steps={steps},learning_rate=5e-3,num_train_epochs=1000,early_stopping_patience=0,save_steps={steps},eval_steps={steps}"  # noqa: E501
        train(TrainConfig(data=tokens, model=str(model), output=str(sft), recipe="tiny-cpu", set=settings, threads=args.threads))
        load_before = os.getloadavg()
        # generate first: vLLM's CPU worker may change the process's torch threads once its engine starts
        pairs = [(engine, float(beta)) for engine in engines for beta in args.betas.split(",")]
        runs = [
            grpo_run(records, model, str(sft / "adapter"), work / f"grpo-{i}", steps=args.steps, beta=beta,
                     rollouts=engine, threads=args.threads)
            for i, (engine, beta) in enumerate(pairs)
        ]  # fmt: skip
        results = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
            "torch_threads": args.threads,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "model_size": args.size,
            "sft_steps": steps,
            "recipe": "tiny-cpu-grpo",
            "runs": runs,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    print(json.dumps(results, indent=2))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
