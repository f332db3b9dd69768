#!/usr/bin/env bash
# make gpu-check: first contact with a GPU, about 5 minutes on an H100, with the machine's own
# python (torch, triton; no venv, no downloads). In order, so that a failed build still leaves
# the torch-only data:
#   1. bench.calibrate torch: the GEMM and copy ceilings, host cost per op, torch.bmm at our
#      product shapes, the eager expert code at Mixed_5c/4f/3c in bf16 and fp32 with
#      per-kernel profiler tables, each beside bench/gpu_model.py's predicted entry;
#   2. build the extension for the visible GPU's arch only (the fastest build);
#   3. bench.calibrate mtut: the CUDA backend at the same shapes, per-kernel tables beside the
#      model's kernel rows.
# Everything lands in bench/results/gpu-check-<device>-<date>/ with a log. The test suite on
# the GPU is `make test-gpu` (longer).
#   --dry-run: steps 1 and 3 on tiny CPU shapes (the cpu backend), no build: checks this
#   script and bench/calibrate.py without a GPU (python_tests/test_bench.py runs it).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_PYTHON:-python3}
DRY=
[ "${1:-}" = "--dry-run" ] && DRY=--dry-run
if [ -n "$DRY" ]; then
  stamp="dry-run"
else
  stamp=$($PY -c "import torch, datetime; n = torch.cuda.get_device_name().lower().replace(' ', '-'); print(f'{n}-{datetime.date.today()}')") || exit 1
fi
OUT=${GPU_CHECK_OUT:-bench/results/gpu-check-$stamp}
mkdir -p "$OUT"
log="$OUT/gpu-check.log"
status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, time it, keep going, remember a failure
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "=== $name: $*" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc, $((SECONDS - t0)) s" | tee -a "$log"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}
{
  echo "date: $(date -u +%FT%TZ)"
  [ -n "$DRY" ] || nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  $PY -c "import triton; print('triton', triton.__version__)" || echo "triton: not importable"
} | tee "$log"
step torch 150 env PYTHONUNBUFFERED=1 $PY -m bench.calibrate torch --out "$OUT" $DRY
if [ -z "$DRY" ]; then
  arch=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  step build 240 env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" $PY setup.py build_ext --inplace -q \
    || { echo "=== gpu-check: build FAILED; the torch-only data is in $OUT" | tee -a "$log"; exit 1; }
fi
step mtut 120 env PYTHONUNBUFFERED=1 $PY -m bench.calibrate mtut --out "$OUT" $DRY
echo "=== gpu-check: $([ $status -eq 0 ] && echo passed || echo FAILED); results and log: $OUT" | tee -a "$log"
exit $status
