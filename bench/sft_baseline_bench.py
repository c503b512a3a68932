"""vcot's SFT against a plain TRL ``SFTTrainer``: the same model, records, batch and settings, side by side.

What vcot's train stage costs or saves against what a user of TRL writes from its documentation (issue 35, item 1):

- ``vcot``: the tokenize stage, then the train stage with ``--recipe`` (one epoch over the train split, batch
  ``--batch``, no accumulation, no evaluation or checkpoint inside the loop); ``vcot-unfused``: the same with
  ``fused_lm_head=false``;
- ``trl``: the same base loaded as the recipe says (4-bit NF4 with double quantization and bf16 compute where the recipe
  quantizes on a GPU), PEFT's ``LoraConfig`` with the recipe's rank, alpha, dropout, targets and ``modules_to_save``,
  and TRL's ``SFTTrainer`` on prompt-completion records with their images (its vision collator runs the processor on
  each batch as it comes); the recipe's optimizer, learning-rate schedule, gradient checkpointing, NEFTune and seed;
  TRL's defaults for everything else (no dataloader workers).

Both see the same train records once, with the same prompt (vcot's instruction) and target text, so both process the
same tokens. Each runs in a process of its own (a clean GPU for its peak memory). Reported per side: the steady rate
(samples/s and non-padding tokens/s after the first ``--warmup-steps`` + 1 steps), the whole loop's rate
as vcot's ``Throughput`` counts it (first steps included), peak memory (``torch.cuda.max_memory_allocated``, model
included; on a CPU the process's max RSS), padding share, and the mean train loss of the last steps.

    PYTHONPATH=. python3 bench/sft_baseline_bench.py --model DIR [--recipe qwen2.5-vl-7b-qlora] [--records 96]
        [--batch 4] [--max-side 896] [--long-share 0.3] [--modes vcot,trl] [--output results.json]

``--model tiny`` builds the tests' tiny Qwen2.5-VL (the smoke run, with ``--recipe tiny-cpu``). On a GPU machine the
whole Qwen2.5-VL-7B comes from ``python3 -m vcot.dev.model_slice DIR --name qwen2.5-vl-7b --layers 0 --device cuda``
(``bench/gpu_speed.sh`` does both).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from bench.train_bench import write_records

MODES = ("vcot", "vcot-unfused", "trl")
"""vcot's train stage as shipped, the same with ``fused_lm_head=false`` (the model's own loss over full logits),
and TRL's ``SFTTrainer``."""


class StepClock(TrainerCallback):
    """When each optimizer step ended (the device synchronized) and the input tokens seen by then."""

    def __init__(self) -> None:
        self.ends: list[tuple[float, int]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append((time.monotonic(), int(state.num_input_tokens_seen or 0)))

    def steady(self, warmup: int, batch: int) -> dict[str, Any]:
        """Rates over the steps after the first ``warmup + 1`` (the first steps pay for warming up): from the end
        of step ``warmup + 1`` to the end of the last."""
        if len(self.ends) <= warmup + 1:
            return {}
        (start, tokens_before), (end, tokens_after) = self.ends[warmup], self.ends[-1]
        steps, seconds = len(self.ends) - 1 - warmup, end - start
        return {"steps": steps, "seconds_per_step": round(seconds / steps, 4),
                "samples_per_second": round(steps * batch / seconds, 3),
                "tokens_per_second": round((tokens_after - tokens_before) / seconds, 1)}  # fmt: skip


def train_records(records: str) -> list[dict[str, Any]]:
    with gzip.open(Path(records) / "train" / "00000-of-00001.jsonl.gz", "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def mean_last_loss(log_history: list[dict[str, Any]], last: int = 5) -> float | None:
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    return round(sum(losses[-last:]) / len(losses[-last:]), 4) if losses else None


def run_vcot(model: str, records: str, work: Path, recipe: str, batch: int, clock: StepClock,
             extra: str = "") -> dict[str, Any]:  # fmt: skip
    """The tokenize and train stages as shipped (``extra``: more recipe settings), one epoch, no evaluation or
    checkpoint inside the loop."""
    from vcot.tokenize import TokenizeConfig, tokenize
    from vcot.train import TrainConfig, train

    tokens = str(work / "tokens")
    tokenize(TokenizeConfig(input=[records], output=tokens, model=model))
    settings = (f"num_train_epochs=1,max_steps=-1,per_device_train_batch_size={batch},gradient_accumulation_steps=1,"
                f"global_batch_size={batch},eval_steps=100000,save_steps=100000,logging_steps=1,"
                f"generation_eval_samples=0,early_stopping_patience=0{extra}")  # fmt: skip
    train(TrainConfig(data=tokens, model=model, output=str(work / "run"), recipe=recipe, set=settings))
    metrics = json.loads((work / "run" / "metrics.json").read_text(encoding="utf-8"))
    return {"whole_loop": metrics["throughput"], "last_loss": mean_last_loss(metrics["log_history"])}


def trl_dataset(model: str, records: str) -> Any:
    """Prompt-completion rows with their images, the prompt and target text vcot's tokenize renders."""
    from datasets import Dataset
    from PIL import Image

    from vcot.grounding.model_format import ModelFormat
    from vcot.grounding.prompts import build_messages, prompt_turns
    from vcot.models.loading import load_processor_for, model_family

    fmt = ModelFormat.for_processor(load_processor_for(model), model_family(model), coords="norm1000")
    rows = []
    for record in train_records(records):
        messages = build_messages(record, fmt)
        prompt = [{**turn, "content": [{"type": "image"} if part["type"] == "image" else part
                                       for part in turn["content"]]} for turn in prompt_turns(messages)]  # fmt: skip
        image = Image.open(record["image"]).convert("RGB")
        rows.append({"prompt": prompt, "completion": messages[-1:], "images": [image]})
    return Dataset.from_list(rows)


def run_trl(model_dir: str, records: str, work: Path, recipe_name: str, batch: int, clock: StepClock) -> dict[str, Any]:
    """TRL's ``SFTTrainer`` as its documentation shows it, with the recipe's settings."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from vcot.train.recipe import load_recipe, lora_target_regex
    from vcot.train.throughput import Throughput, throughput_of

    recipe = load_recipe(recipe_name)
    cuda = torch.cuda.is_available()
    quantization = None
    if cuda and recipe.quantize == "4bit":
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=torch.bfloat16)  # fmt: skip
    model = AutoModelForImageTextToText.from_pretrained(
        model_dir, dtype=torch.bfloat16 if cuda else torch.float32, quantization_config=quantization,
        device_map={"": 0} if cuda else None)  # fmt: skip
    lora = LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
                      target_modules=lora_target_regex(recipe.lora_target_modules, include_vision=recipe.tune_vision),
                      modules_to_save=list(recipe.modules_to_save or []) or None, task_type="CAUSAL_LM")  # fmt: skip
    args = SFTConfig(
        output_dir=str(work / "trl"), num_train_epochs=1, per_device_train_batch_size=batch,
        gradient_accumulation_steps=1, learning_rate=recipe.learning_rate, lr_scheduler_type=recipe.lr_scheduler_type,
        warmup_steps=recipe.warmup_ratio, weight_decay=recipe.weight_decay, max_grad_norm=recipe.max_grad_norm,
        optim=recipe.optim if cuda else "adamw_torch", gradient_checkpointing=recipe.gradient_checkpointing,
        bf16=cuda, neftune_noise_alpha=recipe.neftune_noise_alpha, seed=recipe.seed, max_length=None,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
        include_num_input_tokens_seen="non_padding")  # fmt: skip
    throughput = Throughput(global_batch=batch)
    trainer = SFTTrainer(model=model, args=args, train_dataset=trl_dataset(model_dir, records),
                         processing_class=AutoProcessor.from_pretrained(model_dir), peft_config=lora,
                         callbacks=[throughput, clock])  # fmt: skip
    trainer.train()
    return {"whole_loop": throughput_of(trainer), "last_loss": mean_last_loss(trainer.state.log_history)}


def run_one(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One side in this process: its numbers as JSON."""
    import transformers.trainer

    clock = StepClock()
    if mode != "trl":  # every Trainer of this process gets the clock (vcot's train stage takes no callbacks)
        transformers.trainer.DEFAULT_CALLBACKS.append(clock)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix=f"vcot-sft-baseline-{mode}-") as tmp:
        side = (args.model, args.records_dir, Path(tmp), args.recipe, args.batch, clock)
        if mode == "trl":
            result = run_trl(*side)
        else:
            result = run_vcot(*side, extra=",fused_lm_head=false" if mode == "vcot-unfused" else "")
    return {"mode": mode, "steady": clock.steady(args.warmup_steps, args.batch), **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model folder, or 'tiny' (the smoke run's tiny Qwen2.5-VL)")
    parser.add_argument("--recipe", default="qwen2.5-vl-7b-qlora")
    parser.add_argument("--records", type=int, default=96, help="records written (about 90%% land in train)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-side", type=int, default=896, help="largest image side (sides are drawn from 96 up)")
    parser.add_argument("--long-share", type=float, default=0.3, help="share of long (LLaVA-CoT-like) rationales")
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps left out of the steady rate")
    parser.add_argument("--modes", default="vcot,trl", help=f"sides to run, in order, from {', '.join(MODES)}")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # a side, in a child process
    parser.add_argument("--records-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args)), flush=True)
        return 0
    settings = {"machine": platform.platform(), "recipe": args.recipe, "batch": args.batch, "records": args.records,
                "max_side": args.max_side, "long_share": args.long_share}  # fmt: skip
    sides: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vcot-sft-baseline-") as tmp:
        model = args.model
        if model == "tiny":
            from vcot.dev.tiny_model import build_tiny_qwen25vl

            model = str(build_tiny_qwen25vl(Path(tmp) / "tiny"))
        records = write_records(Path(tmp) / "records", args.records, max_side=args.max_side, long_share=args.long_share)
        for mode in args.modes.split(","):
            sides.append(run_side(mode, model, records, args))
            print(table_row(sides[-1]), flush=True)
            result = {**settings, "sides": sides, "same_tokens": same_tokens(sides)}
            if args.output:  # after each side: a call cut off later keeps what finished
                args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if not result["same_tokens"]:
        print("WARNING: the sides did not train on the same token count: their rates are not comparable")
    print(json.dumps(result, indent=2))
    return 1 if any("error" in side for side in sides) else 0


def run_side(mode: str, model: str, records: str, args: argparse.Namespace) -> dict[str, Any]:
    """One side in a process of its own (its log goes to stderr); its numbers, or the error that stopped it."""
    command = [sys.executable, __file__, "--one", mode, "--model", model, "--records-dir", records, "--recipe",
               args.recipe, "--batch", str(args.batch), "--warmup-steps", str(args.warmup_steps)]  # fmt: skip
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False, env={**os.environ})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        return {"mode": mode, "error": f"exit {done.returncode} (its log is above)"}
    return json.loads(lines[-1][len("RESULT ") :])


def same_tokens(sides: list[dict[str, Any]]) -> bool:
    """Whether every side trained on the same number of non-padding tokens (the same rows, seen once)."""
    counted = {side.get("whole_loop", {}).get("tokens") for side in sides}
    return len(sides) > 1 and len(counted) == 1 and None not in counted


def table_row(side: dict[str, Any]) -> str:
    """| side | s/step | samples/s | tokens/s (steady) | samples/s (whole loop) | peak GiB | padding | last loss |"""
    if "error" in side:
        return f"| {side['mode']} | {side['error']} |"
    steady, whole = side["steady"], side["whole_loop"]
    return (f"| {side['mode']} | {steady.get('seconds_per_step')} | {steady.get('samples_per_second')} | "
            f"{steady.get('tokens_per_second')} | {whole.get('samples_per_second')} | {whole.get('peak_memory_gib')} | "
            f"{whole.get('padding_share')} | {side['last_loss']} |")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
