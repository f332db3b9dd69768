#!/usr/bin/env bash
# make gpu-check: everything a machine with a GPU can show, in one command, from a clean
# tree, with the machine's own python (torch, triton, pytest, hypothesis; no downloads):
#   1. build the extension for the visible GPU (its arch only: the fastest build);
#   2. the GPU-only tests, and every op test on the cuda and triton backends (CUDA tensors),
#      with a reduced hypothesis budget;
#   3. the benchmarks at the named shapes in float32 and bfloat16;
# and the results under bench/results/ (named by device and date) plus a log of it all.
# Budget: under 8 minutes on an H200 (each step prints its wall time).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_PYTHON:-python3}
OUT=bench/results  # where bench.bench_ssa writes its results too
mkdir -p "$OUT"
stamp=$($PY -c "import torch, datetime; n = torch.cuda.get_device_name().lower().replace(' ', '-'); print(f'{n}-{datetime.date.today()}')")
log="$OUT/gpu-check-$stamp.log"
status=0
step() {  # step NAME COMMAND...: run, time, keep going, remember a failure
  local name=$1; shift
  local t0=$SECONDS
  echo "=== $name: $*" | tee -a "$log"
  "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc, $((SECONDS - t0)) s" | tee -a "$log"
  [ "$rc" -eq 0 ] || status=1
}
{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  $PY -c "import triton; print('triton', triton.__version__)" || echo "triton: not importable"
  nvcc --version | tail -1 || true
} | tee "$log"
arch=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
step build env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" $PY setup.py build_ext --inplace
# No -x: one run on a lent GPU should report every failure. The interpreter runs of
# test_triton.py are CPU evidence (CI gives it, with its triton); here the kernels run compiled.
step tests env MTUT_HYPOTHESIS_EXAMPLES=10 $PY -m pytest -q -p no:cacheprovider \
  --deselect python_tests/test_triton.py::test_kernels_under_the_interpreter \
  --deselect python_tests/test_triton.py::test_op_contract_under_the_interpreter \
  python_tests/test_cuda.py python_tests/test_accuracy.py python_tests/test_edge_cases.py \
  python_tests/test_op_contract.py python_tests/test_op_registration.py python_tests/test_errors.py \
  python_tests/test_memory.py python_tests/test_triton.py python_tests/test_triton_kernels.py
step bench $PY -m bench.bench_ssa --device cuda --dtype float32 bfloat16 --tag "cuda-$stamp"
echo "=== gpu-check: $([ $status -eq 0 ] && echo passed || echo FAILED); log: $log" | tee -a "$log"
exit $status
