"""GRPO's rollouts on a CPU: completions/s of vLLM (the real server, ``make vllm-env``) against transformers'
``generate`` (what vcot's GRPO runs when ``use_vllm: false``), side by side on the same model and prompts.

A rollout is what GRPO asks for each step: ``--generations`` sampled completions (temperature 1) of each of
``--records`` prompts (an image and its question, as vcot's prompts build them). Both engines write exactly
``--max-tokens`` tokens per completion (vLLM ``ignore_eos``, transformers ``min_new_tokens``), so their token
counts are equal and completions/s compare:

- **hf**: the model in this process (vcot's loader, fp32), all prompts in one left-padded batch,
  ``num_return_sequences`` = generations, as TRL's trainer generates;
- **vllm**: the same folder served by ``vcot.dev.vllm_server`` (fp32, 1 GiB KV cache), every prompt sent at once
  (``n`` = generations) so that the server batches them; the server is started before and stopped after its
  timing (its start is reported apart), so the engines never share the cores.

Each engine runs ``--repeats`` times after one warm-up; the fastest is reported, with the ratio vllm/hf.

Evaluation (issue 32), with ``--evaluate-records N``: ``vcot-evaluate`` on N records of the same model, greedy,
``--evaluate-tokens`` new tokens, as samples/s of the whole stage call (images read, answers scored, outputs written):
model mode in this process (``--batch-size 16``), and served mode against the same server at each
``--concurrency`` (a fresh answer cache each, so every answer is asked for).

    PYTHONPATH=. .venv/bin/python bench/served_bench.py [--family qwen2.5-vl] [--records 8] [--generations 8]
        [--max-tokens 128] [--repeats 2] [--evaluate-records 64] [--concurrency 1,8,32] [--output results.json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from bench.plan_bench import write_records
from vcot.dev.tiny_model import build_tiny_model
from vcot.dev.vllm_server import VllmServer, vllm_venv, vllm_venv_ready
from vcot.grounding.model_format import ModelFormat
from vcot.grounding.prompts import build_messages, question_text
from vcot.io import manifest, storage
from vcot.io.images import load_rgb
from vcot.models.generation import sampled
from vcot.models.loading import load_model_and_processor, load_processor, save_processor_for_serving
from vcot.train.distributed import free_port


def prompts(data: str, count: int) -> list[dict[str, Any]]:
    return list(manifest.committed_records(data, ("train/",), expect_stage=manifest.RECORD_STAGES))[:count]


def time_hf(model: Any, processor: Any, records: list[dict[str, Any]], fmt: ModelFormat, generations: int,
            max_tokens: int) -> float:  # fmt: skip
    """Seconds for one rollout with transformers' ``generate``, its inputs' processing included (the server's is)."""
    processor.tokenizer.padding_side = "left"
    started = time.perf_counter()
    texts = [processor.apply_chat_template(build_messages(r, fmt, with_answer=False), tokenize=False,
                                           add_generation_prompt=True) for r in records]  # fmt: skip
    images = [load_rgb(record["image"]) for record in records]
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    with torch.inference_mode():  # no top-k cut, as vLLM's default (transformers' is 50)
        output = model.generate(**inputs, **sampled(1.0, 1.0), max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                num_return_sequences=generations)  # fmt: skip
    seconds = time.perf_counter() - started
    assert output.shape == (len(records) * generations, inputs["input_ids"].shape[1] + max_tokens), output.shape
    return seconds


def vllm_request(server: VllmServer, record: dict[str, Any], fmt: ModelFormat, n: int, max_tokens: int) -> int:
    """One prompt's ``n`` completions; the tokens they hold."""
    from openai import OpenAI

    image = base64.b64encode(storage.read_bytes(record["image"])).decode()
    content = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
               {"type": "text", "text": question_text(record, fmt)}]  # fmt: skip
    system = [{"role": "system", "content": fmt.system_prompt}] if fmt.system_prompt else []
    reply = OpenAI(base_url=server.url, api_key="none", timeout=3600).chat.completions.create(
        model=server.served_name, messages=[*system, {"role": "user", "content": content}], n=n, temperature=1.0,
        max_tokens=max_tokens, extra_body={"ignore_eos": True, "min_tokens": max_tokens},
    )  # fmt: skip
    return reply.usage.completion_tokens


def time_vllm(server: VllmServer, records: list[dict[str, Any]], fmt: ModelFormat, generations: int,
              max_tokens: int) -> float:  # fmt: skip
    """Seconds for one rollout through the server, every prompt in flight at once."""
    started = time.perf_counter()
    with ThreadPoolExecutor(len(records)) as pool:
        tokens = list(pool.map(lambda r: vllm_request(server, r, fmt, generations, max_tokens), records))
    seconds = time.perf_counter() - started
    assert tokens == [generations * max_tokens] * len(records), tokens
    return seconds


def hf_seconds(folder: Path, batches: list[list[dict[str, Any]]], fmt: ModelFormat, generations: int,
               max_tokens: int) -> float:  # fmt: skip
    """The fastest rollout with transformers; the model is freed on return (the server gets the memory)."""
    model, processor = load_model_and_processor(str(folder))
    return fastest(lambda records: time_hf(model, processor, records, fmt, generations, max_tokens), batches)


def fastest(run: Any, batches: list[list[dict[str, Any]]]) -> float:
    """The fastest of ``run(batch)`` over the batches after the first (a warm-up: first-call costs are no
    rollout's). Each batch has its own prompts, as each GRPO step has: vLLM's prefix cache gains nothing across them."""
    run(batches[0])
    return min(run(batch) for batch in batches[1:])


def evaluate_seconds(data: str, output: Path, samples: int, tokens: int, **mode: Any) -> float:
    """Wall seconds of one ``vcot-evaluate`` call on ``samples`` records (model or served ``mode``)."""
    from vcot.evaluate.config import EvaluateConfig
    from vcot.evaluate.stage import evaluate

    config = EvaluateConfig(data=data, output=str(output), split="train", max_samples=samples, max_new_tokens=tokens,
                            coords="norm1000", report_samples=0, **mode)  # fmt: skip
    started = time.perf_counter()
    evaluate(config)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="qwen2.5-vl", choices=["qwen2.5-vl", "qwen3-vl"])
    parser.add_argument("--records", type=int, default=8)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--evaluate-records", type=int, default=0, help="also time vcot-evaluate on N records (0: no)")
    parser.add_argument("--evaluate-tokens", type=int, default=64, help="new tokens per evaluated answer")
    parser.add_argument("--concurrency", default="1,8,32", help="served evaluation's request concurrencies")
    parser.add_argument("--output", type=Path, default=Path("served_bench.json"))
    args = parser.parse_args(argv)
    if not vllm_venv_ready(vllm_venv()):
        parser.error(f"no vLLM environment at {vllm_venv()}: run `make vllm-env` first")
    scratch = Path(tempfile.mkdtemp(prefix="served-bench-"))
    folder = build_tiny_model(scratch / "model", family=args.family, size="local")  # vLLM: heads of 32 and more
    save_processor_for_serving(load_processor(str(folder)), folder)  # as a hub model's: vLLM's transformers reads it
    count = args.records * (args.repeats + 1)
    records = prompts(write_records(str(scratch / "records"), max(count, args.evaluate_records), 224), count)
    batches = [records[index : index + args.records] for index in range(0, count, args.records)]
    fmt = ModelFormat.for_processor(load_processor(str(folder)), args.family)
    completions = args.records * args.generations
    hf = hf_seconds(folder, batches, fmt, args.generations, args.max_tokens)
    data, samples, tokens = str(scratch / "records"), args.evaluate_records, args.evaluate_tokens
    evaluations: dict[str, float] = {}
    if samples:  # in process, before the server takes the cores; greedy with no penalty, as the server decodes
        evaluations["model, batch 16"] = evaluate_seconds(data, scratch / "eval-model", samples, tokens, model=str(folder),
                                                          repetition_penalty=1.0, box_aware_penalty=False)  # fmt: skip
    server = VllmServer(model=folder, port=free_port(), venv=vllm_venv(), root=scratch / "vllm")
    started = time.perf_counter()
    server.up()
    start_seconds = time.perf_counter() - started
    try:
        served = fastest(lambda batch: time_vllm(server, batch, fmt, args.generations, args.max_tokens), batches)
        for concurrency in [int(value) for value in args.concurrency.split(",")] if samples else []:
            evaluations[f"served, concurrency {concurrency}"] = evaluate_seconds(
                data, scratch / f"eval-served-{concurrency}", samples, tokens, server=server.url,
                server_concurrency=concurrency, server_cache=str(scratch / f"cache-{concurrency}"),
                server_params={"repetition_penalty": 1.0},
            )  # fmt: skip
    finally:
        server.down()
    runs = {name: {"seconds": round(seconds, 3), "completions_per_s": round(completions / seconds, 2),
                   "tokens_per_s": round(completions * args.max_tokens / seconds, 1)}
            for name, seconds in (("hf", hf), ("vllm", served))}  # fmt: skip
    result = {"when": datetime.now().isoformat(timespec="seconds"), "machine": f"{platform.machine()}, "
              f"{os.cpu_count()} cores", "family": args.family, "records": args.records,
              "generations": args.generations, "max_tokens": args.max_tokens, "runs": runs,
              "vllm_over_hf": round(hf / served, 2), "vllm_start_s": round(start_seconds, 1),
              "evaluation": {name: {"seconds": round(seconds, 2), "samples_per_s": round(samples / seconds, 2)}
                             for name, seconds in evaluations.items()},
              "evaluate_records": samples, "evaluate_tokens": tokens}  # fmt: skip
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print("| engine | completions/s | tokens/s | seconds |\n|---|---|---|---|")
    for name, run in runs.items():
        print(f"| {name} | {run['completions_per_s']} | {run['tokens_per_s']} | {run['seconds']} |")
    print(f"vLLM / HF: {result['vllm_over_hf']}x (vLLM's start: {result['vllm_start_s']} s, not counted)")
    if evaluations:
        print(f"\n| vcot-evaluate, {samples} records, {tokens} tokens | samples/s | seconds |\n|---|---|---|")
        for name, run in result["evaluation"].items():
            print(f"| {name} | {run['samples_per_s']} | {run['seconds']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
