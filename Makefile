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

# With a CUDA toolkit present the CUDA kernels are compiled, or the build fails (FORCE_CUDA):
# CI has nvcc but no GPU, and must still prove that csrc/cuda compiles. They are compiled
# for setup.py's default architectures (what users get; TORCH_CUDA_ARCH_LIST narrows it).
# torch's build helper needs CUDA_HOME to find libcudart.
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME ?= /usr/local/cuda
export FORCE_CUDA ?= 1
endif

.PHONY: setup build test test-fast lint format check-install gpu-static gpu-check demo bench test-gpu bench-gpu clean

$(VENV)/.deps: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION) -r requirements-dev.txt
	touch $@

setup: $(VENV)/.deps

# Compiles csrc/ against the installed torch (from scratch each time: pip builds an
# editable install in a fresh temporary directory).
build: $(VENV)/.deps
	$(PY) -m pip install -q --no-build-isolation -e .

test: build
	$(PY) -m pytest python_tests -q

# Lint and format checks (CI): ruff with pyproject.toml's settings, clang-format with
# .clang-format. `make format` applies both formatters.
CXX_SOURCES = $(shell find csrc python_tests/cuda_emulation -name '*.h' -o -name '*.cuh' -o -name '*.cpp' -o -name '*.cu')
lint: $(VENV)/.deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run -Werror $(CXX_SOURCES)

format: $(VENV)/.deps
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i $(CXX_SOURCES)

# Installs mtut as a new user would (sdist -> fresh venv with another torch -> wheel ->
# smoke test; pip's build isolation fails fast; a mismatched _C; the CMake library).
# (Not `build` as a prerequisite: pip builds an editable install in a fresh temporary
# directory, i.e. from scratch, every time; a library built by `make test` is reused.)
check-install: $(VENV)/.deps
	@ls mtut_ops/_C*.so > /dev/null 2>&1 || $(MAKE) build
	bash .ci/check_install.sh

# What a CPU machine can show about the GPU code (CI): the CUDA kernels' machine code for
# every architecture built, with no spills (tools/cuda_static.py; the GEMMs themselves are
# cuBLAS's), and the Triton kernels compiled for sm_80 and sm_90 (tools/triton_static.py).
gpu-static: $(VENV)/.deps
	@ls mtut_ops/_C*.so > /dev/null 2>&1 || $(MAKE) build
	@if [ "$$FORCE_CUDA" = 1 ]; then $(PY) tools/cuda_static.py mtut_ops/_C*.so; \
	 else echo "gpu-static: no CUDA toolkit here: the CUDA kernels are not checked"; fi
	$(PY) tools/triton_static.py -j $(MAX_JOBS)

# On a machine with a GPU, first contact (tools/gpu_check.sh, about 5 minutes on an H100): the
# torch-only calibration, the build for its arch, ours per kernel beside bench/gpu_model.py;
# bench/results/gpu-check-*/. The machine's own python (GPU_PYTHON), no venv, no downloads.
gpu-check:
	GPU_PYTHON=$(GPU_PYTHON) bash tools/gpu_check.sh

# Where no GPU is visible the demo trains on the CPU and needs no CUDA kernels: it builds
# the CPU kernels only (~3 minutes on 2 cores instead of ~8 for six GPU architectures), which
# keeps `make demo` from a fresh clone within 15 minutes. make test builds everything again.
HAS_GPU := $(shell nvidia-smi -L > /dev/null 2>&1 && echo 1)
demo: $(VENV)/.deps
ifeq ($(HAS_GPU),1)
	$(MAKE) build
else
	FORCE_CUDA=0 MTUT_CPU_ONLY=1 $(PY) -m pip install -q --no-build-isolation -e .
endif
	$(PY) -m examples.demo

bench: build
	$(PY) -m bench.bench_ssa --device cpu

# On a GPU machine whose python already has torch, pytest and hypothesis (no venv, no
# downloads): builds the CUDA kernels for the visible GPU and runs the whole suite, which
# then tests every op on CUDA too. bench-gpu writes bench/results/cuda-<date>.*
GPU_PYTHON ?= python3
GPU_ARCH = $(shell $(GPU_PYTHON) -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
test-gpu:
	FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$(GPU_ARCH)" MAX_JOBS=$$(nproc) $(GPU_PYTHON) setup.py build_ext --inplace
	$(GPU_PYTHON) -m pytest python_tests -q

bench-gpu:
	$(GPU_PYTHON) -m bench.bench_ssa --device cuda --dtype float32 bfloat16
	$(GPU_PYTHON) -m bench.bench_train_step --device cuda

clean:
	rm -rf build dist *.egg-info mtut_ops/_C*.so mtut_ops/_build_info.py
