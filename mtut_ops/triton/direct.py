"""The direct algorithm (DESIGN.md §2) in triton: tiles of the d x d matrices, nothing d x d stored.

Forward: one program per (upper tile (I, J) of the d x d plane, sample b, pair m < n)
builds the tiles K_m[I, J] and K_n[I, J] with tl.dot over channel blocks, forms
D = K_m - K_n element-wise (no cancellation), and writes sum D^2 (twice for a tile off
the diagonal, which stands for its mirror too) to its own slot of a partial-sum buffer.
The slots are summed by torch in a fixed order: no atomics, bit-reproducible.
Each K_m tile is rebuilt once per pair it is in (M - 1 times; once for M = 2).

Backward: dS_mn/dXh_m = 4 Xh_m D_mn, so the gradient into Xh_m is Xh_m E_m with
E_m = 4 sum_n w_mn (K_m - K_n). One program per (column block J, sample b, modality m)
walks the row blocks I, builds the tile E_m[I, J] in registers and adds
Xh_m[:, I] E_m[I, J] into its own columns J of the output, so every output element has
one owner and a fixed summation order. Rows m with no non-zero weight (the better
network of every pair) are skipped.

The normalization enters as the per-channel scale inv: K[I, J] = sum_c inv_c^2 x_cI x_cJ.
That scale sits on the contraction index, so the dot operands are the scaled rows in the
compute dtype (float32, or float64): rounding them back to float16 would cost 2^-11
relative error per entry. (The gram algorithm keeps float16/bfloat16 operands.)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import Packed, dot_precision, launchers, min_block, on_device

_CONFIGS = [
    triton.Config({"BLOCK_D": bd, "BLOCK_C": bc}, num_warps=w, num_stages=s)
    for bd, bc, w, s in [(32, 32, 4, 2), (64, 16, 4, 2), (64, 32, 4, 3), (64, 32, 8, 3), (64, 64, 8, 2)]
]
_FP64_CONFIG = triton.Config({"BLOCK_D": 32, "BLOCK_C": 32}, num_warps=4, num_stages=2)
_INTERPRETED_CONFIG = triton.Config({"BLOCK_D": 16, "BLOCK_C": 16})


@triton.jit
def _k_tile(z, inv, c_start, c_end, offs_i, offs_j, mask_i, mask_j, d,
            BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
    """K[I, J] = sum_c xh[c, I] xh[c, J] over channel rows [c_start, c_end) of one sample (z, inv)."""
    acc_ty = inv.dtype.element_ty
    acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=acc_ty)
    for c0 in range(c_start, c_end, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < c_end
        rows = z + offs_c[:, None].to(tl.int64) * d
        xi = tl.load(rows + offs_i[None, :], mask=mask_c[:, None] & mask_i[None, :], other=0.0).to(acc_ty)
        xj = tl.load(rows + offs_j[None, :], mask=mask_c[:, None] & mask_j[None, :], other=0.0).to(acc_ty)
        s = tl.load(inv + offs_c, mask=mask_c, other=0.0)
        acc = tl.dot(tl.trans(xi * (s * s)[:, None]), xj, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _direct_forward(z, inv, offsets, pairs, partial, d, C, P, n_slots,
                           BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
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
        inv_b = inv + b * C
        offs_i = ti * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_j = tj * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_i = offs_i < d
        mask_j = offs_j < d
        k_m = _k_tile(z_b, inv_b, tl.load(offsets + m), tl.load(offsets + m + 1), offs_i, offs_j, mask_i, mask_j,
                      d, BLOCK_D, BLOCK_C, PRECISION)
        k_n = _k_tile(z_b, inv_b, tl.load(offsets + n), tl.load(offsets + n + 1), offs_i, offs_j, mask_i, mask_j,
                      d, BLOCK_D, BLOCK_C, PRECISION)
        diff = k_m - k_n
        total = tl.sum(tl.sum(diff * diff, axis=1), axis=0)
        if ti < tj:
            total = total * 2.0  # the mirror tile (J, I)
        tl.store(partial + (b * P + p).to(tl.int64) * n_slots + tile, total.to(partial.dtype.element_ty))


@triton.jit
def _direct_backward(z, inv, offsets, weight, out, d, C, M,
                            BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
    """out[b, c, J] = sum_I xh[c, I] E_m[I, J] for the channels c of modality m, E_m = 4 sum_n w_mn (K_m - K_n)."""
    tj = tl.program_id(0)
    b = tl.program_id(1)
    m = tl.program_id(2)
    acc_ty = inv.dtype.element_ty
    w_row = weight + (b * M + m) * M
    active = 0
    for n in range(0, M):
        w = tl.load(w_row + n)
        active += ((w != 0) & (n != m)).to(tl.int32)  # NaN counts as non-zero: it must propagate
    if active > 0:  # else out stays zero: no term pulls on X_m for this sample
        z_b = z + b.to(tl.int64) * C * d
        inv_b = inv + b * C
        out_b = out + b.to(tl.int64) * C * d
        c_start = tl.load(offsets + m)
        c_end = tl.load(offsets + m + 1)
        offs_j = tj * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_j = offs_j < d
        for ti in range(0, tl.cdiv(d, BLOCK_D)):
            offs_i = ti * BLOCK_D + tl.arange(0, BLOCK_D)
            mask_i = offs_i < d
            k_m = _k_tile(z_b, inv_b, c_start, c_end, offs_i, offs_j, mask_i, mask_j, d, BLOCK_D, BLOCK_C, PRECISION)
            e = tl.zeros((BLOCK_D, BLOCK_D), dtype=acc_ty)
            for n in range(0, M):
                w = tl.load(w_row + n).to(acc_ty)
                if (n != m) & (w != 0):
                    k_n = _k_tile(z_b, inv_b, tl.load(offsets + n), tl.load(offsets + n + 1), offs_i, offs_j,
                                  mask_i, mask_j, d, BLOCK_D, BLOCK_C, PRECISION)
                    e += (4.0 * w) * (k_m - k_n)  # D formed element-wise, as in the forward
            for c0 in range(c_start, c_end, BLOCK_C):
                offs_c = c0 + tl.arange(0, BLOCK_C)
                mask_c = offs_c < c_end
                rows = offs_c[:, None].to(tl.int64) * d
                x = tl.load(z_b + rows + offs_i[None, :], mask=mask_c[:, None] & mask_i[None, :], other=0.0)
                s = tl.load(inv_b + offs_c, mask=mask_c, other=0.0)
                # xh[c, I] E[I, J] with xh = x * inv_c: the scale factors out of the product.
                upd = tl.dot(x.to(acc_ty), e, input_precision=PRECISION) * s[:, None]
                ptrs = out_b + rows + offs_j[None, :]
                mask = mask_c[:, None] & mask_j[None, :]
                if ti > 0:
                    upd += tl.load(ptrs, mask=mask, other=0.0)
                tl.store(ptrs, upd, mask=mask)
            # The next row block reads back what this one stored, maybe from other threads.
            tl.debug_barrier()


# reset_to_zero: a config with bigger tiles leaves the extra slots of a finer one alone.
_direct_forward_kernel, _direct_forward_kernel_fp64 = launchers(
    _direct_forward, _CONFIGS, _FP64_CONFIG, _INTERPRETED_CONFIG, key=["d", "C", "P"], reset_to_zero=["partial"]
)
# No reset needed: whatever the config, a program either writes all of its columns of
# rows m (the first row block stores, later ones add) or, with no weight, none of them.
_direct_backward_kernel, _direct_backward_kernel_fp64 = launchers(
    _direct_backward, _CONFIGS, _FP64_CONFIG, _INTERPRETED_CONFIG, key=["d", "C", "M"]
)


def direct_forward(pk: Packed, pairs: torch.Tensor) -> torch.Tensor:
    """sum_{ij} (K_m - K_n)^2 per sample and pair of ``pairs`` ([P, 2] int32, m < n): [N, P] float64."""
    info = pk.info
    P = pairs.shape[0]
    kernel = _direct_forward_kernel_fp64 if pk.inv.dtype == torch.float64 else _direct_forward_kernel
    n_slots = triton.cdiv(info.d, min_block(kernel, "BLOCK_D")) ** 2
    # One slot per tile of the finest tiling; tiles below the diagonal (and the extra slots
    # of a coarser tiling) stay zero.
    partial = torch.zeros((info.N, P, n_slots), dtype=torch.float64, device=pk.z.device)

    def grid(meta):
        return (triton.cdiv(info.d, meta["BLOCK_D"]) ** 2, info.N, P)

    with on_device(pk.z):
        wrap_triton(kernel)[grid](
            pk.z, pk.inv, pk.offsets_t, pairs, partial, info.d, pk.C, P, n_slots,
            PRECISION=dot_precision(pk.inv.dtype),
        )
    return partial.sum(-1)


def direct_backward(pk: Packed, weight: torch.Tensor, needs_grad) -> torch.Tensor:
    """The gradient into the stacked Xh: rows of modality m get sum_n weight[:, m, n] dS_mn/dXh_m,
    for the modalities with needs_grad[m] (the others' programs find no weight and exit). [N, C, d]."""
    info = pk.info
    out = torch.zeros((info.N, pk.C, info.d), dtype=pk.inv.dtype, device=pk.z.device)
    needed = torch.tensor(needs_grad, dtype=torch.bool, device=weight.device)[:, None]
    w = torch.where(needed, weight.to(pk.inv.dtype), 0.0).contiguous()  # exact zeros, even for a NaN weight
    kernel = _direct_backward_kernel_fp64 if pk.inv.dtype == torch.float64 else _direct_backward_kernel

    def grid(meta):
        return (triton.cdiv(info.d, meta["BLOCK_D"]), info.N, info.M)

    with on_device(pk.z):
        wrap_triton(kernel)[grid](
            pk.z, pk.inv, pk.offsets_t, w, out, info.d, pk.C, info.M,
            PRECISION=dot_precision(pk.inv.dtype),
        )
    return out
