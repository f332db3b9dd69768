# The two commands of README.md:
#   make demo   set up, generate synthetic NVGesture-format data, train, print results
#   make test   set up and run the test suite
# Each creates its own virtual environment (.venv) and installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.14.1
export MAX_JOBS ?= 2
export TORCH_CUDA_ARCH_LIST ?= 9.0
# torch's build helper needs CUDA_HOME to find libcudart when a CUDA toolkit is present.
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME ?= /usr/local/cuda
endif

.PHONY: setup build test test-fast demo bench clean

$(VENV)/.deps: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION) -r requirements-dev.txt
	touch $@

setup: $(VENV)/.deps

# Compiles csrc/ against the installed torch (ninja rebuilds only what changed).
build: $(VENV)/.deps
	$(PY) -m pip install -q --no-build-isolation -e .

test: build
	$(PY) -m pytest python_tests -q

demo: build
	$(PY) -m examples.demo

bench: build
	$(PY) -m bench.bench_ssa --device cpu

clean:
	rm -rf build *.egg-info mtut_ops/_C*.so
