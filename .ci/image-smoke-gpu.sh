#!/usr/bin/env bash
# make image-gpu-smoke / image-vllm-smoke: check a GPU image on a machine without a GPU, run as a pod runs it
# (non-root, read-only root filesystem, /tmp and /cache as scratch).
#   gpu:  torch is the CUDA build, every train, evaluate, export, demo, serving and vLLM import loads, each GPU
#         entrypoint answers --help, the planner runs, and the tiny model takes a LoRA step on the CPU.
#   vllm: vLLM is the release the tests serve with, on torch's CUDA build, its server's module loads and its engine
#         takes the arguments k8s/components/vllm passes. (The server itself, even its --help, needs a GPU: vLLM's
#         CUDA build finds no device to configure on a CPU.)
# Usage: .ci/image-smoke-gpu.sh [--vllm] IMAGE
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM=0
if [ "${1:-}" = --vllm ]; then VLLM=1; shift; fi
IMAGE=${1:?usage: .ci/image-smoke-gpu.sh [--vllm] IMAGE}
read -ra PODMAN <<< "${PODMAN:-podman}"  # the Makefile's PODMAN (its storage driver)

pod() {
    "${PODMAN[@]}" run -i --rm --runtime runc --network none --no-healthcheck --ulimit nofile=1024:1024 \
        --ulimit nproc=1024:1024 --user 10001:10001 --read-only \
        --tmpfs /tmp --tmpfs /cache -e VCOT_LOG_FORMAT=json "$IMAGE" "$@"
}
size() { "${PODMAN[@]}" image inspect "$IMAGE" --format 'image-smoke-gpu: {{.Size}} bytes'; }

if [ "$VLLM" = 1 ]; then
    wanted=$(sed -n 's/^VLLM_VERSION = "\(.*\)"/\1/p' vcot/dev/vllm_server.py)
    pod python3 - "$wanted" <<'PYTHON'
import dataclasses, sys, importlib.metadata as metadata, torch
import vllm.entrypoints.openai.api_server  # noqa: F401 - the module the component runs
from vllm.engine.arg_utils import AsyncEngineArgs
assert torch.version.cuda, f"torch {torch.__version__} is not a CUDA build"
assert metadata.version("vllm") == sys.argv[1], (metadata.version("vllm"), sys.argv[1])
passed = {"model", "served_model_name", "max_model_len", "limit_mm_per_prompt"}  # k8s/components/vllm's flags
assert passed <= {field.name for field in dataclasses.fields(AsyncEngineArgs)}, passed
print(f"image-smoke-gpu: vllm {metadata.version('vllm')} on torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {metadata.version('transformers')}; the server's module loads and takes the component's flags")
PYTHON
    size
    exit 0
fi

pod python - <<'PYTHON'
import importlib, importlib.metadata as metadata, torch
assert torch.version.cuda, f"torch {torch.__version__} is not a CUDA build"
modules = ["vcot.train.sft", "vcot.train.grpo", "vcot.train.rgfn", "vcot.train.sharding", "vcot.evaluate.stage",
           "vcot.evaluate.served", "vcot.evaluate.judge", "vcot.export.stage", "vcot.demo.app", "vcot.models.loading",
           "bitsandbytes", "peft", "trl", "gradio", "rouge_score", "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl",
           "transformers.models.qwen3_vl.modeling_qwen3_vl", "vllm", "trl.generation.vllm_generation"]
for name in modules:
    importlib.import_module(name)
versions = {name: metadata.version(name) for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "vllm")}
print(f"image-smoke-gpu: torch CUDA {torch.version.cuda}, {len(modules)} modules import, {versions}")
PYTHON
for entrypoint in vcot-train vcot-evaluate vcot-export vcot-demo vcot-plan vcot-tokenize vcot-leaderboard; do
    pod "$entrypoint" --help >/dev/null
done
echo "image-smoke-gpu: every entrypoint answers --help"
pod vcot-plan --recipe qwen2.5-vl-7b-qlora --model qwen2.5-vl-7b | tail -3
pod python - <<'PYTHON'
import torch
from transformers import AutoModelForImageTextToText
from vcot.dev.tiny_model import build_tiny_qwen25vl
from vcot.train.common import add_lora
from vcot.train.recipe import load_recipe

model = add_lora(AutoModelForImageTextToText.from_pretrained(build_tiny_qwen25vl("/tmp/tiny")), load_recipe("tiny-cpu"))
ids = torch.tensor([[1, 2, 3, 4]])
loss = model(input_ids=ids, labels=ids).loss
loss.backward()
assert torch.isfinite(loss) and any(p.grad is not None for p in model.parameters() if p.requires_grad)
print(f"image-smoke-gpu: the tiny model took a LoRA backward pass on the CPU (loss {loss.item():.3f})")
PYTHON
size
