# The two commands of README.md:
#   make demo   set up, generate synthetic NVGesture-format data, train, print results
#   make test   set up, build for this machine, run the fast tier of the tests
# Each creates its own virtual environment (.venv) and installs what it needs.
# Test tiers (pytest marker `deep`, pyproject.toml):
#   make test-fast        the fast tier only, on what is built (no setup, no build)
#   make test-deep        the deep tier: hypothesis at full budget, DDP, the demo end to end,
#                         packaging subprocesses, long emulations, every op test on the
#                         interpreted triton backend (make test-triton-interp) and on the
#                         emulated CUDA kernels (make test-cuda-emulated)
#   make gpu-static       the CUDA kernels compiled for every architecture, checked (CI)
# The shared op tests (fixture backend_device, python_tests/conftest.py) run on the interpreted
# triton backend and on the CUDA kernels emulated on the CPU in pytest runs of their own, which
# set MTUT_TEST_BACKEND (test-fast-triton-kernels, test-fast-cuda-emulated and their deep runs).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.14.1
export MAX_JOBS ?= 2

# `make build` (what users get): with a CUDA toolkit present the CUDA kernels are compiled,
# or the build fails (FORCE_CUDA), for setup.py's default architectures (TORCH_CUDA_ARCH_LIST
# narrows it). torch's build helper needs CUDA_HOME to find libcudart.
HAS_NVCC := $(if $(wildcard /usr/local/cuda/bin/nvcc),1)
ifeq ($(HAS_NVCC),1)
export CUDA_HOME ?= /usr/local/cuda
endif
HAS_GPU := $(shell nvidia-smi -L > /dev/null 2>&1 && echo 1)

# `make test` and `make demo` build what this machine runs: no GPU visible, the CPU kernels
# only (~3 minutes on 2 cores instead of ~8 for six GPU architectures; the six are `make
# gpu-static`'s business); a GPU visible, the CUDA kernels for its architecture only
# (required where /usr/local/cuda has nvcc, else wherever setup.py finds a toolkit).
ifeq ($(HAS_GPU)$(HAS_NVCC),11)
HERE_BUILD = FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$$($(PY) -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")"
else ifeq ($(HAS_GPU),1)
HERE_BUILD = TORCH_CUDA_ARCH_LIST="$$($(PY) -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")"
else
HERE_BUILD = FORCE_CUDA=0 MTUT_CPU_ONLY=1
endif

# One pytest run of a tier. Exit 5 (no test selected) fails too, saying so: each run here
# selects tests on every machine, so an empty one means a marker or path went stale.
define pytest_tier
	@echo "=== $(1)"
	@$(2) $(PY) -m pytest -q -p no:cacheprovider --durations=25 $(3); rc=$$?; \
	 if [ $$rc -eq 5 ]; then echo "make: '$(1)' selected no tests"; fi; exit $$rc
endef

.PHONY: setup build build-here built test test-fast test-fast-main test-fast-triton-registration \
	test-fast-triton-kernels test-fast-cuda-emulated test-deep test-deep-main test-hypothesis \
	test-triton-interp test-cuda-emulated \
	lint format check-install gpu-static gpu-check demo bench test-gpu bench-gpu clean

$(VENV)/.deps: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION) -r requirements-dev.txt
	touch $@

setup: $(VENV)/.deps

# Compiles csrc/ against the installed torch (from scratch each time: pip builds an
# editable install in a fresh temporary directory).
build: $(VENV)/.deps
	$(if $(HAS_NVCC),FORCE_CUDA=1) $(PY) -m pip install -q --no-build-isolation -e .

# The build this machine runs (HERE_BUILD above).
build-here: $(VENV)/.deps
	$(HERE_BUILD) $(PY) -m pip install -q --no-build-isolation -e .

# Whatever is built, or a build for this machine.
built: $(VENV)/.deps
	@ls mtut_ops/_C*.so > /dev/null 2>&1 || $(MAKE) build-here

# README's test command: setup, the build for this machine, the fast tier (under 4 minutes
# of tests on 2 cores): every op on every backend that runs here against the fp64
# reference, the op contract, the errors, the examples' unit tests.
test: build-here
	$(MAKE) -k test-fast

# The fast tier: the main run; the triton ops' GPU registration traced without a GPU
# (MTUT_REGISTER_TRITON=1); the triton kernels and the per-op reference checks on the
# triton backend, interpreted (TRITON_INTERPRET=1, which must be set before mtut_ops is
# imported; conftest.py); the edge cases, op contract and op registration tests on the CUDA
# kernels emulated on the CPU (MTUT_TEST_BACKEND=cuda-emulated: python_tests/cuda_emulation
# routes torch.ops.mtut's CPU kernels to them in that run; conftest.py marks the slow ones
# deep). With a GPU the main run covers all three. Each is its own target: `make -k test-fast`
# runs them all even when one fails.
test-fast: test-fast-main test-fast-triton-registration test-fast-triton-kernels test-fast-cuda-emulated

test-fast-main: built
	$(call pytest_tier,fast tier,,-m "not deep" python_tests)

test-fast-triton-registration: built
ifneq ($(HAS_GPU),1)
	$(call pytest_tier,fast tier: triton registration,MTUT_REGISTER_TRITON=1,-m "not deep" python_tests/test_triton.py -k test_op_)
endif

test-fast-triton-kernels: built
ifneq ($(HAS_GPU),1)
	$(call pytest_tier,fast tier: triton interpreted,TRITON_INTERPRET=1 MTUT_TEST_BACKEND=triton,-m "not deep" python_tests/test_triton_kernels.py python_tests/test_accuracy.py)
endif

EMULATED_FAST = python_tests/test_edge_cases.py python_tests/test_op_contract.py python_tests/test_op_registration.py
test-fast-cuda-emulated: built
ifneq ($(HAS_GPU),1)
	$(call pytest_tier,fast tier: cuda emulated,MTUT_TEST_BACKEND=cuda-emulated,-m "not deep" $(EMULATED_FAST))
endif

# The deep tier: what the fast one leaves out (seconds to minutes a test).
test-deep: test-deep-main test-hypothesis test-triton-interp test-cuda-emulated

test-deep-main: built
	$(call pytest_tier,deep tier,,-m deep python_tests)

# The property tests at the full budget (the fast tier runs them at 30 examples).
test-hypothesis: built
	$(call pytest_tier,hypothesis at full budget,MTUT_HYPOTHESIS_PROFILE=deep,-m hypothesis python_tests)

# The other backend_device tests (edge cases, opcheck, gradcheck, compile, the op contract,
# the property tests at 10 examples) on the triton backend, interpreted on the CPU
# (conftest marks them deep). With a GPU the deep run has them on triton compiled.
test-triton-interp: built
ifneq ($(HAS_GPU),1)
	$(call pytest_tier,triton interpreted: every op test,TRITON_INTERPRET=1 MTUT_TEST_BACKEND=triton MTUT_HYPOTHESIS_EXAMPLES=10,-m "interpreted and deep" python_tests)
endif

# The other backend_device tests (the accuracy against the reference, gradcheck, compile, the
# property tests at 10 examples) on the CUDA kernels emulated on the CPU (conftest marks them
# deep). With a GPU the deep run has them on the CUDA kernels themselves.
test-cuda-emulated: built
ifneq ($(HAS_GPU),1)
	$(call pytest_tier,cuda emulated: every op test,MTUT_TEST_BACKEND=cuda-emulated MTUT_HYPOTHESIS_EXAMPLES=10,-m "emulated and deep" python_tests)
endif

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
check-install: built
	bash .ci/check_install.sh

# What a CPU machine can show about the GPU code (CI): the CUDA kernels compiled for
# setup.py's default architectures (into build/gpu-static, apart from the in-place library
# that make test built; ninja rebuilds only what changed there), each one's machine code
# with no spills (tools/cuda_static.py; the GEMMs themselves are cuBLAS's), and that
# library's CUDA kernels registered and importable without a GPU
# (test_op_registration.py::test_cuda_kernels_are_compiled_in, on a copy of the package
# holding it); then the Triton kernels compiled for sm_80 and sm_90 (tools/triton_static.py).
GPU_STATIC := build/gpu-static
gpu-static: $(VENV)/.deps
ifeq ($(HAS_NVCC),1)
	FORCE_CUDA=1 $(PY) setup.py -q build_ext --build-lib $(GPU_STATIC)/lib --build-temp $(GPU_STATIC)/temp
	$(PY) tools/cuda_static.py $(GPU_STATIC)/lib/mtut_ops/_C*.so
	rm -rf $(GPU_STATIC)/pkg && mkdir -p $(GPU_STATIC)/pkg && cp -r mtut_ops $(GPU_STATIC)/pkg/
	rm -f $(GPU_STATIC)/pkg/mtut_ops/_C*.so && cp $(GPU_STATIC)/lib/mtut_ops/* $(GPU_STATIC)/pkg/mtut_ops/
	cd $(GPU_STATIC)/pkg && $(CURDIR)/$(PY) -c "import sys, mtut_ops; sys.path.append('$(CURDIR)'); \
	  assert mtut_ops.__file__.startswith('$(CURDIR)/$(GPU_STATIC)/pkg/'), mtut_ops.__file__; \
	  from python_tests.test_op_registration import test_cuda_kernels_are_compiled_in as t; t(); \
	  print('gpu-static: the CUDA library imports and registers its CUDA kernels')"
else
	@echo "gpu-static: no CUDA toolkit here: the CUDA kernels are not checked"
endif
	$(PY) tools/triton_static.py -j $(MAX_JOBS)

# On a machine with a GPU, first contact (tools/gpu_check.sh, about 5 minutes on an H100): the
# torch-only calibration, the build for its arch, ours per kernel beside bench/gpu_model.py;
# bench/results/gpu-check-*/. The machine's own python (GPU_PYTHON), no venv, no downloads.
gpu-check:
	GPU_PYTHON=$(GPU_PYTHON) bash tools/gpu_check.sh

# The demo builds what this machine runs (HERE_BUILD: the CPU kernels only where no GPU is
# visible), which keeps `make demo` from a fresh clone within 15 minutes.
demo: build-here
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
	$(GPU_PYTHON) -m pytest python_tests -q --durations=25

bench-gpu:
	$(GPU_PYTHON) -m bench.bench_ssa --device cuda --dtype float32 bfloat16
	$(GPU_PYTHON) -m bench.bench_train_step --device cuda

clean:
	rm -rf build dist *.egg-info mtut_ops/_C*.so mtut_ops/_build_info.py
