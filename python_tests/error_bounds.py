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

Rounded operands: where the cuda kernels round a product's operands on purpose (bf16
inputs: the direct algorithm's left operand x s^2; fp32 inputs with TF32 allowed: every
operand), their S is compared with the exact S of those operands (``cuda_operand_sqdist``)
under the float32 bound above.

The triton kernels round differently: they stage the normalized rows x s themselves in the
operand type (float16, bfloat16 or TF32) and run every product on them, so their S is
compared with the exact S of those staged rows (``staged_rows``, ``exact_sqdist``).

Rounded backward operands (bf16 inputs on cuda): dL/dXh_m is a sum of products, each with
one operand rounded to bf16 (relative u16 = 2^-8): gram, T_n = c_mn G_mn Xh_n (one product
per n, the coefficient-weighted block rounded), so |dT_n| <= u16 |c_mn| |G_mn| |Xh_n|;
direct, Xh_m E_m with E_m = sum_n c_mn K_n rounded, so the error is <= u16 |Xh_m| |E_m|
(absolute values taken element-wise, then multiplied as matrices). The normalization
backward dx = (g - xh <xh, g>) / r turns an error e of g into at most (|e| + |xh| ||e||) / r
per row (``bf16_backward_bound``).

Gradients (the loss with distance "rms"). The weight of pair (m, n) is
w = lambda / N rho / (2 d sqrt(S)): an error dS moves it by a relative |dS| / (2 S) to first
order. The products that apply it (GEMMs over C and d, then the normalization backward)
add gamma_{2 (C + d) + 12} relative to the magnitudes they sum. Each modality's gradient is
a sum of at most M - 1 pair terms, each at most the largest gradient entry in size for the
student-only gradient of these tests, so
    |g' - g| <= (M - 1) (max_pairs |dS| / (2 S) + gamma_{2 (C + d) + 12}) max |g|.

The loss over given S (ssa_loss_from_sqdist; S and ce exact in their dtype). Per sample the
term t = rho delta: diff = ce_m - ce_n and x = beta diff carry 2u; expm1 (within 1 ulp =
2u) turns a relative error e of x into x e^x / expm1(x) e <= (1 + x) e, so rho carries
(2 + 2 (1 + x)) u; delta = sqrt(S) / d (sqrt, the division or a rounded 1 / d times it)
3u; the product u: t carries k(x) u = (8 + 2x) u. Summing N terms (float32 left to right,
or fp64) adds at most (N - 1) u of sum |t|; the mean's 1 / N and lambda 3u; summing the M^2
pair terms (M^2 - 1) u of their absolute sum. So
    |L' - L| <= (8 + 2 x_max + N + 2 + M^2) u lambda / N sum_{b, m, n} |t|   (to first order;
    the factor is rounded up to gamma). Its gradient per entry: g lambda, 1 / N, rho, 1 / d,
and 1 / (2 sqrt(S)) (sqrt, the factor 2 exact, the reciprocal or division, the product):
    |g' - g| <= gamma_{12 + 2 x_max} |g|   element-wise.
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


def tf32(x: torch.Tensor, truncate: bool = False) -> torch.Tensor:
    """A float32 tensor rounded to TF32 (10 mantissa bits): cvt.rna (to nearest, ties away
    from zero), or, with truncate, the low bits dropped (what a tensor core does with fp32
    operands fed to it unconverted; which one cuBLAS does is not documented)."""
    bits = x.view(torch.int32)
    return ((bits if truncate else bits + 0x1000) & ~0x1FFF).view(torch.float32)


def cuda_operand_sqdist(
    feats: list[torch.Tensor], algo: str, stage=None, eps: float = 1e-8, truncate: bool = False
) -> torch.Tensor:
    """The exact S (float64) of the operands the cuda kernels' products see (csrc/cuda/ssa_cuda.cu).

    stage: None (operands exact: fp64 and fp32 inputs, fp16 inputs, and bf16 inputs where
    the products read the raw rows), torch.bfloat16 (bf16 inputs: the direct algorithm's left
    operand x s^2 is rounded to bf16), or "tf32" (fp32 inputs with TF32 allowed: both operands
    rounded to TF32). The Gram blocks are products of the raw rows, scaled afterwards; the
    direct K strips are (x s^2)^T x. s = 1 / max(||x||, eps) from a float64 sum, in float32.
    """
    rows = [f.reshape(f.shape[0], f.shape[1], -1) for f in feats]
    if stage is None:
        K = []
        for x in rows:
            xh = x.double() / x.double().norm(dim=-1, keepdim=True).clamp_min(eps)
            K.append(xh.transpose(1, 2) @ xh)
        return _sqdist_of(K)
    K = []
    for x in rows:
        s = (1 / x.double().norm(dim=-1, keepdim=True).clamp_min(eps)).float()
        right = tf32(x.float(), truncate) if stage == "tf32" else x.float()
        if algo == "gram":  # K is not formed, but S of the scaled blocks is that of K = (s x)^T (s x)
            left = right
            K.append((s.double() * left.double()).transpose(1, 2) @ (s.double() * right.double()))
        else:
            left = x.float() * (s * s)
            left = tf32(left, truncate) if stage == "tf32" else left.to(stage).float()
            K.append(left.double().transpose(1, 2) @ right.double())
    # The direct kernels sum the upper triangle of D (the diagonal once, above it twice): with
    # one operand rounded, K is no longer exactly symmetric, and that is the S they define.
    return _sqdist_of(K, upper=algo == "direct")


def _sqdist_of(K: list[torch.Tensor], upper: bool = False) -> torch.Tensor:
    M, d = len(K), K[0].shape[-1]
    weight = torch.ones(d, d, dtype=torch.float64)
    if upper:
        weight = torch.triu(2 * weight, 1) + torch.eye(d, dtype=torch.float64)
    S = torch.zeros(K[0].shape[0], M, M, dtype=torch.float64)
    for m in range(M):
        for n in range(M):
            S[:, m, n] = ((K[m] - K[n]).pow(2) * weight).sum((1, 2))
    return S


def bf16_backward_bound(feats: list[torch.Tensor], weight: torch.Tensor, algo: str, eps: float = 1e-8) -> list:
    """Per entry, the error a bf16-rounded backward operand adds to dL/dX_m (module docstring),
    for the weight [N, M, M] = dL/dS the backward applies (student-only: row m, column n)."""
    u = 2.0**-8
    rows = [f.double().reshape(f.shape[0], f.shape[1], -1) for f in feats]
    r = [x.norm(dim=-1, keepdim=True) for x in rows]
    xh = [x / n.clamp_min(eps) for x, n in zip(rows, r)]
    M = len(feats)
    w = weight.double()
    out = []
    for m in range(M):
        c = [(-4 * w[:, m, n]) if n != m else 4 * (w[:, m].sum(1) - w[:, m, m]) for n in range(M)]
        if algo == "gram":
            # the pair form (csrc/cuda/grads.cuh gram_grad_raw, students.cuh folded_blocks_kernel):
            # A_m X_m + sum B_mn R_mn, each of A_m, B_mn and R_mn rounded once; equal channel
            # counts: R_mn = X_n - X_m and |A_m| <= sum |c_mn| (|G_mn| + |G_mm|); else R_mn = X_n
            # (exact) and A_m holds G_mm. The bound of whichever path ran: the larger.
            Gmm = (xh[m] @ xh[m].transpose(1, 2)).abs()
            e = 0
            for n in range(M):
                if n == m:
                    continue
                Gmn = (xh[m] @ xh[n].transpose(1, 2)).abs()
                if xh[n].shape == xh[m].shape:
                    part = (Gmn + Gmm) @ xh[m].abs() + 2 * Gmn @ (xh[n] - xh[m]).abs()
                    if M == 2 and m == 1:  # the students' shared [X_0; X_1 - X_0]: [A_1 | A_1 - B_10]
                        shared = (Gmn + Gmm) @ xh[0].abs() + 2 * (2 * Gmn + Gmm) @ (xh[1] - xh[0]).abs()
                        part = torch.maximum(part, shared)
                else:
                    part = Gmm @ xh[m].abs() + Gmn @ xh[n].abs()
                e = e + u * c[n].abs()[:, None, None] * part
        else:
            E = sum(c[n][:, None, None] * (xh[n].transpose(1, 2) @ xh[n]) for n in range(M))
            e = u * (xh[m].abs() @ E.abs())
        bound = (e + xh[m].abs() * e.norm(dim=-1, keepdim=True)) / r[m].clamp_min(eps)
        out.append(bound.reshape(feats[m].shape))
    return out


def staged_rows(f: torch.Tensor, stage, eps: float = 1e-8) -> torch.Tensor:
    """The [N, C, d] rows as the triton kernels stage them (mtut_ops/triton/_common.py:
    _stage_rows): x * s in float32, s = 1 / max(||x||, eps) from a float64 sum rounded to
    float32, then rounded to the operand type (torch.float16, torch.bfloat16, "tf32" (nearest,
    ties away) or torch.float32 (none)); float64 inputs are normalized in float64. float64."""
    x = f.reshape(f.shape[0], f.shape[1], -1)
    if f.dtype == torch.float64:
        return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)
    s = (1 / x.double().norm(dim=-1, keepdim=True).clamp_min(eps)).float()
    v = x.float() * s
    if stage == "tf32":
        return tf32(v).double()
    return v.to(stage).double()


def exact_sqdist(rows: list[torch.Tensor]) -> torch.Tensor:
    """S (float64) of the given rows [N, C_m, d] as they are, without normalizing them again."""
    return _sqdist_of([r.transpose(1, 2) @ r for r in rows])


def loss_from_sqdist_bounds(
    S: torch.Tensor,
    ce: torch.Tensor,
    beta: float,
    lambda_: float,
    distance: str,
    d: int,
    dtype: torch.dtype,
    reference_dtype: torch.dtype = torch.float64,
) -> tuple:
    """(bound on |L' - L|, relative bound on each entry of dL/dS) for ssa_loss_from_sqdist in
    ``dtype`` (float32 or float64) against the loss of the same S and ce computed in
    ``reference_dtype`` (module docstring). A reference in the same dtype carries the same
    bound of the exact values, so the two differ by twice it; a float64 reference of a
    float32 result is taken as exact."""
    u = UNIT[dtype]
    S, ce = S.double(), ce.double()
    N, M = S.shape[0], S.shape[1]
    diff = ce.t().unsqueeze(2) - ce.t().unsqueeze(1)
    x = (beta * diff).clamp_min(0)
    x_max = x.max().item()
    delta = S.clamp_min(0).sqrt() / d if distance == "rms" else S
    t = (torch.expm1(x) * delta).abs().sum().item()
    loss = gamma(8 + 2 * x_max + N + 2 + M * M, u) * lambda_ / N * t
    both = 2 if reference_dtype == dtype else 1
    return both * loss, both * gamma(12 + 2 * x_max, u)


def assert_cuda_grads_within_bound(grads, ref, feats, ce, algo: str, dtype: torch.dtype, lambda_: float = 0.5) -> None:
    """Each entry of the CUDA kernels' float32/float16/bfloat16 gradients (``grads``, of the loss
    with beta 2, ``lambda_``, "rms") within its bound of the fp64 reference's (``ref``: leaves
    with .grad) for the inputs ``feats`` (on the CPU) and losses ``ce``."""
    from mtut_ops import reference as R

    # The weights come from S, off by the float32 bound and by the rounded operands; the
    # bf16 backward rounds its scaled operands too (bf16_backward_bound).
    channels, d = [f.shape[1] for f in feats], feats[0][0, 0].numel()
    S_ref = R.pairwise_sqdist([f.double() for f in feats])
    S_target = cuda_operand_sqdist(feats, algo, torch.bfloat16 if dtype == torch.bfloat16 else None)
    S_err = sqdist_bound(channels, d, torch.float32, algo, S_target) + (S_target - S_ref).abs()
    rel = grad_rtol(channels, d, torch.float32, algo, S_ref, S_err)
    if dtype == torch.bfloat16:
        S_leaf = S_ref.clone().requires_grad_()
        (weight,) = torch.autograd.grad(
            torch.ops.mtut.ssa_loss_from_sqdist(S_leaf, ce, 2.0, lambda_, "rms", d, None), S_leaf
        )
        rounded = bf16_backward_bound([f.double() for f in feats], weight, algo)
    else:
        rounded = [torch.zeros(f.shape, dtype=torch.float64) for f in feats]
    fi = torch.finfo(dtype)
    for a, b, extra in zip(grads, ref, rounded):
        assert a.dtype == dtype and a.shape == b.shape
        err = (a.detach().double().cpu() - b.grad).abs()
        tol = rel * b.grad.abs().max() + extra + fi.eps / 2 * b.grad.abs() + fi.smallest_normal * fi.eps / 2
        assert (err <= tol).all(), (err - tol).max()
