"""The CUDA kernels of csrc/cuda, run on the CPU (python_tests/cuda_emulation/cuda_emulation.h).

The emulation runs every CUDA thread of a block as a host thread, with real barriers and
warp shuffles, and tensor-core fragments with a layout of its own. It checks what can go
wrong without a GPU in sight: tile indexing and ragged edges, the staging of the
normalized rows, the channel/position loops, the upper-triangle walk and its mirror
factor, the per-pair slots, the fixed-order reductions, the choice of core, and the
host code around the kernels (the backward included). It says nothing about speed,
races or the hardware's fragment layout; python_tests run the real kernels on a GPU.

Tolerances: the bounds of python_tests/error_bounds.py. The fp64 and exact-fp32 cores are
held to them against the reference; the tensor-core cores see the normalized rows rounded
to fp16/bf16/TF32 by design, so they are compared, under the fp32 bound, with the exact S
of those rounded rows.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mtut_ops import reference as R

from .conftest import leaf, make_ce, make_feats
from .error_bounds import exact_sqdist, grad_rtol, sqdist_bound, staged_rows

ROOT = Path(__file__).resolve().parents[1]
EPS = 1e-8


@pytest.fixture(scope="module")
def emulated():
    from torch.utils import cpp_extension

    build = ROOT / "build" / "cuda_emulated"
    build.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent / "cuda_emulation"
    cpp_extension.load(
        name="mtut_cuda_emulated",
        sources=[str(here / "ssa_cuda_emulated.cpp"), str(ROOT / "csrc" / "ssa_common.cpp")],
        extra_include_paths=[str(ROOT / "csrc"), str(here)],
        extra_cflags=["-O2", "-std=c++20"],  # the emulation's std::barrier; torch may default to C++17
        build_directory=str(build),
        is_python_module=False,
    )
    return Emulated(torch.ops.mtut_emulated)


class Emulated:
    """The emulated CUDA kernels as the tests call them: the distances, the backward op,
    and the loss's gradient as the composite op forms it (sqdist_forward's S through
    ssa_loss_from_sqdist, whose gradient w.r.t. S is the backward op's weight)."""

    def __init__(self, ops):
        self.ops = ops

    def pairwise_sqdist(self, feats, eps, algo):
        return self.ops.sqdist_forward(feats, eps, algo, False, False)[0]

    def sqdist_backward(self, feats, weight, eps, algo, needs_grad=None):
        needs = [True] * len(feats) if needs_grad is None else needs_grad
        return self.ops.sqdist_backward(feats, torch.empty(0), weight, eps, algo, needs)

    def ssa_loss_grads(self, feats, ce, algo, needs_grad=None, **loss_args):
        args = dict(beta=2.0, lambda_=0.5, distance="rms", pair_cap=None)
        args.update(loss_args)
        S = self.ops.sqdist_forward(feats, EPS, algo, True, True)[0].requires_grad_()
        L = torch.ops.mtut.ssa_loss_from_sqdist(S, ce, args["beta"], args["lambda_"], args["distance"],
                                                feats[0][0, 0].numel(), args["pair_cap"])
        (weight,) = torch.autograd.grad(L, S)
        return self.sqdist_backward(feats, weight, EPS, algo, needs_grad)


@pytest.fixture
def core(request, monkeypatch):
    """(sm, tf32): the emulated device's compute capability and torch's TF32 setting."""
    sm, tf32 = request.param
    monkeypatch.setenv("MTUT_EMULATED_SM", str(sm))
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    yield sm, tf32
    torch.backends.cuda.matmul.allow_tf32 = before


# (dtype, (sm, tf32)) -> what the staged operands are; None: exact (the reference itself)
CASES = [
    (torch.float64, (90, False), None),
    (torch.float32, (90, False), None),
    (torch.float32, (90, True), "tf32"),
    (torch.float16, (90, False), torch.float16),
    (torch.bfloat16, (90, False), torch.bfloat16),
    (torch.float16, (75, False), torch.float32),  # before sm_80: the exact fp32 core
    (torch.bfloat16, (75, False), torch.float32),
]
SHAPES = [
    # N, channels, spatial: d = 70 and 65 cross the 64-wide tile; C = 70 crosses the channel
    # chunk (16/32) and the 64-row Gram tile; M = 4 runs the pair-by-pair direct launches.
    (2, [5, 70], [2, 5, 7]),
    (1, [3, 40, 17], [65]),
    (2, [4, 9, 2, 6], [3, 3]),
    (1, [1, 2], []),  # d = 1
]


@pytest.mark.parametrize("algo", ["direct", "gram"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"N{s[0]}-C{'.'.join(map(str, s[1]))}-S{'x'.join(map(str, s[2]))}")
@pytest.mark.parametrize(("dtype", "core", "stage"), [(d, c, s) for d, c, s in CASES],
                         ids=[f"{str(d)[6:]}-sm{c[0]}{'-tf32' if c[1] else ''}" for d, c, _ in CASES], indirect=["core"])
def test_pairwise_sqdist(emulated, algo, shape, dtype, core, stage):
    N, channels, spatial = shape
    feats = [f.to(dtype) for f in make_feats(N, channels, spatial, seed=len(channels))]
    S = emulated.pairwise_sqdist(feats, EPS, algo)
    assert S.shape == (N, len(channels), len(channels))
    assert S.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    d = feats[0][0, 0].numel()
    if stage is None:
        ref = R.pairwise_sqdist([f.double() for f in feats])
        bound = sqdist_bound(channels, d, dtype, algo, ref)
    else:
        ref = exact_sqdist([staged_rows(f, stage) for f in feats])
        bound = sqdist_bound(channels, d, torch.float32, algo, ref)
    err = (S.double() - ref).abs()
    assert (err <= bound).all(), (err.max(), bound.min())
    if stage in (torch.float16, torch.bfloat16, "tf32"):
        # The rounded operands move S measurably; the kernel must follow them, not the exact rows.
        moved = (ref - R.pairwise_sqdist([f.double() for f in feats])).abs().max()
        if moved > 0:
            assert err.max() < 0.1 * moved, (err.max(), moved)
    assert torch.equal(S, S.transpose(1, 2)) and (S.diagonal(dim1=1, dim2=2) == 0).all()


@pytest.mark.parametrize("core", [(90, False)], indirect=True)
@pytest.mark.parametrize("algo", ["direct", "gram"])
def test_noncontiguous_and_deterministic(emulated, core, algo):
    feats = make_feats(2, [6, 33], [3, 23], noncontiguous=True, dtype=torch.float32, seed=5)
    assert not feats[0].is_contiguous()
    S1 = emulated.pairwise_sqdist(feats, EPS, algo)
    S2 = emulated.pairwise_sqdist([f.contiguous() for f in feats], EPS, algo)
    assert torch.equal(S1, S2)  # strided loads read the same values, summed in the same order
    ref = R.pairwise_sqdist([f.double() for f in feats])
    assert ((S1.double() - ref).abs() <= sqdist_bound([6, 33], 69, torch.float32, algo, ref)).all()


@pytest.mark.parametrize("core", [(90, False)], indirect=True)
def test_zero_rows_and_nan(emulated, core):
    feats = make_feats(1, [3, 4], [2, 3], seed=2)
    feats[0][0, 1] = 0  # a zero row: scale 1 / eps, xh = 0
    S = emulated.pairwise_sqdist(feats, EPS, "direct")
    torch.testing.assert_close(S, R.pairwise_sqdist(feats), rtol=1e-12, atol=1e-12)
    feats[1][0, 2, 1, 1] = float("nan")
    for algo in ("direct", "gram"):
        assert emulated.pairwise_sqdist(feats, EPS, algo)[0, 0, 1].isnan()


@pytest.mark.parametrize("core", [(90, False)], indirect=True)
@pytest.mark.parametrize("algo", ["direct", "gram"])
def test_backward_ops_fp64(emulated, core, algo):
    """sqdist_backward, for the symmetric distances and for the loss, against autograd
    through the reference, on strided inputs (the kernels read x through its strides)."""
    feats = make_feats(2, [5, 7, 3], [2, 35], seed=9, noncontiguous=True)
    g = torch.randn(2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = leaf(feats)
    (R.pairwise_sqdist(ref) * g).sum().backward()
    grads = emulated.sqdist_backward(feats, g + g.transpose(1, 2), EPS, algo)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b.grad, rtol=1e-9, atol=1e-9 * b.grad.abs().max().item())

    ce = make_ce(3, 2, seed=4)
    ref = leaf(feats)
    R.ssa_loss(ref, ce, lambda_=0.5, pair_cap=10.0).backward()
    grads = emulated.ssa_loss_grads(feats, ce, algo, pair_cap=10.0)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b.grad, rtol=1e-8, atol=1e-10 * (1 + b.grad.abs().max().item()))


@pytest.mark.parametrize("core", [(90, False)], indirect=True)
def test_backward_strips(emulated, core):
    """The direct backward in strips of rows: the emulated build's strip budget (1024
    entries) cuts d = 203 into 41 strips of 5 rows, the last one ragged."""
    feats = make_feats(1, [4, 3], [7, 29], seed=3)
    ce = torch.tensor([[1.0], [0.1]], dtype=torch.float64)
    ref = leaf(feats)
    R.ssa_loss(ref, ce, lambda_=0.5).backward()
    grads = emulated.ssa_loss_grads(feats, ce, "direct")
    torch.testing.assert_close(grads[0], ref[0].grad, rtol=1e-8, atol=1e-12 * ref[0].grad.abs().max().item())
    assert torch.equal(grads[1], torch.zeros_like(grads[1]))  # the better network gets nothing
    frozen = emulated.ssa_loss_grads(feats, ce, "direct", needs_grad=[True, False])
    assert torch.equal(frozen[0], grads[0]) and frozen[1].numel() == 0  # a frozen teacher: no work, same student


@pytest.mark.parametrize("core", [(90, False)], indirect=True)
@pytest.mark.parametrize("algo", ["direct", "gram"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_backward_low_precision_inputs(emulated, core, algo, dtype):
    """float32 gradients are finished in place, float16/bfloat16 ones into a new tensor;
    a zero row (float32) takes the eps rule of the normalization backward."""
    feats = [f.to(dtype) for f in make_feats(2, [6, 9], [5, 7], seed=6)]
    if dtype == torch.float32:
        feats[0][1, 2] = 0
    ce = make_ce(2, 2, seed=3)
    ref = leaf([f.double() for f in feats])
    R.ssa_loss(ref, ce, lambda_=0.5).backward()
    grads = emulated.ssa_loss_grads(feats, ce.float(), algo)
    # The weights come from S, which the direct algorithm forms from fp16/bf16 tensor-core
    # operands (the gram algorithm too; its backward runs on the unrounded rows in fp32).
    channels, d = [6, 9], 35
    S_ref = R.pairwise_sqdist([f.double() for f in feats])
    stage = dtype if dtype != torch.float32 else None
    S_target = S_ref if stage is None else exact_sqdist([staged_rows(f, stage) for f in feats])
    S_err = sqdist_bound(channels, d, torch.float32, algo, S_target) + (S_target - S_ref).abs()
    rel = grad_rtol(channels, d, torch.float32, algo, S_ref, S_err)
    fi = torch.finfo(dtype)
    for a, b in zip(grads, ref):
        assert a.dtype == dtype and a.shape == b.shape
        tol = rel * b.grad.abs().max() + fi.eps / 2 * b.grad.abs() + fi.smallest_normal * fi.eps / 2
        assert ((a.double() - b.grad).abs() <= tol).all(), ((a.double() - b.grad).abs() - tol).max()
