"""The direct algorithm (docs/design.md §2) in triton: tiles of the d x d matrices, nothing d x d stored.

The kernels read the staged stack z (``_common.pack``: normalized rows, already in the
operand type, zero-padded to ld positions, which the kernels take for d), so every K tile
is a plain GEMM over the channels, K_m[I, J] =
sum_c z[c, I] z[c, J], a tensor-core mainloop for float16/bfloat16/TF32 operands
(float32 accumulation), fp64 tensor cores for float64, exact fp32 FMA otherwise.

Forward: one program per (upper tile (I, J) of the d x d plane, sample b, pair m < n)
builds the tiles K_m[I, J] and K_n[I, J], forms D = K_m - K_n element-wise (no
cancellation), and writes sum D^2 (in float64; twice for a tile off the diagonal, which
stands for its mirror too) to its own slot of a partial-sum buffer. The slots are summed
by torch in a fixed order: no atomics, bit-reproducible. Each K_m tile is rebuilt once
per pair it is in (M - 1 times; once for M = 2).

Backward: dS_mn/dXh_m = 4 Xh_m D_mn, so the gradient into Xh_m is Xh_m E_m with
E_m = 4 sum_n w_mn (K_m - K_n). One program per (column block J, sample b, modality m)
walks the row blocks I, builds the tile E_m[I, J] in float32 registers and adds
Xh_m[:, I] E_m[I, J] into its own columns J of the output, so every output element has
one owner and a fixed summation order. Rows m with no non-zero weight (the better
network of every pair) are skipped.

That last product is a GEMM too, so E is rounded to the operand type (``round_operand``).
Its entries carry the weights w = lambda/N rho ddelta/dS, easily 1e-9 and below, far
under float16's range (6e-8 is its smallest subnormal): for float16 each E tile is first
scaled by a power of two sigma with max|E_tile| < sigma <= 2 max|E_tile| (exactly, by
exponent arithmetic), rounded, multiplied, and the product scaled back by sigma (exact).
So |E~ sigma - E| <= u |E| + 2^-25 sigma elementwise (u = 2^-11; the second term for
entries that land among float16's subnormals, < 2^-24 max|E_tile| in total). bfloat16 and
TF32 have float32's exponent range and need no scale (u = 2^-8, 2^-11).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    Packed,
    configs,
    dot_precision,
    index_table,
    launcher_kind,
    launchers,
    min_block,
    on_device,
    round_operand,
    wrap_triton,
)

# (BLOCK_D, BLOCK_C, num_warps, num_stages) per kind of operand; each free of spills and
# within shared memory on sm_80 and sm_90 (tools/triton_static.py), with triton 3.8 and with
# 3.6 (torch 2.11's; three configs one stage less than before: 3.6 spilled 8-32 B on sm_80)
_FORWARD_CONFIGS = configs(
    ("BLOCK_D", "BLOCK_C"),
    {
        "tc16": [(64, 32, 4, 2), (64, 64, 4, 3), (128, 32, 8, 3), (128, 64, 8, 2)],
        "tf32": [(64, 32, 4, 3), (64, 32, 8, 3), (128, 32, 8, 2)],
        "ieee": [(32, 32, 4, 2), (64, 16, 4, 2), (64, 32, 8, 2)],
        "fp64": [(32, 32, 4, 2)],
    },
)
_BACKWARD_CONFIGS = configs(
    ("BLOCK_D", "BLOCK_C"),
    {
        "tc16": [(64, 32, 4, 3), (64, 32, 8, 3), (64, 64, 8, 3)],
        "tf32": [(64, 16, 4, 2), (64, 32, 8, 3), (64, 64, 8, 1)],
        "ieee": [(32, 32, 4, 1), (32, 16, 4, 2)],
        "fp64": [(32, 32, 4, 1)],
    },
)
_INTERPRETED_CONFIG = triton.Config({"BLOCK_D": 16, "BLOCK_C": 16})


@triton.jit
def _k_tile(
    z,
    c_start,
    c_end,
    offs_i,
    offs_j,
    mask_i,
    mask_j,
    d,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """K[I, J] = sum_c z[c, I] z[c, J] over the staged rows [c_start, c_end) of one sample;
    float64 for float64 operands, else float32."""
    if z.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    for c0 in range(c_start, c_end, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < c_end
        rows = z + offs_c[:, None].to(tl.int64) * d
        xi = tl.load(rows + offs_i[None, :], mask=mask_c[:, None] & mask_i[None, :], other=0.0)
        xj = tl.load(rows + offs_j[None, :], mask=mask_c[:, None] & mask_j[None, :], other=0.0)
        if UPCAST:
            xi = xi.to(tl.float32)
            xj = xj.to(tl.float32)
        acc = tl.dot(tl.trans(xi), xj, acc, input_precision=PRECISION, out_dtype=acc.dtype)  # (triton 3.6: say fp64)
    return acc


@triton.jit
def _direct_forward(
    z,
    offsets,
    pairs,
    partial,
    d,
    C,
    P,
    n_slots,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """partial[b, p, tile] = sum over the tile (I, J), I <= J, of (K_m - K_n)^2 for pair p = (m, n)."""
    tile = tl.program_id(0)
    b = tl.program_id(1)
    p = tl.program_id(2)
    n_tiles = tl.cdiv(d, BLOCK_D)
    ti = tile // n_tiles
    tj = tile % n_tiles
    if ti <= tj:  # the upper triangle: D is symmetric
        m = tl.load(pairs + 2 * p)
        n = tl.load(pairs + 2 * p + 1)
        z_b = z + b.to(tl.int64) * C * d
        offs_i = ti * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_j = tj * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_i = offs_i < d
        mask_j = offs_j < d
        k_m = _k_tile(
            z_b,
            tl.load(offsets + m),
            tl.load(offsets + m + 1),
            offs_i,
            offs_j,
            mask_i,
            mask_j,
            d,
            BLOCK_D,
            BLOCK_C,
            PRECISION,
            UPCAST,
        )
        k_n = _k_tile(
            z_b,
            tl.load(offsets + n),
            tl.load(offsets + n + 1),
            offs_i,
            offs_j,
            mask_i,
            mask_j,
            d,
            BLOCK_D,
            BLOCK_C,
            PRECISION,
            UPCAST,
        )
        diff = (k_m - k_n).to(tl.float64)  # D rounded once, then squared and summed in float64
        total = tl.sum(tl.sum(diff * diff, axis=1), axis=0)
        if ti < tj:
            total = total * 2.0  # the mirror tile (J, I)
        tl.store(partial + (b * P + p).to(tl.int64) * n_slots + tile, total)


@triton.jit
def _pow2_scale(e):
    """(sigma, 1 / sigma): powers of two with max|e| < sigma <= 2 max|e| for a float32 tile
    (exponent arithmetic, exact; the exponent clamped to [1, 252] so both stay normal: a tile
    of zeros, subnormals or non-finite values gets a harmless finite scale)."""
    amax = tl.max(tl.max(tl.abs(e), axis=1), axis=0)
    expo = (amax.to(tl.int32, bitcast=True) >> 23) & 0xFF
    expo = tl.minimum(tl.maximum(expo, 1), 252)
    sigma = ((expo + 1) << 23).to(tl.float32, bitcast=True)
    inv_sigma = ((253 - expo) << 23).to(tl.float32, bitcast=True)
    return sigma, inv_sigma


@triton.jit
def _direct_backward(
    z,
    offsets,
    weight,
    out,
    d,
    C,
    M,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    ROUND: tl.constexpr,
):
    """out[b, c, J] = sum_I xh[c, I] E_m[I, J] for the channels c of modality m, E_m = 4 sum_n w_mn (K_m - K_n)."""
    tj = tl.program_id(0)
    b = tl.program_id(1)
    m = tl.program_id(2)
    w_row = weight + (b * M + m) * M
    active = 0
    for n in range(0, M):
        w = tl.load(w_row + n)
        active += ((w != 0) & (n != m)).to(tl.int32)  # NaN counts as non-zero: it must propagate
    if active > 0:  # else out stays zero: no term pulls on X_m for this sample
        z_b = z + b.to(tl.int64) * C * d
        out_b = out + b.to(tl.int64) * C * d
        c_start = tl.load(offsets + m)
        c_end = tl.load(offsets + m + 1)
        offs_j = tj * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_j = offs_j < d
        for ti in range(0, tl.cdiv(d, BLOCK_D)):
            offs_i = ti * BLOCK_D + tl.arange(0, BLOCK_D)
            mask_i = offs_i < d
            k_m = _k_tile(z_b, c_start, c_end, offs_i, offs_j, mask_i, mask_j, d, BLOCK_D, BLOCK_C, PRECISION, UPCAST)
            e = tl.zeros_like(k_m)
            for n in range(0, M):
                w = tl.load(w_row + n).to(k_m.dtype)
                if (n != m) & (w != 0):
                    k_n = _k_tile(
                        z_b,
                        tl.load(offsets + n),
                        tl.load(offsets + n + 1),
                        offs_i,
                        offs_j,
                        mask_i,
                        mask_j,
                        d,
                        BLOCK_D,
                        BLOCK_C,
                        PRECISION,
                        UPCAST,
                    )
                    e += (4.0 * w) * (k_m - k_n)  # D formed element-wise, as in the forward
            if ROUND == 1:  # float16: scale E into range first (module docstring)
                sigma, inv_sigma = _pow2_scale(e)
                e_op = round_operand(e * inv_sigma, ROUND, UPCAST)
            else:
                e_op = round_operand(e, ROUND, UPCAST)
            for c0 in range(c_start, c_end, BLOCK_C):
                offs_c = c0 + tl.arange(0, BLOCK_C)
                mask_c = offs_c < c_end
                rows = offs_c[:, None].to(tl.int64) * d
                x = tl.load(z_b + rows + offs_i[None, :], mask=mask_c[:, None] & mask_i[None, :], other=0.0)
                if UPCAST:
                    x = x.to(tl.float32)
                upd = tl.dot(x, e_op, input_precision=PRECISION)  # xh[c, I] E[I, J]
                if ROUND == 1:
                    upd = upd * sigma
                ptrs = out_b + rows + offs_j[None, :]
                mask = mask_c[:, None] & mask_j[None, :]
                if ti > 0:
                    upd += tl.load(ptrs, mask=mask, other=0.0)
                tl.store(ptrs, upd, mask=mask)
            # The next row block reads back what this one stored, maybe from other threads.
            tl.debug_barrier()


# reset_to_zero: a config with bigger tiles leaves the extra slots of a finer one alone.
_FORWARD = launchers(
    _direct_forward, _FORWARD_CONFIGS, _INTERPRETED_CONFIG, key=["d", "C", "P"], reset_to_zero=["partial"]
)
# No reset needed: whatever the config, a program either writes all of its columns of
# rows m (the first row block stores, later ones add) or, with no weight, none of them.
_BACKWARD = launchers(_direct_backward, _BACKWARD_CONFIGS, _INTERPRETED_CONFIG, key=["d", "C", "M"])


def direct_forward(pk: Packed, pairs: torch.Tensor) -> torch.Tensor:
    """sum_{ij} (K_m - K_n)^2 per sample and pair of ``pairs`` ([P, 2] int32, m < n): [N, P] float64."""
    info = pk.info
    P = pairs.shape[0]
    kernel = _FORWARD[launcher_kind(pk)]
    n_slots = triton.cdiv(pk.ld, min_block(kernel, "BLOCK_D")) ** 2
    # One slot per tile of the finest tiling; tiles below the diagonal (and the extra slots
    # of a coarser tiling) stay zero.
    partial = torch.zeros((info.N, P, n_slots), dtype=torch.float64, device=pk.z.device)

    def grid(meta):
        return (triton.cdiv(pk.ld, meta["BLOCK_D"]) ** 2, info.N, P)

    with on_device(pk.z):
        wrap_triton(kernel)[grid](
            pk.z,
            pk.offsets_t,
            pairs,
            partial,
            pk.ld,
            pk.C,
            P,
            n_slots,
            PRECISION=dot_precision(pk.mode),
            UPCAST=pk.upcast,
        )
    return partial.sum(-1)


def direct_backward(pk: Packed, weight: torch.Tensor, needs_grad) -> torch.Tensor:
    """The gradient into the stacked Xh: rows of modality m get sum_n weight[:, m, n] dS_mn/dXh_m,
    for the modalities with needs_grad[m] (the others' programs find no weight and exit). [N, C, ld]."""
    info = pk.info
    out = torch.zeros((info.N, pk.C, pk.ld), dtype=pk.inv.dtype, device=pk.z.device)
    needed = index_table(tuple(bool(x) for x in needs_grad), torch.bool, pk.z)[:, None]
    w = torch.where(needed, weight.to(pk.inv.dtype), 0.0).contiguous()  # exact zeros, even for a NaN weight
    kernel = _BACKWARD[launcher_kind(pk)]

    def grid(meta):
        return (triton.cdiv(pk.ld, meta["BLOCK_D"]), info.N, info.M)

    with on_device(pk.z):
        wrap_triton(kernel)[grid](
            pk.z,
            pk.offsets_t,
            w,
            out,
            pk.ld,
            pk.C,
            info.M,
            PRECISION=dot_precision(pk.mode),
            UPCAST=pk.upcast,
            ROUND=pk.round_code,
        )
    return out
