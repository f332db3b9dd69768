"""Identical inputs send exactly zero gradient, on every backend and algorithm (issue 34).

For X_i = X_j the exact S_ij is 0 and so is dS_ij/dX_i = 4 Xh_i (K_i - K_j); a backward
that forms the two sides of the difference by different operations leaves a rounding
residue there, which a focal weight of 1e5-1e11 makes a real gradient. The property:
the identical pair's contribution to the gradients is exactly 0 (bit for bit), i.e.

- op level (the kernels): sqdist_backward with random weights equals, bit for bit, the
  same call with that pair's two weights forced to 0 (all zeros for M = 2);
- loss level: ssa_loss of M = 2 identical maps is exactly 0 with exactly zero gradients,
  for any finite CE gap, capped or not; and for M = 2-4 its gradient equals the op's with
  the identical pair's weights zeroed.

Shapes, channel counts (1 included), strided layouts (the twin of a map may be laid out
differently from it), dtypes, distances, caps and CE gaps up to 1000 nats are drawn by
hypothesis (examples capped by the project's profile: conftest.py). The backend is cpu
here; with MTUT_TEST_BACKEND=triton (and TRITON_INTERPRET=1 without a GPU) it is triton,
which test_triton_backend_under_the_interpreter runs in a subprocess (deep tier); the CUDA kernels
run on the CPU through the emulation of test_cuda_emulated.py.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mtut_ops
from mtut_ops import _validation as V
from mtut_ops.backends import triton_interpreted

from .test_cuda_emulated import emulated  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parent.parent
EPS = 1e-8
TRITON = os.environ.get("MTUT_TEST_BACKEND") == "triton"
BACKEND = "triton" if TRITON else "cpu"
DEVICE = "cuda" if TRITON and torch.cuda.is_available() else "cpu"
LOSS_BACKENDS = [BACKEND] if TRITON else ["cpu", "reference"]


@st.composite
def identical_case(draw, max_m=4):
    """feats with feats[j] == feats[i] (values; maybe another layout), and (i, j)."""
    M = draw(st.integers(2, max_m))
    N = draw(st.integers(1, 3))
    spatial = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3).filter(lambda s: 2 <= math.prod(s) <= 48))
    channels = draw(st.lists(st.integers(1, 7), min_size=M, max_size=M))
    i, j = draw(st.lists(st.integers(0, M - 1), min_size=2, max_size=2, unique=True))
    channels[j] = channels[i]
    if draw(st.booleans()):  # one channel count: the CUDA backward's student products (folded gram)
        channels = [channels[i]] * M
    dtype = draw(st.sampled_from([torch.float64, torch.float32, torch.bfloat16, torch.float16]))
    strided = draw(st.lists(st.booleans(), min_size=M, max_size=M))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    values = [torch.randn(N, C, *spatial, generator=g, dtype=torch.float64).to(dtype) for C in channels]
    values[j] = values[i]
    feats = [_laid_out(v, s).to(DEVICE) for v, s in zip(values, strided)]
    return feats, i, j


def _laid_out(v: torch.Tensor, strided: bool) -> torch.Tensor:
    """v itself (contiguous) or the same values in a strided view: channels last, every
    other element of a bigger buffer."""
    if not strided:
        return v.clone()
    big = torch.zeros(*v.shape[:1], *v.shape[2:], 2 * v.shape[1], dtype=v.dtype)
    out = big[..., ::2].movedim(-1, 1)
    out.copy_(v)
    return out


def _ops():
    if TRITON:
        return torch.ops.mtut.triton_sqdist_forward, torch.ops.mtut.triton_sqdist_backward
    return torch.ops.mtut.sqdist_forward, torch.ops.mtut.sqdist_backward


def _without_pair(weight: torch.Tensor, i: int, j: int) -> torch.Tensor:
    w = weight.clone()
    w[:, i, j] = 0
    w[:, j, i] = 0
    return w


def _assert_bitwise_equal(got, expected, what):
    for m, (a, b) in enumerate(zip(got, expected)):
        assert torch.isfinite(a).all(), f"{what}: non-finite gradient into feats[{m}]"
        diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
        assert torch.equal(a, b), f"{what}: feats[{m}]'s gradient moved by {diff:.3g} with the identical pair"


def _scale_for(dtype, scale_exp):
    """Weights up to 10^scale_exp, up to 10^2 for float16 (whose gradients overflow past 65504)."""
    return min(scale_exp, 2.0) if dtype == torch.float16 else scale_exp


def _random_weight(N, M, gen, scale_exp):
    """Positive weights (dL/dS), some as large as a focal weight near the cap makes them."""
    mag = torch.rand(N, M, M, generator=gen, dtype=torch.float64) * scale_exp
    return (10.0**mag) * torch.rand(N, M, M, generator=gen, dtype=torch.float64)


@given(
    case=identical_case(),
    algo=st.sampled_from(["direct", "gram"]),
    scale_exp=st.sampled_from([0.0, 5.0, 11.0]),
    seed=st.integers(0, 2**16),
)
def test_op_identical_pair_adds_exactly_zero(case, algo, scale_exp, seed):
    feats, i, j = case
    forward, backward = _ops()
    info = V.check_feats(feats)
    weight = _random_weight(info.N, info.M, torch.Generator().manual_seed(seed), _scale_for(info.dtype, scale_exp))
    weight = weight.to(device=DEVICE, dtype=info.compute_dtype)
    _, saved = forward(feats, EPS, algo, True, True)  # as autograd calls it: gram keeps its blocks
    needs = [True] * info.M
    got = backward(feats, saved, weight, EPS, algo, needs)
    expected = backward(feats, saved, _without_pair(weight, i, j), EPS, algo, needs)
    if info.M == 2:
        assert all(torch.count_nonzero(e) == 0 for e in expected)
    _assert_bitwise_equal(got, expected, f"{BACKEND} {algo}")


# Gaps up to 1000 nats: past ~44 (float32 ce) or ~354 (float64) rho overflows to inf.
GAPS = st.sampled_from([0.5, 3.0, 12.0, 40.0, 44.5, 100.0, 400.0, 1000.0])
CAPS = st.sampled_from([None, 1e-3, 10.0])


@pytest.mark.parametrize("backend", LOSS_BACKENDS)
@given(
    case=identical_case(max_m=2),
    algo=st.sampled_from(["direct", "gram"]),
    distance=st.sampled_from(["rms", "fro2"]),
    gap=GAPS,
    cap=CAPS,
    ce_dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_loss_of_identical_maps_is_exactly_zero(backend, case, algo, distance, gap, cap, ce_dtype, seed):
    feats, _, _ = case
    feats = [f.detach().requires_grad_() for f in feats]
    N = feats[0].shape[0]
    g = torch.Generator().manual_seed(seed)
    ce = torch.rand(2, N, generator=g, dtype=torch.float64)
    ce[0] += gap * torch.rand(N, generator=g, dtype=torch.float64)
    ce = ce.to(device=DEVICE, dtype=ce_dtype)
    loss = mtut_ops.ssa_loss(feats, ce, distance=distance, algo=algo, pair_cap=cap, backend=backend)
    loss.backward()
    assert loss.item() == 0.0
    for m, f in enumerate(feats):
        assert torch.count_nonzero(f.grad) == 0, f"{backend} {algo}: max |grad feats[{m}]| {f.grad.abs().max():.3g}"


@given(
    case=identical_case(),
    algo=st.sampled_from(["direct", "gram"]),
    distance=st.sampled_from(["rms", "fro2"]),
    gap=GAPS,
    cap=CAPS,
    seed=st.integers(0, 2**16),
)
def test_loss_gradient_has_nothing_from_the_identical_pair(case, algo, distance, gap, cap, seed):
    """ssa_loss's gradient is the op's with the identical pair's weights zeroed, bit for bit.
    Uncapped, the gaps stay where rho is finite (an uncapped overflow is inf by design)."""
    feats, i, j = case
    feats = [f.detach().requires_grad_() for f in feats]
    info = V.check_feats(feats)
    g = torch.Generator().manual_seed(seed)
    ce = torch.rand(info.M, info.N, generator=g, dtype=torch.float64)
    # uncapped, the gradient must stay finite in the dtype (float16: up to 65504)
    top = gap if cap is not None else min(gap, 3.0 if info.dtype == torch.float16 else 30.0)
    ce += top * torch.rand(info.M, info.N, generator=g, dtype=torch.float64)
    ce = ce.to(device=DEVICE, dtype=info.compute_dtype)
    loss = mtut_ops.ssa_loss(feats, ce, distance=distance, algo=algo, pair_cap=cap, backend=BACKEND)
    loss.backward()
    forward, backward = _ops()
    with torch.no_grad():
        S, saved = forward(feats, EPS, algo, True, True)
    S.requires_grad_()
    L = torch.ops.mtut.ssa_loss_from_sqdist(S, ce, 2.0, 5e-3, distance, info.d, cap)
    (weight,) = torch.autograd.grad(L, S)
    expected = backward([f.detach() for f in feats], saved, _without_pair(weight, i, j), EPS, algo, [True] * info.M)
    _assert_bitwise_equal([f.grad for f in feats], expected, f"{BACKEND} {algo} {distance} cap {cap}")


@pytest.mark.skipif(TRITON, reason="the emulation runs in the cpu process")
@pytest.mark.parametrize("algo", ["direct", "gram"])
@given(case=identical_case(), scale_exp=st.sampled_from([0.0, 5.0, 11.0]), seed=st.integers(0, 2**16))
def test_cuda_emulated_identical_pair_adds_exactly_zero(emulated, algo, case, scale_exp, seed):  # noqa: F811
    feats, i, j = case
    ops = emulated.ops
    info = V.check_feats(feats)
    weight = _random_weight(info.N, info.M, torch.Generator().manual_seed(seed), _scale_for(info.dtype, scale_exp))
    weight = weight.to(info.compute_dtype)
    _, saved = ops.sqdist_forward(feats, EPS, algo, True, True)
    needs = [True] * info.M
    got = ops.sqdist_backward(feats, saved, weight, EPS, algo, needs, 0)
    expected = ops.sqdist_backward(feats, saved, _without_pair(weight, i, j), EPS, algo, needs, 0)
    if info.M == 2:
        assert all(torch.count_nonzero(e) == 0 for e in expected)
    _assert_bitwise_equal(got, expected, f"cuda (emulated) {algo}")


@pytest.mark.skipif(TRITON, reason="the emulation runs in the cpu process")
@pytest.mark.parametrize("algo, C", [("direct", 8), ("direct", 1), ("gram", 1), ("gram", 8)])
def test_issue_snippet_on_the_emulated_cuda_kernels(emulated, algo, C):  # noqa: F811
    """The reproducer of issue 34 on the CUDA kernels (emulated): the loss's backward as
    mtut::ssa_loss forms it, "fro2", gives exactly zero gradients."""
    torch.manual_seed(0)
    a = torch.randn(2, 8, 1, 3, 7)[:, :C]
    ce = torch.tensor([[7.5, 9.6], [10.9, 8.6]])
    grads = emulated.ssa_loss_grads([a.clone(), a.clone()], ce, algo, distance="fro2")
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_issue_snippet_gives_zero_gradients():
    """The reproducer of issue 34 (2.3e-10 / 2.7e-08 before), on the backend of this process."""
    torch.manual_seed(0)
    a = torch.randn(2, 8, 1, 3, 7).to(DEVICE)
    for algo, C in (("direct", 8), ("direct", 1), ("gram", 1), ("gram", 8)):
        fs = [a[:, :C].clone().requires_grad_(), a[:, :C].clone().requires_grad_()]
        ce = torch.tensor([[7.5, 9.6], [10.9, 8.6]], device=DEVICE)
        loss = mtut_ops.ssa_loss(fs, ce, distance="fro2", algo=algo, backend=BACKEND)
        loss.backward()
        assert loss.item() == 0.0 and all(torch.count_nonzero(f.grad) == 0 for f in fs), algo


@pytest.mark.skipif(TRITON or triton_interpreted(), reason="this process is the triton run")
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.deep  # the interpreter: a minute or more
def test_triton_backend_under_the_interpreter():
    """This file with the triton backend, interpreted on the CPU (a subprocess: TRITON_INTERPRET
    must be set before triton builds the kernels); fewer examples, the interpreter is slow."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MTUT_REGISTER_TRITON")}
    env.update(
        TRITON_INTERPRET="1", MTUT_TEST_BACKEND="triton", MTUT_HYPOTHESIS_EXAMPLES="6", OMP_WAIT_POLICY="passive"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "not under_the_interpreter and not emulated",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]


@pytest.mark.skipif(TRITON, reason="the emulation runs in the cpu process")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("distance", ["rms", "fro2"])
@pytest.mark.parametrize("gap", [40.0, 44.5, 100.0, 400.0, 1000.0])
def test_cuda_emulated_loss_kernels_capped_and_zero_terms(emulated, dtype, distance, gap):  # noqa: F811
    """Issue 31 in the fused CUDA loss kernels (emulated) and the ATen arithmetic alike: CE gaps
    of 40-1000 nats (rho overflows past ~44.4 in float32, ~354.9 in float64). Pair (0, 1) is
    capped and pair (0, 2) has S == 0: both send exactly 0, never NaN; the loss is the cap
    plus the one finite term (2, 1), within error_bounds.loss_from_sqdist_bounds of fp64."""
    from mtut_ops import reference as R

    from .error_bounds import loss_from_sqdist_bounds

    N, M, d, beta, lambda_, cap = 3, 3, 16, 2.0, 5e-3, 10.0
    g = torch.Generator().manual_seed(int(gap))
    S = torch.rand(N, M, M, generator=g, dtype=torch.float64) + 0.1
    S = (S + S.transpose(1, 2)) / 2
    S[:, 0, 2] = S[:, 2, 0] = 0
    S.diagonal(dim1=1, dim2=2).zero_()
    ce = torch.tensor([[gap] * N, [0.0] * N, [0.5] * N], dtype=torch.float64)
    S_ref = S.clone().requires_grad_()
    L_ref = R.ssa_loss_from_sqdist(S_ref, ce, beta, lambda_, distance, d, cap)
    (G_ref,) = torch.autograd.grad(L_ref, S_ref)
    assert torch.isfinite(L_ref) and torch.isfinite(G_ref).all() and (G_ref[:, 0] == 0).all()
    # a bound for the finite terms: the same S with the overflowing gap replaced by a small one
    loss_err, grad_rel = loss_from_sqdist_bounds(S, ce.clamp(max=0.5), beta, lambda_, distance, d, dtype)
    S, ce = S.to(dtype), ce.to(dtype)
    args = (ce, beta, lambda_, distance, d, cap)
    for ops in (emulated.ops, torch.ops.mtut):
        L = ops.ssa_loss_from_sqdist(S, *args)
        G = ops.ssa_loss_from_sqdist_backward(torch.ones((), dtype=dtype), S, *args)
        assert torch.isfinite(L) and torch.isfinite(G).all()
        assert (G[:, 0] == 0).all()  # capped (0, 1), S == 0 (0, 2)
        # plus the one rounding of the total (the cap dominates it) to dtype
        assert (L.double() - L_ref).abs().item() <= loss_err + torch.finfo(dtype).eps / 2 * L_ref.abs().item()
        assert ((G.double() - G_ref).abs() <= grad_rel * G_ref.abs()).all()
