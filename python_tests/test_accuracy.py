"""Every fused backend against mtut_ops.reference: values and gradients, both algorithms.

The tolerances are the worst-case bounds derived in python_tests/error_bounds.py, per
algorithm and dtype: float64 inputs run in float64, float16/bfloat16/float32 inputs in
float32 (u = 2^-24); where the cuda kernels round product operands on purpose (bfloat16
inputs; TF32 when torch allows it), their results are compared with the exact S of those
operands under the float32 bound.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mtut_ops
from mtut_ops import _validation as V
from mtut_ops import reference as R

from .conftest import leaf, make_ce, make_feats
from .error_bounds import assert_cuda_grads_within_bound, cuda_operand_sqdist, grad_rtol, sqdist_bound

ALGOS = ["direct", "gram", "auto"]


def rounded_operands(dtype, backend):
    """What the backend's products round their operands to on purpose (see
    error_bounds.cuda_operand_sqdist), or None where they are exact."""
    if backend == "cuda" and dtype == torch.bfloat16:
        return torch.bfloat16
    if backend == "cuda" and dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return None


def algo_of(algo, feats, backend):
    return V.resolve_algo(algo, feats[0][0, 0].numel(), [f.shape[1] for f in feats], backend, feats[0].dtype)


@st.composite
def shapes(draw, max_c=64, max_dims=3):
    N = draw(st.integers(1, 4))
    M = draw(st.integers(2, 4))
    channels = draw(st.lists(st.integers(1, max_c), min_size=M, max_size=M))
    spatial = draw(st.lists(st.integers(1, 8), min_size=0, max_size=max_dims))
    return N, channels, spatial


@given(shape=shapes(), algo=st.sampled_from(ALGOS), noncontig=st.booleans(), seed=st.integers(0, 2**16))
def test_pairwise_sqdist_fp64_matches_reference(backend_device, shape, algo, noncontig, seed):
    backend, device = backend_device
    N, channels, spatial = shape
    feats = make_feats(N, channels, spatial, device=device, noncontiguous=noncontig, seed=seed)
    d = feats[0][0, 0].numel()
    S = mtut_ops.pairwise_sqdist(feats, algo=algo, backend=backend)
    ref = R.pairwise_sqdist([f.cpu() for f in feats])
    assert S.shape == (N, len(channels), len(channels)) and S.dtype == torch.float64
    err = (S.cpu() - ref).abs()
    assert (err <= sqdist_bound(channels, d, torch.float64, algo_of(algo, feats, backend), ref)).all(), err.max()
    assert (S.diagonal(dim1=1, dim2=2) == 0).all()
    assert torch.equal(S, S.transpose(1, 2))


@given(shape=shapes(max_c=24), algo=st.sampled_from(ALGOS), noncontig=st.booleans(), seed=st.integers(0, 2**16))
def test_pairwise_sqdist_grad_fp64_matches_reference(backend_device, shape, algo, noncontig, seed):
    backend, device = backend_device
    N, channels, spatial = shape
    feats = make_feats(N, channels, spatial, device=device, noncontiguous=noncontig, seed=seed)
    g = torch.randn(N, len(channels), len(channels), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    ours, ref = leaf(feats), leaf([f.cpu() for f in feats])
    (mtut_ops.pairwise_sqdist(ours, algo=algo, backend=backend) * g.to(device)).sum().backward()
    (R.pairwise_sqdist(ref) * g).sum().backward()
    for a, b in zip(ours, ref):
        assert a.grad.shape == a.shape and a.grad.dtype == a.dtype
        torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=1e-9, atol=1e-9 * (1 + b.grad.abs().max().item()))


def _loss_atol(feats, ce, algo, distance, lambda_=0.5, beta=2.0):
    """The loss's absolute error from S's (sqdist_bound, float64). Under "rms" a distance
    error eS moves sqrt(S) by |eS| / (sqrt(S') + sqrt(S)) <= min(eS / sqrt(S), sqrt(eS)):
    tiny for S well above eS, but sqrt(eS) where S is near 0, e.g. gram at d = 1, C = 1,
    where S is 0 exactly but its float64 Gram terms leave ~1e-16 and the loss ~1e-8 (a cap
    only lowers a term). At least 1e-12."""
    N, channels, d = feats[0].shape[0], [f.shape[1] for f in feats], feats[0][0, 0].numel()
    S = R.pairwise_sqdist([f.detach().double().cpu() for f in feats])
    eS = sqdist_bound(channels, d, torch.float64, algo, S)
    spread = torch.minimum(eS / S.sqrt(), eS.sqrt()) / d if distance == "rms" else eS
    bound = lambda_ / N * (R.focal_weight(ce.double().cpu(), beta) * spread).sum().item()
    return max(1e-12, bound)


@given(
    shape=shapes(max_c=24),
    algo=st.sampled_from(ALGOS),
    distance=st.sampled_from(["rms", "fro2"]),
    cap=st.sampled_from([None, 1e-3, 10.0]),
    noncontig=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_ssa_loss_fp64_matches_reference(backend_device, shape, algo, distance, cap, noncontig, seed):
    backend, device = backend_device
    N, channels, spatial = shape
    feats = make_feats(N, channels, spatial, device=device, noncontiguous=noncontig, seed=seed)
    ce = make_ce(len(channels), N, device=device, seed=seed + 1)
    ours, ref = leaf(feats), leaf([f.cpu() for f in feats])
    L = mtut_ops.ssa_loss(ours, ce, lambda_=0.5, distance=distance, algo=algo, pair_cap=cap, backend=backend)
    Lr = R.ssa_loss(ref, ce.cpu(), lambda_=0.5, distance=distance, pair_cap=cap)
    assert L.shape == () and L.dtype == torch.float64
    atol = _loss_atol(feats, ce, algo_of(algo, feats, backend), distance)
    torch.testing.assert_close(L.cpu(), Lr, rtol=1e-9, atol=atol)
    L.backward()
    Lr.backward()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=1e-8, atol=1e-10 * (1 + b.grad.abs().max().item()))


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs_within_bound(backend_device, algo, dtype):
    backend, device = backend_device
    if backend == "triton":
        pytest.skip("the triton kernels round every operand: test_triton_kernels.py holds them to their model")
    channels, spatial = [48, 20, 33], [4, 5, 6]
    feats = [f.to(dtype) for f in make_feats(3, channels, spatial, device=device, seed=7)]
    ce = make_ce(3, 3, device=device)
    d, which = 120, algo_of(algo, feats, backend)
    # The reference sees exactly the rounded inputs, in float64; a tensor-core path is held
    # to the exact S of its rounded operands.
    ref_in = [f.detach().double().cpu() for f in feats]
    S_ref = R.pairwise_sqdist(ref_in)
    stage = rounded_operands(dtype, backend)
    S_target = S_ref if stage is None else cuda_operand_sqdist([f.cpu() for f in feats], which, stage)
    S = mtut_ops.pairwise_sqdist(feats, algo=algo, backend=backend)
    assert S.dtype == torch.float32
    bound = sqdist_bound(channels, d, torch.float32, which, S_target)
    assert bound.max() < S_target[S_target > 0].min()  # the bound is below every distance it checks
    err = (S.double().cpu() - S_target).abs()
    assert (err <= bound).all(), (err / bound).max()

    ours, ref = leaf(feats), leaf(ref_in)
    L = mtut_ops.ssa_loss(ours, ce, algo=algo, backend=backend)
    Lr = R.ssa_loss(ref, ce.cpu())
    assert L.dtype == torch.float32
    # The weights see S off by the arithmetic bound (and by the operands' rounding on a
    # tensor-core path, whose backward then runs on the unrounded rows in float32).
    S_err = bound + (S_target - S_ref).abs()
    rel = grad_rtol(channels, d, torch.float32, which, S_ref, S_err)
    torch.testing.assert_close(L.double().cpu(), Lr, rtol=rel, atol=0)
    L.backward()
    Lr.backward()
    if backend == "cuda":  # the same bound, plus the rounding of the bf16 backward's scaled operands
        assert_cuda_grads_within_bound(
            [a.grad for a in ours], ref, [f.detach().cpu() for f in feats], ce.cpu(), which, dtype, lambda_=5e-3
        )
        return
    for a, b in zip(ours, ref):
        assert a.grad.dtype == dtype  # gradients come back in the input dtype
        # the arithmetic bound, plus the final rounding of the exact gradient to dtype:
        # half an ulp of |g|, and for float16 half the subnormal spacing 2^-24 (the
        # gradients of a lambda = 5e-3 loss are ~1e-8, below float16's normal range).
        fi = torch.finfo(dtype)
        tol = rel * b.grad.abs().max() + fi.eps / 2 * b.grad.abs() + fi.smallest_normal * fi.eps / 2
        assert ((a.grad.double().cpu() - b.grad).abs() <= tol).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gram_near_aligned_against_fp64(backend_device, dtype):
    """X_n = X_m + 1e-4 noise: S (~6e-7) is ~1e-9 of the norms that the Gram identity
    subtracts. In float64 the Gram bound is far below S; in float32 it is not (the Gram
    identity cannot resolve such distances in float32: the result is only clamped >= 0),
    while the direct algorithm, without cancellation, stays within its bound."""
    backend, device = backend_device
    base = make_feats(2, [32], [4, 4, 4], seed=3)[0]
    noisy = base + 1e-4 * torch.randn(base.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    feats = [base.to(device, dtype), noisy.to(device, dtype)]
    ref = R.pairwise_sqdist([f.double().cpu() for f in feats])
    for algo in ("gram", "direct"):
        S = mtut_ops.pairwise_sqdist(feats, algo=algo, backend=backend).double().cpu()
        assert (S >= 0).all()  # clamped, never negative
        bound = sqdist_bound([32, 32], 64, dtype, algo, ref)[:, 0, 1]
        if (bound < ref[:, 0, 1]).all():
            assert ((S[:, 0, 1] - ref[:, 0, 1]).abs() <= bound).all(), (algo, ((S - ref)[:, 0, 1].abs() / bound).max())
        else:
            assert algo == "gram" and dtype == torch.float32  # the one case below resolution


def test_correlation_matches_reference(backend_device):
    backend, device = backend_device
    (f,) = make_feats(2, [5], [3, 4], device=device, noncontiguous=True)
    ours, ref = leaf([f]), leaf([f.cpu()])
    K = mtut_ops.correlation(ours[0], backend=backend)
    Kr = R.correlation(ref[0])
    torch.testing.assert_close(K.cpu(), Kr, rtol=1e-12, atol=1e-12)
    g = torch.randn(Kr.shape, dtype=torch.float64)
    (K * g.to(device)).sum().backward()
    (Kr * g).sum().backward()
    torch.testing.assert_close(ours[0].grad.cpu(), ref[0].grad, rtol=1e-10, atol=1e-12)


def test_focal_weight_matches_reference(backend_device):
    backend, device = backend_device
    ce = make_ce(3, 5, device=device)
    rho = mtut_ops.focal_weight(ce, beta=2.0, backend=backend)
    torch.testing.assert_close(rho.cpu(), R.focal_weight(ce.cpu(), 2.0), rtol=1e-12, atol=1e-15)
    # rho_mn > 0 exactly where network n does better than m on that sample.
    better = ce.t().unsqueeze(2) > ce.t().unsqueeze(1)
    assert torch.equal(rho > 0, better)


def test_auto_matches_the_documented_cost_model(backend_device):
    """algo='auto' inside the kernels picks what mtut_ops._validation.resolve_algo picks, on
    both sides of the backend's crossover too; which algorithm ran shows in the distances and
    in what the forward keeps for the backward (the Gram blocks, or not)."""
    backend, device = backend_device
    d_last = int(V.AUTO_FACTORS[backend] * 64 // 10)  # C = 8, P = 1: direct while 10 d <= factor 64
    cases = [([16, 16], [2, 3]), ([4, 4], [8, 8]), ([40, 8], [7, 7]), ([50, 50], [4, 4, 4])]
    for channels, spatial in cases + [([4, 4], [1, d_last]), ([4, 4], [1, d_last + 1])]:
        feats = make_feats(2, channels, spatial, device=device, dtype=torch.float32)
        choice = V.resolve_algo("auto", feats[0][0, 0].numel(), channels, backend, torch.float32)
        if backend in ("cpu", "cuda"):
            auto, kept = torch.ops.mtut.sqdist_forward(feats, 1e-8, "auto", False, True)
            S, kept_choice = torch.ops.mtut.sqdist_forward(feats, 1e-8, choice, False, True)
            assert torch.equal(auto, S) and kept.shape == kept_choice.shape, (channels, spatial, choice)
    assert V.resolve_algo("auto", d_last, [4, 4], backend, torch.float32) == "direct"
    assert V.resolve_algo("auto", d_last + 1, [4, 4], backend, torch.float32) == "gram"
    assert V.saved_width([4, 4], "gram", backend) != V.saved_width([4, 4], "direct", backend)
    for b in V.AUTO_FACTORS:
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            assert V.resolve_algo("auto", 392, [1024, 1024], b, dtype) == "direct"  # I3D Mixed_5c at 224
            assert V.resolve_algo("auto", 3136, [832, 832], b, dtype) == "gram"  # Mixed_4f
            assert V.resolve_algo("auto", 25088, [480, 480], b, dtype) == "gram"  # Mixed_3c
        # direct up to the largest d with d (C + 2P) <= factor C^2 (C = 100, P = 1), gram beyond
        d_last = int(V.AUTO_FACTORS[b] * 100 * 100 // 102)
        assert V.resolve_algo("auto", d_last, [50, 50], b, torch.float32) == "direct"
        assert V.resolve_algo("auto", d_last + 1, [50, 50], b, torch.float32) == "gram"


def test_gradient_flows_only_into_the_student(backend_device):
    """A network better on every sample gets no SSA gradient; the worse one does."""
    backend, device = backend_device
    feats = leaf(make_feats(3, [6, 6], [3, 3], device=device))
    ce = torch.tensor([[2.0, 3.0, 1.5], [0.5, 0.1, 0.2]], dtype=torch.float64, device=device)  # net 1 better
    mtut_ops.ssa_loss(feats, ce, backend=backend).backward()
    assert feats[0].grad.abs().max() > 0
    assert torch.equal(feats[1].grad, torch.zeros_like(feats[1].grad))
    # No gradient into the classification losses, even when they require one.
    ce_grad = ce.clone().requires_grad_()
    fs = leaf(feats)
    mtut_ops.ssa_loss(fs, ce_grad, backend=backend).backward()
    assert ce_grad.grad is None and fs[0].grad.abs().max() > 0
    assert not mtut_ops.ssa_loss([f.detach() for f in feats], ce_grad, backend=backend).requires_grad


@pytest.mark.parametrize("algo", ["direct", "gram"])
def test_many_tiles_and_strips_fp64(backend_device, algo):
    """d = 2625 spans several 256-row tiles and 2048-column strips, with ragged edges."""
    backend, device = backend_device
    feats = make_feats(1, [6, 3], [5, 25, 21], device=device, seed=11)
    ce = torch.tensor([[1.0], [0.2]], dtype=torch.float64, device=device)
    ours, ref = leaf(feats), leaf([f.cpu() for f in feats])
    S = mtut_ops.pairwise_sqdist(feats, algo=algo, backend=backend)
    Sr = R.pairwise_sqdist([f.cpu() for f in feats])
    torch.testing.assert_close(S.cpu(), Sr, rtol=1e-10, atol=0)
    L = mtut_ops.ssa_loss(ours, ce, lambda_=0.5, algo=algo, backend=backend)
    Lr = R.ssa_loss(ref, ce.cpu(), lambda_=0.5)
    torch.testing.assert_close(L.cpu(), Lr, rtol=1e-10, atol=0)
    L.backward()
    Lr.backward()
    torch.testing.assert_close(ours[0].grad.cpu(), ref[0].grad, rtol=1e-8, atol=1e-12 * ref[0].grad.abs().max().item())
    assert torch.equal(ours[1].grad, torch.zeros_like(ours[1].grad))  # the better network
