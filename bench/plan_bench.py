"""The memory plan against the allocator: predicted vs measured peak of one training step, per slice and recipe.

For each case (a recipe on a true-width slice of its model, ``vcot.dev.model_slice``) one optimizer step is taken
the way the train stage takes it: the policy loaded by ``vcot.train.common.load_policy`` (the recipe's 4-bit base or
not, its LoRA, gradient checkpointing as the Trainer sets it), a micro-batch of tokenized rows through the train
stage's collator, forward, backward and the recipe's optimizer (bitsandbytes' 8-bit AdamW where it says so). The
measured peak is that of the live tensors, never the process RSS: every storage the step's operations create is
counted at the dispatcher (:class:`LiveTensors`) until it is freed, on top of the model's parameters and buffers;
what ``torch.cuda.max_memory_allocated`` reports on a GPU. (PyTorch's ``MemTracker`` would give the same by kind, but
it hooks every parameter and refuses frozen ones: LoRA's base.) The prediction is ``vcot.train.plan.plan``
on the slice's ``config.json`` at the batch's sequence length and pixel budget, on the CPU (fp32, no CUDA context).
GRPO and RGFN cases measure their training step's forward and backward at the recipe's settings; their sampling
(a KV cache, or vLLM on a GPU) is planned but not measured here.

    PYTHONPATH=. .venv/bin/python bench/plan_bench.py [--cases qwen2.5-vl-7b-qlora@qwen2.5-vl-7b,...]
        [--batches 1,2] [--image-side 448] [--output results.json]
    # on a GPU, the whole published models, with step times:
    PYTHONPATH=. python3 bench/plan_bench.py --device cuda --full-depth --steps 5 --image-side 896 ...
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import platform
import random
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from vcot.grounding.boxes import pixels_to_norm1000
from vcot.grounding.records import split_for
from vcot.io import manifest, shards, storage
from vcot.train.plan import GIB, PROMPT_TEXT_TOKENS, ModelShape, fused_head, plan
from vcot.train.recipe import load_recipe

CASES = ("qwen2.5-vl-7b-qlora@qwen2.5-vl-7b,qwen2.5-vl-3b-qlora@qwen2.5-vl-3b,qwen3-vl-8b-qlora@qwen3-vl-8b,"
         "qwen2.5-vl-7b-grpo@qwen2.5-vl-7b,qwen3-vl-8b-grpo@qwen3-vl-8b,qwen2.5-vl-7b-rgfn@qwen2.5-vl-7b")  # fmt: skip


class LiveTensors:
    """The peak bytes of live tensor storages while active: ``baseline`` tensors (the model's) plus every storage an
    operation creates, removed when Python frees it. A ``TorchDispatchMode`` sees every operation, backward and the
    optimizer's included."""

    def __init__(self, baseline: list[Any]) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        self.live: dict[int, int] = {}
        self.current = self.peak = 0
        for tensor in baseline:
            self.add(tensor)
        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                out = func(*args, **(kwargs or {}))
                for tensor in out if isinstance(out, (list, tuple)) else (out,):
                    tracker.add(tensor)
                return out

        self.mode = Mode()

    def add(self, tensor: Any) -> None:
        import torch

        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if not size or key in self.live:
            return
        self.live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self.remove, key)

    def remove(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __enter__(self) -> LiveTensors:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mode.__exit__(*exc)


def model_folder(name: str, scratch: Path, full_depth: bool = False, device: str = "cpu") -> Path:
    """A slice of a published model (cached), the whole model (``full_depth``, built in ``scratch``), a model folder
    (``name`` is its path), or ``tiny``: the tests' tiny Qwen2.5-VL (the smoke run)."""
    if Path(name).is_dir():  # a model folder already built (bench/gpu_speed.sh's whole 7B)
        return Path(name)
    if name == "tiny":
        from vcot.dev.tiny_model import build_tiny_qwen25vl

        return build_tiny_qwen25vl(scratch / "tiny")
    from vcot.dev.model_slice import cached_slice

    if full_depth:  # drawn in a process of its own: what it holds on a GPU is gone before any step is measured
        dest = scratch / f"{name}-whole"
        command = [sys.executable, "-m", "vcot.dev.model_slice", str(dest), "--name", name, "--layers", "0",
                   "--device", device, "--keep-current"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"drawing the whole {name} failed:\n{done.stderr[-3000:]}")
        return dest
    return cached_slice(name)


def write_records(root: str, count: int, side: int) -> str:
    """``count`` records of one square on a ``side`` x ``side`` image, committed as convert commits them."""
    rng, rows = random.Random(0), []
    for index in range(count):
        image = Image.new("RGB", (side, side), "gray")
        x, y, size = rng.randrange(side // 2), rng.randrange(side // 2), side // 3
        ImageDraw.Draw(image).rectangle((x, y, x + size, y + size), fill="red")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        uri = storage.join(root, "images", f"{index}.png")
        storage.write_bytes(uri, buffer.getvalue())
        box = list(pixels_to_norm1000((x, y, x + size, y + size), side, side))
        coordinates = ", ".join(map(str, box))
        step = f"First I look at the image, then I find the <ref>red square</ref><box>[{coordinates}]</box>. "
        rows.append({"id": f"bench:{index}", "source": "synthetic", "subset": "shapes", "split": "train", "image": uri,
                     "width": side, "height": side, "question": "What color is the square?", "answer": "red",
                     "objects": [{"ref": "red square", "box": box}], "needs_distillation": False,
                     "rationale": step * 12 + "Answer: red"})  # fmt: skip
    assert all(split_for(row["id"], 0.0) == "train" for row in rows)
    files = [shards.write_jsonl(root, "train/00000-of-00001.jsonl.gz", rows)]
    manifest.commit(root, stage="convert", files=files, config={"source": "bench"})
    return root


def measure_step(model_dir: Path, tokens: str, recipe_name: str, batches: list[int], device: str = "cpu",
                 steps: int = 0) -> list[dict[str, Any]]:
    """One optimizer step's peak memory per micro-batch size in ``batches``, and what the plan predicts for it. On
    the CPU the peak of live tensors (:class:`LiveTensors`); on a GPU the allocator's ``max_memory_allocated``, the
    model loaded once (each step's optimizer and gradients freed before the next). ``steps`` more steps are timed
    after the measured one (GPU only: a CPU's time says nothing about a GPU's)."""
    import torch

    from vcot.train.common import load_policy
    from vcot.train.sft import read_data_settings

    fmt, _ = read_data_settings(tokens)
    shipped = load_recipe(recipe_name)
    model, processor = load_policy(str(model_dir), shipped, fmt)
    if shipped.gradient_checkpointing:  # as the Trainer turns it on (common_arguments)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    fused = fused_head(shipped)  # what the plan predicts for; as the train stage scores SFT's loss
    if fused:
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model.get_base_model() if hasattr(model, "get_base_model") else model)
    model.train()
    shape = ModelShape.from_config(json.loads((model_dir / "config.json").read_text()))
    results = []
    for batch in batches:
        recipe = load_recipe(recipe_name, _sizes(shipped.method, batch) + ",global_batch_size=0")
        results.append({"recipe": recipe_name, "fused_lm_head": fused,
                        **_measure_batch(model, processor, shape, tokens, recipe, batch, device, steps, fused)})
        print(json.dumps(results[-1]), flush=True)
        if device == "cuda":  # the step's optimizer and gradients, freed at return, leave the next step's peak
            gc.collect()
            torch.cuda.empty_cache()
    return results


def _sizes(method: str, batch: int) -> str:
    """The recipe settings that make ``batch`` a ``method`` recipe's micro-batch. GRPO: ``batch`` completions per
    micro-batch; RGFN: one prompt's reference and ``batch - 1`` samples."""
    return {
        "gfn": f"explore_nums={batch - 1},per_device_train_batch_size=1",
        "grpo": f"per_device_train_batch_size={batch},num_generations=2,gradient_accumulation_steps=2",
    }.get(method, f"per_device_train_batch_size={batch}")


def _measure_batch(model: Any, processor: Any, shape: ModelShape, tokens: str, recipe: Any, batch: int,
                   device: str, steps: int, fused: bool) -> dict[str, Any]:
    import time

    import torch

    from vcot.train.common import resolve_optimizer
    from vcot.train.data import Collator, TokenizedDataset

    rows = TokenizedDataset(tokens, "train")
    inputs = Collator(processor)([rows[i] for i in range(batch)])
    trainable = [p for p in model.parameters() if p.requires_grad]
    if resolve_optimizer(recipe.optim, device) == "adamw_8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(trainable, lr=recipe.learning_rate)
    else:
        optimizer = torch.optim.AdamW(trainable, lr=recipe.learning_rate)
    model_tensors = [*model.parameters(), *model.buffers()]
    grid = inputs["image_grid_thw"][0].tolist()
    image = grid[1] * grid[2] // shape.vision.merge**2
    row_tokens = int(inputs["input_ids"].shape[1])
    completion = row_tokens - image - PROMPT_TEXT_TOKENS
    inputs = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}

    def step() -> tuple[float, int]:
        if recipe.method == "sft":
            loss = model(**inputs, **({"fused_lm_head": True} if fused else {})).loss
        else:  # a policy-gradient step: log-probabilities of the completion's tokens only, as TRL computes them
            unlabelled = {key: value for key, value in inputs.items() if key != "labels"}
            logits = model(**unlabelled, logits_to_keep=completion + 1).logits[:, :-1]
            chosen = inputs["input_ids"][:, -completion:]
            loss = -torch.log_softmax(logits.float(), dim=-1).gather(-1, chosen.unsqueeze(-1)).mean()
            del logits
        loss.backward()
        gradients = sum(p.grad.untyped_storage().nbytes() for p in trainable if p.grad is not None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss), gradients

    weights = sum(t.untyped_storage().nbytes() for t in model_tensors)
    extra: dict[str, Any] = {}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        loss, gradients = step()
        torch.cuda.synchronize()
        measured_total = torch.cuda.max_memory_allocated()
        free, total = torch.cuda.mem_get_info()
        extra = {"reserved_peak_gib": round(torch.cuda.max_memory_reserved() / GIB, 3),
                 "device_used_gib": round((total - free) / GIB, 3), "gpu": torch.cuda.get_device_name()}
        if steps:
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                step()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            seconds = sorted(times)[len(times) // 2]
            extra |= {"step_seconds_median": round(seconds, 3), "step_seconds": [round(t, 3) for t in times],
                      "tokens_per_second": round(batch * row_tokens / seconds, 1)}
    else:
        with LiveTensors(model_tensors) as live:
            loss, gradients = step()
        measured_total = live.peak
    states = [t for state in optimizer.state.values() for t in _tensors(state)]
    optimizer_bytes = sum(t.untyped_storage().nbytes() for t in states)
    predicted = plan(shape, recipe, device=device, seq_len=row_tokens,
                     max_pixels=grid[1] * grid[2] * shape.vision.patch**2)  # fmt: skip
    for sampling in ("generation_kv_cache", "vllm"):  # sampling is planned, not measured here
        predicted.parts.pop(sampling, None)
    # The CUDA context and the allocator's slack are outside what the allocator counts as allocated.
    overhead = predicted.parts.pop("framework_overhead", 0.0)
    predicted_total = predicted.total
    measured = {"weights+adapter": weights, "gradients": gradients, "optimizer": optimizer_bytes,
                "activations_and_temporaries": measured_total - weights - optimizer_bytes}  # fmt: skip
    return {
        "batch": batch, "tokens": row_tokens, "image_tokens": image, "loss": loss,
        "device": device,
        "measured_gib": {k: round(v / GIB, 3) for k, v in measured.items()},
        "predicted_gib": predicted.to_dict()["parts_gib"],
        "predicted_overhead_gib": round(overhead / GIB, 3),
        "measured_total_gib": round(measured_total / GIB, 3),
        "predicted_total_gib": round(predicted_total / GIB, 3),
        "predicted_over_measured": round(predicted_total / measured_total, 3),
        "step_gib": {  # beyond the model and the optimizer: gradients, activations, temporaries
            "measured": round((measured_total - weights - optimizer_bytes) / GIB, 3),
            "predicted": round(sum(v for k, v in predicted.parts.items()
                                   if k not in ("weights", "adapter", "optimizer")) / GIB, 3),  # fmt: skip
        },
        **extra,
    }


def _tensors(value: Any) -> list[Any]:
    """The tensors in an optimizer's state (bitsandbytes nests its 8-bit states in a dict)."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=CASES,
                        help="recipe@model pairs (model: a published name, a model folder, or tiny)")
    parser.add_argument("--batches", default="1,2", help="micro-batch sizes to measure")
    parser.add_argument("--image-side", type=int, default=448, help="side of the square images (448: 256 tokens)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the steps run")
    parser.add_argument("--full-depth", action="store_true",
                        help="the whole published model (random weights, drawn on --device) instead of its slice")
    parser.add_argument("--steps", type=int, default=0, help="steps timed after the measured one (cuda only)")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    parser.add_argument("--measure", nargs=4, metavar=("MODEL", "TOKENS", "RECIPE", "BATCHES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # steps in this process of its own
        import torch

        if args.device == "cpu":
            torch.set_num_threads(2)
        model_dir, tokens, recipe_name, batches = args.measure
        measure_step(Path(model_dir), tokens, recipe_name, [int(b) for b in batches.split(",")], args.device,
                     args.steps)  # fmt: skip
        return 0
    runs, failures = [], []
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        most = max(int(b) for b in args.batches.split(",")) + 1
        records = write_records(str(scratch / "records"), most, args.image_side)
        for case in args.cases.split(","):
            recipe_name, model_name = case.split("@")
            model_dir = model_folder(model_name, scratch, args.full_depth, args.device)
            tokens = str(scratch / f"tokens-{Path(model_name).name}")
            if not manifest.committed_stage(tokens):
                from vcot.tokenize import TokenizeConfig, tokenize

                tokenize(TokenizeConfig(input=[records], output=tokens, model=str(model_dir)))
            rgfn = load_recipe(recipe_name).method == "gfn"  # its micro-batch: a reference and at least one sample
            batches = [str(int(b) + rgfn) for b in args.batches.split(",")]
            # On the CPU each step in its own process: what one leaves allocated never counts in the next one's
            # peak. On a GPU the allocator's peak is reset per step, and loading a whole model once saves minutes.
            for group in [batches] if args.device == "cuda" else [[b] for b in batches]:
                command = [sys.executable, __file__, "--device", args.device, "--steps", str(args.steps),
                           "--measure", str(model_dir), tokens, recipe_name, ",".join(group)]  # fmt: skip
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode:  # said, and the other cases still run
                    failures.append(case)
                    print(f"{case} batches {group} failed:\n{done.stderr[-3000:]}", file=sys.stderr, flush=True)
                    continue
                lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
                runs.extend({"model": model_name, **json.loads(line)} for line in lines[-len(group):])
                for run in runs[-len(group):]:
                    print(json.dumps(run), flush=True)
    print("\n| recipe | model | batch | tokens | measured GiB | predicted GiB | predicted / measured "
          "| step's own, measured / predicted GiB | step s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(f"| {run['recipe']} | {run['model']}{' (whole)' if args.full_depth else ''} | {run['batch']} "
              f"| {run['tokens']} | {run['measured_total_gib']:.2f} | {run['predicted_total_gib']:.2f} "
              f"| {run['predicted_over_measured']:.2f} "
              f"| {run['step_gib']['measured']:.2f} / {run['step_gib']['predicted']:.2f} "
              f"| {run.get('step_seconds_median', '')} |")  # fmt: skip
    result = {"machine": platform.platform(), "device": args.device, "full_depth": args.full_depth, "runs": runs}
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
