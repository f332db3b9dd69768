"""The triton backend's kernels against mtut_ops.reference, on small shapes.

Runs where the kernels can: on CUDA, or on CPU under the triton interpreter
(TRITON_INTERPRET=1 set before mtut_ops is imported, since the variable must be set before
the @triton.jit functions are built: make test runs this file in its own pytest run with
it set). Elsewhere the module is skipped. Only what is specific to the triton kernels is
here; the per-op reference checks (test_accuracy.py), the edge cases, opcheck, gradcheck,
torch.compile and the op contract run on triton through conftest's backend_device
(make test and make test-triton-interp; on a GPU, in every run).

The shapes cover N 1-2, M 2-3, C_m 1-20 differing per modality (20 > 16: two channel
blocks of the interpreter's 16-wide config), d 1-40 with d not a multiple of the block
(16 under the interpreter, 32/64 on a GPU), and non-contiguous inputs.

Tolerances: the worst-case bounds of python_tests/error_bounds.py. float64 inputs run in
float64 throughout (tiles, dots, sums), like the cpu backend. float16/bfloat16 inputs, and
float32 inputs while torch allows TF32, run every dot on normalized rows rounded to that
operand type (float32 accumulation): those paths are held to the exact results of their
rounded operands, with the bounds derived below ("tensor-core operands"); float32 inputs
without TF32 run exact IEEE fp32 dots.
"""

from __future__ import annotations

import pytest
import torch

import mtut_ops
from mtut_ops import _validation as V
from mtut_ops import reference as R
from mtut_ops.backends import has_triton_kernels, triton_interpreted

from .conftest import leaf, make_ce, make_feats
from .error_bounds import exact_sqdist, gamma, grad_rtol, sqdist_bound, staged_rows

if has_triton_kernels() and torch.cuda.is_available():
    DEVICE = "cuda"
elif has_triton_kernels() and triton_interpreted():
    DEVICE = "cpu"
else:
    pytest.skip(
        "triton kernels need CUDA or TRITON_INTERPRET=1 (make test runs this file under the interpreter)",
        allow_module_level=True,
    )

# Interpreted, every test here is `interpreted`; the tensor-core operand models take seconds
# a test there, so they run in the deep tier (make test-triton-interp); on a GPU all is fast.
pytestmark = [pytest.mark.interpreted] if DEVICE == "cpu" else []
deep_interpreted = pytest.mark.deep if DEVICE == "cpu" else (lambda f: f)

ALGOS = ["direct", "gram"]

# (N, channels, spatial, non-contiguous)
CASES = [
    (1, [1, 4], [1], False),  # d = 1, a single channel
    (2, [3, 5], [2, 3], True),  # d = 6
    (2, [16, 7, 2], [4, 4], False),  # d = 16: exactly one interpreter block
    (1, [9, 20], [17], True),  # d = 17, C = 20: two blocks each way
    (2, [5, 12, 3], [5, 8], True),  # d = 40, M = 3
]
CASE_IDS = [f"N{n}-C{'_'.join(map(str, c))}-d{s}{'-nc' if nc else ''}" for n, c, s, nc in CASES]


def feats_of(case, dtype=torch.float64, seed=0):
    N, channels, spatial, noncontig = case
    return make_feats(N, channels, spatial, dtype=dtype, device=DEVICE, noncontiguous=noncontig, seed=seed)


def d_of(feats):
    return feats[0][0, 0].numel()


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_pairwise_sqdist_and_grad_fp64(case, algo):
    feats = feats_of(case)
    if case[3]:
        assert not feats[0].is_contiguous()
    N, channels = case[0], case[1]
    M = len(channels)
    ours, ref = leaf(feats), leaf([f.cpu() for f in feats])
    S = mtut_ops.pairwise_sqdist(ours, algo=algo, backend="triton")
    Sr = R.pairwise_sqdist(ref)
    assert S.shape == (N, M, M) and S.dtype == torch.float64 and S.device.type == DEVICE
    bound = sqdist_bound(
        channels,
        d_of(feats),
        torch.float64,
        V.resolve_algo(algo, d_of(feats), channels, "triton", feats[0].dtype),
        Sr.detach(),
    )
    assert ((S.detach().cpu() - Sr).abs() <= bound).all()
    assert torch.equal(S, S.transpose(1, 2)) and (S.diagonal(dim1=1, dim2=2) == 0).all()

    g = torch.randn(N, M, M, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    (S * g.to(DEVICE)).sum().backward()
    (Sr * g).sum().backward()
    for a, b in zip(ours, ref):
        assert a.grad.shape == a.shape and a.grad.dtype == a.dtype
        torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=1e-9, atol=1e-9 * (1 + b.grad.abs().max().item()))


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_ssa_loss_and_grad_fp64(case, algo):
    # distance and cap vary with the case, so every combination shows up without a full product
    i = CASES.index(case)
    distance = ["rms", "fro2"][i % 2]
    cap = [None, 1e-3, None, 10.0, None][i]
    feats = feats_of(case, seed=i)
    ce = make_ce(len(case[1]), case[0], device=DEVICE, seed=i + 1)
    ours, ref = leaf(feats), leaf([f.cpu() for f in feats])
    L = mtut_ops.ssa_loss(ours, ce, lambda_=0.5, distance=distance, algo=algo, pair_cap=cap, backend="triton")
    Lr = R.ssa_loss(ref, ce.cpu(), lambda_=0.5, distance=distance, pair_cap=cap)
    assert L.shape == () and L.dtype == torch.float64
    torch.testing.assert_close(L.detach().cpu(), Lr.detach(), rtol=1e-9, atol=1e-12)
    L.backward()
    Lr.backward()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=1e-8, atol=1e-10 * (1 + b.grad.abs().max().item()))


# ------------------------------------------------------------------ tensor-core operands
#
# float16/bfloat16 inputs, and float32 inputs while torch allows TF32, run every dot on
# operands rounded to that type (mtut_ops/triton/_common.py: the staged rows, and in the
# backward the tiles of E or H). The tests hold those paths to the exact results of their
# rounded operands, with the bounds derived below; the interpreter computes in IEEE float32
# (the 16-bit and TF32 operands are exact there), so on CPU they check what the kernels
# round, and the bound on what they add.

STAGE = {"fp16": torch.float16, "bf16": torch.bfloat16, "tf32": "tf32", "ieee": torch.float32}
#: unit roundoff of the operand type (round to nearest): float16 and TF32 keep 10 fraction
#: bits, bfloat16 7; "ieee" float32 operands are the staged rows themselves (no rounding
#: beyond the one staged_rows models).
U_OP = {"fp16": 2.0**-11, "bf16": 2.0**-8, "tf32": 2.0**-11, "ieee": 0.0}
#: float16's smallest subnormal is 2^-24: rounding there costs up to 2^-25 absolutely.
ETA = {"fp16": 2.0**-25, "bf16": 0.0, "tf32": 0.0, "ieee": 0.0}
U32 = 2.0**-24
#: u of the float32 accumulation of the dots. The interpreter's are numpy's IEEE float32
#: (2^-24). On a GPU, tensor-core (MMA) units add in float32 without IEEE round-to-nearest:
#: Fasi, Higham, Mikaitis & Pranesh, "Numerical behavior of NVIDIA tensor cores", PeerJ
#: Comput. Sci. 7:e330 (2021) found the aligned significands truncated (V100, T4, A100):
#: a unit of 2^-23.
U_ACC = U32 if DEVICE == "cpu" else 2.0**-23


@pytest.fixture
def tf32_switch():
    """Sets torch's TF32 switch for float32 matmuls (the legacy setter, as most users do)
    and restores it."""
    b = torch.backends
    before = (b.fp32_precision, b.cuda.matmul.fp32_precision, b.mkldnn.matmul.fp32_precision)
    yield lambda on: setattr(torch.backends.cuda.matmul, "allow_tf32", on)
    b.fp32_precision, b.cuda.matmul.fp32_precision, b.mkldnn.matmul.fp32_precision = before


def mode_inputs(mode, channels, spatial, N=2, seed=7, scale=1.0):
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mode, torch.float32)
    return [(scale * f).to(dtype) for f in make_feats(N, channels, spatial, device=DEVICE, seed=seed)]


def staged(feats, mode):
    """The rows the kernels read, [N, C_m, d] float64 each (bit for bit: test_staging_is_the_model)."""
    return [staged_rows(f.cpu(), STAGE[mode]) for f in feats]


def tc_sqdist_bound(rows, algo, S):
    """|S' - S| for the exact distances S of the staged ``rows``, computed by the kernels.

    error_bounds.sqdist_bound's derivation, with the staged rows instead of unit rows and
    the accumulation unit U_ACC. The rounded rows have norms up to rho (1 + u_op, not 1),
    so |K| and |G| grow by rho^2: the direct bound's gamma_{C+6} (C_m + C_n) (from ||dK||_F
    <= gamma sum_c ||z_c||^2) takes a factor rho^2, and the gram bound (from |G| <= 1 and
    |dG| <= gamma_{d+6}) a factor rho^4."""
    channels = [r.shape[1] for r in rows]
    d = rows[0].shape[2]
    rho2 = max(r.pow(2).sum(-1).max().item() for r in rows)
    c = torch.tensor([float(x) for x in channels], dtype=torch.float64)
    pair = (c[:, None] + c[None, :]).expand_as(S)
    if algo == "direct":
        e = gamma(max(channels) + 6, U_ACC) * pair * rho2 + U_ACC * S.clamp_min(0).sqrt()
        return 2 * S.clamp_min(0).sqrt() * e + e * e
    g = gamma(d + 6, U_ACC)
    return (2 * g + g * g) * rho2**2 * pair**2


def tc_backward_model(rows, weight, mode, algo):
    """What the backward kernels compute, for every modality: the gradient into the staged
    rows Gamma_m = Z_m E_m, E_m = 4 sum_n w_mn (Z_m^T Z_m - Z_n^T Z_n) (exact, float64; the
    gram kernels' sum_n 4 w_mn (G_mm Z_m - G_mn Z_n), G = Z Z^T, is the same product), and a
    bound on the kernels' error, elementwise ([N, C_m, d] each).

    Both kernels accumulate in float32 (unit U_ACC) and round one operand of the last GEMM
    to the operand type (u_op, and for float16 2^-25 absolutely below its normal range,
    after scaling by a power of two sigma <= 2 max|operand|). With A = |Z| (bounds on
    |products| come from the absolute values: Higham, Accuracy and Stability, §3.5):

    direct: K' = K + dK, |dK| <= gamma_{C_m} A^T A; E' = fl(4 sum_n w (K'_m - K'_n)), so
      |E' - E| <= dE = 4 sum_n |w_mn| gamma_{C_max + 2M} (A_m^T A_m + A_n^T A_n). The operand
      E~ = round(E' / sigma) sigma: |E~ - E'| <= u_op |E'| + 2 eta max|E'| (sigma <= 2 max|E'|
      over a tile, bounded by the max over all). With Ebar = |E| + dE >= |E'|:
      |Gamma' - Gamma| <= A_m (dE + u_op Ebar + 2 eta max Ebar)
                          + gamma_d A_m ((1 + u_op) Ebar + 2 eta max Ebar)   (the final dot over d).
    gram: G' = G + dG, |dG| <= gamma_d A_m A^T (all C rows); H' = round(G') (|G| <= 1: no scale):
      |H' - G| <= dH = gamma_d A_m A^T + (u32 + u_op + u32 u_op) Gbar + eta, Gbar = |G| + gamma_d A_m A^T.
      Per pair, A = H'_mm Z_m and B_n = H'_mn Z_n (dots over C_m, C_n):
      |A' - A| + |B_n' - B_n| <= (dH + gamma_{C_max} (|G| + dH)) A over the columns of m and n;
      then fl(4 w (A' - B_n')) summed over n: gamma_{M+2} 4 |w| (|G| + dH) A on those columns.
    """
    u_op, eta = U_OP[mode], ETA[mode]
    M = weight.shape[1]
    channels = [r.shape[1] for r in rows]
    d = rows[0].shape[2]
    W = weight.double().cpu().masked_fill(torch.eye(M, dtype=torch.bool), 0)
    K = [r.transpose(1, 2) @ r for r in rows]
    A = [r.abs() for r in rows]
    KA = [a.transpose(1, 2) @ a for a in A]
    Zs, As = torch.cat(rows, 1), torch.cat(A, 1)
    modality = torch.cat([torch.full((c,), m) for m, c in enumerate(channels)])
    grads, bounds = [], []
    for m in range(M):
        E = sum(4 * W[:, m, n, None, None] * (K[m] - K[n]) for n in range(M))
        grads.append(rows[m] @ E)
        if algo == "direct":
            dE = sum(
                4 * W[:, m, n, None, None].abs() * gamma(max(channels) + 2 * M, U_ACC) * (KA[m] + KA[n])
                for n in range(M)
            )
            Ebar = E.abs() + dE
            big = 2 * eta * Ebar.amax((1, 2), keepdim=True)
            bounds.append(A[m] @ (dE + u_op * Ebar + big) + gamma(d, U_ACC) * (A[m] @ ((1 + u_op) * Ebar + big)))
        else:
            G, GA = rows[m] @ Zs.transpose(1, 2), A[m] @ As.transpose(1, 2)
            Gbar = G.abs() + gamma(d, U_ACC) * GA
            dH = gamma(d, U_ACC) * GA + (U32 + u_op + U32 * u_op) * Gbar + eta
            bound = torch.zeros_like(grads[-1])
            for n in range(M):
                if n == m:
                    continue
                cols = ((modality == m) | (modality == n)).double()[None, None, :]  # the columns of m and n
                dots = (dH * cols) @ As + gamma(max(channels), U_ACC) * (((G.abs() + dH) * cols) @ As)
                combine = gamma(M + 2, U_ACC) * (((G.abs() + dH) * cols) @ As)
                bound = bound + 4 * W[:, m, n, None, None].abs() * (dots + combine)
            bounds.append(bound)
    return grads, bounds


def normalize_backward_model(feats, grads, bounds, eps=1e-8):
    """dx = (g - xh <xh, g>) / r (exact, float64) of each gradient g into the normalized rows, and a bound on
    the error of mtut_ops/triton/_common.normalize_backward applied to g' with |g' - g| <= bound: the linear map
    carries the bound over (|J(dg)| <= (|dg| + |xh| <|xh|, |dg|>) / r), and its own float32 arithmetic (xh,
    r, the dot over d, the difference, the division) adds gamma_{d+8} of the magnitudes it combines."""
    out, out_bounds = [], []
    for f, g, b in zip(feats, grads, bounds):
        x = f.double().cpu().reshape(g.shape)
        r = x.norm(dim=-1, keepdim=True)
        assert (r > eps).all()  # the model covers the r > eps branch
        xh = x / r
        d = x.shape[-1]
        dx = (g - xh * (xh * g).sum(-1, keepdim=True)) / r
        gbar = g.abs() + b
        carried = (b + xh.abs() * (xh.abs() * b).sum(-1, keepdim=True)) / r
        own = gamma(d + 8, U32) * (gbar + xh.abs() * (xh.abs() * gbar).sum(-1, keepdim=True)) / r
        out.append(dx.reshape(f.shape))
        out_bounds.append((carried + own).reshape(f.shape))
    return out, out_bounds


def cast_bound(x, dtype):
    """Rounding to a 16-bit dtype: half an ulp, and for float16 half its subnormal spacing."""
    if dtype not in (torch.float16, torch.bfloat16):
        return torch.zeros_like(x)
    fi = torch.finfo(dtype)
    return fi.eps / 2 * x.abs() + fi.smallest_normal * fi.eps / 2


@pytest.mark.parametrize("mode", ["fp16", "bf16", "tf32", "ieee"])
def test_staging_is_the_model(mode, tf32_switch):
    """The kernels' operands are bit for bit python_tests/error_bounds.py:staged_rows:
    normalized in float32 from a float64 norm, rounded to the operand type (nearest even;
    TF32 nearest away), on strided inputs too; float16 entries below its normal range stay
    subnormal rather than flushed."""
    from mtut_ops import _validation as Vd
    from mtut_ops.triton._common import pack

    tf32_switch(mode == "tf32")
    feats = mode_inputs(mode, [9, 20], [17], seed=2)
    feats = [f.transpose(0, 1).contiguous().transpose(0, 1) for f in feats]  # strided: [C, N, d] storage
    feats[0][0, 3, :9] *= 1e-3  # tiny entries: float16 subnormals once normalized
    pk = pack(feats, Vd.check_feats(feats), 1e-8)
    assert pk.mode == mode and not feats[0].is_contiguous()
    want = torch.cat(staged(feats, mode), 1)
    assert pk.z.shape == (2, 29, 32)  # d = 17 padded to a multiple of 16, with zeros
    assert torch.equal(pk.z[..., :17].double().cpu(), want)
    assert (pk.z[..., 17:] == 0).all()
    if mode == "fp16":
        tiny = want.abs()[want != 0].min()
        assert tiny < torch.finfo(torch.float16).smallest_normal  # the subnormals are there
    if mode != "ieee":  # and the rounding is real: the unrounded rows differ
        assert not torch.equal(want, torch.cat([staged_rows(f.cpu().float(), torch.float32) for f in feats], 1))


@deep_interpreted
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("mode", ["fp16", "bf16", "tf32", "ieee"])
@pytest.mark.parametrize("w_scale", [1.0, 2.0**-30], ids=["w1", "w2^-30"])
def test_backward_kernels_within_bound(algo, mode, w_scale, tf32_switch):
    """The gradient into the normalized rows, as the backward kernels compute it, against
    tc_backward_model: the exact product of the staged rows, within the derived bound. With
    weights of 2^-30 (a lambda = 5e-3 loss gives ~1e-8) the float16 E / H tiles sit far
    below float16's range: only their power-of-two scale keeps them."""
    from mtut_ops import _validation as Vd
    from mtut_ops.triton._common import pack
    from mtut_ops.triton.direct import direct_backward
    from mtut_ops.triton.gram import gram_backward

    tf32_switch(mode == "tf32")
    channels, spatial = [13, 6, 18], [5, 7]
    feats = mode_inputs(mode, channels, spatial)
    g = torch.Generator().manual_seed(11)
    weight = (w_scale * (2 * torch.rand(2, 3, 3, generator=g, dtype=torch.float64) - 1)).float().to(DEVICE)
    weight[1, 1] = 0  # modality 1 pulls on nothing in sample 1: its rows get exact zeros
    pk = pack(feats, Vd.check_feats(feats), 1e-8)
    assert pk.mode == mode
    out = (direct_backward if algo == "direct" else gram_backward)(pk, weight, [True, True, False])
    assert out.dtype == torch.float32
    want, bound = tc_backward_model(staged(feats, mode), weight, mode, algo)
    offsets, d = [0, 13, 19, 37], 35
    assert out.shape == (2, 37, 48)  # d padded to a multiple of 16: zeros there
    assert (out[:, :19, d:] == 0).all()
    for m in (0, 1):
        got = out[:, offsets[m] : offsets[m + 1], :d].double().cpu()
        err = (got - want[m]).abs()
        assert (err <= bound[m]).all(), (err / bound[m]).max()
        # the bound is tight enough to mean something: far below what it bounds
        assert bound[m].max() < {"fp16": 4e-3, "bf16": 3e-2, "tf32": 4e-3, "ieee": 1e-4}[mode] * want[m].abs().max()
    assert (out[1, 13:19] == 0).all()


@deep_interpreted
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("mode", ["fp16", "bf16", "tf32", "ieee"])
def test_low_precision_inputs_within_bound(algo, mode, tf32_switch):
    """S, the loss and its gradients for float16/bfloat16 inputs and float32 inputs (TF32 or
    exact) against the float64 reference of the rounded inputs. The tensor-core paths are
    held to the exact S of their staged rows (tc_sqdist_bound); the loss and gradients to
    the reference, within: the weights' error (grad_rtol, from S's error against the exact
    S, staging included), plus the gradient's move from exact to staged rows (computed), plus
    the backward kernels' and the normalization backward's bounds, plus the final rounding to
    the input dtype."""
    tf32_switch(mode == "tf32")
    channels, spatial, d = [13, 6, 18], [5, 7], 35
    feats = mode_inputs(mode, channels, spatial)
    dtype = feats[0].dtype
    ce = make_ce(3, 2, device=DEVICE)
    ref_in = [f.double().cpu() for f in feats]  # the reference sees exactly the rounded inputs
    rows = staged(feats, mode)
    S = mtut_ops.pairwise_sqdist([f.detach() for f in feats], algo=algo, backend="triton")
    assert S.dtype == torch.float32
    S_ref = R.pairwise_sqdist(ref_in)
    S_target = exact_sqdist(rows)
    bound = tc_sqdist_bound(rows, algo, S_target)
    assert bound.max() < S_target[S_target > 0].min()  # the bound is below every distance it checks
    err = (S.double().cpu() - S_target).abs()
    assert (err <= bound).all(), (err / bound).max()
    moved = (S_target - S_ref).abs().max()
    if mode != "ieee":  # the rounded operands move S measurably; the kernels follow them, not the exact rows
        assert err.max() < 0.1 * moved, (err.max(), moved)

    ours, ref = leaf(feats), leaf(ref_in)
    L = mtut_ops.ssa_loss(ours, ce, algo=algo, backend="triton")
    Lr = R.ssa_loss(ref, ce.cpu())
    assert L.dtype == torch.float32
    S_err = bound + (S_target - S_ref).abs()
    rel = grad_rtol(channels, d, torch.float32, algo, S_ref, S_err)
    torch.testing.assert_close(L.detach().double().cpu(), Lr.detach(), rtol=rel, atol=0)
    L.backward()
    Lr.backward()
    # the weights the reference applies (the kernels' differ by the weights' error, in rel)
    S_leaf = S_ref.detach().requires_grad_()
    (weight,) = torch.autograd.grad(
        torch.ops.mtut.ssa_loss_from_sqdist(S_leaf, ce.cpu(), 2.0, 5e-3, "rms", d, None), S_leaf
    )
    grads, bounds = tc_backward_model(rows, weight, mode, algo)
    staged_dx, staged_bound = normalize_backward_model(feats, grads, bounds)
    for a, b, sdx, sb in zip(ours, ref, staged_dx, staged_bound):
        assert a.grad.dtype == dtype  # gradients come back in the input dtype
        moved = (sdx - b.grad).abs()  # exact rows -> staged rows, same weights
        tol = rel * b.grad.abs().max() + moved + sb
        tol = tol + cast_bound(b.grad.abs() + tol, dtype)
        assert ((a.grad.double().cpu() - b.grad).abs() <= tol).all()


@deep_interpreted
def test_tf32_follows_torch_switch(tf32_switch):
    """float32 inputs take TF32 operands exactly while torch allows TF32 for matmuls, read at
    each call (legacy flag, set_float32_matmul_precision, the fp32_precision API), and exact
    float32 otherwise."""
    feats = mode_inputs("ieee", [20, 16], [6, 7], seed=4)
    exact = R.pairwise_sqdist([f.double().cpu() for f in feats])
    rows = staged(feats, "tf32")
    tf32_target = exact_sqdist(rows)
    for algo in ALGOS:
        for switch in ("allow_tf32", "precision", "fp32_precision"):
            if switch == "allow_tf32":
                torch.backends.cuda.matmul.allow_tf32 = True
            elif switch == "precision":
                torch.set_float32_matmul_precision("high")
            else:
                torch.backends.cuda.matmul.fp32_precision = "tf32"
            S = mtut_ops.pairwise_sqdist(feats, algo=algo, backend="triton").double().cpu()
            assert ((S - tf32_target).abs() <= tc_sqdist_bound(rows, algo, tf32_target)).all(), (algo, switch)
            assert (S - exact).abs().max() > 10 * (S - tf32_target).abs().max()  # the TF32 path ran
            torch.backends.cuda.matmul.fp32_precision = "ieee"
            S = mtut_ops.pairwise_sqdist(feats, algo=algo, backend="triton").double().cpu()
            assert ((S - exact).abs() <= sqdist_bound([20, 16], 42, torch.float32, algo, exact)).all(), (algo, switch)


def test_auto_picks_what_the_cost_model_picks():
    for channels, spatial in [([16, 16], [2, 3]), ([4, 4], [8, 8])]:
        feats = make_feats(1, channels, spatial, device=DEVICE, dtype=torch.float32)
        choice = V.resolve_algo("auto", feats[0][0, 0].numel(), channels, "triton", torch.float32)
        auto = torch.ops.mtut.triton_sqdist_forward(feats, 1e-8, "auto", False, False)[0]
        assert torch.equal(auto, torch.ops.mtut.triton_sqdist_forward(feats, 1e-8, choice, False, False)[0])


# ------------------------------------------------------------------ errors


def _args(algo="gram", cap=None):
    feats = leaf(make_feats(2, [3, 5], [2, 3], device=DEVICE))
    return feats, make_ce(2, 2, device=DEVICE), (2.0, 0.5, "rms", 1e-8, algo, cap)


def test_ops_check_their_inputs():
    """Called directly, the triton ops reject bad input with the API's messages."""
    feats, ce, args = _args()
    bad_feats = [feats[0].detach(), make_feats(3, [4], [2, 3], device=DEVICE)[0]]
    saved = torch.empty(0, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match=r"feats\[1\] has batch size N = 3"):
        torch.ops.mtut.triton_sqdist_forward(bad_feats, 1e-8, "gram", False, False)
    with pytest.raises(ValueError, match=r"algo must be 'auto', 'direct' or 'gram', got 'fast'"):
        torch.ops.mtut.triton_sqdist_forward(feats, 1e-8, "fast", False, False)
    with pytest.raises(ValueError, match=r"weight must have shape \[N, M, M\] = \[2, 2, 2\]"):
        torch.ops.mtut.triton_sqdist_backward(
            feats, saved, torch.zeros(2, 2, device=DEVICE), 1e-8, "gram", [True, True]
        )
    with pytest.raises(ValueError, match=r"needs_grad must hold one flag per modality"):
        torch.ops.mtut.triton_sqdist_backward(feats, saved, torch.zeros(2, 2, 2, device=DEVICE), 1e-8, "gram", [True])


def test_api_errors_match_the_cpu_backend():
    from .test_errors import BAD_LOSS_INPUTS

    for feats, ce, kwargs, exc, pattern in BAD_LOSS_INPUTS.values():
        feats = [f.to(DEVICE) for f in feats]
        with pytest.raises(exc, match=pattern.replace("{ce}", "ce_losses")):
            mtut_ops.ssa_loss(feats, ce.to(DEVICE), backend="triton", **kwargs)
