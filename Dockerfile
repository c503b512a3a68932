# syntax=docker/dockerfile:1
# vcot images. Four targets from one file:
#   cpu        convert, distill, tokenize and the chain controller (torch CPU build, no CUDA)
#   cpu-train  cpu + the rest of the train extra and the demo extra: train, evaluate and the demo on CPU (dev
#              clusters, tiny model)
#   gpu        train, evaluate and the live demo: torch's CUDA build, whose wheels carry the CUDA libraries (the
#              node's driver is mounted by the NVIDIA container toolkit), so any Python base does
#   vllm       vLLM's OpenAI-compatible server (k8s/components/vllm), nothing of vcot
# Build:  podman build --target cpu -t vcot-cpu:0.1.0 .      (make image-smoke builds it offline)
#         docker build --target gpu -t vcot-gpu:0.1.0 .      (make image-gpu-smoke builds and checks it offline)
#         docker build --target vllm -t vcot-vllm:0.1.0 .    (make image-vllm-smoke)
# The base images are ARGs so the image builds from a local base offline (docs/k8s.md).
# Dependencies are installed before the source is copied: editing code rebuilds only the last layers.

ARG CPU_BASE=python:3.11-slim-bookworm
# The GPU image's base: a plain Python (torch's CUDA wheels bring CUDA), or a CUDA PyTorch image whose torch is
# kept when it is TORCH_VERSION.
ARG GPU_BASE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------
# checkov:skip=CKV_DOCKER_7: the base is an ARG; its default above is pinned to a version tag
FROM ${CPU_BASE} AS cpu-deps
ARG TORCH_VERSION=2.13.0
# Where the CPU build of torch comes from: empty = pip's index as configured, which on Linux may only offer the
# large CUDA build; set it to the package index PyTorch publishes for its CPU-only wheels (its install page names
# it), or give a folder holding the CPU wheel with PIP_FIND_LINKS. Used for torch alone.
ARG TORCH_INDEX_URL=
ARG PIP_FIND_LINKS=
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/vcot \
    PATH=/opt/vcot/bin:$PATH \
    HOME=/home/vcot \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    TMPDIR=/tmp
RUN python3 -m venv /opt/vcot \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/vcot --shell /usr/sbin/nologin vcot \
 && mkdir -p /cache && chown vcot:vcot /cache
WORKDIR /src
COPY pyproject.toml README.md ./
# The CPU torch first (an unpinned torch would pull the CUDA build), then the dependencies of the
# CPU stages, pins read from pyproject.toml: the base ones, the convert, distill and k8s extras, and
# from the train extra only what tokenize uses (transformers' processor, pyarrow); no trl, peft,
# bitsandbytes or tensorboard here.
# torch is pinned: hadolint reads the optional --index-url below as an unpinned package.
# hadolint ignore=DL3013
RUN pip install "torch==${TORCH_VERSION}" ${TORCH_INDEX_URL:+--index-url "${TORCH_INDEX_URL}"} \
 && python -c "import re, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']; \
tokenize = [d for d in extras['train'] if re.split('[=<>~!\\[ ]', d)[0] in ('transformers', 'pyarrow')]; \
print('\n'.join(p['dependencies'] + tokenize + [d for e in ('convert', 'distill', 'k8s') for d in extras.get(e, [])]))" \
    > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# ---------------------------------------------------------------------------------------------------
FROM cpu-deps AS cpu
# .dockerignore lets only pyproject.toml, README.md, vcot/ and jobs/ through. The commit (recorded in
# every manifest) is set after the dependency layers, so a new commit does not reinstall them.
ARG VCOT_GIT_SHA=
ENV VCOT_GIT_SHA=${VCOT_GIT_SHA}
COPY . .
RUN pip install --no-deps . && rm -rf /src/build
WORKDIR /home/vcot
USER 10001:10001
HEALTHCHECK NONE
# No default stage: each Job names its console script (vcot-convert, vcot-distill, vcot-tokenize).
CMD ["vcot-convert", "--help"]

# ---------------------------------------------------------------------------------------------------
# + the demo extra (gradio): vcot-demo on a dev cluster's CPU (k8s/overlays/cpu-dev with components/demo)
FROM cpu-deps AS cpu-train
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['optional-dependencies']['train'] + p['optional-dependencies']['demo']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
ARG VCOT_GIT_SHA=
ENV VCOT_GIT_SHA=${VCOT_GIT_SHA}
COPY . .
RUN pip install --no-deps . && rm -rf /src/build
WORKDIR /home/vcot
USER 10001:10001
HEALTHCHECK NONE
CMD ["vcot-train", "--help"]

# ---------------------------------------------------------------------------------------------------
# checkov:skip=CKV_DOCKER_7: the base is an ARG; its default above is pinned to a version tag
FROM ${GPU_BASE} AS gpu
ARG TORCH_VERSION=2.13.0
ARG VLLM_VERSION=0.30.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/vcot \
    PATH=/opt/vcot/bin:$PATH \
    HOME=/home/vcot \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    TRITON_CACHE_DIR=/cache/triton \
    TMPDIR=/tmp
# A venv that sees the base's packages: a CUDA PyTorch base's torch stays when it is the pinned version; else
# torch===VERSION (=== never takes a local +cpu build) is the index's Linux wheel, the CUDA build.
RUN python3 -m venv --system-site-packages /opt/vcot \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/vcot --shell /usr/sbin/nologin vcot \
 && mkdir -p /cache && chown vcot:vcot /cache \
 && { python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '${TORCH_VERSION}')" \
      || pip install "torch===${TORCH_VERSION}"; }
# The train extra's other pins beside it, the distill extra (openai: evaluate's judge and --server, the served
# re-evaluation CronJob), the demo extra (gradio: vcot-demo, k8s/components/demo), the benchmarks extra
# (evaluate's --benchmark ground-r1) and vLLM for GRPO's colocated rollouts (use_vllm; the release the tests run,
# which takes vcot's torch and transformers). Unsloth is not installed: its releases pin transformers and trl below
# vcot's (docs/k8s.md), so the loader takes its transformers path.
WORKDIR /src
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']; \
wanted = p['dependencies'] + [d for e in ('train', 'distill', 'demo', 'benchmarks') for d in extras[e]]; \
print('\n'.join(d for d in wanted if not d.startswith('torch')))" \
    > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt "vllm==${VLLM_VERSION}" \
 && rm /tmp/requirements.txt
# .dockerignore lets only pyproject.toml, README.md, vcot/ and jobs/ through. The commit (recorded in
# every manifest) is set after the dependency layers, so a new commit does not reinstall them.
ARG VCOT_GIT_SHA=
ENV VCOT_GIT_SHA=${VCOT_GIT_SHA}
COPY . .
RUN pip install --no-deps . && rm -rf /src/build
WORKDIR /home/vcot
USER 10001:10001
HEALTHCHECK NONE
CMD ["vcot-train", "--help"]

# ---------------------------------------------------------------------------------------------------
# vLLM's OpenAI-compatible server for k8s/components/vllm, at the release vcot's tests serve with: its own venv
# (vLLM pins a transformers below vcot's), torch's CUDA build as vLLM pins it. The model is the component's init
# container's download (an export); nothing of vcot runs here.
# checkov:skip=CKV_DOCKER_7: the base is an ARG; its default above is pinned to a version tag
FROM ${GPU_BASE} AS vllm
ARG VLLM_VERSION=0.30.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/vllm \
    PATH=/opt/vllm/bin:$PATH \
    HOME=/home/vllm \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    VLLM_CACHE_ROOT=/cache/vllm \
    TRITON_CACHE_DIR=/cache/triton \
    TMPDIR=/tmp
RUN python3 -m venv /opt/vllm \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/vllm --shell /usr/sbin/nologin vllm \
 && mkdir -p /cache && chown vllm:vllm /cache \
 && pip install "vllm==${VLLM_VERSION}"
WORKDIR /home/vllm
USER 10001:10001
HEALTHCHECK NONE
CMD ["python3", "-m", "vllm.entrypoints.openai.api_server", "--help"]
