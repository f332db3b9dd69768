"""Edge cases of docs/design.md §6: d = 1, N = 1, zero rows, identical inputs, NaN, determinism."""

from __future__ import annotations

import warnings

import pytest
import torch

import mtut_ops
from mtut_ops import reference as R

from .conftest import leaf, make_ce, make_feats

ALGOS = ["direct", "gram"]


@pytest.mark.parametrize("algo", ALGOS)
def test_identical_inputs_give_zero_loss_and_zero_finite_gradient(backend_device, algo):
    backend, device = backend_device
    (f,) = make_feats(3, [7], [2, 5], device=device)
    feats = leaf([f, f.clone()])
    ce = make_ce(2, 3, device=device)
    S = mtut_ops.pairwise_sqdist([x.detach() for x in feats], algo=algo, backend=backend)
    assert torch.equal(S, torch.zeros_like(S))
    L = mtut_ops.ssa_loss(feats, ce, algo=algo, backend=backend)
    assert L.item() == 0.0
    L.backward()
    for x in feats:
        assert torch.isfinite(x.grad).all() and torch.equal(x.grad, torch.zeros_like(x.grad))


@pytest.mark.parametrize("algo", ALGOS)
def test_zero_channel_rows_follow_the_eps_rule(backend_device, algo):
    backend, device = backend_device
    feats = make_feats(2, [5, 4], [3, 3], device=device)
    feats[0][:, 1] = 0  # a dead channel: normalized to 0, like F.normalize
    feats[1][0, :] = 0  # a whole dead sample
    ce = make_ce(2, 2, device=device)
    ours, ref = leaf(feats), leaf([f.cpu() for f in feats])
    torch.testing.assert_close(
        mtut_ops.pairwise_sqdist(feats, algo=algo, backend=backend).cpu(),
        R.pairwise_sqdist(ref),
        rtol=1e-10,
        atol=1e-12,
    )
    L = mtut_ops.ssa_loss(ours, ce, lambda_=0.5, algo=algo, backend=backend)
    Lr = R.ssa_loss(ref, ce.cpu(), lambda_=0.5)
    torch.testing.assert_close(L.cpu(), Lr, rtol=1e-10, atol=1e-14)
    L.backward()
    Lr.backward()
    for a, b in zip(ours, ref):
        assert torch.isfinite(a.grad).all()
        torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("spatial", [[], [1], [1, 1, 1]])
def test_d_equal_one(backend_device, algo, spatial):
    """d = 1: every K is [[1]] (or [[0]] for a zero row), so distances are 0 or 1-ish."""
    backend, device = backend_device
    feats = make_feats(2, [3, 1], spatial, device=device)
    S = mtut_ops.pairwise_sqdist(feats, algo=algo, backend=backend)
    torch.testing.assert_close(S.cpu(), R.pairwise_sqdist([f.cpu() for f in feats]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("algo", ALGOS)
def test_batch_of_one(backend_device, algo):
    backend, device = backend_device
    feats = leaf(make_feats(1, [9, 3, 4], [4, 3], device=device))
    ce = make_ce(3, 1, device=device)
    L = mtut_ops.ssa_loss(feats, ce, lambda_=0.5, algo=algo, backend=backend)
    torch.testing.assert_close(L.cpu(), R.ssa_loss([f.detach().cpu() for f in feats], ce.cpu(), lambda_=0.5))


@pytest.mark.parametrize("algo", ALGOS)
def test_nan_in_gives_nan_out(backend_device, algo):
    backend, device = backend_device
    feats = make_feats(2, [4, 4], [3, 3], device=device)
    feats[0][1, 2, 0, 0] = float("nan")
    S = mtut_ops.pairwise_sqdist(feats, algo=algo, backend=backend)
    assert torch.isnan(S[1, 0, 1]) and torch.isnan(S[1, 1, 0])
    assert torch.isfinite(S[0]).all()  # the other sample is untouched
    xs = leaf(feats)
    L = mtut_ops.ssa_loss(xs, make_ce(2, 2, device=device), algo=algo, backend=backend)
    assert torch.isnan(L)
    L.backward()
    assert torch.isnan(xs[0].grad[1]).any() or torch.isnan(xs[1].grad[1]).any()  # the NaN shows in the gradient too
    ce = make_ce(2, 2, device=device)
    ce[0, 0] = float("nan")
    assert torch.isnan(mtut_ops.ssa_loss(make_feats(2, [4, 4], [3, 3], device=device), ce, algo=algo, backend=backend))


@pytest.mark.parametrize("algo", ALGOS)
def test_deterministic_run_to_run(backend_device, algo):
    backend, device = backend_device
    feats = make_feats(3, [40, 24], [5, 6, 7], device=device, dtype=torch.float32)  # d = 210 spans tiles
    ce = make_ce(2, 3, device=device, dtype=torch.float32)
    runs = []
    for _ in range(2):
        xs = leaf(feats)
        L = mtut_ops.ssa_loss(xs, ce, algo=algo, backend=backend)
        L.backward()
        runs.append((L, [x.grad for x in xs]))
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_cpu_result_does_not_depend_on_thread_count():
    feats = make_feats(2, [30, 20], [9, 9, 9], dtype=torch.float32)  # d = 729: several tiles
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            results.append(torch.ops.mtut.pairwise_sqdist(feats, 1e-8, "direct"))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


def test_module_matches_functional():
    feats, ce = make_feats(2, [6, 6], [2, 3]), make_ce(2, 2)
    crit = mtut_ops.SSALoss(beta=1.5, lambda_=0.1, distance="fro2", pair_cap=5.0)
    assert "fro2" in repr(crit) and "pair_cap=5.0" in repr(crit)
    torch.testing.assert_close(
        crit(feats, ce), mtut_ops.ssa_loss(feats, ce, beta=1.5, lambda_=0.1, distance="fro2", pair_cap=5.0)
    )
    # ce_losses may also be a list of per-modality [N] losses.
    torch.testing.assert_close(crit(feats, list(ce)), crit(feats, ce))


@pytest.mark.parametrize("algo", ALGOS)
def test_d_equal_one_loss_warns(backend_device, algo):
    """Pooled [N, C] features: the loss is a constant (K_m = [[C_m]]) with no gradient; the API says so."""
    backend, device = backend_device
    feats = make_feats(2, [3, 4], [], device=device)
    ce = make_ce(2, 2, device=device)
    with pytest.warns(UserWarning, match=r"d = 1 position .* no gradient.* before global pooling"):
        L = mtut_ops.ssa_loss(feats, ce, algo=algo, backend=backend)
    torch.testing.assert_close(L.cpu(), R.ssa_loss([f.cpu() for f in feats], ce.cpu()), rtol=1e-12, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # positions: no warning
        mtut_ops.ssa_loss(make_feats(2, [3, 4], [2], device=device), ce, algo=algo, backend=backend)


GAP_BACKENDS = ["reference", "fused"]


@pytest.mark.parametrize("which", GAP_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("distance", ["rms", "fro2"])
@pytest.mark.parametrize("gap", [40.0, 44.5, 100.0, 400.0, 1000.0])
def test_capped_term_sends_exactly_zero_gradient_at_any_gap(backend_device, which, dtype, distance, gap):
    """Issue 31: a CE gap past ~44.4 nats (float32; ~354.9 float64) overflows rho =
    expm1(2 gap) to inf; a capped term must still send exactly 0, never NaN, and the other
    terms their usual gradient (against the fp64 reference with that term's weight 0)."""
    backend, device = backend_device
    backend = "reference" if which == "reference" else backend
    feats = make_feats(2, [3, 4], [2, 3], dtype=dtype, device=device, seed=5)
    # network 1 teaches network 0 on sample 0 by `gap` nats; network 0 teaches 1 on sample 1
    ce = torch.tensor([[gap, 0.2], [0.0, 1.2]], dtype=dtype, device=device)
    fs = leaf(feats)
    L = mtut_ops.ssa_loss(fs, ce, distance=distance, pair_cap=10.0, backend=backend, algo="gram")
    L.backward()
    assert torch.isfinite(L) and all(torch.isfinite(f.grad).all() for f in fs)
    assert fs[0].grad.abs().max().item() == 0.0  # term (0, 1) is capped: X_0 gets nothing
    # the uncapped term (1, 0) alone, in fp64: the loss less the cap
    ref = leaf([f.detach().cpu().double() for f in feats])
    ce_other = torch.tensor([[0.0, 0.2], [0.0, 1.2]], dtype=torch.float64)  # rho_01 = 0
    R.ssa_loss(ref, ce_other, distance=distance).backward()
    assert ref[0].grad.abs().max().item() == 0.0
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(fs[1].grad.cpu().double(), ref[1].grad, **tol)
    torch.testing.assert_close(
        L.cpu().double() - 10.0, R.ssa_loss([r.detach() for r in ref], ce_other, distance=distance), **tol
    )


@pytest.mark.parametrize("which", GAP_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_uncapped_overflow_is_an_inf_loss(backend_device, which, dtype):
    """Without a cap an overflowed rho on a pair apart makes the loss inf (documented), not NaN;
    on a pair at S = 0 it adds 0."""
    backend, device = backend_device
    backend = "reference" if which == "reference" else backend
    gap = 1000.0
    (a, b) = make_feats(2, [3, 3], [2, 3], dtype=dtype, device=device, seed=6)
    ce = torch.tensor([[gap, 0.0], [0.0, 0.0]], dtype=dtype, device=device)
    L = mtut_ops.ssa_loss([a, b], ce, backend=backend)
    assert L.item() == float("inf")
    same = leaf([a, a.clone()])
    L0 = mtut_ops.ssa_loss(same, ce, distance="fro2", backend=backend)
    L0.backward()
    assert L0.item() == 0.0 and all(torch.count_nonzero(f.grad) == 0 for f in same)
