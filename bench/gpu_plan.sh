#!/usr/bin/env bash
# The memory plan and step times on one GPU, in one go (docs/benchmarks.md, "The memory plan on a GPU"). Runs with
# the python3 on PATH; on a machine without network, vcot's other needs can travel as wheels in .whl (installed
# into /tmp/site first).
# Most important first, each under what is left of the call's time, so that a cut-off call still reports:
#   1. the whole Qwen2.5-VL-7B (random weights drawn on the GPU): QLoRA and GRPO's bf16 LoRA step, predicted vs
#      measured peak, and step times;
#   2. the CPU table's slices on the GPU (the same rows as bench/plan_bench.py's CPU run);
#   3. the whole Qwen3-VL-8B, QLoRA.
# Results: $OUT/*.json and $OUT/log (the device tool brings them back).
set -u
OUT=${OUT:-/tmp/gpu-plan}
BUDGET=${BUDGET:-520}  # seconds this script may take in all
PY=${PY:-python3}
WORK=${WORK:-/tmp/gpu-plan-work}
source bench/gpu_common.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c 'import torch, transformers, peft, bitsandbytes, trl; print("torch", torch.__version__, "transformers",
transformers.__version__, "peft", peft.__version__, "bitsandbytes", bitsandbytes.__version__, "trl", trl.__version__)'

run() {  # NAME ARGS...: one plan_bench run under the time left
  local name=$1; shift
  local limit; limit=$(left)
  if [ "$limit" -lt 60 ]; then echo "== $name: skipped, ${limit}s left"; return; fi
  echo "== $name (at ${SECONDS}s, ${limit}s left)"
  timeout "$limit" $PY bench/plan_bench.py --device cuda --image-side 896 --output "$OUT/$name.json" "$@"
  echo "== $name: rc=$? at ${SECONDS}s"
}
run whole-qwen2.5-vl-7b --full-depth --steps 5 --batches 1,4 \
  --cases qwen2.5-vl-7b-qlora@qwen2.5-vl-7b,qwen2.5-vl-7b-grpo@qwen2.5-vl-7b
run slices --steps 3 --batches 1,2
run whole-qwen3-vl-8b --full-depth --steps 5 --batches 1,4 --cases qwen3-vl-8b-qlora@qwen3-vl-8b
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
