"""Pieces shared by the triton kernels: the interpreter switch, the operand type of the
dots, autotuning, staging the M maps into one normalized stack, the normalization backward.

Operands. Every GEMM-shaped loop of the kernels is a ``tl.dot`` on operands read straight
from memory, so that triton pipelines it (cp.async, ldmatrix, mma.sync on sm_80, wgmma on
sm_90) and the loop is a tensor-core mainloop. What the operands are is decided once per
call, by ``operand_mode`` (read when the op runs, not when a graph is traced: see there):

    input dtype   mode    operands of the dots                    accumulation
    float16       fp16    float16  (tensor cores)                 float32
    bfloat16      bf16    bfloat16 (tensor cores)                 float32
    float32       tf32    float32 rounded to TF32 (tensor cores)  float32   (torch allows TF32)
    float32       ieee    float32  (exact fp32 FMA)               float32   (it does not)
    float64       ieee    float64  (fp64 tensor cores on sm_80+)  float64

``pack`` writes the normalized rows ``xh = x / max(||x||, eps)`` of all M maps, stacked
([N, C, ld], C = sum_m C_m, modality m owning rows ``offsets[m]:offsets[m+1]``), already
rounded to the operand type: ``s = 1 / max(||x||, eps)`` from a float64 sum of squares,
rounded to float32, ``v = x * s`` in float32, then rounded to float16/bfloat16 (nearest,
ties to even) or TF32 (nearest, ties away: cvt.rna.tf32.f32). That is bit for bit what
``python_tests/error_bounds.py:staged_rows`` models, so the tests hold each tensor-core
path to the exact S of its rounded operands. Normalized rows are at most 1 in size, so no
rounding to float16 can overflow, and an entry below float16's normal range (6.1e-5)
loses at most 2^-25 absolutely against a unit row. The stack replaces the plain copy the
kernels would read otherwise (same dtype): no extra memory beyond the padding below.

Rows are padded with zeros to ``ld``, d rounded up to a multiple of 16, and the GEMM
kernels run over ld positions as if it were d: a zero position adds nothing to a Gram
entry and makes a zero row and column of every K (so D is 0 there). Then every row starts
16-element aligned and every mask along the positions is constant over 16 elements, which
is what triton needs to vectorize the loads and turn them into cp.async (or TMA) copies of
a pipelined mainloop: with d = 392 (I3D Mixed_5c) 16-bit loads would otherwise be scalar
and the loop not pipelined at all.

The kernels take the accumulator type from the operands (float64 for float64, else
float32) and, under the interpreter, the ``UPCAST`` flag: the interpreter stores bfloat16
as uint16 and would multiply those integers in its dot, so there bfloat16 operands are
widened to float32 first (exactly: every bfloat16 is a float32), which is also what the
tensor cores compute (exact products, float32 sums).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .. import _validation as V
from .._torch_private import is_fake

#: True when triton.jit builds interpreted kernels (TRITON_INTERPRET=1): fixed at import.
INTERPRETED = bool(
    getattr(triton, "knobs", None) and triton.knobs.runtime.interpret
)  # no knobs: triton < 3.4, never registered

if INTERPRETED:

    def wrap_triton(kernel):
        """The kernel as it is: under the interpreter the ops are custom_ops that nothing
        traces into, and torch 2.11's wrap_triton fails on triton 3.6's interpreted kernels."""
        return kernel
else:
    # (torch's triton_op finds an op's kernels by this name at the call sites: keep it)
    from torch.library import wrap_triton


#: tl.constexpr codes of the operand modes (what a 16-bit or TF32 rounding rounds to).
ROUND_CODE = {"ieee": 0, "fp16": 1, "bf16": 2, "tf32": 3}


def tf32_allowed() -> bool:
    """torch's switch for TF32 in float32 matmuls (``torch.backends.cuda.matmul.allow_tf32``,
    ``torch.set_float32_matmul_precision("high")`` or ``fp32_precision = "tf32"``), the one the
    cuda backend reads (at::globalContext().allowTF32CuBLAS()). Read through ``fp32_precision``
    as inductor does: the legacy getter raises once the new API has been used."""
    return torch.backends.cuda.matmul.fp32_precision == "tf32"


def operand_mode(dtype: torch.dtype) -> str:
    """The operand type of the dots for inputs of ``dtype`` (module docstring), read now.

    Eagerly every call reads torch's TF32 switch. A compiled graph (torch.compile with
    inductor traces into these ops) bakes the mode in when it is traced; dynamo guards
    every compiled graph on the TF32 switch (its global-state guard), so flipping the
    switch between calls recompiles (or picks the graph compiled for that setting) rather
    than running the stale choice. The backward of a compiled graph runs with the choice
    of its forward. A captured CUDA graph replays what was captured."""
    if dtype == torch.float16:
        return "fp16"
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float32 and tf32_allowed():
        return "tf32"
    return "ieee"


def dot_precision(mode: str) -> str:
    """tl.dot's input_precision for a mode: "tf32" only for TF32 operands (already rounded
    by ``pack``, so whatever the hardware does with their low bits is exact); float16 and
    bfloat16 dots ignore it; float32 "ieee" is exact fp32, float64 always is."""
    return "tf32" if mode == "tf32" else "ieee"


#: The kinds of operands, each with its own autotune configs (``launchers``).
KINDS = ("tc16", "tf32", "ieee", "fp64")


def launchers(kernel, configs: dict, interpreted, key: list, **kwargs) -> dict:
    """Autotuned launchers of one @triton.jit ``kernel``, one per kind of operand (KINDS):
    "tc16" (float16, bfloat16) and "tf32" (TF32) on tensor cores, "ieee" (exact float32, FMA),
    "fp64" (fp64 tensor cores), each over ``configs[kind]``.

    The kinds get their own configs: tensor-core tiles want to be large, TF32 operands take
    twice the shared memory and registers of 16-bit ones, exact float32 tiles must stay small
    enough not to spill (tools/triton_static.py checks every config of every kind for sm_80
    and sm_90: tensor-core instructions, no spills, shared memory within the limit).
    float64, the oracle dtype, gets one config: inductor re-autotunes the kernels it compiles
    and may pick another config than eager mode did, i.e. another rounding, so float64 eager
    and compiled results agree bit for bit only with one. Under the interpreter all use the
    one ``interpreted`` config (benchmarking interpreted kernels would take minutes). Every
    block size is >= 16, the smallest tl.dot accepts on a GPU. The autotuner's key holds the
    listed size arguments and the dtypes of the tensor arguments."""
    assert set(configs) == set(KINDS) and len(configs["fp64"]) == 1
    return {
        kind: triton.autotune(configs=[interpreted] if INTERPRETED else cfgs, key=key, **kwargs)(kernel)
        for kind, cfgs in configs.items()
    }


def launcher_kind(pk: "Packed") -> str:
    if pk.z.dtype == torch.float64:
        return "fp64"
    return {"fp16": "tc16", "bf16": "tc16"}.get(pk.mode, pk.mode)


def configs(names: tuple, tables: dict) -> dict:
    """{kind: [triton.Config]} from {kind: [(block sizes..., num_warps, num_stages)]}."""
    return {
        kind: [triton.Config(dict(zip(names, row[:-2])), num_warps=row[-2], num_stages=row[-1]) for row in table]
        for kind, table in tables.items()
    }


def min_block(kernel, name: str) -> int:
    """The smallest value of a block size over a launcher's configs (sizes the
    partial-sum buffers, whose shape must not depend on the config autotuning picks)."""
    return min(c.kwargs[name] for c in kernel.configs)


def on_device(t: torch.Tensor):
    """Launch on ``t``'s GPU (triton launches on the current device). While tracing (fake
    tensors) nothing is launched, and the compiled graph's launches bring their own guard."""
    return torch.cuda.device(t.device) if t.is_cuda and not is_fake(t) else contextlib.nullcontext()


def check_device(info: V.FeatInfo) -> None:
    if info.device.type == "cuda" or (info.device.type == "cpu" and INTERPRETED):
        return
    raise ValueError(
        f"mtut: the triton ops need CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got tensors on {info.device}"
    )


# ------------------------------------------------------------------ rounding to the operand type


@triton.jit
def _round_bf16(v):
    """float32 -> the nearest bfloat16 (ties to even), kept in float32 (so that storing or
    converting it to bfloat16 is exact everywhere: the interpreter's float32 -> bfloat16
    conversion truncates). Overflow goes to inf, NaN stays NaN."""
    bits = v.to(tl.int32, bitcast=True)
    r = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return tl.where(v != v, v, r.to(tl.float32, bitcast=True))


@triton.jit
def _round_tf32(v):
    """float32 -> the nearest TF32 (ties away from zero, as cvt.rna.tf32.f32), in float32."""
    bits = v.to(tl.int32, bitcast=True)
    r = (bits + 0x1000) & -8192
    return tl.where(v != v, v, r.to(tl.float32, bitcast=True))


@triton.jit
def round_operand(v, ROUND: tl.constexpr, UPCAST: tl.constexpr):
    """A float32 tile (or float64: ROUND 0) rounded to the operand type of ROUND_CODE:
    a float16/bfloat16 tile (float32 for bfloat16 under the interpreter, UPCAST), or TF32
    values in float32; ROUND 0 leaves it as it is."""
    if ROUND == 1:
        r = v.to(tl.float16)  # cvt.rn.f16.f32 / numpy: nearest even, subnormals kept
        if UPCAST:
            r = r.to(tl.float32)
    elif ROUND == 2:
        r = _round_bf16(v)
        if not UPCAST:
            r = r.to(tl.bfloat16)  # exact: r is a bfloat16 value
    elif ROUND == 3:
        r = _round_tf32(v)
    else:
        r = v
    return r


# ------------------------------------------------------------------ staging


@triton.jit
def _stage_rows(
    x,
    stride_n,
    stride_c,
    stride_d,
    z,
    norm,
    inv,
    row0,
    C,
    C_m,
    d,
    ld,
    eps: "fp64",
    ROUND: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One channel row (sample b, channel c of one modality, strided x) -> row row0 + c of
    the stack z[b] (zeros from d to ld): norm = ||x|| (float64 sum), inv = 1 / max(norm, eps)
    rounded to the compute type, z = round(x * inv). The row is read twice (the second time
    mostly from L2)."""
    pid = tl.program_id(0)
    b = pid // C_m
    c = pid % C_m
    src = x + b.to(tl.int64) * stride_n + c.to(tl.int64) * stride_c
    acc = tl.zeros((BLOCK,), dtype=tl.float64)
    for k0 in range(0, d, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        v = tl.load(src + offs.to(tl.int64) * stride_d, mask=offs < d, other=0.0).to(tl.float64)
        acc += v * v
    nrm = tl.sqrt(tl.sum(acc, axis=0))
    s = 1.0 / tl.maximum(nrm, eps, propagate_nan=tl.PropagateNan.ALL)
    row = b.to(tl.int64) * C + row0 + c
    s = s.to(inv.dtype.element_ty)
    tl.store(norm + row, nrm.to(norm.dtype.element_ty))
    tl.store(inv + row, s)
    dst = z + row * ld
    for k0 in range(0, ld, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        v = tl.load(src + offs.to(tl.int64) * stride_d, mask=offs < d, other=0.0).to(inv.dtype.element_ty) * s
        tl.store(dst + offs, round_operand(v, ROUND, False), mask=offs < ld)


_STAGE_BLOCK = 16 if INTERPRETED else 512
_STAGE_WARPS = 4


@dataclass
class Packed:
    """The M feature maps as the kernels read them."""

    info: V.FeatInfo
    mode: str  # operand_mode of the inputs' dtype, read once per call
    z: torch.Tensor  # [N, C, ld] normalized rows rounded to the operand type, zero-padded, contiguous
    norm: torch.Tensor  # [N, C] row norms, compute dtype
    inv: torch.Tensor  # [N, C] 1 / max(norm, eps), compute dtype
    offsets: list  # M + 1 channel offsets (python ints)
    offsets_t: torch.Tensor  # the same, int32 on the device

    @property
    def C(self) -> int:
        return self.offsets[-1]

    @property
    def ld(self) -> int:
        """The padded row length (a multiple of 16) the GEMM kernels take for d."""
        return self.z.shape[2]

    @property
    def round_code(self) -> int:
        return ROUND_CODE[self.mode]

    @property
    def upcast(self) -> bool:
        """Widen bfloat16 operands before tl.dot: only under the interpreter (module docstring)."""
        return INTERPRETED and self.z.dtype == torch.bfloat16


#: Small index tables, one per (values, dtype, device): built once, so that a call copies
#: nothing from the host (a pageable copy stalls the host until the stream reaches it, and
#: CUDA-graph capture refuses it). Bounded by the number of distinct shapes a program runs.
_TABLES: dict = {}
_TABLES_MAX = 1024


def index_table(values, dtype: torch.dtype, like: torch.Tensor) -> torch.Tensor:
    """``values`` (nested tuples of ints or bools) as a tensor of ``dtype`` on ``like``'s device.
    Cached for real tensors; built fresh while tracing (fake or functional tensors, a
    dispatch mode), where a cached real tensor would not mix and nothing is copied anyway.
    The tables are shared: callers only read them."""
    tracing = is_fake(like) or type(like) is not torch.Tensor or torch._C._len_torch_dispatch_stack() > 0
    if tracing:
        return torch.tensor(values, dtype=dtype, device=like.device)
    key = (values, dtype, like.device)
    table = _TABLES.get(key)
    if table is None:
        if len(_TABLES) >= _TABLES_MAX:
            _TABLES.clear()
        with torch.inference_mode(False):  # usable outside an inference_mode region too
            table = torch.tensor(values, dtype=dtype, device=like.device)
        _TABLES[key] = table
    return table


def padded(n):
    """n rounded up to a multiple of 16 (works on symbolic sizes)."""
    return (n + 15) // 16 * 16


def pack(feats, info: V.FeatInfo, eps: float) -> Packed:
    """Stage the M maps (module docstring): one pass over each input, any strides."""
    mode = operand_mode(info.dtype)
    offsets = [0]
    for c in info.channels:
        offsets.append(offsets[-1] + int(c))
    C = offsets[-1]
    device = feats[0].device
    z = torch.empty((info.N, C, padded(info.d)), dtype=info.dtype, device=device)
    norm = torch.empty((info.N, C), dtype=info.compute_dtype, device=device)
    inv = torch.empty((info.N, C), dtype=info.compute_dtype, device=device)
    with on_device(z):
        for m, f in enumerate(feats):
            x = f.reshape(info.N, f.shape[1], info.d)  # a view for the usual strided inputs
            C_m = f.shape[1]
            wrap_triton(_stage_rows)[(info.N * C_m,)](
                x,
                x.stride(0),
                x.stride(1),
                x.stride(2),
                z,
                norm,
                inv,
                offsets[m],
                C,
                C_m,
                info.d,
                z.shape[2],
                eps,
                ROUND=ROUND_CODE[mode],
                BLOCK=_STAGE_BLOCK,
                num_warps=_STAGE_WARPS,
            )
    offsets_t = index_table(tuple(offsets), torch.int32, z)
    return Packed(info, mode, z, norm, inv, offsets, offsets_t)


def normalize_backward(grad_xh: torch.Tensor, pk: Packed, feats, eps: float, needs_grad) -> list:
    """dX from dXh ([N, C, ld]: the padding is dropped here) for every modality with
    needs_grad[m]: dx = (g - xh <xh, g>) / r where r > eps, else g / eps
    (csrc/ssa_common.cpp:normalize_rows_backward), each in its input's shape and dtype; an
    empty tensor for the others. xh here is the unrounded x * inv in the compute dtype (the
    staged operands are only for the dots)."""
    grads = []
    for m, f in enumerate(feats):
        if not needs_grad[m]:
            grads.append(f.new_empty((0,)))
            continue
        lo, hi = pk.offsets[m], pk.offsets[m + 1]
        g = grad_xh[:, lo:hi, : pk.info.d]
        r = pk.norm[:, lo:hi, None]
        xh = f.reshape(g.shape).to(g.dtype) * pk.inv[:, lo:hi, None]
        dot = (xh * g).sum(-1, keepdim=True)
        dx = torch.where(r > eps, (g - xh * dot) / r, g / eps)
        grads.append(dx.reshape(f.shape).to(f.dtype))
    return grads


def pair_tables(M: int, like: torch.Tensor) -> tuple:
    """The unordered pairs m < n as an int32 [P, 2] table, and a [M, M] long map from
    (m, n) to 1 + the pair's index (0 on the diagonal), to scatter [N, P] into [N, M, M];
    on ``like``'s device (cached: index_table)."""
    pairs = [(m, n) for m in range(M) for n in range(m + 1, M)]
    index = [[0] * M for _ in range(M)]
    for p, (m, n) in enumerate(pairs):
        index[m][n] = index[n][m] = p + 1
    return (
        index_table(tuple(pairs), torch.int32, like),
        index_table(tuple(map(tuple, index)), torch.long, like),
    )


def to_square(pair_values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[N, P] values of the pairs m < n -> symmetric [N, M, M] with a zero diagonal."""
    padded = torch.cat([pair_values.new_zeros(pair_values.shape[0], 1), pair_values], dim=1)
    return padded[:, index]
