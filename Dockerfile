# syntax=docker/dockerfile:1
# vcot images. Two targets from one file:
#   cpu  convert, distill, tokenize and the chain controller (torch CPU build, no CUDA)
#   gpu  train and evaluate (on a CUDA PyTorch base)
# Build:  podman build --target cpu -t vcot-cpu:0.1.0 .      (make image-smoke builds it offline)
#         docker build --target gpu -t vcot-gpu:0.1.0 .
# The base images are ARGs so the image builds from a local base offline (docs/k8s.md).
# Dependencies are installed before the source is copied: editing code rebuilds only the last layers.

ARG CPU_BASE=python:3.11-slim-bookworm
# A CUDA PyTorch runtime image; pick the tag that matches TORCH_VERSION (the build checks it).
ARG GPU_BASE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime

# ---------------------------------------------------------------------------------------------------
FROM ${CPU_BASE} AS cpu
ARG TORCH_VERSION=2.13.0
# Where the CPU build of torch comes from (a local wheel folder can be given with PIP_FIND_LINKS).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS=
ARG VCOT_GIT_SHA=
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/vcot \
    PATH=/opt/vcot/bin:$PATH \
    HOME=/home/vcot \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    TMPDIR=/tmp \
    VCOT_GIT_SHA=${VCOT_GIT_SHA}
RUN python3 -m venv /opt/vcot \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/vcot --shell /usr/sbin/nologin vcot \
 && mkdir -p /cache && chown vcot:vcot /cache
WORKDIR /src
COPY pyproject.toml README.md ./
# The CPU torch first (an unpinned torch would pull the CUDA build), then every dependency of the
# distill, train (tokenize shares its processor code) and k8s extras, read from pyproject.toml.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
 && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [d for e in ('distill', 'train', 'k8s') for d in p['optional-dependencies'][e]]))" \
    > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY vcot ./vcot
COPY jobs ./jobs
RUN pip install --no-deps . && rm -rf /src/build
WORKDIR /home/vcot
USER 10001:10001
HEALTHCHECK NONE
# No default stage: each Job names its console script (vcot-convert, vcot-distill, vcot-tokenize).
CMD ["vcot-convert", "--help"]

# ---------------------------------------------------------------------------------------------------
FROM ${GPU_BASE} AS gpu
ARG TORCH_VERSION=2.13.0
ARG VCOT_GIT_SHA=
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/vcot \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    TRITON_CACHE_DIR=/cache/triton \
    TMPDIR=/tmp \
    VCOT_GIT_SHA=${VCOT_GIT_SHA}
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/vcot --shell /usr/sbin/nologin vcot \
 && mkdir -p /cache && chown vcot:vcot /cache
WORKDIR /src
COPY pyproject.toml README.md ./
# The base image's CUDA torch stays when it is the pinned version (else PyPI's default Linux wheel,
# a CUDA build, replaces it); the train extra's other pins are installed beside it.
RUN python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '${TORCH_VERSION}')" \
    || pip install "torch==${TORCH_VERSION}"
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(d for d in p['dependencies'] + p['optional-dependencies']['train'] if not d.startswith('torch')))" \
    > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY vcot ./vcot
COPY jobs ./jobs
RUN pip install --no-deps . && rm -rf /src/build
WORKDIR /home/vcot
USER 10001:10001
HEALTHCHECK NONE
CMD ["vcot-train", "--help"]
