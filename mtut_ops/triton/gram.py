"""The gram algorithm (docs/design.md §2) in triton: S_mn = ||G_mm||^2 - 2 ||G_mn||^2 + ||G_nn||^2.

All modalities share one stacked Gram matrix G = Xh Xh^T over the C = sum_m C_m channel
rows, whose (m, n) block is G_mn (C_m x C_n). The kernels compute it from the staged
stack z (``_common.pack``: normalized rows in the operand type) in BLOCK_C x BLOCK_C
tiles, with the dot over the d positions in BLOCK_K steps: a plain GEMM mainloop
(tensor cores for float16/bfloat16/TF32 operands with float32 accumulation, fp64 tensor
cores for float64, exact fp32 FMA otherwise).

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
one multiplies it into the staged rows, one output tile per program, summing in a fixed
order.

H is the first operand of that GEMM, so it is stored in the operand type. Its entries
carry the weights (easily 1e-9 and below, under float16's range): for float16 each row
block m of coef is divided by a power of two sigma_m with max_n |coef(m, n)| < sigma_m
<= 2 max_n |coef(m, n)| (torch.frexp: exact), so |H / sigma| <= max |G| <= 1 (unit rows)
and rounding it to float16 costs u |H| + 2^-25 sigma_m elementwise (u = 2^-11); the
product is multiplied back by sigma_m (exact). bfloat16 and TF32 need no scale.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (Packed, configs, dot_precision, index_table, launcher_kind, launchers, min_block, on_device,
                      padded, round_operand, wrap_triton)

# (BLOCK_C, BLOCK_K, num_warps, num_stages) per kind of operand; each free of spills and
# within shared memory on sm_80 and sm_90 (tools/triton_static.py), with triton 3.8 and
# with 3.6 (torch 2.11's): the coefficient kernel holds more than its Gram tile (3.6 spilled
# 8-156 B in every 128-wide tile of it), the float64 apply one stage less (3.6: 8 B on sm_90)
_CONFIGS = configs(("BLOCK_C", "BLOCK_K"), {
    "tc16": [(64, 32, 4, 4), (64, 64, 4, 3), (128, 32, 8, 3), (128, 64, 8, 3)],
    "tf32": [(64, 32, 4, 4), (64, 32, 8, 3), (128, 32, 8, 2)],
    "ieee": [(32, 32, 4, 2), (32, 64, 4, 2), (64, 16, 8, 2)],
    "fp64": [(32, 32, 4, 2)],
})
_COEF_CONFIGS = configs(("BLOCK_C", "BLOCK_K"), {
    "tc16": [(64, 32, 4, 4), (64, 64, 4, 3), (64, 64, 8, 3)],
    "tf32": [(64, 32, 4, 4), (64, 32, 8, 3)],
    "ieee": [(32, 32, 4, 2), (32, 64, 4, 2), (64, 16, 8, 2)],
    "fp64": [(32, 32, 4, 2)],
})
_APPLY_CONFIGS = configs(("BLOCK_C", "BLOCK_K"), {
    "tc16": [(64, 32, 4, 4), (64, 64, 4, 3), (128, 32, 8, 3), (128, 64, 8, 3)],
    "tf32": [(64, 32, 4, 4), (64, 32, 8, 3), (128, 32, 8, 2)],
    "ieee": [(32, 32, 4, 2), (32, 64, 4, 2), (64, 16, 8, 2)],
    "fp64": [(32, 32, 4, 1)],
})
_INTERPRETED_CONFIG = triton.Config({"BLOCK_C": 16, "BLOCK_K": 16})


@triton.jit
def _g_tile(z, offs_r, offs_c, mask_r, mask_c, d,
            BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """G[R, Cc] = sum_t z[R, t] z[Cc, t] for one sample's staged rows; float64 for float64 operands, else float32."""
    if z.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float32)
    rows_r = z + offs_r[:, None].to(tl.int64) * d
    rows_c = z + offs_c[:, None].to(tl.int64) * d
    for k0 in range(0, d, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < d
        a = tl.load(rows_r + offs_k[None, :], mask=mask_r[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(rows_c + offs_k[None, :], mask=mask_c[:, None] & mask_k[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION, out_dtype=acc.dtype)  # (triton 3.6: say fp64)
    return acc


@triton.jit
def _gram_forward(z, offsets, blocks, partial, d, C, C_max, n_slots,
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
        g = _g_tile(z + b.to(tl.int64) * C * d, offs_r, offs_c, offs_r < r_end, offs_c < c_end, d,
                    BLOCK_C, BLOCK_K, PRECISION, UPCAST).to(tl.float64)
        slot = partial + (b * tl.num_programs(2) + q).to(tl.int64) * n_slots + tile
        tl.store(slot, tl.sum(tl.sum(g * g, axis=1), axis=0))


@triton.jit
def _gram_coef(z, modality, needed, coef, h, d, C, ldh, M,
               BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
               ROUND: tl.constexpr):
    """h[b, r, c] = coef[b, mod(r), mod(c)] * G[r, c] in the operand type, from the upper tiles of G (both
    halves stored), for the tiles that hold a row or column of a modality with needed[m] (only such rows of h
    are read)."""
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
        g = _g_tile(z + b.to(tl.int64) * C * d, offs_r, offs_c, mask_r, mask_c, d,
                    BLOCK_C, BLOCK_K, PRECISION, UPCAST)
        coef_b = coef + b * M * M
        h_b = h + b.to(tl.int64) * C * ldh
        # A zero weight contributes exactly nothing, even where G is not finite.
        k = tl.load(coef_b + mod_r[:, None] * M + mod_c[None, :], mask=mask, other=0.0)
        v = round_operand(tl.where(k != 0, k * g, 0.0), ROUND, False)
        tl.store(h_b + offs_r[:, None] * ldh + offs_c[None, :], v, mask=mask)
        if ti < tj:  # the mirror tile: G[c, r] = G[r, c]
            k_t = tl.load(coef_b + mod_c[:, None] * M + mod_r[None, :], mask=tl.trans(mask), other=0.0)
            v_t = round_operand(tl.where(k_t != 0, k_t * tl.trans(g), 0.0), ROUND, False)
            tl.store(h_b + offs_c[:, None] * ldh + offs_r[None, :], v_t, mask=tl.trans(mask))


@triton.jit
def _gram_apply(z, h, sigma, modality, needed, out, d, C, ldh, M,
                BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                SCALED: tl.constexpr):
    """out[b, R, K] = sigma[b, mod(R)] sum_c h[b, R, c] z[b, c, K]  (= sum_c coef G[R, c] xh[c, K]), for
    the row tiles that hold a row of a modality with needed[m] (the others' rows are never read).
    h's rows are ldh long (C rounded up to 16, zeros beyond C): the loop over c runs to ldh, so
    that its loads of h are aligned and unmasked along c (the rows of z beyond C read as 0)."""
    tr = tl.program_id(0)
    tk = tl.program_id(1)
    b = tl.program_id(2)
    offs_r = tr * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_k = tk * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_r = offs_r < C
    mask_k = offs_k < d
    mod_r = tl.load(modality + offs_r, mask=mask_r, other=0)
    need = tl.sum(tl.load(needed + mod_r, mask=mask_r, other=0))
    if need > 0:
        z_b = z + b.to(tl.int64) * C * d
        h_rows = h + b.to(tl.int64) * C * ldh + offs_r[:, None] * ldh
        acc = tl.zeros((BLOCK_C, BLOCK_K), dtype=out.dtype.element_ty)
        for c0 in range(0, ldh, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            hh = tl.load(h_rows + offs_c[None, :], mask=mask_r[:, None] & (offs_c < ldh)[None, :], other=0.0)
            x = tl.load(z_b + offs_c[:, None].to(tl.int64) * d + offs_k[None, :],
                        mask=mask_c[:, None] & mask_k[None, :], other=0.0)
            if UPCAST:
                hh = hh.to(tl.float32)
                x = x.to(tl.float32)
            acc = tl.dot(hh, x, acc, input_precision=PRECISION, out_dtype=acc.dtype)
        if SCALED:
            acc = acc * tl.load(sigma + b * M + mod_r, mask=mask_r, other=1.0)[:, None]
        tl.store(out + (b.to(tl.int64) * C + offs_r[:, None]) * d + offs_k[None, :], acc,
                 mask=mask_r[:, None] & mask_k[None, :])


def _modality_of_rows(pk: Packed) -> torch.Tensor:
    """int32 [C]: the modality of every stacked channel row (static shapes, so it traces)."""
    rows = torch.arange(pk.C, dtype=torch.int32, device=pk.z.device)
    return (rows[:, None] >= pk.offsets_t[None, 1:-1]).sum(1, dtype=torch.int32)


# reset_to_zero: a config with bigger tiles leaves the extra slots of a finer one alone.
_FORWARD = launchers(_gram_forward, _CONFIGS, _INTERPRETED_CONFIG, key=["d", "C", "C_max"], reset_to_zero=["partial"])
_COEF = launchers(_gram_coef, _COEF_CONFIGS, _INTERPRETED_CONFIG, key=["d", "C", "M"])
_APPLY = launchers(_gram_apply, _APPLY_CONFIGS, _INTERPRETED_CONFIG, key=["d", "C", "M"])


def gram_forward(pk: Packed) -> torch.Tensor:
    """S of every sample and pair m < n (row-major, as _common.pair_tables): [N, P] float64."""
    info = pk.info
    C_max = max(info.channels)
    blocks = [(m, n) for m in range(info.M) for n in range(m, info.M)]  # m <= n
    kernel = _FORWARD[launcher_kind(pk)]
    n_slots = triton.cdiv(C_max, min_block(kernel, "BLOCK_C")) ** 2
    partial = torch.zeros((info.N, len(blocks), n_slots), dtype=torch.float64, device=pk.z.device)

    def grid(meta):
        return (triton.cdiv(C_max, meta["BLOCK_C"]) ** 2, info.N, len(blocks))

    with on_device(pk.z):
        wrap_triton(kernel)[grid](
            pk.z, pk.offsets_t, index_table(tuple(blocks), torch.int32, pk.z), partial,
            pk.ld, pk.C, C_max, n_slots, PRECISION=dot_precision(pk.mode), UPCAST=pk.upcast,
        )
    norms = partial.sum(-1)  # [N, blocks]: ||G_mn||^2
    q = {mn: i for i, mn in enumerate(blocks)}
    pairs = [(m, n) for m in range(info.M) for n in range(m + 1, info.M)]
    at = index_table(tuple((q[(m, m)], q[(m, n)], q[(n, n)]) for m, n in pairs), torch.long, norms)
    S = norms[:, at[:, 0]] - 2.0 * norms[:, at[:, 1]] + norms[:, at[:, 2]]
    return S.clamp_min(0)  # a difference of large terms; clamp_min keeps NaN


def _row_scale(coef: torch.Tensor) -> torch.Tensor:
    """[N, M]: a power of two sigma_m with max_n |coef(m, n)| < sigma_m <= 2 max_n |coef(m, n)|
    (1 where that maximum is 0 or not finite; at most 2^127, float32's largest power of two)."""
    amax = coef.abs().amax(-1)
    _, expo = torch.frexp(amax)  # amax = f 2^expo, 0.5 <= f < 1
    sigma = torch.ldexp(torch.ones_like(amax), expo.clamp(max=127))
    return torch.where(torch.isfinite(amax) & (amax > 0), sigma, torch.ones_like(amax))


def gram_backward(pk: Packed, weight: torch.Tensor, needs_grad) -> torch.Tensor:
    """The gradient into the stacked Xh: rows of modality m get sum_n weight[:, m, n] dS_mn/dXh_m,
    for the modalities with needs_grad[m] (the other rows of the result are not computed). [N, C, ld]."""
    info = pk.info
    C = pk.C
    w = weight.to(pk.inv.dtype)
    eye = torch.eye(info.M, dtype=torch.bool, device=w.device)
    w_off = w.masked_fill(eye, 0)  # the diagonal of the weight plays no part
    coef = torch.diag_embed(4.0 * w_off.sum(-1)) - 4.0 * w_off
    scaled = pk.mode == "fp16"
    sigma = _row_scale(coef) if scaled else torch.ones(coef.shape[:2], dtype=coef.dtype, device=coef.device)
    if scaled:
        coef = coef / sigma[..., None]  # exact: powers of two
    coef = coef.contiguous()
    ldh = padded(C)
    # the columns beyond C must be zeros (they meet masked rows of z); rows of modalities that need
    # no gradient stay zero (their output rows are never read)
    h = torch.zeros((info.N, C, ldh), dtype=pk.z.dtype, device=pk.z.device)
    out = torch.empty((info.N, C, pk.ld), dtype=pk.inv.dtype, device=pk.z.device)
    modality = _modality_of_rows(pk)
    needed = index_table(tuple(int(x) for x in needs_grad), torch.int32, pk.z)
    kind = launcher_kind(pk)

    def coef_grid(meta):
        return (triton.cdiv(C, meta["BLOCK_C"]) ** 2, info.N)

    def apply_grid(meta):
        return (triton.cdiv(C, meta["BLOCK_C"]), triton.cdiv(pk.ld, meta["BLOCK_K"]), info.N)

    precision = dot_precision(pk.mode)
    with on_device(pk.z):
        wrap_triton(_COEF[kind])[coef_grid](
            pk.z, modality, needed, coef, h, pk.ld, C, ldh, info.M, PRECISION=precision, UPCAST=pk.upcast,
            ROUND=pk.round_code,
        )
        wrap_triton(_APPLY[kind])[apply_grid](
            pk.z, h, sigma.contiguous(), modality, needed, out, pk.ld, C, ldh, info.M, PRECISION=precision,
            UPCAST=pk.upcast, SCALED=scaled,
        )
    return out
