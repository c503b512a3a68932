#!/usr/bin/env bash
# The pipeline's own entrypoints on one GPU, end to end, in one call of a lent machine (docs/benchmarks.md, "The
# pipeline on a GPU"): what `make local-train`, `make local-grpo`, `make local-rgfn` and `make local-train-fsdp` run
# on a CPU, here on CUDA (bf16), against local folders instead of S3 (a machine without network has no server).
#
#   setup    tiny models of both families, synthetic data -> convert -> tokenize (the CPU's data, to the byte)
#   sft      tiny-cpu on Qwen2.5-VL, then evaluate, then export (merged, bf16) and evaluate the export
#   grpo     tiny-cpu-grpo from the CPU's SFT adapter (STARTS/sft), then evaluate
#   rgfn     tiny-cpu-rgfn from the CPU's three-turn SFT adapter (STARTS/sft3), then evaluate with BiN (N = 5)
#   dp/fsdp  torchrun (NCCL) SFT for a few hundred steps, data parallel and sharding=fsdp2, same seed: loss parity
#   resume   the fsdp2 run stopped by SIGTERM after its first checkpoint, then rerun: it resumes and commits
#   qwen3    tiny-cpu on Qwen3-VL for a few hundred steps, then evaluate
#
# The runs after setup share the GPU at once (16 cores, one card): their times are not benchmarks. Each run is cut at
# what is left of BUDGET, so a slow one reports the others. On an H100 (2026-11-26) everything but the two last
# evaluations fitted 470 s; BiN's evaluation alone then took 159 s: give it BUDGET=540 (device call timeout_s 600).
# Results: $OUT/log, $OUT/summary.json and $OUT/runs.tar.gz (every run's metrics.json, manifest and log).
# SMOKE=1 runs a few steps of each (checks this script on a CPU). Before: STARTS/sft and STARTS/sft3 hold the adapters
# of `make local-train` and `make local-rgfn` (storage.download_prefix of LOCAL_RUN/train/adapter and
# LOCAL_RUN-rgfn/train/adapter), and .whl the wheels of what the GPU machine lacks (`pip download --no-deps`).
set -u
OUT=${OUT:-/tmp/gpu-pipeline}
BUDGET=${BUDGET:-540}       # seconds this script may take in all
WORK=${WORK:-/tmp/vcot-gpu}  # local folders standing in for the bucket
STARTS=${STARTS:-.gpu}       # the CPU's adapters: sft/ (make local-train), sft3/ (make local-rgfn's three-turn SFT)
SMOKE=${SMOKE:-0}
RUNS=${RUNS:-sft grpo rgfn dp fsdp resume qwen3}  # which runs start after setup (e.g. RUNS=sft)
PY=${PY:-python3}
source bench/gpu_common.sh
echo $$ >"$WORK/pipeline.pid"  # gpu_vllm.sh, started beside it, waits for its setup
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c 'import importlib, torch; print("cuda", torch.cuda.is_available(), *(name + " " + importlib.import_module(
name).__version__ for name in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "pyarrow", "fsspec")))'

if [ "$SMOKE" = 1 ]; then
  RECORDS=120; SFT="--set max_steps=6,eval_steps=3,save_steps=3,generation_eval_steps=3"
  GRPO="--set max_steps=2"; RGFN="--set max_steps=2"; SHORT=6; BIN=2; EVAL="--max-samples 8"
else
  RECORDS=2250; SFT=""; GRPO=""; RGFN=""; SHORT=300; BIN=5; EVAL=""
fi
M25=$WORK/tiny-qwen2.5-vl; M3=$WORK/tiny-qwen3-vl; R=$WORK/run
evaluate() {  # NAME MODEL DATA OUTPUT [ARGS...]
  local name=$1 model=$2 data=$3 output=$4; shift 4
  step "$name" $PY -m jobs.evaluate --model "$model" --data "$data" --output "$output" --max-new-tokens 96 $EVAL "$@"
}
torchrun_sft() {  # NAME OUTPUT SET: SFT under torchrun, one process (NCCL on a GPU)
  step "$1" $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m jobs.train --data $R/tokenized \
    --model $M25 --output "$2" --recipe tiny-cpu --threads 2 \
    --set "max_steps=$SHORT,logging_steps=10,eval_steps=100,save_steps=100,generation_eval_samples=0,$3"
}

jobs_started=()
echo "== setup (at ${SECONDS}s)"
step tiny-qwen2.5 $PY -m vcot.dev.tiny_model $M25 --family qwen2.5-vl --size local || exit 1
wanted qwen3 && step tiny-qwen3 $PY -m vcot.dev.tiny_model $M3 --family qwen3-vl --size local
step synthetic $PY -m vcot.dev.synthetic $R/synthetic --num-records $RECORDS || exit 1
step convert $PY -m jobs.convert --source viscot --input $R/synthetic --output $R/records || exit 1
step tokenize $PY -m jobs.tokenize --input $R/records --output $R/tokenized --model $M25 --coords norm1000 || exit 1

wanted sft && (step sft $PY -m jobs.train --data $R/tokenized --model $M25 --output $R/sft --recipe tiny-cpu --threads 2 $SFT \
  && evaluate sft-eval $M25 $R/records $R/sft-eval --adapter $R/sft/adapter \
  && step export $PY -m jobs.export --run $R/sft --output $R/export --evaluation $R/sft-eval \
  && evaluate export-eval $R/export $R/records $R/export-eval) & jobs_started+=($!)
wanted grpo && (step grpo $PY -m jobs.train --data $R/records --model $M25 --init-adapter "$STARTS/sft" --output $R/grpo \
  --recipe tiny-cpu-grpo --threads 2 $GRPO \
  && evaluate grpo-eval $M25 $R/records $R/grpo-eval --adapter $R/grpo/adapter) & jobs_started+=($!)
wanted rgfn && (step rgfn $PY -m jobs.train --data $R/records --model $M25 --init-adapter "$STARTS/sft3" --output $R/rgfn \
  --recipe tiny-cpu-rgfn --threads 2 $RGFN \
  && evaluate rgfn-eval $M25 $R/records $R/rgfn-eval --adapter $R/rgfn/adapter --bin $BIN) & jobs_started+=($!)
wanted dp && (torchrun_sft dp $R/dp "seed=42" ) & jobs_started+=($!)
wanted fsdp && (torchrun_sft fsdp $R/fsdp "sharding=fsdp2,optim=adamw_torch") & jobs_started+=($!)
wanted resume && (  # resume: SIGTERM once the first checkpoint is committed, then the same command again
  torchrun_sft resume-first $R/resume "sharding=fsdp2,optim=adamw_torch" &
  first=$!
  until ls $R/resume/checkpoints/*/_COMPLETE >/dev/null 2>&1 || ! kill -0 $first 2>/dev/null; do sleep 1; done
  pkill -TERM -f "output $R/resume " ; wait $first
  torchrun_sft resume-second $R/resume "sharding=fsdp2,optim=adamw_torch") & jobs_started+=($!)
wanted qwen3 && (step tokenize-qwen3 $PY -m jobs.tokenize --input $R/records --output $R/tokenized-qwen3 --model $M3 \
    --coords norm1000 \
  && step qwen3 $PY -m jobs.train --data $R/tokenized-qwen3 --model $M3 --output $R/qwen3 --recipe tiny-cpu \
    --threads 2 \
    --set "max_steps=$SHORT,eval_steps=100,save_steps=100,generation_eval_steps=100" \
  && evaluate qwen3-eval $M3 $R/records $R/qwen3-eval --adapter $R/qwen3/adapter) & jobs_started+=($!)
wait "${jobs_started[@]}"  # not a bare wait: that also waits for the log's tee
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used --format=csv,noheader

echo "== results (at ${SECONDS}s)"
$PY bench/gpu_pipeline_summary.py "$R" --json "$OUT/summary.json"
(cd "$WORK" && find run logs -name 'metrics.json' -o -name '*.log' -o -name '_SUCCESS' \
  | tar czf "$OUT/runs.tar.gz" -T -)
echo "== done in ${SECONDS}s"
