#!/usr/bin/env bash
# Speed at the 7B's real shape on one GPU, in one call of a lent machine (docs/benchmarks.md, "vcot against plain TRL
# on a GPU"): the whole Qwen2.5-VL-7B (published configuration, random weights drawn on the GPU, nothing downloaded),
#   sft   vcot's SFT (qwen2.5-vl-7b-qlora as shipped, batch 4) against a plain TRL SFTTrainer with the same settings
#         (bench/sft_baseline_bench.py);
#   plan  the memory plan against the allocator on the same model (bench/plan_bench.py, QLoRA at batch 1 and 4);
#   eval  vcot-evaluate's generation on the same model at batch 1, 16 and 64 (samples/s; random weights rarely stop,
#         so nearly every answer runs to --max-new-tokens).
# Each part runs under what is left of BUDGET, most important first, so a cut-off call still reports.
# Results: $OUT/log, $OUT/sft_baseline.json, $OUT/plan.json, $OUT/eval-B.json, $OUT/logs.tar.gz (each step's whole
# log). SMOKE=1 checks the script on a CPU (tiny model).
set -u
OUT=${OUT:-/tmp/gpu-speed}
BUDGET=${BUDGET:-560}        # seconds this script may take in all
WORK=${WORK:-/tmp/vcot-gpu-speed}
SMOKE=${SMOKE:-0}
RUNS=${RUNS:-sft plan eval}
SFT_MODES=${SFT_MODES:-vcot,vcot-unfused,trl}  # bench/sft_baseline_bench.py's sides, in order
PY=${PY:-python3}
source bench/gpu_common.sh
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c 'import importlib, torch; print("cuda", torch.cuda.is_available(), *(name + " " + importlib.import_module(
name).__version__ for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets")))'

if [ "$SMOKE" = 1 ]; then
  M=tiny; RECIPE=tiny-cpu; RECORDS=24; SIDE=128; EVAL_SAMPLES=4; NEW=8
else
  M=$WORK/qwen2.5-vl-7b; RECIPE=qwen2.5-vl-7b-qlora; RECORDS=96; SIDE=896; EVAL_SAMPLES=64; NEW=64
  step build-7b $PY -m vcot.dev.model_slice "$M" --name qwen2.5-vl-7b --layers 0 --device cuda --keep-current || exit 1
fi
wanted sft && step sft $PY bench/sft_baseline_bench.py --model "$M" --recipe $RECIPE --records $RECORDS --batch 4 \
  --max-side $SIDE --modes $SFT_MODES --output "$OUT/sft_baseline.json"
[ -f "$WORK/logs/sft.log" ] && grep '^| ' "$WORK/logs/sft.log"
if wanted plan; then
  if [ "$M" = tiny ]; then DEVICE="--device cpu"; BATCHES=1; else DEVICE="--device cuda --steps 3"; BATCHES=1,4; fi
  step plan $PY bench/plan_bench.py $DEVICE --batches $BATCHES --image-side $SIDE --cases "$RECIPE@$M" \
    --output "$OUT/plan.json" && grep '^| ' "$WORK/logs/plan.log"
fi

if wanted eval; then
  if [ "$M" = tiny ]; then M=$WORK/tiny; $PY -m vcot.dev.tiny_model "$M" --family qwen2.5-vl >/dev/null; fi
  $PY -c "import sys; from pathlib import Path; from bench.train_bench import write_records
write_records(Path(sys.argv[1]), int(sys.argv[2]), max_side=int(sys.argv[3]), long_share=0.3)" "$WORK/records" \
    $((EVAL_SAMPLES * 12 / 10)) $SIDE
  EVAL_SUMMARY="import json, sys; folder, batch, new = sys.argv[1:]
timing = json.load(open(folder + '/metrics.json'))['details']['timing']; rate = timing['samples_per_second']
print(f'| eval batch {batch} | {timing[\"seconds\"]} s | {rate} samples/s | {rate * int(new):.0f} new tokens/s |')"
  for batch in 64 16 1; do  # the batch of 1 last: the slowest, and the one a cut-off call can best spare
    samples=$EVAL_SAMPLES; [ $batch = 1 ] && samples=$(( EVAL_SAMPLES > 8 ? EVAL_SAMPLES / 8 : 1 ))
    step eval-$batch $PY -m jobs.evaluate --model "$M" --data "$WORK/records" --split train --output "$WORK/eval-$batch" \
      --max-samples $samples --batch-size $batch --max-new-tokens $NEW --repetition-penalty 1.0 --coords norm1000 \
      && cp "$WORK/eval-$batch/metrics.json" "$OUT/eval-$batch.json" \
      && $PY -c "$EVAL_SUMMARY" "$WORK/eval-$batch" $batch $NEW
  done
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
tar czf "$OUT/logs.tar.gz" -C "$WORK" logs
echo "== done in ${SECONDS}s"
