# vcot developer commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH_VERSION := 2.13.0
# Where a CPU-only machine gets torch when no local wheel is on pip's find-links (never the CUDA build).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
PYTEST_ARGS ?=

.PHONY: help install test test-fast s3-up s3-down s3-env clean

help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first, chosen for this machine: CUDA build only where a GPU is, else the CPU build.
	@if $(PY) -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$(TORCH_VERSION)')" 2>/dev/null; then :; \
	elif command -v nvidia-smi >/dev/null 2>&1 || ls $${PIP_FIND_LINKS:-/nonexistent}/torch-$(TORCH_VERSION)+cpu-* >/dev/null 2>&1; then \
		$(PY) -m pip install -q torch==$(TORCH_VERSION); \
	else \
		$(PY) -m pip install -q torch==$(TORCH_VERSION) --index-url $(TORCH_CPU_INDEX); \
	fi
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install vcot with every extra and the test tools

test: $(STAMP) ## Run the whole test suite (starts the local S3 server if needed, stops it after)
	@started=0; \
	if ! $(PY) -m vcot.local_s3 status >/dev/null 2>&1; then $(PY) -m vcot.local_s3 up >/dev/null && started=1; fi; \
	trap '[ $$started = 1 ] && $(PY) -m vcot.local_s3 down >/dev/null' EXIT; \
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## Run only the fast tests (no integration marker)
	$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

s3-up: $(STAMP) ## Start the local S3 server (MinIO if installed, else SeaweedFS) and print its env
	@$(PY) -m vcot.local_s3 up

s3-down: $(STAMP) ## Stop the local S3 server
	@$(PY) -m vcot.local_s3 down

s3-env: $(STAMP) ## Print the environment for the local S3 server
	@$(PY) -m vcot.local_s3 env

clean: ## Remove the virtualenv, caches and local S3 data
	-@$(PY) -m vcot.local_s3 down >/dev/null 2>&1
	rm -rf $(VENV) .local-s3 .pytest_cache .hypothesis build *.egg-info

# --- evaluate ---------------------------------------------------------------------------------------
.PHONY: bench-evaluate
bench-evaluate: $(STAMP) ## Benchmark evaluation on the tiny model: batching, repetition penalties (docs/bench-evaluate.md)
	PYTHONPATH=. $(PY) bench/evaluate_bench.py
