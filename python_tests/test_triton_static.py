"""The static check of the triton kernels (tools/triton_static.py) bites: on purpose-built
kernels it finds a dot that is not on tensor cores (the operands upcast to float32 IEEE),
register spills, shared memory beyond the device, tensor cores in an exact-fp32 path; on two
real kernels it passes. Compiles for sm_80/sm_90 without a GPU (triton's AOT path, its
bundled ptxas and cuobjdump): a few seconds a kernel.

The check itself, over every kernel x config x dtype x arch (minutes), is
``python tools/triton_static.py -j 2`` (make gpu-static).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    pytest.skip("compiles for GPUs: not under the triton interpreter", allow_module_level=True)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import triton_static as S  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def fresh_cache():
    """Compile for real (ptxas must run to report registers and spills), not from triton's cache."""
    before = triton.knobs.cache.dir
    with tempfile.TemporaryDirectory() as cache:
        triton.knobs.cache.dir = cache
        yield
    triton.knobs.cache.dir = before


@triton.jit
def _gemm(
    a, b, c, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr
):
    """c[BM, BN] = a[BM, K] b[K, BN]: one tile, a pipelined loop over K."""
    offs_m = tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        x = tl.load(a + offs_m[:, None] * K + offs_k[None, :])
        y = tl.load(b + offs_k[:, None] * BN + offs_n[None, :])
        if UPCAST:  # the mutation: operands widened to float32, an IEEE dot
            x = x.to(tl.float32)
            y = y.to(tl.float32)
        acc = tl.dot(x, y, acc, input_precision=PRECISION)
    tl.store(c + offs_m[:, None] * BN + offs_n[None, :], acc)


def _gemm_result(dtype, arch, BM=64, BN=64, BK=32, upcast=False, precision="ieee", warps=4, stages=3, mode=None):
    signature = dict(
        a="*" + dtype,
        b="*" + dtype,
        c="*fp32",
        K="i32",
        BM="constexpr",
        BN="constexpr",
        BK="constexpr",
        UPCAST="constexpr",
        PRECISION="constexpr",
    )
    constants = dict(BM=BM, BN=BN, BK=BK, UPCAST=upcast, PRECISION=precision)
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(4)}
    job = S.Job("gemm", mode or dtype, arch, "-", 0, dict(kwargs={}, num_warps=warps, num_stages=stages))
    res = S.compile_and_read(_gemm, signature, constants, attrs, arch, warps, stages, S.Result(job))
    return S.check(res, job.mode, True, arch)


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_a_tensor_core_gemm_passes(arch, dtype):
    r = _gemm_result(dtype, arch)
    assert r.ok, r.problems
    # one tl.dot; sm_80's pipeliner may split it along K (32 = 2 x 16) into several tt.dot ops
    assert r.dots >= 1 and r.mma_dots == r.dots and r.cp_async
    assert ("wgmma." if arch == 90 else "mma.sync.") + S.TC_TYPE[dtype] in r.tensor_core


@pytest.mark.parametrize("arch", [80, 90])
def test_upcast_operands_are_caught(arch):
    """The mutation of the brief: the dot's operands upcast to float32 IEEE: no tensor core."""
    r = _gemm_result("bf16", arch, upcast=True)
    assert not r.ok
    assert any(p.endswith("dots not on tensor cores (FMA)") for p in r.problems) and r.mma_dots == 0
    assert any("no tensor-core instruction on bf16 operands" in p for p in r.problems)
    assert "no HMMA/HGMMA in the SASS" in r.problems


def test_tf32_needs_its_precision_and_fp32_must_stay_ieee():
    assert _gemm_result("fp32", 90, precision="tf32", mode="tf32").ok
    ieee_as_tf32 = _gemm_result("fp32", 90, precision="ieee", mode="tf32")
    assert not ieee_as_tf32.ok and ieee_as_tf32.mma_dots == 0
    assert any(p.endswith("dots not on tensor cores (FMA)") for p in ieee_as_tf32.problems)
    tf32_as_exact = _gemm_result("fp32", 80, precision="tf32", mode="fp32")
    assert not tf32_as_exact.ok and any("exact fp32 path uses tensor cores" in p for p in tf32_as_exact.problems)


def test_spills_are_caught():
    """A 128 x 128 float32 FMA tile on one warp: 512 accumulators a thread, far past 255 registers."""
    r = _gemm_result("fp32", 80, BM=128, BN=128, BK=16, warps=1, stages=1, mode="fp32")
    assert not r.ok
    assert r.spill_stores > 0 and r.local_sass > 0
    assert any(p.startswith("spills:") for p in r.problems)


def test_shared_memory_beyond_the_device_is_caught():
    """256 x 256 x 128 bfloat16 tiles, 4 stages: 512 KiB of operands."""
    r = _gemm_result("bf16", 90, BM=256, BN=256, BK=128, warps=8, stages=4)
    assert r.shared > S.SHARED_LIMIT[90]
    assert any(p.startswith("shared memory") for p in r.problems)


@pytest.mark.parametrize("kernel, mode, arch", [("direct_backward", "fp16", 80), ("gram_apply", "bf16", 90)])
def test_real_kernels_pass(kernel, mode, arch):
    """Two of the real kernels, in their first config: every dot on tensor cores, no spills."""
    fn, launchers, _, _ = S.kernels()[kernel]
    shape, M = S.SPECIALIZATIONS[kernel][0]
    r = S.compile_job(S.Job(kernel, mode, arch, shape, M, S.configs_of(kernel, mode, launchers, True)[0]))
    assert r.ok, r.problems
    assert r.dots >= 1 and r.mma_dots == r.dots


def test_the_sample_covers_every_kernel_config_dtype_and_arch():
    """The default job list compiles every config of every kind (tc16, tf32, ieee, fp64) of
    every kernel for both archs at its home specialization."""
    jobs = S.jobs((80, 90))
    seen = {
        (
            j.kernel,
            j.mode,
            j.arch,
            tuple(sorted(j.config["kwargs"].items())),
            j.config["num_warps"],
            j.config["num_stages"],
        )
        for j in jobs
        if (j.shape, j.M) == S.SPECIALIZATIONS[j.kernel][0]
    }
    for name, (_fn, launchers, _, _) in S.kernels().items():
        for mode in S.MODES:
            if mode == "fp16" and name not in S.FP16_OWN_CODE:
                continue
            for cfg in S.configs_of(name, mode, launchers, False):
                for arch in (80, 90):
                    key = (name, mode, arch, tuple(sorted(cfg["kwargs"].items())), cfg["num_warps"], cfg["num_stages"])
                    assert key in seen, key
