"""A performance model of the SSA loss on Hopper GPUs (H100 SXM, H200): PREDICTIONS, not
measurements. No GPU has run this project's code yet; when one does, bench_ssa's CUDA
results replace these numbers (and show which assumptions below were wrong).

What it predicts, per GPU, I3D shape (M = 2 and 3) and precision scenario
("fp32": float32 inputs, TF32 off, torch's default; "tf32": float32 inputs with
torch.backends.cuda.matmul.allow_tf32 on; "bf16": bfloat16 inputs):
  the forward and the forward + backward time of
    mmpose-eager / mmpose-compile    the published mmpose code (d x d matrices)
    expert-eager / expert-compile    the expert Gram code (one bmm over stacked modalities)
    mtut-cuda-{direct,gram,auto}     the CUDA backend as the code is now (csrc/cuda: cuBLAS for
                                     every product, one per block; gram blocks kept for the
                                     backward; the backward's products over M - 1 rows a
                                     sample for equal channel counts)
    mtut-triton-{direct,gram,auto}   the Triton backend as the code is now (mtut_ops/triton: the
                                     inputs staged once per pass, normalized and rounded to the
                                     dot's operand type, padded to 16; every GEMM a plain tl.dot,
                                     on tensor cores for bf16 and TF32; per-kind autotune configs)
    redesign-cuda-{direct,gram,auto} a further design (not implemented): ONE GEMM over the stacked
                                     modalities, fewer launches (the backward over rows with a
                                     non-zero weight, as the CUDA backend for equal channels)
  which mtut backend/algo is fastest, and whether algo="auto" picks it.

How: every implementation is a list of kernels (Op), each with its FLOPs, HBM bytes, the
core it runs on and an efficiency; a kernel takes
    max(FLOPs / (peak x efficiency x shape factors), HBM bytes / (bandwidth x EFF_HBM),
        L2 bytes / L2_TBS, MIN_KERNEL_S)
and the GPU time is their sum (one stream). The host issues the kernels: its time is the
per-op overhead of the calling layer (eager PyTorch, inductor's wrapper, C++ ops, Triton's
Python launcher) and the wall time is max(GPU, host), except where the code synchronizes
the host with the GPU (the Triton backend copies small host tensors to the GPU in every
call, which waits for the stream): there it is GPU + host.
  * The eager baselines are not modelled by hand: they run on meta tensors of the real
    shape under a dispatch mode that records every ATen op (its FLOPs, bytes read and
    written, and whether it is a view), so every launch of the real code is counted.
  * torch.compile'd baselines: the eager GEMMs (inductor calls cuBLAS for bmm by default),
    the pointwise/reduction work fused into the few kernels listed in compiled_* below.
  * mtut kernels: counted from the sources (grids, tiles, loops; comments name the lines).

What it says about the code's choices for CUDA tensors (verdict(); the table's section
"Default backend and auto rule"): the default backend, "cuda" (tried before "triton" in
mtut_ops/backends.py), is predicted faster than the Triton backend at every shape, GPU and
scenario, and algo="auto" (resolve_auto: each backend's rule for the dtype, direct while
d (C + 2P) <= alpha C^2 or d <= d_direct, its constants from this model's crossovers,
``--crossovers``) picks each backend's faster algo at the named shapes. Unchanged from the model of the previous Triton code
(FMA dots for bf16, 64-wide tiles): the tensor-core Triton kernels are predicted 2.4-2.8x
faster than before at Mixed_4f/Mixed_3c bf16 (fwd + bwd), still 2.7-2.9x slower than the CUDA backend,
whose products are cuBLAS at a higher assumed efficiency, whose gram blocks are kept for
the backward (Triton recomputes them: coef) and whose normalization backward is one fused
kernel (Triton's is 9 torch passes over float32 per modality, the largest part of its
bf16 backward at these shapes). The sensitivity section varies the Triton efficiency.

Run: python -m bench.gpu_model  -> bench/results/gpu-model-<date>.{md,csv}
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import functools
import itertools
import math
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.costs import Problem, typical_active

RESULTS = Path(__file__).resolve().parent / "results"

# ------------------------------------------------------------------ the machines


@dataclass(frozen=True)
class GPU:
    name: str
    sms: int
    peak: dict  # dense TFLOP/s by core precision
    hbm_tbs: float  # TB/s
    mem_gb: float
    l2_mb: float


# Dense peaks (no 2:4 sparsity) of the SXM parts, boost clock 1.83 GHz for the tensor
# cores: bf16/fp16 989.4, TF32 494.7, FP64 tensor 66.9, FP32 (SIMT FMA) 66.9 TFLOP/s
# (NVIDIA H100 datasheet / Hopper whitepaper, tabulated at glennklockwood.com/garden/
# processors/h100). H200 = the same chip and clocks with 141 GB HBM3e at 4.8 TB/s
# (NVIDIA H200 datasheet; the workplace's device notes H200.md).
_HOPPER_PEAK = {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9, "fp64": 66.9}
GPUS = {
    "H100-SXM": GPU("H100 SXM5 80GB", 132, _HOPPER_PEAK, 3.35, 80, 50),
    "H200": GPU("H200 SXM 141GB", 132, _HOPPER_PEAK, 4.8, 141, 60),
}

# ------------------------------------------------------------------ efficiencies (assumptions)

#: fraction of a core's dense peak reached in the main loop of a large GEMM, by path.
EFF = {
    # cuBLAS (through at::bmm / baddbmm). bf16: 769-798 TFLOP/s = 78-81% of 989 measured on
    # this workplace's H200 for an 8192^3 bf16 matmul (device notes KINDS.md, 2026-11-04);
    # a public H100 report with CUDA 12.4 shows 519 (github.com/pranjalssh/fast.cu issue 13):
    # 0.78 assumes a current toolkit. TF32: 0.65 (no measurement here; cuBLAS TF32 runs
    # the same kernels at half the MMA rate with twice the operand bytes, so it reaches a
    # lower fraction). FP32 SIMT sgemm: 0.75 (FFMA-bound, ~50 TFLOP/s of 66.9). FP64
    # tensor: 0.85 (HPL reaches 55-59 of 66.9 per GPU, same source as the peaks).
    "cublas": {"bf16": 0.78, "fp16": 0.78, "tf32": 0.65, "fp32": 0.75, "fp64": 0.85},
    # Triton tl.dot on tensor cores (mma.sync on sm_80, wgmma on sm_90: tools/triton_static.py
    # finds them in every bf16/fp16/TF32 dot of mtut_ops/triton), operands staged (aligned,
    # padded to 16) so the loads are cp.async copies pipelined over num_stages, but no TMA, no
    # warp specialization, not persistent. No Triton kernel of this project has been timed on
    # a GPU. Public points for such pointer-load Triton GEMMs on Hopper: 0.51-0.57 of cuBLAS
    # at K >= 2048 with Triton's first wgmma lowering (github.com/triton-lang/triton issue
    # 2339, 2023: 296-370 against 515-722 TFLOP/s bf16 on H100), "close to cuBLAS" per the
    # maintainers there and "on par with cuBLAS" in Triton's own matmul tutorial for later
    # versions (triton-lang.org tutorials/03-matrix-multiplication). Assumed: 0.70 of cuBLAS's
    # 0.78, i.e. 0.55 of the bf16/fp16 peak, between the two. TF32: 0.45 of the TF32 peak
    # (0.70 of cuBLAS's 0.65; TF32 operands take twice the shared memory per K step, the TF32
    # configs stop at BLOCK_K 32). The model's own factors come on top: K / (K + K_OVERHEAD),
    # wave quantization of the live programs, the L2 bound. The sensitivity section reruns the
    # table with 0.40 and 0.75.
    "triton-tc": {"bf16": 0.55, "fp16": 0.55, "tf32": 0.45},
    # Triton tl.dot lowered to FMA: only the exact float32 path now (input_precision "ieee",
    # float32 without TF32): 0.40 of the FP32 peak (small 32/64 tiles sized against spills).
    "triton-fma": {"fp32": 0.40, "fp64": 0.40},
}
#: cuBLAS output tile (M x N) per SM by core precision, for wave quantization.
CUBLAS_TILE = {"bf16": (128, 256), "fp16": (128, 256), "tf32": (128, 128), "fp32": (128, 128), "fp64": (128, 128)}
#: fixed per-tile cost (prologue, epilogue, pipeline fill) in units of the K dimension:
#: a tile's efficiency is K / (K + K_OVERHEAD).
K_OVERHEAD = 128
#: memory-bound kernels reach this fraction of the HBM bandwidth (a device-to-device copy
#: moved 4.3 of 4.8 TB/s on this workplace's H200, KINDS.md: 0.90; other kernels less).
EFF_HBM = 0.85
#: L2 bandwidth (all SMs) in TB/s: operands of the tiled kernels are re-read through L2
#: once per tile row/column. ~5.5 TB/s was measured on the (lower-clocked) H100 PCIe by
#: chipsandcheese.com ("Nvidia's H100: Funny L2, and Tons of Bandwidth", 2023); 8 assumed
#: for the SXM parts. Only applied to kernels whose tiling is known (not cuBLAS, whose
#: efficiency above is measured and uses clusters/multicast).
L2_TBS = 8.0
#: the shortest a kernel takes on a busy stream (launch gap + ramp), seconds.
MIN_KERNEL_S = 2.5e-6
#: host time per op, seconds, by calling layer.
HOST = {
    "eager_op": 6e-6,  # an ATen op dispatched from Python eager (autograd recording included)
    "view_op": 1.5e-6,  # a view (no kernel)
    "inductor_kernel": 4e-6,  # one kernel launch from inductor's generated wrapper
    "graph_call": 30e-6,  # one compiled graph call (guards, autograd.Function), forward or backward
    "cpp_op": 3e-6,  # a kernel launched or an ATen op called from C++ (mtut's ops, composites)
    "api_call": 40e-6,  # mtut_ops.ssa_loss from Python: validation, dispatch, autograd node
    "py_node": 25e-6,  # a second Python autograd node (register_autograd), forward or backward (~30 µs
    # forward measured on this workplace's 2-core CPU, mtut_ops.ssa_loss_from_sqdist on CPU tensors)
    "triton_launch": 15e-6,  # one wrap_triton launch from Python (autotuner cache lookup, launcher)
    "h2d_tensor": 15e-6,  # torch.tensor(list, device=cuda): a small copy that waits for the stream
}

# ------------------------------------------------------------------ kernels


@dataclass
class Op:
    name: str
    flops: float = 0.0
    bytes: float = 0.0  # HBM bytes read + written
    path: str = "elementwise"  # key of EFF, or "elementwise"
    prec: str = "fp32"  # the core's precision
    gemm: Optional[tuple] = None  # (batch, M, N, K) for cuBLAS wave/K factors, or the tiled kernels' K
    l2_bytes: float = 0.0
    programs: int = 0  # live programs of a Triton kernel, for its wave quantization (0: none)


def _waves(programs: int, sms: int) -> float:
    """Fraction of the SMs busy over a launch of ``programs`` equal programs, one per SM at a
    time (an 8-warp tensor-core tile keeps an SM's tensor cores busy; a second resident program
    hides latency but adds no MMA throughput)."""
    return programs / (math.ceil(programs / sms) * sms)


def _cublas_factor(op: Op, gpu: GPU) -> float:
    b, m, n, k = op.gemm
    bm, bn = CUBLAS_TILE[op.prec]
    tiles = b * math.ceil(m / bm) * math.ceil(n / bn)
    waves = math.ceil(tiles / gpu.sms)
    return tiles / (waves * gpu.sms) * k / (k + K_OVERHEAD)


def op_time(op: Op, gpu: GPU) -> float:
    """Seconds one kernel takes on the GPU (see the module docstring)."""
    t = max(MIN_KERNEL_S, op.bytes / (gpu.hbm_tbs * 1e12 * EFF_HBM), op.l2_bytes / (L2_TBS * 1e12))
    if op.flops:
        if op.path == "elementwise":
            rate = gpu.peak["fp32"] * 1e12 * 0.5
        else:
            rate = gpu.peak[op.prec] * 1e12 * EFF[op.path][op.prec]
            if op.path == "cublas" and op.gemm is not None:
                rate *= _cublas_factor(op, gpu)
            elif op.gemm is not None:
                k = op.gemm[3]
                rate *= k / (k + K_OVERHEAD)
                if op.programs:
                    rate *= _waves(op.programs, gpu.sms)
        t = max(t, op.flops / rate)
    return t


@dataclass
class Plan:
    """One implementation on one problem: kernels and host time, forward and backward."""

    fwd: list = field(default_factory=list)
    bwd: list = field(default_factory=list)
    host_fwd: float = 0.0
    host_bwd: float = 0.0
    synchronizing: bool = False  # host waits for the GPU inside each call
    peak_gb: Optional[float] = None  # predicted peak memory where modelled (eager trace)
    note: str = ""

    def times(self, gpu: GPU) -> tuple:
        gf = sum(op_time(o, gpu) for o in self.fwd)
        gb = sum(op_time(o, gpu) for o in self.bwd)
        comb = (lambda g, h: g + h) if self.synchronizing else max
        return comb(gf, self.host_fwd), comb(gf, self.host_fwd) + comb(gb, self.host_bwd), gf + gb

    def flops(self) -> float:
        return sum(o.flops for o in self.fwd + self.bwd)


# ------------------------------------------------------------------ scenarios


SCENARIOS = ("fp32", "tf32", "bf16")


def input_dtype(scen: str) -> torch.dtype:
    """The inputs' dtype in a scenario (TF32 is float32 inputs with TF32 products)."""
    return torch.bfloat16 if scen == "bf16" else torch.float32


def elem(scen: str) -> int:
    return 2 if scen == "bf16" else 4


def cublas_prec(scen: str, inputs_fp32: bool = False) -> str:
    """The core cuBLAS uses: bf16 for bf16 operands; fp32 operands as TF32 only when allowed."""
    if scen == "bf16" and not inputs_fp32:
        return "bf16"
    return "tf32" if scen == "tf32" else "fp32"


# ------------------------------------------------------------------ eager baselines: traced


_VIEW_OPS = {"view", "_unsafe_view", "expand", "permute", "transpose", "t", "select", "slice", "unsqueeze", "squeeze",
             "detach", "split_with_sizes", "split", "alias", "as_strided", "reshape", "narrow", "unbind", "_reshape_alias",
             "lift_fresh"}
_GEMMS = {"bmm", "mm", "baddbmm", "addmm", "matmul"}


def _unique_bytes(t: torch.Tensor) -> int:
    """Bytes an op reads from t: broadcast (stride 0) dimensions read once."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size()


class _Trace(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []  # (name, flops, bytes, gemm dims or None, is_view, dtype)
        self.live = 0
        self.peak = 0

    def _track(self, t):
        if isinstance(t, torch.Tensor):
            nb = t.numel() * t.element_size()
            self.live += nb
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._free, nb)

    def _free(self, nb):
        self.live -= nb

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        tensors_in = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        tensors_out = [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        is_view = name in _VIEW_OPS
        flops, gemm = 0.0, None
        if name in _GEMMS:
            a, b = (args[1], args[2]) if name in ("baddbmm", "addmm") else (args[0], args[1])
            if a.dim() == 3:
                gemm = (a.shape[0], a.shape[1], b.shape[2], a.shape[2])
            else:
                gemm = (1, a.shape[0], b.shape[1], a.shape[1])
            flops = 2.0 * math.prod(gemm)
        nbytes = 0 if is_view else sum(_unique_bytes(t) for t in tensors_in) + sum(
            t.numel() * t.element_size() for t in tensors_out)
        dtype = tensors_out[0].dtype if tensors_out else None
        self.ops.append((name, flops, nbytes, gemm, is_view, dtype))
        if not is_view:
            for t in tensors_out:
                self._track(t)
        return out


def trace_eager(fn, p: Problem, dtype: torch.dtype) -> tuple:
    """Run fn(feats, ce) forward + backward on meta tensors of problem p: (forward ops,
    backward ops, peak bytes of the tensors the ops created)."""
    feats = [torch.empty(p.N, c, p.d, device="meta", dtype=dtype).requires_grad_() for c in p.channels]
    ce = torch.empty(p.M, p.N, device="meta")
    with _Trace() as tr:
        loss = fn(feats, ce)
        n_fwd = len(tr.ops)
        loss.backward()
    del loss
    input_bytes = sum(f.numel() * f.element_size() for f in feats)
    return tr.ops[:n_fwd], tr.ops[n_fwd:], tr.peak + input_bytes


def _traced_ops(records, scen: str) -> tuple:
    ops, host = [], 0.0
    for name, flops, nbytes, gemm, is_view, dtype in records:
        if is_view:
            host += HOST["view_op"]
            continue
        host += HOST["eager_op"]
        if gemm is not None:
            ops.append(Op(name, flops, nbytes, "cublas", cublas_prec(scen), gemm))
        else:
            ops.append(Op(name, 0.0, nbytes))
    return ops, host


@functools.lru_cache(maxsize=None)
def _trace_cached(fn, p: Problem, dtype: torch.dtype) -> tuple:
    return trace_eager(fn, p, dtype)


def eager_plan(fn, p: Problem, scen: str) -> Plan:
    f, b, peak = _trace_cached(fn, p, input_dtype(scen))
    fwd, hf = _traced_ops(f, scen)
    bwd, hb = _traced_ops(b, scen)
    return Plan(fwd, bwd, hf, hb, peak_gb=peak / 1e9)


# ------------------------------------------------------------------ compiled baselines: fused by hand


def compiled_mmpose(p: Problem, scen: str) -> Plan:
    """inductor: normalize fused per modality (one read, one write), bmm (cuBLAS), per unordered
    pair ONE reduction kernel reading K_m and K_n for both ordered terms, a tail kernel;
    backward: per modality dK_m = sum_n c_n (K_m - K_n) in one pointwise kernel, the two
    bmm of the bmm backward, the normalization backward fused (3 reads, 1 write)."""
    e, N, d = elem(scen), p.N, p.d
    pr = cublas_prec(scen)
    dd = N * d * d * e
    fwd, bwd = [], []
    for c in p.channels:
        fwd.append(Op("normalize", 0, 2 * N * c * d * e))
        fwd.append(Op("K=bmm(Xh^T,Xh)", 2.0 * N * d * d * c, dd + 2 * N * c * d * e, "cublas", pr, (N, d, d, c)))
    pairs = p.M * (p.M - 1) // 2
    fwd += [Op("sum (K_m-K_n)^2", 0, 2 * dd) for _ in range(pairs)] + [Op("tail", 0, 0)]
    for c in p.channels:
        bwd.append(Op("dK_m", 0, p.M * dd + dd))
        bwd.append(Op("bmm dA", 2.0 * N * d * d * c, dd + 2 * N * c * d * e, "cublas", pr, (N, d, c, d)))
        bwd.append(Op("bmm dB", 2.0 * N * d * d * c, dd + 2 * N * c * d * e, "cublas", pr, (N, c, d, d)))
        bwd.append(Op("normalize backward", 0, 4 * N * c * d * e))
    bwd.append(Op("tail", 0, 0))
    host = lambda ops: HOST["graph_call"] + HOST["inductor_kernel"] * len(ops)  # noqa: E731
    return Plan(fwd, bwd, host(fwd), host(bwd), peak_gb=(p.M + 1) * dd / 1e9,
                note="peak: the saved K_m and one dK (predicted)")


def compiled_expert(p: Problem, scen: str) -> Plan:
    """inductor: normalize + cat fused (one read, one write of the stacked rows), H = bmm
    (cuBLAS), ONE reduction kernel for all block square-sums (reads H once), a tail kernel;
    backward: dH = 2 coef_mn H_mn (one pointwise kernel), dX = dH X (cuBLAS), the
    normalization backward fused per modality."""
    e, N, d, C = elem(scen), p.N, p.d, p.C
    pr = cublas_prec(scen)
    HH = N * C * C * e
    X = N * C * d * e
    fwd = [Op("normalize+cat", 0, 2 * X),
           Op("H=bmm(X,X^T)", 2.0 * N * C * C * d, HH + 2 * X, "cublas", pr, (N, C, C, d)),
           Op("block square-sums", 0, HH), Op("tail", 0, 0)]
    bwd = [Op("dH", 0, 2 * HH), Op("dX=bmm(dH,X)", 2.0 * N * C * C * d, HH + 2 * X, "cublas", pr, (N, C, d, C))]
    bwd += [Op("normalize backward", 0, 4 * N * c * d * e) for c in p.channels] + [Op("tail", 0, 0)]
    host = lambda ops: HOST["graph_call"] + HOST["inductor_kernel"] * len(ops)  # noqa: E731
    return Plan(fwd, bwd, host(fwd), host(bwd))


# ------------------------------------------------------------------ mtut: the CUDA backend as it is

#: csrc/cuda/ssa_cuda.cu kMaxSlices, kSplitRule (min_k, align, tile_overhead) and tile_cost
#: (the output tile assumed and the HBM bytes per step of it, by operand dtype).
MAX_SLICES = 16
SPLIT_RULE = (256, 8, 128)
SPLIT_TILE = {"bf16": (128, 256, 32768), "fp16": (128, 256, 32768), "fp32": (128, 128, 32768),
              "fp64": (128, 128, 245760)}


def gram_splits(N: int, Cm: int, Cn: int, d: int, sms: int, operand: str, rule: tuple = SPLIT_RULE) -> int:
    """csrc/cuda/ssa_cuda.cu gram_splits: into how many slices S the CUDA gram forward cuts the
    contraction d of block (m, n): d % S == 0, each slice a multiple of ``align`` and at least
    ``min_k`` long; the cost of S is waves(tiles S) (d / S + tile_overhead) steps of an output
    tile plus the partials' extra (8 S - 4) N Cm Cn bytes at step_bytes a step; the cheapest,
    the smaller S on a tie (python_tests/test_cuda_emulated.py checks that the two agree)."""
    min_k, align, overhead = rule
    rows, cols, step_bytes = SPLIT_TILE[operand]
    tiles = N * math.ceil(Cm / rows) * math.ceil(Cn / cols)
    best, best_cost = 1, 0.0
    for S in range(1, MAX_SLICES + 1):
        if d % S:
            continue
        k = d // S
        if S > 1 and (k % align or k < min_k):
            continue
        waves = float((tiles * S + sms - 1) // sms)
        cost = waves * float(k + overhead) + ((8 * S - 4) * N * Cm * Cn / step_bytes if S > 1 else 0.0)
        if S == 1 or cost < best_cost:
            best, best_cost = S, cost
    return best


STACK_BUDGET = 1 << 24  # csrc/cuda/ssa_cuda.cu kStripBudget: entries of one stacked strip
STACK_MIN_WIDTH = 256  # kMinStackWidth


def stack_strip_width(N: int, M: int, C: int, d: int, budget: int = STACK_BUDGET) -> int:
    """Positions per stacked strip of the folded bf16 student products (ssa_cuda.cu
    stack_strip_width): the most that keep N M C ts within the budget, a multiple of 256 (the
    product's tile width) where that is at least 256, but at least STACK_MIN_WIDTH, at most d."""
    ts = budget // max(N * M * C, 1)
    if ts >= 256:
        ts = ts // 256 * 256
    return min(d, max(ts, STACK_MIN_WIDTH))


def cuda_plan(p: Problem, scen: str, algo: str, active, sms: int = 132) -> Plan:
    """The CUDA backend as the code is now (csrc/cuda/ssa_cuda.cu): cuBLAS for every product
    (at::bmm / at::baddbmm, bf16 operands for bf16 inputs, fp32 accumulation; the forward Gram
    blocks split-K over (slice, sample) entries of one pointer-array product where gram_splits
    says so), our kernels for the reductions and the normalization backward; the gram blocks
    kept for the backward.
    The backward's products, where every modality has the same channel count (all the
    named shapes), run over M - 1 (sample, modality) rows a sample, picked on the GPU (the
    rows with weight first); otherwise over every sample of a modality that needs a gradient.
    There the gram backward's products write the gradient itself (the normalization backward
    folded into the weighted blocks; bf16: stacked strips, one product of K = M C a strip), and
    the last pass only writes the zero gradient of rows without weight."""
    e, N, d, M, ch = elem(scen), p.N, p.d, p.M, p.channels
    pr = cublas_prec(scen)
    eo = e  # the scaled operands' dtype: the input's (bf16), fp32 otherwise
    # new_saved: the buffer of the kept blocks (gram: zeroed) and the row norms and scales; then
    # prepare(): ONE row_scale launch for every modality (up to 8), which writes the direct
    # layout's padding too
    fwd = [Op("saved=zeros", 0, 4 * N * (sum(ch[m] * ch[n] for m in range(M) for n in range(m, M))
                                          + 2 * sum(ch)))] if algo == "gram" else []
    fwd += [Op("row_scale", 0, sum(N * c * d * e + 8 * N * c for c in ch))]
    if algo == "gram":
        blocks = [(m, n) for m in range(M) for n in range(m, M)]
        operand = "bf16" if scen == "bf16" else "fp32"
        groups = {}  # gram_blocks: the blocks of one shape (contiguous maps) are one product, 36 at most
        for m, n in blocks:
            chunk = 0
            while len(groups.get((ch[m], ch[n], chunk), [])) == 36:
                chunk += 1
            groups.setdefault((ch[m], ch[n], chunk), []).append((m, n))
        slices = {}
        for (cm, cn, _), group in groups.items():
            G = len(group)
            S = gram_splits(N * G, cm, cn, d, sms, operand)
            slices.update({b: S for b in group})
            if G == 1 and S == 1:  # at::bmm into the kept buffer
                fwd.append(Op(f"P{group[0]}=bmm", 2.0 * N * cm * cn * d, N * (cm + cn) * d * e + 4 * N * cm * cn,
                              "cublas", pr, (N, cm, cn, d)))
            else:  # slice_pointers_kernel, then ONE cublasGemmBatchedEx over (block, slice, sample)
                fwd.append(Op("slice_pointers", 0, 0))
                fwd.append(Op(f"{G} blocks {cm}x{cn}, split-K x{S}", 2.0 * G * N * cm * cn * d,
                              G * N * (cm + cn) * d * e + 4 * S * G * N * cm * cn, "cublas", pr,
                              (G * N * S, cm, cn, d // S)))
        fwd.append(Op("partial=zeros", 0, 8 * N * len(blocks) * 16))
        # block_sqnorm_kernel: reads the block (or its S partials, then writes their sum to kept)
        fwd += [Op(f"block_sqnorm({m},{n})", 0, 4 * N * ch[m] * ch[n] * (1 if slices[m, n] == 1 else slices[m, n] + 1))
                for m, n in blocks]
        fwd += [Op("sum_partials", 0, 0), Op("combine_gram", 0, 0)]  # (S = at::empty: no kernel)
    else:
        rows = max(1, min(d, (1 << 24) // max(N * d * M, 1)))
        for i0 in range(0, d, rows):  # (partial and S: written whole by the kernels, no zero fill)
            ti, width = min(rows, d - i0), d - i0
            # strip_lefts: ONE scaled_strip_kernel, x_m[:, I] s_m^2 -> operand dtype for every m; the K strips
            fwd.append(Op("scaled_strip", 0, sum(N * c * ti * (e + eo) + 4 * N * c for c in ch)))
            for c in ch:
                fwd.append(Op("K=bmm", 2.0 * N * ti * width * c, N * c * (ti + width) * e + 4 * N * ti * width, "cublas",
                              pr, (N, ti, width, c)))
            fwd.append(Op("strip_sqdiff", 0, M * 4 * N * ti * width))
        fwd += [Op("sum_pair_partials", 0, 0)]
    cf, cb, node = _loss_ops(own_node=False)
    fwd += cf
    host_fwd = HOST["api_call"] + HOST["cpp_op"] * len(fwd) + node

    # coef / ref and ref of every (sample, modality) in one kernel; the row norms and scales are
    # the forward's (kept in `saved`): no pass over the inputs for them
    bwd = [Op("pair_coefficients_kernel", 0, 0)]
    needs = [True] * M  # both networks train: every modality needs a gradient
    # the (sample, modality) rows with a weight (pair_coefficients_kernel: ref != 0)
    weighted = [sum(1 for b in range(N) if any(bool(active[b, m, n]) for n in range(M) if n != m)) for m in range(M)]
    students = len(set(ch)) == 1 and M <= 8  # student_products_apply (contiguous maps)
    if algo == "gram" and students:
        # student_gram_grads (the normalization backward folded into the weighted blocks): per
        # weighted row one folded_blocks_kernel block reads its M kept block rows (twice: the
        # diagonal correction, then the row) and writes the stacked B_m [C, M C] row
        C, L = ch[0], min(M - 1, sum(needs))
        # (a lower block, n < m, is read down a column: a 32-byte sector per 4-byte entry, from L2)
        bwd.append(Op("folded_blocks", 0, sum(weighted) * C * (2 * 4 * M * C + eo * M * C),
                      l2_bytes=sum(w * C * m * C * 32 * 2 for m, w in enumerate(weighted))))
        if scen == "bf16":
            # per strip of positions: the maps' columns stacked [N, M C, ts] (stack_strip_kernel),
            # then ONE pointer-array product over the L slots a sample, K = M C, written as the
            # gradient in the input dtype (no fp32 graw, no normalization pass)
            ts = stack_strip_width(N, M, C, d)
            for i0 in range(0, d, ts):
                w = min(ts, d - i0)
                bwd.append(Op("stack_strip", 0, 2 * e * N * M * C * w))
                bwd.append(Op("student_pointers", 0, 0))
                bwd.append(Op("grad=students", 2.0 * N * L * C * M * C * w,
                              eo * N * L * C * M * C + e * N * L * M * C * w + e * N * L * C * w,
                              "cublas", pr, (N * L, C, w, M * C)))
        else:
            # M pointer-array products over the L slots, accumulating into the gradient itself
            # (float32: in place; the first writes it)
            bwd.append(Op("student_pointers", 0, 0))
            for j in range(M):
                bwd.append(Op("grad=students" if j == 0 else "grad+=students", 2.0 * N * L * C * C * d,
                              eo * N * L * C * C + e * N * L * C * d + (4 if j == 0 else 8) * N * L * C * d,
                              "cublas", pr, (N * L, C, d, C)))
    elif algo == "gram":
        for m in range(M):
            if not needs[m]:
                continue
            for n in range(M):  # weighted_block_kernel: A = P s^2 coef/ref in the operand dtype, then
                # g = A @ X_n (the first product writes g) or g += A @ X_n
                bwd.append(Op("weighted_block", 0, N * ch[m] * ch[n] * (4 + eo) + 4 * N * ch[n]))
                bwd.append(Op("g=bmm" if n == 0 else "g.baddbmm", 2.0 * N * ch[m] * ch[n] * d,
                              eo * N * ch[m] * ch[n] + e * N * ch[n] * d + (4 if n == 0 else 8) * N * ch[m] * d,
                              "cublas", pr, (N, ch[m], d, ch[n])))
    else:
        rows = max(1, min(d, (1 << 24) // max(N * d * M, 1)))
        for i0 in range(0, d, rows):
            ti = min(rows, d - i0)
            bwd.append(Op("scaled_strip", 0, sum(N * c * ti * (e + eo) + 4 * N * c for c in ch)))
            for c in ch:  # every K strip again, full rows
                bwd.append(Op("K=bmm", 2.0 * N * ti * d * c, N * c * (ti + d) * e + 4 * N * ti * d, "cublas", pr,
                              (N, ti, d, c)))
            for m in range(M):
                if not needs[m]:
                    continue
                # combine_strips_kernel: E = sum_n coef/ref K_n in the operand dtype; the first
                # strip's product writes g, the others accumulate
                bwd.append(Op("combine_strips", 0, M * 4 * N * ti * d + eo * N * ti * d))
                if not students:
                    bwd.append(Op("g=bmm" if i0 == 0 else "g.baddbmm", 2.0 * N * ch[m] * ti * d,
                                  eo * N * ti * d + e * N * ch[m] * ti + (4 if i0 == 0 else 8) * N * ch[m] * d,
                                  "cublas", pr, (N, ch[m], d, ti)))
            if students:  # ONE pointer-array product over the L = M - 1 student rows a sample
                C, L = ch[0], min(M - 1, sum(needs))
                bwd.append(Op("student_pointers", 0, 0))
                bwd.append(Op("g=students" if i0 == 0 else "g+=students", 2.0 * N * L * C * ti * d,
                              eo * N * L * ti * d + e * N * L * C * ti + (4 if i0 == 0 else 8) * N * L * C * d,
                              "cublas", pr, (N * L, C, d, ti)))
    # the normalization backward reads graw and x of the rows with weight, and only writes the
    # zero gradient of the others (pair_coefficients_kernel marks them with ref = 0); after the
    # folded student products only the latter
    folded = algo == "gram" and students
    bwd += [Op("normalize_backward_kernel", 0, c * d * ((0 if folded else w * (4 + 2 * e)) + (N - w) * e))
            for c, w in zip(ch, weighted)]
    bwd += cb
    host_bwd = HOST["api_call"] / 2 + HOST["cpp_op"] * len(bwd) + node
    return Plan(fwd, bwd, host_fwd, host_bwd)


# ------------------------------------------------------------------ mtut: the Triton backend as it is

#: The autotune configs of the Triton kernels, block sizes only (num_warps and num_stages do not
#: enter the model), by kind of operand (mtut_ops/triton/_common.py KINDS: "tc16" = float16 and
#: bfloat16 operands, "tf32", "ieee" = exact float32). Copied from mtut_ops/triton/direct.py
#: _FORWARD_CONFIGS / _BACKWARD_CONFIGS and gram.py _CONFIGS (the forward kernel), _APPLY_CONFIGS
#: and _COEF_CONFIGS;
#: python_tests/test_bench.py checks the copy against the modules.
TRITON_CONFIGS = {
    "direct_forward": {  # (BLOCK_D, BLOCK_C)
        "tc16": [(64, 32), (64, 64), (128, 32), (128, 64)],
        "tf32": [(64, 32), (64, 32), (128, 32)],
        "ieee": [(32, 32), (64, 16), (64, 32)],
    },
    "direct_backward": {  # (BLOCK_D, BLOCK_C)
        "tc16": [(64, 32), (64, 32), (64, 64)],
        "tf32": [(64, 16), (64, 32), (64, 64)],
        "ieee": [(32, 32), (32, 16)],
    },
    "gram": {  # (BLOCK_C, BLOCK_K): the forward kernel
        "tc16": [(64, 32), (64, 64), (128, 32), (128, 64)],
        "tf32": [(64, 32), (64, 32), (128, 32)],
        "ieee": [(32, 32), (32, 64), (64, 16)],
    },
    "gram_apply": {  # (BLOCK_C, BLOCK_K): two tiles live, so no 128-wide tc16 tiles (they spilled)
        "tc16": [(64, 32), (64, 64)],
        "tf32": [(64, 32), (64, 32), (128, 32)],
        "ieee": [(32, 32), (64, 16)],
    },
    "gram_coef": {  # (BLOCK_C, BLOCK_K): 64-wide tiles only (triton 3.6 spilled in 128-wide ones)
        "tc16": [(64, 32), (64, 64), (64, 64)],
        "tf32": [(64, 32), (64, 32)],
        "ieee": [(32, 32), (32, 64), (64, 16)],
    },
}
#: _common.py _STAGE_BLOCK: the staging kernel's step along a row.
STAGE_BLOCK = 512


def _tiles(n: int, t: int) -> int:
    return math.ceil(n / t)


def _pad(n: int, t: int) -> int:
    return _tiles(n, t) * t


def _reread(per_sample_bytes: float, gpu_l2_mb: float = 50) -> int:
    """HBM passes over a tiled kernel's operands: 1 while a sample's rows fit in half the L2."""
    return max(1, math.ceil(per_sample_bytes / (gpu_l2_mb * 1e6 / 2)))


def _loss_ops(own_node: bool) -> tuple:
    """ssa_loss_from_sqdist and its backward on cuda (csrc/cuda/ssa_cuda.cu): one kernel each,
    one block over the [N, M, M] values (at the minimum kernel time): (forward ops, backward
    ops, the host time per direction of the loss's own autograd node). Before the fused
    kernels: ~16 ATen ops each way. ``own_node``: the loss op records its own Python node
    (the Triton backend's ssa_loss, a Python composition); torch.ops.mtut.ssa_loss (the CUDA
    backend) runs it in the distances' node (mtut_ops/_registration.py _ssa_loss_compute)."""
    node = HOST["py_node"] if own_node else 0.0
    return [Op("loss_from_sqdist_kernel", 0, 0)], [Op("loss_from_sqdist_backward_kernel", 0, 0)], node


def triton_kind(scen: str) -> str:
    """The autotune kind (and so the dots' operands) the Triton backend uses in a scenario
    (_common.py operand_mode / launcher_kind): bf16 inputs -> bfloat16 operands on tensor cores;
    float32 with TF32 allowed -> TF32 operands on tensor cores; float32 otherwise -> exact FMA."""
    return {"bf16": "tc16", "tf32": "tf32", "fp32": "ieee"}[scen]


def _triton_path(kind: str) -> tuple:
    """(EFF path, core precision) of every tl.dot of a kind: since the staged operands (issue 12)
    each GEMM of the backend is one plain tl.dot on the operand type, forward and backward alike."""
    return {"tc16": ("triton-tc", "bf16"), "tf32": ("triton-tc", "tf32"), "ieee": ("triton-fma", "fp32")}[kind]


def _effective_k(parts: list) -> float:
    """One K for a kernel whose dots have different K: parts [(flops, K)]; the harmonic mean
    weighted by FLOPs, so that flops / (rate K / (K + K_OVERHEAD)) sums over the parts exactly."""
    total = sum(f for f, _ in parts)
    return total / sum(f / k for f, k in parts)


def _best(candidates: list, gpu: "GPU") -> Op:
    """The autotuner times every config and keeps the fastest: the model keeps the candidate
    (one Op per config) that its own op_time predicts fastest."""
    return min(candidates, key=lambda o: op_time(o, gpu))


def _stage(p: Problem, e: int) -> tuple:
    """_common.pack: per modality one _stage_rows launch (N C_m programs, one row each): reads the
    row from HBM (float64 sum of squares), reads it again (from L2, the row was just read) to
    write z = round(x inv) zero-padded to ld = d rounded up to 16, in the input dtype, and the
    row's norm and inv (compute dtype, float32 here). Three torch.empty (no kernel) and one
    small host->GPU tensor (offsets_t). The float64 sum of squares (2 FLOP per element on the
    FP64 units: 62 MFLOP at Mixed_4f) is not modelled: the kernel is memory-bound."""
    ld = _pad(p.d, 16)
    ops = [Op(f"_stage_rows[{m}]", 0, p.N * c * (p.d * e + ld * e + 8), l2_bytes=p.N * c * p.d * e)
           for m, c in enumerate(p.channels)]
    return ops, len(ops), 3, 1  # ops, triton launches, torch ops (empty), h2d tensors


def _direct_forward_op(p: Problem, e: int, kind: str, bd: int, bc: int) -> Op:
    """direct.py _direct_forward, one config: a program per (tile (I, J) of the ld x ld plane,
    sample, pair m < n); the tiles below the diagonal exit at once (not counted). A live program
    builds K_m[I, J] and K_n[I, J] (two tl.dot loops over the C_m and C_n staged rows, K = C_m,
    C_n, masked to BLOCK_C steps), each row step loading BLOCK_D positions twice (I and J)."""
    N, ld, ch, M = p.N, _pad(p.d, 16), p.channels, p.M
    t = _tiles(ld, bd)
    upper = t * (t + 1) // 2
    path, prec = _triton_path(kind)
    flops, l2, parts, programs = 0.0, 0.0, [], 0
    for m in range(M):
        for n in range(m + 1, M):
            for c in (ch[m], ch[n]):
                f = 2.0 * bd * bd * _pad(c, bc) * upper * N
                flops += f
                parts.append((f, c))
                l2 += 2.0 * bd * _pad(c, bc) * e * upper * N
            programs += upper * N
    hbm = N * p.C * ld * e * _reread(p.C * ld * e)
    return Op(f"_direct_forward {bd}x{bc}", flops, hbm, path, prec, (1, 1, 1, _effective_k(parts)), l2,
              programs=programs)


def _direct_backward_op(p: Problem, e: int, kind: str, bd: int, bc: int, act) -> Op:
    """direct.py _direct_backward, one config: a program per (column block J, sample, modality m);
    those with no non-zero weight exit at once. A live one walks the t row blocks I: builds
    K_m[I, J] and K_n[I, J] for each partner n with a weight (tl.dot loops, K = C), rounds E to
    the operand type, then for every BLOCK_C step of m's rows one tl.dot x[c, I] E[I, J]
    (K = BLOCK_D, a single dot with no loop to pipeline) and a read-modify-write of those rows of
    the float32 output (L2-resident: a program's columns are C_m x BLOCK_D float32)."""
    N, ld, ch, M = p.N, _pad(p.d, 16), p.channels, p.M
    t = _tiles(ld, bd)
    path, prec = _triton_path(kind)
    flops, l2, parts, programs = 0.0, 0.0, [], 0
    for b in range(N):
        for m in range(M):
            partners = [n for n in range(M) if n != m and bool(act[b, m, n])]
            if not partners:
                continue
            programs += t
            for c in [ch[m]] + [ch[n] for n in partners]:  # the K tiles
                f = 2.0 * bd * bd * _pad(c, bc) * t * t
                flops += f
                parts.append((f, c))
                l2 += 2.0 * bd * _pad(c, bc) * e * t * t
            f = 2.0 * _pad(ch[m], bc) * bd * bd * t * t  # x E
            flops += f
            parts.append((f, bd))
            l2 += _pad(ch[m], bc) * bd * (e + 8) * t * t  # x, out read + written
    hbm = N * p.C * ld * e * _reread(p.C * ld * e) + 4 * N * p.C * ld
    return Op(f"_direct_backward {bd}x{bc}", flops, hbm, path, prec, (1, 1, 1, _effective_k(parts) if parts else 1),
              l2, programs=programs)


def _gram_ops(p: Problem, e: int, kind: str, bc: int, bk: int) -> tuple:
    """gram.py, one config: (_gram_forward, _gram_coef, _gram_apply) Ops.
    forward: a program per (BLOCK_C^2 tile of block (m, n), m <= n, sample): G tile over ld
      positions (K = ld), diagonal blocks whole.
    coef: a program per upper tile of the stacked C x C G and sample (every modality needs a
      gradient): G tile again, writes it and its mirror into H (operand type, rows ldh = C
      rounded up to 16).
    apply: a program per (BLOCK_C rows, BLOCK_K positions, sample): K = ldh, H and z tiles."""
    N, ld, ch, M, C = p.N, _pad(p.d, 16), p.channels, p.M, p.C
    path, prec = _triton_path(kind)
    ldk = _pad(ld, bk)
    fprog = N * sum(_tiles(ch[m], bc) * _tiles(ch[n], bc) for m in range(M) for n in range(m, M))
    zb = N * C * ld * e * _reread(C * ld * e)
    fwd = Op(f"_gram_forward {bc}x{bk}", 2.0 * bc * bc * ldk * fprog, zb, path, prec, (1, 1, 1, ld),
             2.0 * bc * ldk * e * fprog, programs=fprog)
    T = _tiles(C, bc)
    cprog = N * T * (T + 1) // 2
    ldh = _pad(C, 16)
    coef = Op(f"_gram_coef {bc}x{bk}", 2.0 * bc * bc * ldk * cprog, zb + N * C * ldh * e, path, prec, (1, 1, 1, ld),
              2.0 * bc * ldk * e * cprog, programs=cprog)
    aprog = N * T * _tiles(ld, bk)
    kk = _pad(ldh, bc)
    apply = Op(f"_gram_apply {bc}x{bk}", 2.0 * bc * bk * kk * aprog, N * C * ldh * e + zb + 4 * N * C * ld, path, prec,
               (1, 1, 1, ldh), (bc + bk) * kk * e * aprog, programs=aprog)
    return fwd, coef, apply


def triton_plan(p: Problem, scen: str, algo: str, active, gpu: Optional["GPU"] = None) -> Plan:
    """The Triton backend as the code is now (mtut_ops/triton/*.py, since issue 12): the inputs
    staged once per call (forward and backward each stage them again: nothing is kept), every
    GEMM a plain tl.dot on the staged operands (tensor cores for bf16 and TF32, exact FMA for
    float32 without TF32), each kernel at the config the model predicts fastest (_best) on
    ``gpu`` (H100 SXM when not given)."""
    gpu = GPUS["H100-SXM"] if gpu is None else gpu
    e, N, d, M, ch, C = elem(scen), p.N, p.d, p.M, p.channels, p.C
    kind = triton_kind(scen)
    ld = _pad(d, 16)
    fwd, launches, torch_ops, h2d = _stage(p, e)
    h2d += 2  # pair_tables
    if algo == "gram":
        fwd_op = _best([_gram_ops(p, e, kind, bc, bk)[0] for bc, bk in TRITON_CONFIGS["gram"][kind]], gpu)
        bc_min = min(c for c, _ in TRITON_CONFIGS["gram"][kind])
        nblk = M * (M + 1) // 2
        fwd += [Op("partial=zeros", 0, 8 * N * nblk * _tiles(max(ch), bc_min) ** 2), fwd_op]
        fwd += [Op("torch glue", 0, 0) for _ in range(9)]  # sum, 3 index, mul, sub, add, clamp, to_square
        torch_ops += 10
        launches += 1
        h2d += 2  # blocks, at
    else:
        cfgs = TRITON_CONFIGS["direct_forward"][kind]
        fwd_op = _best([_direct_forward_op(p, e, kind, bd, bc) for bd, bc in cfgs], gpu)
        bd_min = min(b for b, _ in TRITON_CONFIGS["direct_forward"][kind])
        fwd += [Op("partial=zeros", 0, 8 * N * (M * (M - 1) // 2) * _tiles(ld, bd_min) ** 2), fwd_op]
        fwd += [Op("torch glue", 0, 0) for _ in range(3)]  # sum, to_square (cat, index)
        torch_ops += 4
        launches += 1
    cf, cb, node = _loss_ops(own_node=True)
    fwd += cf
    host_fwd = (HOST["api_call"] + HOST["eager_op"] * torch_ops + HOST["triton_launch"] * launches
                + HOST["h2d_tensor"] * h2d + HOST["cpp_op"] * len(cf) + node)

    bwd, launches, torch_ops, h2d = _stage(p, e)
    act = typical_active(N, M) if active is None else active
    if algo == "gram":
        coef_op = _best([_gram_ops(p, e, kind, bc, bk)[1] for bc, bk in TRITON_CONFIGS["gram_coef"][kind]], gpu)
        apply_op = _best([_gram_ops(p, e, kind, bc, bk)[2] for bc, bk in TRITON_CONFIGS["gram_apply"][kind]], gpu)
        ldh = _pad(C, 16)
        # coef glue: to, eye, masked_fill, sum, diag_embed, mul, mul, sub, ones (sigma), contiguous x2,
        # h = zeros, out = empty, modality (arange, ge, sum)
        bwd += [Op("coef glue", 0, 0) for _ in range(10)] + [Op("h=zeros", 0, N * C * ldh * e)]
        bwd += [Op("modality", 0, 0) for _ in range(3)]
        bwd += [coef_op, apply_op]
        torch_ops += 16
        launches += 2
        h2d += 1  # needed
    else:
        cfgs = TRITON_CONFIGS["direct_backward"][kind]
        bwd_op = _best([_direct_backward_op(p, e, kind, bd, bc, act) for bd, bc in cfgs], gpu)
        bwd += [Op("out=zeros", 0, 4 * N * C * ld)] + [Op("weight glue", 0, 0) for _ in range(3)] + [bwd_op]
        torch_ops += 4
        launches += 1
        h2d += 1  # needs_grad
    for c in ch:  # _common.normalize_backward in torch, float32 [N, C_m, d] (g a strided view of grad_xh)
        X = 4 * N * c * d
        if scen == "bf16":
            bwd.append(Op("f.to(fp32)", 0, X // 2 + X))
        bwd += [Op("xh=f*inv", 0, 2 * X), Op("xh*g", 0, 3 * X), Op("sum", 0, X), Op("xh*dot", 0, 2 * X),
                Op("g-", 0, 3 * X), Op("/r", 0, 2 * X), Op("r>eps", 0, 0), Op("g/eps", 0, 2 * X), Op("where", 0, 4 * X)]
        if scen == "bf16":
            bwd.append(Op("to(bf16)", 0, X + X // 2))
        torch_ops += 9 + (2 if scen == "bf16" else 0)
    bwd += cb
    host_bwd = (HOST["api_call"] / 2 + HOST["eager_op"] * torch_ops + HOST["triton_launch"] * launches
                + HOST["h2d_tensor"] * h2d + HOST["cpp_op"] * len(cb) + node)
    return Plan(fwd, bwd, host_fwd, host_bwd, synchronizing=True,
                note="small host tensors copied to the GPU in every call wait for the stream")


# ------------------------------------------------------------------ the redesign


def redesign_plan(p: Problem, scen: str, algo: str, active=None) -> Plan:
    """A further design of the CUDA path (the current one, cuda_plan, leaves every product to
    cuBLAS, keeps the gram blocks and, for equal channel counts, multiplies only the rows
    with a weight): the rows stacked, ONE GEMM over all modalities. GEMMs in the input
    precision (bf16 inputs: bf16 operands, fp32 accumulation).

    gram:   stack the rows and their scales (one pass), ONE cuBLAS GEMM for the upper blocks
            (m <= n) of H = Xs Xs^T over all samples, kept for the backward (N sum_{m<=n}
            C_m C_n fp32: 66 MB at Mixed_4f), a fused square-sum reduce; backward: one
            kernel weights the blocks into W (coefficients, s^2), ONE GEMM graw = W X over
            the active rows, the fused normalization backward.
    direct: per modality K_m = Xh_m^T Xh_m by cuBLAS (strided batched; kept for the backward
            within a memory budget), ONE fused kernel reads every K once and reduces all
            pairs' squared differences; backward: one fused kernel forms E_m = sum_n coef
            (K_m - K_n) for the active (sample, modality) pairs, ONE GEMM g = X_m E_m over
            them, the fused normalization backward."""
    e, N, d, M, ch, C = elem(scen), p.N, p.d, p.M, p.channels, p.C
    pr = cublas_prec(scen)
    act = typical_active(N, M) if active is None else active
    rows_active = [(b, m) for b in range(N) for m in range(M) if any(bool(act[b, m, n]) for n in range(M) if n != m)]
    X = N * C * d * e
    cf, cb, node = _loss_ops(own_node=False)
    if algo == "gram":
        up = sum(ch[m] * ch[n] for m in range(M) for n in range(m, M))
        fwd = [Op("stack + row scales", 0, 3 * X),
               Op("H_upper=GEMM", 2.0 * N * d * up, 2 * X + 4 * N * up, "cublas", pr, (N, C, up // C, d)),
               Op("square-sum reduce", 0, 4 * N * up), Op("combine", 0, 0)]
        ra = sum(ch[m] for _, m in rows_active)  # active rows over all samples
        bwd = [Op("W=coef*s2*H", 0, 4 * N * up + e * ra * C),
               Op("graw=GEMM(W,X)", 2.0 * ra * C * d, e * ra * C + X + 4 * ra * d, "cublas", pr,
                  (len(rows_active), ra // max(1, len(rows_active)), d, C)),
               Op("normalize backward", 0, ra * d * (4 + 2 * e) + N * C * d * e)]
    else:
        KK = 4 * N * d * d
        fwd = [Op("row scales", 0, X)]
        fwd += [Op(f"K{m}=GEMM", 2.0 * N * d * d * c, 2 * N * c * d * e + KK, "cublas", pr, (N, d, d, c))
                for m, c in enumerate(ch)]
        fwd += [Op("pair square-difference reduce", 0, M * KK), Op("combine", 0, 0)]
        bwd = [Op("E=sum coef (K_m-K_n)", 0, M * KK + len(rows_active) * d * d * 4)]
        flops = sum(2.0 * ch[m] * d * d for _, m in rows_active)
        bwd.append(Op("g=GEMM(X_m,E)", flops, len(rows_active) * d * d * 4 + X, "cublas", pr,
                      (len(rows_active), max(ch), d, d)))
        bwd.append(Op("normalize backward", 0, N * C * d * (4 + 2 * e)))
    fwd += cf
    bwd += cb
    return Plan(fwd, bwd, HOST["api_call"] + HOST["cpp_op"] * len(fwd) + node,
                HOST["api_call"] / 2 + HOST["cpp_op"] * len(bwd) + node,
                note="not implemented: what the proposed design would take")


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class ModelShape:
    name: str
    N: int
    C: int
    spatial: tuple
    M: int

    @property
    def problem(self) -> Problem:
        return Problem(self.N, (self.C,) * self.M, math.prod(self.spatial))


SHAPES = [ModelShape(f"{n}{'' if M == 2 else '_m3'}", 6, C, s, M) for M in (2, 3) for n, C, s in [
    ("mixed5c_224", 1024, (8, 7, 7)), ("mixed5c_112", 1024, (2, 3, 3)),
    ("mixed4f", 832, (16, 14, 14)), ("mixed3c", 480, (32, 28, 28))]]
OURS = [f"mtut-{b}-{a}" for b in ("cuda", "triton") for a in ("direct", "gram", "auto")]
REDESIGN = [f"redesign-cuda-{a}" for a in ("direct", "gram", "auto")]
IMPLS = ["mmpose-eager", "mmpose-compile", "expert-eager", "expert-compile", *OURS, *REDESIGN]


def resolve_auto(p: Problem, backend: str = "cuda", scen: str = "fp32") -> str:
    """mtut_ops/_validation.py resolve_algo: the auto rule of ``backend`` for the scenario's
    input dtype (its GPU constants are this model's crossovers, see ``crossovers``)."""
    from mtut_ops._validation import resolve_algo

    return resolve_algo("auto", p.d, p.channels, backend, input_dtype(scen))


def plan(impl: str, p: Problem, scen: str, gpu: Optional[GPU] = None) -> Plan:
    """One implementation's kernels on problem p; ``gpu`` only picks the Triton configs (the
    autotuner's choice may differ by GPU; H100 SXM when not given)."""
    from bench.baselines import expert_gram_ssa_loss, mmpose_ssa_loss

    act = typical_active(p.N, p.M)
    if impl == "mmpose-eager":
        return eager_plan(mmpose_ssa_loss, p, scen)
    if impl == "expert-eager":
        return eager_plan(expert_gram_ssa_loss, p, scen)
    if impl == "mmpose-compile":
        return compiled_mmpose(p, scen)
    if impl == "expert-compile":
        return compiled_expert(p, scen)
    kind, backend, algo = impl.split("-")
    if algo == "auto":
        algo = resolve_auto(p, backend, scen)
    if kind == "redesign":
        return redesign_plan(p, scen, algo, act)
    if backend == "cuda":
        return cuda_plan(p, scen, algo, act, (gpu or GPUS["H100-SXM"]).sms)
    return triton_plan(p, scen, algo, act, gpu)


def predict(gpus=("H100-SXM", "H200"), shapes=SHAPES, scenarios=SCENARIOS) -> list:
    rows = []
    for gname in gpus:
        gpu = GPUS[gname]
        for s in shapes:
            p = s.problem
            for scen in scenarios:
                for impl in IMPLS:
                    pl = plan(impl, p, scen, gpu)
                    fwd, total, gpu_s = pl.times(gpu)
                    oom = pl.peak_gb is not None and pl.peak_gb > gpu.mem_gb
                    rows.append({
                        "gpu": gname, "shape": s.name, "M": s.M, "C": s.C, "d": p.d, "scenario": scen, "impl": impl,
                        "algo": resolve_auto(p, impl.split("-")[1], scen) if impl.endswith("auto") else "",
                        "fwd_ms": 1e3 * fwd, "total_ms": 1e3 * total, "gpu_busy_ms": 1e3 * gpu_s,
                        "gflop": pl.flops() / 1e9, "kernels": len(pl.fwd) + len(pl.bwd),
                        "bound": "host" if total > 1.5 * gpu_s and not pl.synchronizing else "gpu",
                        "peak_gb": pl.peak_gb, "oom": oom, "note": pl.note,
                    })
    return rows


def fastest(rows: list) -> list:
    """Per (gpu, shape, scenario): the fastest of ours (fwd + bwd), the auto choice of each
    backend against its best algo, the best baseline, and the redesign."""
    out = []
    keys = dict.fromkeys((r["gpu"], r["shape"], r["scenario"]) for r in rows)
    for key in keys:
        g = {r["impl"]: r for r in rows if (r["gpu"], r["shape"], r["scenario"]) == key}
        ours = min((i for i in OURS if not i.endswith("auto")), key=lambda i: g[i]["total_ms"])
        base = min((i for i in IMPLS[:4] if not g[i]["oom"]), key=lambda i: g[i]["total_ms"])
        auto_ok = {b: g[f"mtut-{b}-auto"]["total_ms"] <= min(g[f"mtut-{b}-direct"]["total_ms"],
                                                             g[f"mtut-{b}-gram"]["total_ms"]) * 1.0001
                   for b in ("cuda", "triton")}
        out.append({"gpu": key[0], "shape": key[1], "scenario": key[2], "fastest_ours": ours,
                    "fastest_ours_ms": g[ours]["total_ms"], "best_baseline": base,
                    "best_baseline_ms": g[base]["total_ms"], "redesign_ms": g["redesign-cuda-auto"]["total_ms"],
                    "redesign_best": min(REDESIGN[:2], key=lambda i: g[i]["total_ms"]),
                    "auto_right_cuda": auto_ok["cuda"], "auto_right_triton": auto_ok["triton"],
                    "auto_algo": g["mtut-cuda-auto"]["algo"]})
    return out


def sensitivity(shapes=SHAPES) -> list:
    """Which conclusions change (lines of text) if (a) cuBLAS reaches only 55% of the bf16/fp16
    peak on these shapes (instead of 78%: batched, K of a few thousand) and the L2 runs at 12
    TB/s (instead of 8); (b) Triton's tensor-core dots reach 0.40 or 0.75 of the peak (instead
    of 0.55 bf16 / 0.45 TF32: EFF's comment)."""
    global L2_TBS
    saved = (dict(EFF["cublas"]), dict(EFF["triton-tc"]), L2_TBS)
    cases = [("cuBLAS at 55% of the bf16 peak, L2 at 12 TB/s", {"bf16": 0.55, "fp16": 0.55}, None, 12.0),
             ("Triton tensor-core dots at 0.40 of the peak", None, 0.40, None),
             ("Triton tensor-core dots at 0.75 of the peak", None, 0.75, None)]
    lines = []
    try:
        base = {(f["gpu"], f["shape"], f["scenario"]): f for f in fastest(predict(shapes=shapes))}
        for label, cublas, tc, l2 in cases:
            EFF["cublas"].update(saved[0])
            EFF["triton-tc"].update(saved[1])
            L2_TBS = saved[2]
            if cublas:
                EFF["cublas"].update(cublas)
            if tc is not None:
                EFF["triton-tc"].update({k: tc for k in EFF["triton-tc"]})
            if l2 is not None:
                L2_TBS = l2
            alt = {(f["gpu"], f["shape"], f["scenario"]): f for f in fastest(predict(shapes=shapes))}
            changed = []
            for k, f in base.items():
                a = alt[k]
                if a["fastest_ours"] != f["fastest_ours"]:
                    changed.append(f"{k[0]} {k[1]} {k[2]}: fastest of ours {f['fastest_ours']} -> {a['fastest_ours']}")
                if a["best_baseline_ms"] < a["fastest_ours_ms"] and not f["best_baseline_ms"] < f["fastest_ours_ms"]:
                    changed.append(f"{k[0]} {k[1]} {k[2]}: a baseline becomes faster than ours")
                if a["auto_right_triton"] != f["auto_right_triton"]:
                    changed.append(f"{k[0]} {k[1]} {k[2]}: triton's auto choice becomes "
                                   f"{'right' if a['auto_right_triton'] else 'wrong'}")
            lines.append(f"{label}: " + ("; ".join(changed) if changed
                                         else "no ranking in the headline table changes."))
    finally:
        EFF["cublas"].clear()
        EFF["cublas"].update(saved[0])
        EFF["triton-tc"].clear()
        EFF["triton-tc"].update(saved[1])
        L2_TBS = saved[2]
    return lines


def verdict(rows: list) -> list:
    """What the table says about the code's choices for CUDA tensors: the default backend
    (mtut_ops/backends.py: "cuda" before "triton") and algo="auto" (resolve_auto), per GPU and
    scenario over all shapes."""
    fast = fastest(rows)
    g = {(r["gpu"], r["shape"], r["scenario"], r["impl"]): r["total_ms"] for r in rows}
    out = []
    for gpu in dict.fromkeys(r["gpu"] for r in rows):
        for scen in SCENARIOS:
            fs = [f for f in fast if f["gpu"] == gpu and f["scenario"] == scen]
            triton_wins = [f["shape"] for f in fs if g[(gpu, f["shape"], scen, "mtut-triton-auto")]
                           < g[(gpu, f["shape"], scen, "mtut-cuda-auto")]]
            wrong = [f"{f['shape']} ({b})" for f in fs for b in ("cuda", "triton") if not f[f"auto_right_{b}"]]
            out.append(f"- {gpu}, {scen}: default backend cuda "
                       + ("is the faster backend (auto) at every shape" if not triton_wins
                          else "is slower than triton at " + ", ".join(triton_wins))
                       + "; auto " + ("picks each backend's faster algo at every shape" if not wrong
                                      else "picks the slower algo at " + ", ".join(wrong)) + ".")
    return out


def reading(rows: list) -> list:
    """The headline comparisons as sentences, from the predicted rows."""
    g = {(r["gpu"], r["shape"], r["scenario"], r["impl"]): r["total_ms"] for r in rows}
    out = []
    for gpu in dict.fromkeys(r["gpu"] for r in rows):
        for shape in ("mixed4f", "mixed3c"):
            for scen in ("bf16", "fp32"):
                k = lambda i: g[(gpu, shape, scen, i)]  # noqa: E731
                ours = min(OURS, key=k)
                out.append(
                    f"- {gpu}, {shape}, {scen}: fastest mtut now {ours} {_ms(k(ours))} ms; expert code eager "
                    f"{_ms(k('expert-eager'))} ms, compiled {_ms(k('expert-compile'))} ms "
                    f"(ours {_vs(k(ours), k('expert-compile'))} compiled, {_vs(k(ours), k('expert-eager'))} eager);"
                    f" the redesign {_ms(k('redesign-cuda-auto'))} ms ({_vs(k('redesign-cuda-auto'), k('expert-compile'))}"
                    f" the compiled expert code, {_vs(k('redesign-cuda-auto'), k('expert-eager'))} eager); the Triton"
                    f" backend (auto) {_ms(k('mtut-triton-auto'))} ms ({_vs(k('mtut-triton-auto'), k('mtut-cuda-auto'))}"
                    f" the CUDA backend).")
        small = max(g[(gpu, s, sc, i)] for s in ("mixed5c_224", "mixed5c_112") for sc in SCENARIOS
                    for i in ("mmpose-compile", "expert-compile", "redesign-cuda-auto", "mtut-cuda-auto"))
        out.append(f"- {gpu}, Mixed_5c (224 and 112), M = 2: the compiled baselines, mtut-cuda-auto and the redesign"
                   f" all take at most {_ms(small)} ms forward + backward (negligible in an I3D training step).")
    return out


def launch_floor() -> float:
    """The launch-latency floor of the loss (seconds, forward + backward): an op that is ONE
    kernel each way, called through the mtut API (validation, dispatch, one autograd node:
    HOST["api_call"] forward, half of it backward, plus one C++ launch each way), on a GPU
    that runs each kernel in MIN_KERNEL_S. Without the Python API (CUDA-graph capture) the
    floor would be the two launches alone."""
    fwd = max(HOST["api_call"] + HOST["cpp_op"], MIN_KERNEL_S)
    bwd = max(HOST["api_call"] / 2 + HOST["cpp_op"], MIN_KERNEL_S)
    return fwd + bwd


def gemm_share(pl: Plan, gpu: GPU, prec: str) -> float:
    """The share of the dense tensor-core peak at which the plan's cuBLAS products run (their
    FLOPs over their predicted time)."""
    ops = [o for o in pl.fwd + pl.bwd if o.path == "cublas" and o.flops]
    return sum(o.flops for o in ops) / sum(op_time(o, gpu) for o in ops) / (gpu.peak[prec] * 1e12)


def gemm_roofline_share(pl: Plan, gpu: GPU, prec: str) -> float:
    """The share gemm_share would reach if every cuBLAS product of the plan ran at its roofline:
    the dense peak or its HBM traffic at the full bandwidth, whichever is slower. A product
    whose K is small next to its fp32 output (the backward's C x d accumulations) is bound by
    that output's traffic: no kernel runs it closer to the peak."""
    ops = [o for o in pl.fwd + pl.bwd if o.path == "cublas" and o.flops]
    peak = gpu.peak[prec] * 1e12
    return sum(o.flops for o in ops) / sum(max(o.flops / peak, o.bytes / (gpu.hbm_tbs * 1e12)) for o in ops) / peak


def targets(rows: list) -> list:
    """Issue 12's targets, as the model predicts them for the CUDA backend (algo auto)."""
    g = {(r["gpu"], r["shape"], r["scenario"], r["impl"]): r for r in rows}
    shapes = {s.name: s for s in SHAPES}
    out = []
    for gname in dict.fromkeys(r["gpu"] for r in rows):
        gpu = GPUS[gname]
        for shape in ("mixed4f", "mixed3c"):
            ours = g[(gname, shape, "bf16", "mtut-cuda-auto")]["total_ms"]
            pl = plan("mtut-cuda-auto", shapes[shape].problem, "bf16", gpu)
            share, roof = gemm_share(pl, gpu, "bf16"), gemm_roofline_share(pl, gpu, "bf16")
            vs = []
            for base, want in (("expert-eager", 2), ("mmpose-eager", 5)):
                r = g[(gname, shape, "bf16", base)]
                vs.append(f"{r['total_ms'] / ours:.1f}x faster than {base} (target {want}x: "
                          + ("OOM there" if r["oom"] else "met" if r["total_ms"] / ours >= want else "NOT met") + ")")
            out.append(f"- {gname}, {shape}, bf16, N = 6, M = 2, forward + backward: {_ms(ours)} ms, " + ", ".join(vs)
                       + f"; its cuBLAS products at {share:.0%} of the bf16 dense peak (target 60%: "
                       + ("met" if share >= 0.6 else "NOT met") + f"; at their rooflines they would reach {roof:.0%}).")
        floor = launch_floor() * 1e3
        per = []
        for sc in SCENARIOS:
            worst = max((g[(gname, s, sc, "mtut-cuda-auto")] for s in ("mixed5c_224", "mixed5c_112")),
                        key=lambda r: r["total_ms"])
            per.append(f"{sc} {_ms(worst['total_ms'])} ms ({worst['total_ms'] / floor:.1f}x, {worst['bound']}-bound)")
        out.append(f"- {gname}, Mixed_5c (the slower of 224 and 112, M = 2), against the launch-latency floor"
                   f" {_ms(floor)} ms (launch_floor: one kernel each way through the Python API; target within 2x): "
                   + ", ".join(per) + ".")
    return out


def _vs(a: float, b: float) -> str:
    """'2.1x slower than' / '1.3x faster than' for time a against time b."""
    return f"{a / b:.1f}x slower than" if a >= b else f"{b / a:.2f}x faster than"


def _ms(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else (f"{v:.1f}" if v >= 10 else (f"{v:.2f}" if v >= 1 else f"{v:.3f}"))


def markdown(rows: list, date: str) -> str:
    fast = fastest(rows)
    L = [
        f"# SSA loss on Hopper GPUs: PREDICTED times ({date})",
        "",
        "**Every number in this file is a prediction of `bench/gpu_model.py`, not a measurement.** No GPU has run",
        "this project's code yet; `make bench-gpu` on one writes the measured counterpart (bench/results/cuda-<date>.*).",
        "",
        "## Assumptions",
        "",
        "- Peaks (dense, SXM, NVIDIA datasheets): bf16/fp16 tensor 989.4, TF32 tensor 494.7, FP32 SIMT 66.9, FP64",
        "  tensor 66.9 TFLOP/s; HBM 3.35 TB/s (H100 SXM 80 GB), 4.8 TB/s (H200 141 GB); 132 SMs.",
        f"- cuBLAS (at::bmm and friends): {EFF['cublas']['bf16']:.0%} of the bf16 peak (measured 78-81% on this",
        "  workplace's H200 for 8192^3), TF32 "
        f"{EFF['cublas']['tf32']:.0%}, FP32 SIMT {EFF['cublas']['fp32']:.0%}; times wave quantization over 132 SMs",
        f"  (tiles 128x256 bf16, 128x128 otherwise) and K / (K + {K_OVERHEAD}) for the fixed cost of a tile.",
        "- The CUDA backend (csrc/cuda/ssa_cuda.cu): every product is cuBLAS (the rate above), in the input precision",
        "  (bf16 operands for bf16 inputs); our kernels are memory-bound (row norms, square sums, the one-pass",
        "  scaling of the products' derived operands, normalization backward); the gram blocks are kept for the",
        "  backward; for equal channel counts the backward's products run over M - 1 (sample, modality) rows a",
        "  sample, picked on the GPU (pointer-array products; else every sample of a modality); there gram folds the",
        "  normalization backward into the weighted blocks, so its products write the gradient itself (bf16: per",
        "  strip of positions the maps' columns stacked by a copy kernel, then ONE product of K = M C written in bf16;",
        "  fp32: M products accumulating into the gradient; no graw buffer, no normalization pass). The forward Gram blocks of one shape are ONE",
        "  pointer-array product (over block x slice x sample entries, as fast as a strided batched one), split-K",
        "  where gram_splits (the code's rule, copied) says so; the partials cost memory traffic. cuBLAS is assumed not to split",
        "  K of a batched product on its own (at::bmm of the baselines and of the unsplit blocks): if it does, the",
        "  baselines' and the unsplit products' times at Mixed_3c drop by up to half.",
        "- The Triton backend (mtut_ops/triton, since issue 12): per call the M maps are staged (_stage_rows: one",
        "  launch per modality, each row read from HBM, read again from L2, written normalized in the input dtype,",
        "  padded to ld = d rounded up to 16), forward and backward alike (nothing is kept); every GEMM is a plain",
        "  tl.dot on the staged operands: bf16 and TF32 on tensor cores (mma/wgmma, checked by tools/triton_static.py),",
        f"  at {EFF['triton-tc']['bf16']:.0%} of the bf16 peak and {EFF['triton-tc']['tf32']:.0%} of the TF32 peak in the"
        " main loop (0.70 of cuBLAS's rate: no TMA,",
        "  no warp specialization; public H100 points 0.51-0.57 (triton issue 2339, 2023) to 'on par' (Triton's",
        f"  tutorial)), exact float32 on FMA at {EFF['triton-fma']['fp32']:.0%} of the FP32 peak; times K / (K + {K_OVERHEAD}),"
        " wave quantization of",
        f"  the live programs over 132 SMs (one at a time per SM), bound by L2 ({L2_TBS:g} TB/s assumed; every tile's",
        "  operands re-read through L2). Each kernel at the autotune config (mtut_ops/triton/*.py, block sizes) the",
        "  model predicts fastest. The normalization backward is torch eager (9 float32 passes per modality).",
        f"- Memory-bound kernels at {EFF_HBM:.0%} of HBM bandwidth; every kernel at least {MIN_KERNEL_S * 1e6:g} µs.",
        f"- Host time per op: eager ATen op {HOST['eager_op'] * 1e6:g} µs (view {HOST['view_op'] * 1e6:g}), inductor"
        f" kernel {HOST['inductor_kernel'] * 1e6:g} µs + {HOST['graph_call'] * 1e6:g} µs per graph call, C++ op"
        f" {HOST['cpp_op'] * 1e6:g} µs, mtut API call {HOST['api_call'] * 1e6:g} µs (and"
        f" {HOST['py_node'] * 1e6:g} µs each way for a second autograd node: the Triton backend's loss op; the CUDA"
        f" backend's ssa_loss is one node),",
        f"  Triton launch from Python {HOST['triton_launch'] * 1e6:g} µs, small host->GPU tensor"
        f" {HOST['h2d_tensor'] * 1e6:g} µs (and it waits for the stream: the Triton backend's host and GPU times add).",
        "  Wall time = max(GPU, host) elsewhere.",
        "- The eager baselines' kernels are their real ATen ops (traced on meta tensors of each shape); the compiled",
        "  baselines keep those GEMMs and fuse the rest (bench/gpu_model.py compiled_*); mtut's kernels are counted",
        "  from csrc/cuda and mtut_ops/triton. Both networks train (every modality needs a gradient); per sample the",
        "  losses are distinct, so M - 1 modalities get SSA gradient (what the backward's weight skipping sees).",
        "- The redesign (not implemented; bench/gpu_model.py redesign_plan): as the CUDA backend (the backward over",
        "  the rows with a non-zero weight, as the CUDA backend now does for equal channel counts), and gram: ONE GEMM",
        "  for the upper blocks (m <= n) of H over the stacked rows, kept; fused square-sum; backward ONE GEMM W X.",
        "  direct (d <= C): K_m by cuBLAS, one fused pairwise square-difference reduce, backward E_m fused + ONE GEMM.",
        "  auto: the CUDA rule (direct while d (C + 2P) <= alpha C^2 or d <= d_direct; mtut_ops/_validation.py AUTO_RULES).",
        "- Not modelled: clock throttling, L2 residency between kernels, CUDA-graph capture (it would remove most",
        "  host time), num_warps / num_stages (the Triton configs enter by block sizes only), programs that exit",
        "  at once (lower tiles, rows without weight), the staging kernel's float64 arithmetic.",
        "",
        "## Headline: fastest implementation per shape (forward + backward, predicted ms)",
        "",
        "| GPU | shape | scenario | fastest mtut now | ms | auto picks | auto right (cuda / triton) | best baseline | ms |"
        " redesign, auto: ms | redesign vs best baseline | redesign's better algo |",
        "|---|---|---|---|---:|---|---|---|---:|---:|---:|---|",
    ]
    for f in fast:
        L.append(f"| {f['gpu']} | {f['shape']} | {f['scenario']} | {f['fastest_ours']} | {_ms(f['fastest_ours_ms'])} |"
                 f" {f['auto_algo']} | {'yes' if f['auto_right_cuda'] else 'NO'} / "
                 f"{'yes' if f['auto_right_triton'] else 'NO'} | {f['best_baseline']} | {_ms(f['best_baseline_ms'])} |"
                 f" {_ms(f['redesign_ms'])} | {f['best_baseline_ms'] / f['redesign_ms']:.1f}x |"
                 f" {f['redesign_best'].split('-')[-1]} |")
    L += ["", "## Default backend and auto rule on a GPU (predicted)", ""] + verdict(rows)
    L += ["", "## Issue 12's targets (predicted)", ""] + targets(rows)
    L += ["", "## Reading (predicted)", ""] + reading(rows)
    L += ["", "## All implementations (predicted ms: forward / forward + backward)", ""]
    for gname in dict.fromkeys(r["gpu"] for r in rows):
        for scen in SCENARIOS:
            L += [f"### {gname}, {scen}", "", "| shape | " + " | ".join(IMPLS) + " |",
                  "|---|" + "---:|" * len(IMPLS)]
            for s in dict.fromkeys(r["shape"] for r in rows):
                g = {r["impl"]: r for r in rows if r["gpu"] == gname and r["scenario"] == scen and r["shape"] == s}
                cells = []
                for i in IMPLS:
                    r = g[i]
                    c = f"{_ms(r['fwd_ms'])} / {_ms(r['total_ms'])}"
                    if r["oom"]:
                        c = f"OOM ({r['peak_gb']:.0f} GB)"
                    elif r["bound"] == "host":
                        c += " h"
                    cells.append(c)
                L.append(f"| {s} | " + " | ".join(cells) + " |")
            L.append("")
    L += ["`h`: host-bound (the GPU is busy for less than 2/3 of the wall time). OOM: the eager trace's peak",
          "memory exceeds the GPU's.", "", "## Sensitivity", ""]
    L += [f"- {line}" for line in sensitivity()]
    L.append("")
    return "\n".join(L)


def crossovers(gpu: str = "H100-SXM", N: int = 6, per_modality=(64, 128, 256, 512, 832, 1024), Ms=(2, 3)) -> list:
    """Where each backend's gram algorithm becomes faster than its direct one (fwd + bwd),
    per scenario, M and channels per modality: the smallest d of a geometric grid (8 ..
    40000, 120 points) with gram faster, and alpha = d (C + 2P) / C^2 there. The constants of
    mtut_ops/_validation.py AUTO_RULES (alpha, d_direct) are read off this table: alpha from
    the large-C rows, d_direct from the small-C ones (where launches and memory decide)."""
    g = GPUS[gpu]
    grid = sorted({int(round(v)) for v in np.geomspace(8, 40000, 120)})
    out = []
    for backend, scen, M, c in itertools.product(("cuda", "triton"), SCENARIOS, Ms, per_modality):
        C, P = c * M, M * (M - 1) // 2

        def gram_faster(d: int) -> bool:
            p = Problem(N, (c,) * M, d)
            return plan(f"mtut-{backend}-direct", p, scen, g).times(g)[1] > \
                plan(f"mtut-{backend}-gram", p, scen, g).times(g)[1]

        cross = next((d for d in grid if gram_faster(d)), None)
        out.append({"backend": backend, "scenario": scen, "M": M, "C_m": c, "d_cross": cross,
                    "alpha": None if cross is None else cross * (C + 2 * P) / C ** 2,
                    "rule_gram_from": next((d for d in grid if resolve_auto(Problem(1, (c,) * M, d), backend, scen)
                                            == "gram"), None)})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--date", default=dt.date.today().isoformat())
    ap.add_argument("--crossovers", action="store_true",
                    help="print where gram overtakes direct per backend and dtype (the auto rules' source) and exit")
    args = ap.parse_args(argv)
    if args.crossovers:
        print("backend scenario M C_m d_cross alpha rule_gram_from")
        for r in crossovers():
            a = "-" if r["alpha"] is None else f"{r['alpha']:.2f}"
            print(r["backend"], r["scenario"], r["M"], r["C_m"], r["d_cross"], a, r["rule_gram_from"])
        return
    rows = predict()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"gpu-model-{args.date}"
    with open(f"{stem}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    Path(f"{stem}.md").write_text(markdown(rows, args.date))
    print("wrote", f"{stem}.md", f"{stem}.csv")


if __name__ == "__main__":
    main()
