"""Error bounds of the SSA distances and gradients, derived once; every accuracy test uses them.

Notation: u is the unit roundoff of the arithmetic (2^-24 for float32, which float16 and
bfloat16 inputs are computed in; 2^-53 for float64), gamma_k = k u / (1 - k u). Rows are
normalized to unit L2 norm over the d positions; a pair (m, n) has C_m and C_n channels;
S is the exact squared distance.

Operands: xh = x * s with s = 1 / max(||x||, eps) carries a relative error <= 3u (the norm,
the reciprocal, the product).

Direct algorithm. K_ij = sum_c xh_ci xh_cj is a GEMM over the C channels:
|dK_ij| <= gamma_{C+6} sum_c |xh_ci| |xh_cj|, hence ||dK||_F <= gamma_{C+6} || |Xh| ||_F^2
= gamma_{C+6} C (the Frobenius norm of a product is at most the product of the norms, and
|| |Xh| ||_F^2 = C: C unit rows). D = K_m - K_n is formed element-wise (one more rounding:
u |D|), squared and summed in float64 (negligible). With
    e = gamma_{C_max+6} (C_m + C_n) + u sqrt(S):      |S' - S| <= 2 sqrt(S) e + e^2.
The error shrinks with S: the direct algorithm has no cancellation.

Gram algorithm. G_ij = sum_t xh_it xh_jt is a dot over the d positions:
|dG_ij| <= g = gamma_{d+6} (Cauchy-Schwarz: unit rows). t_mn = ||G_mn||_F^2 summed in float64:
|dt_mn| <= (2 g + g^2) C_m C_n (|G_ij| <= 1). S = t_mm - 2 t_mn + t_nn:
    |S' - S| <= (2 g + g^2) (C_m + C_n)^2,
absolute: it does not shrink with S (a difference of terms of size up to (C_m + C_n)^2), so
a float32 Gram result cannot resolve distances below it; the tests assert the bound only
where it is below the distances they check.

Tensor-core paths (the cuda kernels with float16/bfloat16 inputs, or float32 with TF32
allowed) round the normalized operands on purpose: their S is compared with the exact S of
those rounded operands (``staged_rows``) under the float32 bound above.

Gradients (the loss with distance "rms"). The weight of pair (m, n) is
w = lambda / N rho / (2 d sqrt(S)): an error dS moves it by a relative |dS| / (2 S) to first
order. The products that apply it (GEMMs over C and d, then the normalization backward)
add gamma_{2 (C + d) + 12} relative to the magnitudes they sum. Each modality's gradient is
a sum of at most M - 1 pair terms, each at most the largest gradient entry in size for the
student-only gradient of these tests, so
    |g' - g| <= (M - 1) (max_pairs |dS| / (2 S) + gamma_{2 (C + d) + 12}) max |g|.
"""
from __future__ import annotations

import torch

UNIT = {torch.float64: 2.0**-53, torch.float32: 2.0**-24}


def arithmetic_unit(dtype: torch.dtype) -> float:
    """u of the arithmetic the kernels use for inputs of ``dtype`` (float64, else float32)."""
    return UNIT[torch.float64 if dtype == torch.float64 else torch.float32]


def gamma(k: float, u: float) -> float:
    return k * u / (1 - k * u)


def sqdist_bound(channels, d: int, dtype: torch.dtype, algo: str, S: torch.Tensor) -> torch.Tensor:
    """Worst-case |S' - S| of ``algo`` ("direct" or "gram"), per sample and pair: [N, M, M]
    (S the exact distances [N, M, M]; see the module docstring)."""
    u = arithmetic_unit(dtype)
    c = torch.tensor([float(x) for x in channels], dtype=torch.float64)
    pair = (c[:, None] + c[None, :]).expand_as(S)
    if algo == "direct":
        e = gamma(max(channels) + 6, u) * pair + u * S.clamp_min(0).sqrt()
        return 2 * S.clamp_min(0).sqrt() * e + e * e
    if algo == "gram":
        g = gamma(d + 6, u)
        return (2 * g + g * g) * pair**2
    raise ValueError(algo)


def grad_rtol(channels, d: int, dtype: torch.dtype, algo: str, S: torch.Tensor, S_err=None) -> float:
    """The bound on |g' - g| / max |g| of the loss's gradient (distance "rms"; module
    docstring), and on the loss's relative error (a sum of positive terms). S_err: the
    error of the distances the weights are formed from (default: ``sqdist_bound``)."""
    u = arithmetic_unit(dtype)
    M = len(channels)
    off = ~torch.eye(M, dtype=torch.bool).expand_as(S)
    S_err = sqdist_bound(channels, d, dtype, algo, S) if S_err is None else S_err
    weight_rel = (S_err[off] / (2 * S[off])).max().item()
    return (M - 1) * (weight_rel + gamma(2 * (sum(channels) + d) + 12, u))


def tf32(x: torch.Tensor) -> torch.Tensor:
    """cvt.rna.tf32.f32 on a float32 tensor: 10 mantissa bits, ties away from zero."""
    bits = x.view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def staged_rows(f: torch.Tensor, stage, eps: float = 1e-8) -> torch.Tensor:
    """The [N, C, d] rows as a tensor-core kernel stages them: x * s in float32, s from a
    float64 sum, rounded to the operand type (torch.float16, torch.bfloat16 or "tf32")."""
    x = f.reshape(f.shape[0], f.shape[1], -1)
    if f.dtype == torch.float64:
        return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)
    s = (1 / x.double().norm(dim=-1, keepdim=True).clamp_min(eps)).float()
    v = x.float() * s
    if stage == "tf32":
        return tf32(v).double()
    return v.to(stage).double()


def exact_sqdist(rows: list[torch.Tensor]) -> torch.Tensor:
    """S of the given rows in float64, without normalizing them again."""
    K = [r.transpose(1, 2) @ r for r in rows]
    M = len(rows)
    S = torch.zeros(rows[0].shape[0], M, M, dtype=torch.float64)
    for m in range(M):
        for n in range(M):
            S[:, m, n] = (K[m] - K[n]).pow(2).sum((1, 2))
    return S
