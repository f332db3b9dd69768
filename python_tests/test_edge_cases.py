"""Edge cases of docs/design.md §6: d = 1, N = 1, zero rows, identical inputs, NaN, determinism."""
from __future__ import annotations

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
        mtut_ops.pairwise_sqdist(feats, algo=algo, backend=backend).cpu(), R.pairwise_sqdist(ref), rtol=1e-10, atol=1e-12
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
    torch.testing.assert_close(crit(feats, ce), mtut_ops.ssa_loss(feats, ce, beta=1.5, lambda_=0.1, distance="fro2", pair_cap=5.0))
    # ce_losses may also be a list of per-modality [N] losses.
    torch.testing.assert_close(crit(feats, list(ce)), crit(feats, ce))
