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
modality m is sum_n 4 w_mn (G_mm Xh_m - G_mn Xh_n). A first kernel writes H = G (C x C per
sample, never d x d) in the operand type, every ordered block (m, n) of a modality that
needs a gradient tiled from its own start, as the forward tiles it; a second one, per row
tile of modality m, forms A = G_mm Xh_m and each B_n = G_mn Xh_n with the same loop over
each block's own columns and adds 4 w_mn (A - B_n), summing in a fixed order. The two
sides of each difference are so the same operations on the same operands: for X_m = X_n
they are equal bit for bit and the pair adds exactly 0 (a single product with H = coef o G
summed 4 a_m G_mm Xh_m and -4 w_mn G_mn Xh_n in one accumulator, which leaves a residue).
Computing the mirror blocks (n, m) themselves rather than transposing (m, n) costs the
first kernel twice the Gram work of a triangle. |G| <= 1 (unit rows), so H needs no scale
even in float16; the weights are applied in the accumulator's type (float32/float64).
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
    padded,
    round_operand,
    wrap_triton,
)

# (BLOCK_C, BLOCK_K, num_warps, num_stages) per kind of operand; each free of spills and
# within shared memory on sm_80 and sm_90 (tools/triton_static.py), with triton 3.8 and
# with 3.6 (torch 2.11's): the coefficient kernel holds more than its Gram tile (3.6 spilled
# 8-156 B in every 128-wide tile of it), the float64 apply one stage less (3.6: 8 B on sm_90)
_CONFIGS = configs(
    ("BLOCK_C", "BLOCK_K"),
    {
        "tc16": [(64, 32, 4, 4), (64, 64, 4, 3), (128, 32, 8, 3), (128, 64, 8, 3)],
        "tf32": [(64, 32, 4, 4), (64, 32, 8, 3), (128, 32, 8, 2)],
        "ieee": [(32, 32, 4, 2), (32, 64, 4, 2), (64, 16, 8, 2)],
        "fp64": [(32, 32, 4, 2)],
    },
)
_COEF_CONFIGS = configs(
    ("BLOCK_C", "BLOCK_K"),
    {
        "tc16": [(64, 32, 4, 4), (64, 64, 4, 3), (64, 64, 8, 3)],
        "tf32": [(64, 32, 4, 4), (64, 32, 8, 3)],
        "ieee": [(32, 32, 4, 2), (32, 64, 4, 2), (64, 16, 8, 2)],
        "fp64": [(32, 32, 4, 2)],
    },
)
# (the apply kernel holds two C x K tiles through a product: it spilled in the 128-wide tiles
# (sm_80 and sm_90) and in the ieee 32 x 64 one (sm_80), which are left out)
_APPLY_CONFIGS = configs(
    ("BLOCK_C", "BLOCK_K"),
    {
        "tc16": [(64, 32, 4, 4), (64, 64, 4, 3)],
        "tf32": [(64, 32, 4, 4), (64, 32, 8, 3), (128, 32, 8, 2)],
        "ieee": [(32, 32, 4, 2), (64, 16, 8, 2)],
        "fp64": [(32, 32, 4, 1)],
    },
)
_INTERPRETED_CONFIG = triton.Config({"BLOCK_C": 16, "BLOCK_K": 16})


@triton.jit
def _g_tile(
    z,
    offs_r,
    offs_c,
    mask_r,
    mask_c,
    d,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
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
def _gram_forward(
    z,
    offsets,
    blocks,
    partial,
    d,
    C,
    C_max,
    n_slots,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
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
        g = _g_tile(
            z + b.to(tl.int64) * C * d,
            offs_r,
            offs_c,
            offs_r < r_end,
            offs_c < c_end,
            d,
            BLOCK_C,
            BLOCK_K,
            PRECISION,
            UPCAST,
        ).to(tl.float64)
        slot = partial + (b * tl.num_programs(2) + q).to(tl.int64) * n_slots + tile
        tl.store(slot, tl.sum(tl.sum(g * g, axis=1), axis=0))


@triton.jit
def _gram_coef(
    z,
    offsets,
    needed,
    h,
    d,
    C,
    ldh,
    M,
    C_max,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    ROUND: tl.constexpr,
):
    """(The coefficients are applied later, in _gram_apply.) h[b, R, Cc] = G[R, Cc] in the operand type for the
    tile (ta, tb) of the ordered block (m, n) = (q // M, q % M),
    tiled from the block's own start (as the forward), for the modalities m with needed[m]
    (only their rows are read)."""
    tile = tl.program_id(0)
    b = tl.program_id(1)
    q = tl.program_id(2)
    m = q // M
    n = q % M
    n_tiles = tl.cdiv(C_max, BLOCK_C)
    ta = tile // n_tiles
    tb = tile % n_tiles
    r_start = tl.load(offsets + m) + ta * BLOCK_C
    r_end = tl.load(offsets + m + 1)
    c_start = tl.load(offsets + n) + tb * BLOCK_C
    c_end = tl.load(offsets + n + 1)
    if (r_start < r_end) & (c_start < c_end) & (tl.load(needed + m) != 0):
        offs_r = r_start + tl.arange(0, BLOCK_C)
        offs_c = c_start + tl.arange(0, BLOCK_C)
        mask_r = offs_r < r_end
        mask_c = offs_c < c_end
        g = _g_tile(z + b.to(tl.int64) * C * d, offs_r, offs_c, mask_r, mask_c, d, BLOCK_C, BLOCK_K, PRECISION, UPCAST)
        h_b = h + b.to(tl.int64) * C * ldh
        tl.store(
            h_b + offs_r[:, None] * ldh + offs_c[None, :],
            round_operand(g, ROUND, False),
            mask=mask_r[:, None] & mask_c[None, :],
        )


@triton.jit
def _block_times_rows(
    acc,
    h_rows,
    z_b,
    mask_r,
    offs_k,
    mask_k,
    c_start,
    c_end,
    d,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """acc (zeros) + sum_{c in [c_start, c_end)} h[R, c] z[c, K], the columns walked from the block's own start."""
    for c0 in range(c_start, c_end, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < c_end
        hh = tl.load(h_rows + offs_c[None, :], mask=mask_r[:, None] & mask_c[None, :], other=0.0)
        x = tl.load(
            z_b + offs_c[:, None].to(tl.int64) * d + offs_k[None, :], mask=mask_c[:, None] & mask_k[None, :], other=0.0
        )
        if UPCAST:
            hh = hh.to(tl.float32)
            x = x.to(tl.float32)
        acc = tl.dot(hh, x, acc, input_precision=PRECISION, out_dtype=acc.dtype)
    return acc


@triton.jit
def _gram_apply(
    z,
    h,
    offsets,
    needed,
    weight,
    out,
    d,
    C,
    ldh,
    M,
    C_max,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """out[b, R, K] = sum_{n != m} 4 w_mn (A - B_n)[R, K], A = G_mm Xh_m, B_n = G_mn Xh_n, for the row tile R of
    modality m (tiled from its start) with needed[m]; a zero weight adds nothing (not even a NaN of G)."""
    n_rows = tl.cdiv(C_max, BLOCK_C)
    m = tl.program_id(0) // n_rows
    tr = tl.program_id(0) % n_rows
    tk = tl.program_id(1)
    b = tl.program_id(2)
    r_start = tl.load(offsets + m) + tr * BLOCK_C
    r_end = tl.load(offsets + m + 1)
    if (r_start < r_end) & (tl.load(needed + m) != 0):
        offs_r = r_start + tl.arange(0, BLOCK_C)
        offs_k = tk * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_r = offs_r < r_end
        mask_k = offs_k < d
        z_b = z + b.to(tl.int64) * C * d
        h_rows = h + b.to(tl.int64) * C * ldh + offs_r[:, None] * ldh
        ptrs = out + (b.to(tl.int64) * C + offs_r[:, None]) * d + offs_k[None, :]
        mask = mask_r[:, None] & mask_k[None, :]
        zeros = tl.zeros((BLOCK_C, BLOCK_K), dtype=out.dtype.element_ty)
        # Two tiles live at most (three spilled in the 128-wide configs): A is recomputed for each
        # weighted pair (one for M = 2) and the running sum kept in `out`, read back by the program
        # that wrote it.
        written = 0
        w_row = weight + (b * M + m) * M
        for n in range(0, M):
            w = tl.load(w_row + n).to(out.dtype.element_ty)
            if (n != m) & (w != 0):  # NaN counts as non-zero: it must propagate
                a = _block_times_rows(
                    zeros,
                    h_rows,
                    z_b,
                    mask_r,
                    offs_k,
                    mask_k,
                    tl.load(offsets + m),
                    r_end,
                    d,
                    BLOCK_C,
                    BLOCK_K,
                    PRECISION,
                    UPCAST,
                )
                bn = _block_times_rows(
                    zeros,
                    h_rows,
                    z_b,
                    mask_r,
                    offs_k,
                    mask_k,
                    tl.load(offsets + n),
                    tl.load(offsets + n + 1),
                    d,
                    BLOCK_C,
                    BLOCK_K,
                    PRECISION,
                    UPCAST,
                )
                term = (4.0 * w) * (a - bn)
                if written > 0:
                    term += tl.load(ptrs, mask=mask, other=0.0)
                tl.store(ptrs, term, mask=mask)
                tl.debug_barrier()  # the next pair reads back what this one stored, maybe from other threads
                written = 1
        if written == 0:
            tl.store(ptrs, zeros, mask=mask)


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
            pk.z,
            pk.offsets_t,
            index_table(tuple(blocks), torch.int32, pk.z),
            partial,
            pk.ld,
            pk.C,
            C_max,
            n_slots,
            PRECISION=dot_precision(pk.mode),
            UPCAST=pk.upcast,
        )
    norms = partial.sum(-1)  # [N, blocks]: ||G_mn||^2
    q = {mn: i for i, mn in enumerate(blocks)}
    pairs = [(m, n) for m in range(info.M) for n in range(m + 1, info.M)]
    at = index_table(tuple((q[(m, m)], q[(m, n)], q[(n, n)]) for m, n in pairs), torch.long, norms)
    S = norms[:, at[:, 0]] - 2.0 * norms[:, at[:, 1]] + norms[:, at[:, 2]]
    return S.clamp_min(0)  # a difference of large terms; clamp_min keeps NaN


def gram_backward(pk: Packed, weight: torch.Tensor, needs_grad) -> torch.Tensor:
    """The gradient into the stacked Xh: rows of modality m get sum_n weight[:, m, n] dS_mn/dXh_m,
    for the modalities with needs_grad[m] (the other rows of the result are not computed). [N, C, ld]."""
    info = pk.info
    C = pk.C
    C_max = max(info.channels)
    eye = torch.eye(info.M, dtype=torch.bool, device=weight.device)
    w = weight.to(pk.inv.dtype).masked_fill(eye, 0).contiguous()  # the diagonal of the weight plays no part
    ldh = padded(C)
    # rows of modalities that need no gradient stay unwritten (never read)
    h = torch.empty((info.N, C, ldh), dtype=pk.z.dtype, device=pk.z.device)
    out = torch.empty((info.N, C, pk.ld), dtype=pk.inv.dtype, device=pk.z.device)
    needed = index_table(tuple(int(x) for x in needs_grad), torch.int32, pk.z)
    kind = launcher_kind(pk)

    def coef_grid(meta):
        return (triton.cdiv(C_max, meta["BLOCK_C"]) ** 2, info.N, info.M * info.M)

    def apply_grid(meta):
        return (info.M * triton.cdiv(C_max, meta["BLOCK_C"]), triton.cdiv(pk.ld, meta["BLOCK_K"]), info.N)

    precision = dot_precision(pk.mode)
    with on_device(pk.z):
        wrap_triton(_COEF[kind])[coef_grid](
            pk.z,
            pk.offsets_t,
            needed,
            h,
            pk.ld,
            C,
            ldh,
            info.M,
            C_max,
            PRECISION=precision,
            UPCAST=pk.upcast,
            ROUND=pk.round_code,
        )
        wrap_triton(_APPLY[kind])[apply_grid](
            pk.z,
            h,
            pk.offsets_t,
            needed,
            w,
            out,
            pk.ld,
            C,
            ldh,
            info.M,
            C_max,
            PRECISION=precision,
            UPCAST=pk.upcast,
        )
    return out
