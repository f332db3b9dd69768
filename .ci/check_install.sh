#!/usr/bin/env bash
# Installs mtut the ways a new user would, outside the repo's make path (run by .ci/run
# after `make test`, or `make check-install`; needs the .venv that `make build` made):
#   1. python -m build --sdist (isolated: the sdist needs no torch)
#   2. a fresh venv with another torch (CHECK_TORCH, the CPU build of 2.13.0 by default)
#   3. pip install . / pip install <sdist> there (build isolation): must stop within
#      FAIL_FAST_S seconds, saying --no-build-isolation, without fetching torch
#   4. pip install --no-build-isolation <sdist>: builds against that torch; smoke test
#      from outside the repo (the wheel's metadata pins that torch)
#   5. the checkout's _C (built by make against .venv's torch) imported with that torch:
#      one clear warning, reference backend only
#   6. CMake: configure and build the CPU library against .venv's torch (a CUDA build of
#      torch), load it with torch.ops.load_library and check the ops
# Prints the seconds each step took.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PY:-$REPO/.venv/bin/python}
CHECK_TORCH=${CHECK_TORCH:-2.13.0}
FAIL_FAST_S=${FAIL_FAST_S:-60}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mtut-install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# A user's environment: none of the Makefile's build switches (FORCE_CUDA would demand
# CUDA kernels from a CPU torch).
unset FORCE_CUDA MTUT_CPU_ONLY TORCH_CUDA_ARCH_LIST
export MAX_JOBS=${MAX_JOBS:-2}
# torch's CMake config (a CUDA build of torch) looks for the CUDA toolkit there
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi

t0=$SECONDS
step() { echo; echo "=== [$((SECONDS - t0)) s] $*"; }
took() { echo "--- $1: $(($2)) s"; }

step "1. sdist (python -m build --sdist, isolated)"
s=$SECONDS
"$PY" -m build --sdist --outdir "$WORK/dist" . > "$WORK/sdist.log" 2>&1 || { cat "$WORK/sdist.log"; exit 1; }
SDIST=$(ls "$WORK"/dist/mtut-*.tar.gz)
took "sdist" "SECONDS - s"
tar tzf "$SDIST" | sed 's|^[^/]*/||' > "$WORK/sdist.txt"
missing=0
for f in $(git ls-files csrc CMakeLists.txt); do
  grep -qxF "$f" "$WORK/sdist.txt" || { echo "missing from the sdist: $f"; missing=1; }
done
[ "$missing" = 0 ] || exit 1
echo "the sdist holds every file of csrc/ and CMakeLists.txt ($(wc -l < "$WORK/sdist.txt") entries, $(du -k "$SDIST" | cut -f1) KiB)"

step "2. fresh venv with torch $CHECK_TORCH"
s=$SECONDS
python3 -m venv "$WORK/venv"
V="$WORK/venv/bin"
"$V/pip" install -q torch=="$CHECK_TORCH" setuptools wheel ninja > "$WORK/venv.log" 2>&1 || { cat "$WORK/venv.log"; exit 1; }
"$V/python" -c "import torch; print('torch', torch.__version__)" 2>/dev/null
took "venv + torch" "SECONDS - s"

step "3. pip install with build isolation: must fail fast"
for target in "$REPO" "$SDIST"; do
  s=$SECONDS
  if "$V/pip" install "$target" > "$WORK/isolated.log" 2>&1; then
    cat "$WORK/isolated.log"; echo "FAILED: pip install $target (isolated) succeeded: it cannot have built against torch $CHECK_TORCH"; exit 1
  fi
  secs=$((SECONDS - s))
  took "pip install $(basename "$target") (isolated, fails)" "$secs"
  grep -q -- "--no-build-isolation" "$WORK/isolated.log" || { cat "$WORK/isolated.log"; echo "FAILED: no --no-build-isolation hint"; exit 1; }
  grep -q "torch $CHECK_TORCH" "$WORK/isolated.log" || { cat "$WORK/isolated.log"; echo "FAILED: the message does not name the installed torch"; exit 1; }
  if grep -Ei "(collecting|downloading) torch" "$WORK/isolated.log"; then echo "FAILED: pip fetched torch"; exit 1; fi
  [ "$secs" -le "$FAIL_FAST_S" ] || { echo "FAILED: took $secs s (> $FAIL_FAST_S)"; exit 1; }
done
grep -A3 "mtut: the extension" "$WORK/isolated.log"

step "4. pip install --no-build-isolation <sdist> against torch $CHECK_TORCH, then the smoke test"
s=$SECONDS
"$V/pip" install --no-build-isolation "$SDIST" > "$WORK/install.log" 2>&1 || { tail -50 "$WORK/install.log"; exit 1; }
took "build + install from the sdist" "SECONDS - s"
WHEEL=$(grep -o "filename=mtut-[^ ]*\.whl" "$WORK/install.log" | head -1 | cut -d= -f2 || true)
echo "pip built $WHEEL"
case "$WHEEL" in *-cp310-abi3-*) ;; *) echo "FAILED: the wheel is not tagged cp310-abi3"; exit 1;; esac
(cd "$WORK" && "$V/python" "$REPO/.ci/smoke_install.py" installed 2>&1 | grep -v "NumPy\|_conversion_method_template")

step "5. the checkout's _C (built against .venv's torch) imported with torch $CHECK_TORCH"
(cd "$WORK" && PYTHONPATH="$REPO" "$V/python" "$REPO/.ci/smoke_install.py" mismatch 2>&1 | grep -v "NumPy\|_conversion_method_template")

step "6. CMake: the CPU library against .venv's torch, loaded with torch.ops.load_library"
s=$SECONDS
PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
cmake -S "$REPO" -B "$WORK/cmake" -DCMAKE_PREFIX_PATH="$PREFIX" > "$WORK/cmake.log" 2>&1 || { cat "$WORK/cmake.log"; exit 1; }
cmake --build "$WORK/cmake" -j "$MAX_JOBS" >> "$WORK/cmake.log" 2>&1 || { tail -50 "$WORK/cmake.log"; exit 1; }
took "cmake configure + build" "SECONDS - s"
"$PY" .ci/smoke_install.py cmake "$WORK/cmake/libmtut_ops.so" mtut_ops/reference.py

step "done"
echo "install checks (sdist, fail-fast, wheel from the sdist, mismatch, cmake) took $((SECONDS - t0)) s"
echo "install-checks: 6 passed, 0 failed"
