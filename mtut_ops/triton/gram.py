"""The gram algorithm (DESIGN.md §2) in triton: S_mn = ||G_mm||^2 - 2 ||G_mn||^2 + ||G_nn||^2.

All modalities share one stacked Gram matrix G = Xh Xh^T over the C = sum_m C_m channel
rows, whose (m, n) block is G_mn (C_m x C_n). The kernels compute it in BLOCK_C x BLOCK_C
tiles, with the dot over the d positions in BLOCK_K steps.

The normalization scale factors out of G: G[r, c] = inv_r inv_c sum_t x_rt x_ct, so the
dot runs on the raw rows in their own dtype (float16/bfloat16 tensor cores, exact
products, float32 accumulation; float32 and float64 as they are), and the tile is scaled
afterwards.

Forward: one program per (tile, sample, block (m, n) with m <= n) squares its tile of
G_mn and sums it in float64 (S is a difference of norms of size up to C^2: the norms
need the extra digits) into its own slot of a partial-sum buffer; torch sums the slots
in a fixed order (no atomics) and S = T_mm - 2 T_mn + T_nn, clamped at 0. G is never
stored. The tiles are aligned to each block (never straddling two modalities), and the
diagonal blocks are tiled whole rather than as a triangle: so for X_m = X_n the tiles,
slots and sums of G_mm, G_mn and G_nn are the same bit for bit, and S is exactly 0
(identical features: loss 0, gradient 0), at the price of ~1.5x the work of a triangle.

Backward: dS_mn/dXh_m = 4 (G_mm Xh_m - G_mn Xh_n), so the gradient into the rows of
modality m is 4 (a_m G_mm Xh_m - sum_n w_mn G_mn Xh_n), a_m = sum_{n != m} w_mn: one
product H Xh with H = coef o G, coef(m, m) = 4 a_m and coef(m, n) = -4 w_mn. A first
kernel writes H (C x C per sample, never d x d) from the upper tiles of the stacked G
(tiles may straddle modalities there: each entry looks up its coefficient); a second
one multiplies it into the rows, one output tile per program, summing in a fixed order.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import INTERPRETED, Packed, dot_precision, launchers, min_block, on_device

_CONFIGS = [
    triton.Config({"BLOCK_C": bc, "BLOCK_K": bk}, num_warps=w, num_stages=s)
    for bc, bk, w, s in [(32, 32, 4, 2), (32, 64, 4, 3), (64, 32, 4, 3), (64, 64, 8, 3)]
]
_FP64_CONFIG = triton.Config({"BLOCK_C": 32, "BLOCK_K": 32}, num_warps=4, num_stages=2)
_INTERPRETED_CONFIG = triton.Config({"BLOCK_C": 16, "BLOCK_K": 16})


@triton.jit
def _g_tile(z, inv, offs_r, offs_c, mask_r, mask_c, d,
            BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """G[R, Cc] = inv_R inv_Cc sum_t x[R, t] x[Cc, t] for one sample (z, inv)."""
    acc_ty = inv.dtype.element_ty
    acc = tl.zeros((BLOCK_C, BLOCK_C), dtype=acc_ty)
    rows_r = z + offs_r[:, None].to(tl.int64) * d
    rows_c = z + offs_c[:, None].to(tl.int64) * d
    for k0 in range(0, d, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < d
        a = tl.load(rows_r + offs_k[None, :], mask=mask_r[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(rows_c + offs_k[None, :], mask=mask_c[:, None] & mask_k[None, :], other=0.0)
        if UPCAST:
            a = a.to(acc_ty)
            b = b.to(acc_ty)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
    s_r = tl.load(inv + offs_r, mask=mask_r, other=0.0)
    s_c = tl.load(inv + offs_c, mask=mask_c, other=0.0)
    return acc * s_r[:, None] * s_c[None, :]


@triton.jit
def _gram_forward(z, inv, offsets, blocks, partial, d, C, C_max, n_slots,
                         BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """partial[b, q, tile] = ||tile (ta, tb) of the block G_mn||^2 for block q = (m, n), m <= n."""
    tile = tl.program_id(0)
    b = tl.program_id(1)
    q = tl.program_id(2)
    n_tiles = tl.cdiv(C_max, BLOCK_C)
    ta = tile // n_tiles
    tb = tile % n_tiles
    m = tl.load(blocks + 2 * q)
    n = tl.load(blocks + 2 * q + 1)
    r_start = tl.load(offsets + m) + ta * BLOCK_C
    r_end = tl.load(offsets + m + 1)
    c_start = tl.load(offsets + n) + tb * BLOCK_C
    c_end = tl.load(offsets + n + 1)
    if (r_start < r_end) & (c_start < c_end):  # the tile grid is sized for the widest modality
        offs_r = r_start + tl.arange(0, BLOCK_C)
        offs_c = c_start + tl.arange(0, BLOCK_C)
        g = _g_tile(z + b.to(tl.int64) * C * d, inv + b * C, offs_r, offs_c, offs_r < r_end, offs_c < c_end, d,
                    BLOCK_C, BLOCK_K, PRECISION, UPCAST).to(tl.float64)
        slot = partial + (b * tl.num_programs(2) + q).to(tl.int64) * n_slots + tile
        tl.store(slot, tl.sum(tl.sum(g * g, axis=1), axis=0))


@triton.jit
def _gram_coef(z, inv, modality, needed, coef, h, d, C, M,
                      BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """h[b, r, c] = coef[b, mod(r), mod(c)] * G[r, c] * inv_c, from the upper tiles of G (both halves stored),
    for the tiles that hold a row or column of a modality with needed[m] (only such rows of h are read)."""
    tile = tl.program_id(0)
    b = tl.program_id(1)
    n_tiles = tl.cdiv(C, BLOCK_C)
    ti = tile // n_tiles
    tj = tile % n_tiles
    offs_r = ti * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_c = tj * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_r = offs_r < C
    mask_c = offs_c < C
    mod_r = tl.load(modality + offs_r, mask=mask_r, other=0)
    mod_c = tl.load(modality + offs_c, mask=mask_c, other=0)
    need = tl.sum(tl.load(needed + mod_r, mask=mask_r, other=0)) + tl.sum(tl.load(needed + mod_c, mask=mask_c, other=0))
    if (ti <= tj) & (need > 0):
        mask = mask_r[:, None] & mask_c[None, :]
        inv_b = inv + b * C
        g = _g_tile(z + b.to(tl.int64) * C * d, inv_b, offs_r, offs_c, mask_r, mask_c, d,
                    BLOCK_C, BLOCK_K, PRECISION, UPCAST)
        s_r = tl.load(inv_b + offs_r, mask=mask_r, other=0.0)
        s_c = tl.load(inv_b + offs_c, mask=mask_c, other=0.0)
        coef_b = coef + b * M * M
        h_b = h + b.to(tl.int64) * C * C
        # A zero weight contributes exactly nothing, even where G is not finite.
        k = tl.load(coef_b + mod_r[:, None] * M + mod_c[None, :], mask=mask, other=0.0)
        tl.store(h_b + offs_r[:, None] * C + offs_c[None, :], tl.where(k != 0, k * g * s_c[None, :], 0.0), mask=mask)
        if ti < tj:  # the mirror tile: G[c, r] = G[r, c]
            k_t = tl.load(coef_b + mod_c[:, None] * M + mod_r[None, :], mask=tl.trans(mask), other=0.0)
            g_t = tl.trans(g)
            tl.store(h_b + offs_c[:, None] * C + offs_r[None, :], tl.where(k_t != 0, k_t * g_t * s_r[None, :], 0.0),
                     mask=tl.trans(mask))


@triton.jit
def _gram_apply(z, h, modality, needed, out, d, C,
                       BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """out[b, R, K] = sum_c h[b, R, c] x[b, c, K]  (= sum_c coef G[R, c] xh[c, K]), for the row
    tiles that hold a row of a modality with needed[m] (the others' rows are never read)."""
    tr = tl.program_id(0)
    tk = tl.program_id(1)
    b = tl.program_id(2)
    acc_ty = h.dtype.element_ty
    offs_r = tr * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_k = tk * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_r = offs_r < C
    mask_k = offs_k < d
    need = tl.sum(tl.load(needed + tl.load(modality + offs_r, mask=mask_r, other=0), mask=mask_r, other=0))
    if need > 0:
        z_b = z + b.to(tl.int64) * C * d
        h_rows = h + b.to(tl.int64) * C * C + offs_r[:, None] * C
        acc = tl.zeros((BLOCK_C, BLOCK_K), dtype=acc_ty)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            hh = tl.load(h_rows + offs_c[None, :], mask=mask_r[:, None] & mask_c[None, :], other=0.0)
            x = tl.load(z_b + offs_c[:, None].to(tl.int64) * d + offs_k[None, :],
                        mask=mask_c[:, None] & mask_k[None, :], other=0.0)
            acc = tl.dot(hh, x.to(acc_ty), acc, input_precision=PRECISION)
        tl.store(out + (b.to(tl.int64) * C + offs_r[:, None]) * d + offs_k[None, :], acc,
                 mask=mask_r[:, None] & mask_k[None, :])


def _modality_of_rows(pk: Packed) -> torch.Tensor:
    """int32 [C]: the modality of every stacked channel row (static shapes, so it traces)."""
    rows = torch.arange(pk.C, dtype=torch.int32, device=pk.z.device)
    return (rows[:, None] >= pk.offsets_t[None, 1:-1]).sum(1, dtype=torch.int32)


# reset_to_zero: a config with bigger tiles leaves the extra slots of a finer one alone.
_gram_forward_kernel, _gram_forward_kernel_fp64 = launchers(
    _gram_forward, _CONFIGS, _FP64_CONFIG, _INTERPRETED_CONFIG, key=["d", "C", "C_max"], reset_to_zero=["partial"]
)
_gram_coef_kernel, _gram_coef_kernel_fp64 = launchers(
    _gram_coef, _CONFIGS, _FP64_CONFIG, _INTERPRETED_CONFIG, key=["d", "C", "M"]
)
_gram_apply_kernel, _gram_apply_kernel_fp64 = launchers(
    _gram_apply, _CONFIGS, _FP64_CONFIG, _INTERPRETED_CONFIG, key=["d", "C"]
)


def _upcast(pk: Packed) -> bool:
    """Upcast the dot operands to the compute dtype: only bfloat16 under the interpreter,
    which stores bfloat16 as uint16 and multiplies those integers in its dot."""
    return INTERPRETED and pk.z.dtype == torch.bfloat16


def gram_forward(pk: Packed) -> torch.Tensor:
    """S of every sample and pair m < n (row-major, as _common.pair_tables): [N, P] float64."""
    info = pk.info
    C_max = max(info.channels)
    blocks = [(m, n) for m in range(info.M) for n in range(m, info.M)]  # m <= n
    kernel = _gram_forward_kernel_fp64 if pk.inv.dtype == torch.float64 else _gram_forward_kernel
    n_slots = triton.cdiv(C_max, min_block(kernel, "BLOCK_C")) ** 2
    partial = torch.zeros((info.N, len(blocks), n_slots), dtype=torch.float64, device=pk.z.device)

    def grid(meta):
        return (triton.cdiv(C_max, meta["BLOCK_C"]) ** 2, info.N, len(blocks))

    with on_device(pk.z):
        wrap_triton(kernel)[grid](
            pk.z, pk.inv, pk.offsets_t, torch.tensor(blocks, dtype=torch.int32, device=pk.z.device), partial,
            info.d, pk.C, C_max, n_slots, PRECISION=dot_precision(pk.z.dtype), UPCAST=_upcast(pk),
        )
    norms = partial.sum(-1)  # [N, blocks]: ||G_mn||^2
    q = {mn: i for i, mn in enumerate(blocks)}
    pairs = [(m, n) for m in range(info.M) for n in range(m + 1, info.M)]
    at = torch.tensor([[q[(m, m)], q[(m, n)], q[(n, n)]] for m, n in pairs], device=norms.device)
    S = norms[:, at[:, 0]] - 2.0 * norms[:, at[:, 1]] + norms[:, at[:, 2]]
    return S.clamp_min(0)  # a difference of large terms; clamp_min keeps NaN


def gram_backward(pk: Packed, weight: torch.Tensor, needs_grad) -> torch.Tensor:
    """The gradient into the stacked Xh: rows of modality m get sum_n weight[:, m, n] dS_mn/dXh_m,
    for the modalities with needs_grad[m] (the other rows of the result are not computed). [N, C, d]."""
    info = pk.info
    C = pk.C
    w = weight.to(pk.inv.dtype)
    eye = torch.eye(info.M, dtype=torch.bool, device=w.device)
    w_off = w.masked_fill(eye, 0)  # the diagonal of the weight plays no part
    coef = (torch.diag_embed(4.0 * w_off.sum(-1)) - 4.0 * w_off).contiguous()
    h = torch.empty((info.N, C, C), dtype=pk.inv.dtype, device=pk.z.device)
    out = torch.empty((info.N, C, info.d), dtype=pk.inv.dtype, device=pk.z.device)
    modality = _modality_of_rows(pk)
    needed = torch.tensor(needs_grad, dtype=torch.int32, device=pk.z.device)
    fp64 = pk.inv.dtype == torch.float64
    coef_kernel = _gram_coef_kernel_fp64 if fp64 else _gram_coef_kernel
    apply_kernel = _gram_apply_kernel_fp64 if fp64 else _gram_apply_kernel

    def coef_grid(meta):
        return (triton.cdiv(C, meta["BLOCK_C"]) ** 2, info.N)

    def apply_grid(meta):
        return (triton.cdiv(C, meta["BLOCK_C"]), triton.cdiv(info.d, meta["BLOCK_K"]), info.N)

    with on_device(pk.z):
        wrap_triton(coef_kernel)[coef_grid](
            pk.z, pk.inv, modality, needed, coef, h, info.d, C, info.M, PRECISION=dot_precision(pk.z.dtype),
            UPCAST=_upcast(pk),
        )
        wrap_triton(apply_kernel)[apply_grid](
            pk.z, h, modality, needed, out, info.d, C, PRECISION=dot_precision(pk.inv.dtype),
        )
    return out
