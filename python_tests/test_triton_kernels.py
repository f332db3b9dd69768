"""The triton backend's kernels against mtut_ops.reference, on small shapes.

Runs where the kernels can: on CUDA, or on CPU under the triton interpreter
(TRITON_INTERPRET=1 set before mtut_ops is imported; python_tests/test_triton.py runs
this file in such a subprocess, since the variable must be set before the @triton.jit
functions are built). Elsewhere the module is skipped.

The shapes cover N 1-2, M 2-3, C_m 1-20 differing per modality (20 > 16: two channel
blocks of the interpreter's 16-wide config), d 1-40 with d not a multiple of the block
(16 under the interpreter, 32/64 on a GPU), and non-contiguous inputs.

Tolerances: the worst-case bounds of python_tests/error_bounds.py. float64 inputs run in
float64 throughout (tiles, dots, sums), like the cpu backend; float16/bfloat16/float32
inputs in float32 (dots in IEEE fp32; the gram dots read 16-bit rows as they are, products
exact), so the reference sees exactly the rounded inputs.
"""
from __future__ import annotations

import pytest
import torch

import mtut_ops
from mtut_ops import _validation as V
from mtut_ops import reference as R
from mtut_ops.backends import has_triton_kernels, triton_interpreted

from .conftest import leaf, make_ce, make_feats
from .error_bounds import grad_rtol, sqdist_bound

if has_triton_kernels() and torch.cuda.is_available():
    DEVICE = "cuda"
elif has_triton_kernels() and triton_interpreted():
    DEVICE = "cpu"
else:
    pytest.skip(
        "triton kernels need CUDA or TRITON_INTERPRET=1 (python_tests/test_triton.py runs this file under the interpreter)",
        allow_module_level=True,
    )

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
    bound = sqdist_bound(channels, d_of(feats), torch.float64, V.resolve_algo(algo, d_of(feats), channels), Sr.detach())
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


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs_within_bound(algo, dtype):
    channels, spatial = [13, 6, 18], [5, 7]
    feats = [f.to(dtype) for f in make_feats(2, channels, spatial, device=DEVICE, seed=7)]
    ce = make_ce(3, 2, device=DEVICE)
    ref_in = [f.double().cpu() for f in feats]  # the reference sees exactly the rounded inputs
    ours, ref = leaf(feats), leaf(ref_in)
    S = mtut_ops.pairwise_sqdist([f.detach() for f in feats], algo=algo, backend="triton")
    assert S.dtype == torch.float32
    S_ref = R.pairwise_sqdist(ref_in)
    bound = sqdist_bound(channels, 35, torch.float32, algo, S_ref)
    assert bound.max() < S_ref[S_ref > 0].min()  # the bound is below every distance it checks
    assert ((S.double().cpu() - S_ref).abs() <= bound).all()
    L = mtut_ops.ssa_loss(ours, ce, algo=algo, backend="triton")
    Lr = R.ssa_loss(ref, ce.cpu())
    assert L.dtype == torch.float32
    rel = grad_rtol(channels, 35, torch.float32, algo, S_ref)
    torch.testing.assert_close(L.detach().double().cpu(), Lr.detach(), rtol=rel, atol=0)
    L.backward()
    Lr.backward()
    for a, b in zip(ours, ref):
        assert a.grad.dtype == dtype
        # the arithmetic bound, plus the final rounding of the gradient to dtype (half an ulp, and for float16
        # half its subnormal spacing: these gradients are ~1e-8)
        fi = torch.finfo(dtype)
        tol = rel * b.grad.abs().max() + fi.eps / 2 * b.grad.abs() + fi.smallest_normal * fi.eps / 2
        assert ((a.grad.double().cpu() - b.grad).abs() <= tol).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gram_near_aligned_against_fp64(dtype):
    """X_n = X_m + 1e-4 noise: S is ~1e-9 of the norms the Gram identity subtracts. Each
    algorithm is held to its bound wherever that bound is below S (everywhere but the
    float32 Gram identity, which cannot resolve such distances and is only clamped >= 0)."""
    base = make_feats(2, [20], [3, 9], seed=3)[0]
    noisy = base + 1e-4 * torch.randn(base.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    feats = [base.to(DEVICE, dtype), noisy.to(DEVICE, dtype)]
    ref = R.pairwise_sqdist([f.double().cpu() for f in feats])
    for algo in ALGOS:
        S = mtut_ops.pairwise_sqdist(feats, algo=algo, backend="triton").double().cpu()[:, 0, 1]
        assert (S >= 0).all()
        bound = sqdist_bound([20, 20], 27, dtype, algo, ref)[:, 0, 1]
        if (bound < ref[:, 0, 1]).all():
            assert ((S - ref[:, 0, 1]).abs() <= bound).all(), algo
        else:
            assert algo == "gram" and dtype == torch.float32


@pytest.mark.parametrize("algo", ALGOS)
def test_deterministic_run_to_run(algo):
    feats = make_feats(2, [20, 7, 11], [5, 8], device=DEVICE, dtype=torch.float32, noncontiguous=True)
    ce = make_ce(3, 2, device=DEVICE, dtype=torch.float32)
    runs = []
    for _ in range(2):
        xs = leaf(feats)
        L = mtut_ops.ssa_loss(xs, ce, lambda_=0.5, algo=algo, backend="triton")
        L.backward()
        S = mtut_ops.pairwise_sqdist(feats, algo=algo, backend="triton")
        runs.append([L, S] + [x.grad for x in xs])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("algo", ALGOS)
def test_identical_inputs_give_exact_zeros(algo):
    (f,) = make_feats(2, [7], [3, 7], device=DEVICE)  # d = 21 spans two blocks
    feats = leaf([f, f.clone(), f.clone()])
    S = mtut_ops.pairwise_sqdist([x.detach() for x in feats], algo=algo, backend="triton")
    assert torch.equal(S, torch.zeros_like(S))
    L = mtut_ops.ssa_loss(feats, make_ce(3, 2, device=DEVICE), algo=algo, backend="triton")
    assert L.item() == 0.0
    L.backward()
    for x in feats:
        assert torch.equal(x.grad, torch.zeros_like(x.grad))


@pytest.mark.parametrize("algo", ALGOS)
def test_zero_rows_follow_the_eps_rule(algo):
    feats = make_feats(2, [5, 4], [3, 6], device=DEVICE)
    feats[0][:, 1] = 0  # a dead channel: normalized to 0, like F.normalize
    feats[1][0, :] = 0  # a whole dead sample
    ce = make_ce(2, 2, device=DEVICE)
    ours, ref = leaf(feats), leaf([f.cpu() for f in feats])
    torch.testing.assert_close(
        mtut_ops.pairwise_sqdist(feats, algo=algo, backend="triton").cpu(), R.pairwise_sqdist(ref).detach(),
        rtol=1e-10, atol=1e-12,
    )
    L = mtut_ops.ssa_loss(ours, ce, lambda_=0.5, algo=algo, backend="triton")
    Lr = R.ssa_loss(ref, ce.cpu(), lambda_=0.5)
    torch.testing.assert_close(L.detach().cpu(), Lr.detach(), rtol=1e-10, atol=1e-14)
    L.backward()
    Lr.backward()
    for a, b in zip(ours, ref):
        assert torch.isfinite(a.grad).all()
        torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("algo", ALGOS)
def test_nan_in_gives_nan_out(algo):
    feats = make_feats(2, [4, 4, 3], [3, 3], device=DEVICE)
    feats[0][1, 2, 0, 0] = float("nan")
    S = mtut_ops.pairwise_sqdist(feats, algo=algo, backend="triton")
    assert torch.isnan(S[1, 0, 1:]).all() and torch.isnan(S[1, 1:, 0]).all()
    assert torch.isfinite(S[0]).all() and torch.isfinite(S[1, 1, 2])  # other samples and pairs untouched
    xs = leaf(feats)
    L = mtut_ops.ssa_loss(xs, make_ce(3, 2, device=DEVICE), algo=algo, backend="triton")
    assert torch.isnan(L)
    L.backward()
    assert torch.isnan(xs[0].grad[1]).any()
    ce = make_ce(3, 2, device=DEVICE)
    ce[0, 0] = float("nan")
    clean = make_feats(2, [4, 4, 3], [3, 3], device=DEVICE)
    assert torch.isnan(mtut_ops.ssa_loss(clean, ce, algo=algo, backend="triton"))


@pytest.mark.parametrize("algo", ALGOS)
def test_gradient_flows_only_into_the_student(algo):
    feats = leaf(make_feats(3, [6, 6], [3, 3], device=DEVICE))
    ce = torch.tensor([[2.0, 3.0, 1.5], [0.5, 0.1, 0.2]], dtype=torch.float64, device=DEVICE)  # net 1 better
    mtut_ops.ssa_loss(feats, ce, algo=algo, backend="triton").backward()
    assert feats[0].grad.abs().max() > 0
    assert torch.equal(feats[1].grad, torch.zeros_like(feats[1].grad))


@pytest.mark.parametrize("algo", ALGOS)
def test_gradcheck(algo):
    feats = leaf(make_feats(1, [2, 3], [3], device=DEVICE))
    assert torch.autograd.gradcheck(lambda *fs: mtut_ops.pairwise_sqdist(list(fs), algo=algo, backend="triton"), feats)
    ce = torch.tensor([[1.1], [0.4]], dtype=torch.float64, device=DEVICE)  # network 0 worse: its term is all of X_0's

    def loss_of(x):
        return mtut_ops.ssa_loss([x, feats[1].detach()], ce, lambda_=0.5, algo=algo, backend="triton")

    assert torch.autograd.gradcheck(loss_of, (feats[0],))


def test_correlation_and_focal_weight():
    (f,) = make_feats(2, [5], [3, 4], device=DEVICE, noncontiguous=True)
    ours, ref = leaf([f]), leaf([f.cpu()])
    K = mtut_ops.correlation(ours[0], backend="triton")
    torch.testing.assert_close(K.detach().cpu(), R.correlation(ref[0]).detach(), rtol=1e-12, atol=1e-12)
    ce = make_ce(3, 5, device=DEVICE)
    rho = mtut_ops.focal_weight(ce, beta=2.0, backend="triton")
    torch.testing.assert_close(rho.cpu(), R.focal_weight(ce.cpu(), 2.0), rtol=1e-12, atol=1e-15)


def test_auto_picks_what_the_cost_model_picks():
    for channels, spatial in [([16, 16], [2, 3]), ([4, 4], [8, 8])]:
        feats = make_feats(1, channels, spatial, device=DEVICE, dtype=torch.float32)
        choice = V.resolve_algo("auto", feats[0][0, 0].numel(), channels)
        auto = torch.ops.mtut.triton_sqdist_forward(feats, 1e-8, "auto", False, False)[0]
        assert torch.equal(auto, torch.ops.mtut.triton_sqdist_forward(feats, 1e-8, choice, False, False)[0])


# ------------------------------------------------------------------ registration


def _args(algo="gram", cap=None):
    feats = leaf(make_feats(2, [3, 5], [2, 3], device=DEVICE))
    return feats, make_ce(2, 2, device=DEVICE), (2.0, 0.5, "rms", 1e-8, algo, cap)


@pytest.mark.parametrize("algo", ALGOS)
def test_opcheck(algo):
    feats, ce, args = _args(algo, cap=10.0)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    for directed in (False, True):
        torch.library.opcheck(torch.ops.mtut.triton_sqdist_forward.default, (feats, 1e-8, algo, directed, True),
                              test_utils=tests)
    weight = torch.rand(2, 2, 2, dtype=torch.float64, device=DEVICE, requires_grad=True)
    saved = torch.empty(0, dtype=torch.float64, device=DEVICE)
    for needs in ([True, True], [True, False]):
        torch.library.opcheck(torch.ops.mtut.triton_sqdist_backward.default, (feats, saved, weight, 1e-8, algo, needs),
                              test_utils=tests)


@pytest.mark.parametrize("algo", ["direct", "gram", "auto"])
def test_torch_compile_fullgraph(algo):
    """The API and the ops compile with fullgraph=True (no graph break) and match eager
    bit for bit (float64 inputs run one fixed config, whatever inductor's autotuning).

    On CPU the kernels are interpreted and the ops are opaque custom ops (aot_eager); on
    CUDA inductor traces into the kernels.
    """
    torch._dynamo.reset()
    feats, ce, args = _args()

    def step(fs, ce):
        S = mtut_ops.pairwise_sqdist(fs, 1e-8, algo, backend="triton")
        return mtut_ops.ssa_loss(fs, ce, lambda_=0.5, algo=algo, pair_cap=10.0, backend="triton") + S.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if DEVICE == "cpu" else "inductor")
    eager_feats, comp_feats = leaf(feats), leaf(feats)
    L_eager, L_comp = step(eager_feats, ce), compiled(comp_feats, ce)
    torch.testing.assert_close(L_comp, L_eager, rtol=0, atol=0)
    L_eager.backward()
    L_comp.backward()
    for a, b in zip(comp_feats, eager_feats):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


# ------------------------------------------------------------------ errors


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
        torch.ops.mtut.triton_sqdist_backward(feats, saved, torch.zeros(2, 2, device=DEVICE), 1e-8, "gram", [True, True])
    with pytest.raises(ValueError, match=r"needs_grad must hold one flag per modality"):
        torch.ops.mtut.triton_sqdist_backward(feats, saved, torch.zeros(2, 2, 2, device=DEVICE), 1e-8, "gram", [True])


def test_api_errors_match_the_cpu_backend():
    from .test_errors import BAD_LOSS_INPUTS

    for name, (feats, ce, kwargs, exc, pattern) in BAD_LOSS_INPUTS.items():
        feats = [f.to(DEVICE) for f in feats]
        with pytest.raises(exc, match=pattern):
            mtut_ops.ssa_loss(feats, ce.to(DEVICE), backend="triton", **kwargs)
