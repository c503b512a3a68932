#!/usr/bin/env bash
# vLLM for a lent GPU machine that has no network, in pieces that fit its calls (bench/gpu_vllm.sh uses it).
#
# The machine has torch 2.11.0 (CUDA 13.0) and no vLLM; vLLM 0.26.0 is the last release built against that torch
# (0.27 and later need torch 2.13). Its wheel is 304 MB and one device call carries 64 MiB, so this script
#   1. downloads vllm and the wheels it needs that the machine lacks (pinned below: what ran there on 2026-11-26),
#   2. unpacks vllm without three binaries a bf16 dense model on a Hopper GPU does not load (FlashAttention 2,
#      which only runs where FlashAttention 3 cannot; the MoE kernels; the Rust front end; vLLM imports each one
#      guarded) and the wheels into one folder,
#   3. compresses that folder (xz: about 109 MB) and splits it into DEST/1, DEST/2, ... of PIECE_MB each, the first
#      one FIRST_MB (that call also carries the .whl wheels and the CPU's adapters).
# Here: DEST=.vc bash bench/gpu_vllm_payload.sh (add DEST's folders to .git/info/exclude). There, one call per
# piece, back to back (a machine idle for 30 s is given back, with /tmp): carry DEST/N, run
#   mkdir -p /tmp/vparts && cp DEST/N/* /tmp/vparts/
# and in the last call: mkdir -p /tmp/vsite && cat /tmp/vparts/vsite.txz.* | xz -d -T0 | tar x -C /tmp/vsite
set -euo pipefail
DEST=${DEST:-.vc}
WORK=${WORK:-/tmp/vllm-payload}
FIRST_MB=${FIRST_MB:-10}
PIECE_MB=${PIECE_MB:-60}
VLLM=vllm==0.26.0
NEEDS="agent_detector==2.0.0 annotated_types==0.8.0 anthropic==2.14.0 apache_tvm_ffi==0.1.15.post2 astor==0.8.1
blake3==1.0.11 cachetools==8.0.2 cbor2==6.3.0 cffi==2.1.1 compressed_tensors==0.17.0 cryptography==50.0.2
depyf==0.20.0 detect_installer==0.2.1 dill==0.4.1 dnspython==2.9.2 docstring_parser==0.18.0 email_validator==2.4.0
fastapi==0.136.3 fastapi_cli==0.0.34 fastapi_cloud_cli==0.28.0 fastar==0.12.0 fastsafetensors==0.5.0
googleapis_common_protos==1.76.0 httpcore2==2.16.2 httptools==0.9.0 httpx2==2.16.2 ijson==3.6.0 interegular==0.3.3
jiter==0.19.0 jmespath==1.1.0 jsonschema==4.26.0 jsonschema_specifications==2025.9.1 lark==1.2.2 llguidance==1.7.6
lm_format_enforcer==0.11.3 loguru==0.7.3 mcp==2.3.0 mcp_types==2.3.0 mistral_common==1.13.1
model_hosting_container_standards==0.1.16 msgspec==0.22.0 nvtx==0.2.15 openai==3.57.0 openai_harmony==0.0.8
opentelemetry_api==1.45.2 opentelemetry_exporter_http_transport==0.66b2 opentelemetry_exporter_otlp==1.45.2
opentelemetry_exporter_otlp_common==0.66b2 opentelemetry_exporter_otlp_proto_common==1.45.2
opentelemetry_exporter_otlp_proto_grpc==1.45.2 opentelemetry_exporter_otlp_proto_http==1.45.2
opentelemetry_proto==1.45.2 opentelemetry_sdk==1.45.2 opentelemetry_semantic_conventions==0.66b2
opentelemetry_semantic_conventions_ai==0.5.1 outlines_core==0.2.14 partial_json_parser==0.2.1.1.post7
prometheus_fastapi_instrumentator==8.1.0 pybase64==1.5.1 pycountry==26.2.16 pycparser==3.12 pydantic==2.14.4
pydantic_core==2.50.5 pydantic_extra_types==2.11.1 pydantic_settings==2.16.3 pyelftools==0.33 pyjwt==2.15.1
python_dotenv==1.2.4 python_json_logger==4.2.0 python_multipart==0.0.34 pyzmq==27.3.0 referencing==0.37.0
rich_toolkit==0.20.6 rignore==0.8.1 rpds_py==2026.9.1 sentry_sdk==2.75.0 setproctitle==1.3.8 sniffio==1.3.1
sse_starlette==3.7.0 starlette==1.10.0 supervisor==4.3.0 torch_c_dlpack_ext==0.1.5 truststore==0.10.5
typing_inspection==0.4.5 uvicorn==0.54.0 watchfiles==1.3.0 websockets==17.4 xgrammar==0.2.8"
PLATFORMS=""
for tag in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_26 \
  manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do PLATFORMS+=" --platform ${tag}_x86_64"; done
TARGET=(--python-version 3.12 --implementation cp --only-binary=:all: $PLATFORMS --platform any)

mkdir -p "$WORK/wheels"
python3 -m pip download -q --no-deps "${TARGET[@]}" -d "$WORK/wheels" $VLLM $NEEDS
rm -rf "$WORK/site" && mkdir -p "$WORK/site"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "${TARGET[@]}" \
  $(ls "$WORK"/wheels/*.whl | grep -v '/wheels/vllm-')
python3 -m zipfile -e "$WORK"/wheels/vllm-*.whl "$WORK/site"
rm -f "$WORK/site/vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so" "$WORK/site/vllm/_moe_C_stable_libtorch.abi3.so" \
  "$WORK/site/vllm/vllm-rs"
tar cf - -C "$WORK/site" . | xz -T0 -6 > "$WORK/vsite.txz"
rm -rf "$DEST" && mkdir -p "$DEST/1"
head -c $((FIRST_MB * 1000000)) "$WORK/vsite.txz" > "$DEST/1/vsite.txz.000"
tail -c +$((FIRST_MB * 1000000 + 1)) "$WORK/vsite.txz" | split -b $((PIECE_MB * 1000000)) -d -a 3 --numeric-suffixes=1 \
  - "$WORK/vsite.txz."
for piece in "$WORK"/vsite.txz.[0-9]*; do n=$((10#${piece##*.} + 1)); mkdir -p "$DEST/$n"; mv "$piece" "$DEST/$n/"; done
du -sb "$DEST"/* "$WORK/vsite.txz"
