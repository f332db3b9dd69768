"""The defaults reproduce the published mmpose formulation (and the eager Gram baseline agrees)."""

from __future__ import annotations

import pytest
import torch

import mtut_ops
from bench.baselines import gram_identity_ssa_loss, mmpose_ssa_loss

from .conftest import leaf, make_ce, make_feats


@pytest.mark.parametrize("algo", ["direct", "gram"])
@pytest.mark.parametrize("M", [2, 3])
def test_matches_mmpose_with_rms_beta2_lambda5e3(backend_device, algo, M):
    backend, device = backend_device
    feats = make_feats(4, [16, 12, 20][:M], [2, 3, 3], device=device, seed=M)
    ce = make_ce(M, 4, device=device, seed=M)
    ours, theirs = leaf(feats), leaf(feats)
    L = mtut_ops.ssa_loss(ours, ce, beta=2.0, lambda_=5e-3, distance="rms", algo=algo, pair_cap=10.0, backend=backend)
    Lm = mmpose_ssa_loss(theirs, ce)
    torch.testing.assert_close(L, Lm, rtol=1e-10, atol=1e-14)
    L.backward()
    Lm.backward()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-14)


def test_cap_binds_like_mmpose(backend_device):
    """With a huge lambda every pair term hits mmpose's cap of 10: loss = 10 * active pairs, no gradient."""
    backend, device = backend_device
    feats = leaf(make_feats(3, [8, 8], [4, 4], device=device))
    ce = torch.tensor([[3.0, 2.0, 4.0], [0.1, 0.2, 0.3]], dtype=torch.float64, device=device)
    L = mtut_ops.ssa_loss(feats, ce, lambda_=1e6, pair_cap=10.0, backend=backend)
    assert L.item() == 10.0  # only pair (0 -> 1) has rho > 0
    L.backward()
    assert all(torch.equal(f.grad, torch.zeros_like(f.grad)) for f in feats)
    torch.testing.assert_close(L, mmpose_ssa_loss(feats, ce, lambda_=1e6))


def test_gram_identity_baseline_agrees():
    feats = make_feats(3, [10, 6], [3, 4], seed=5)
    ce = make_ce(2, 3)
    torch.testing.assert_close(gram_identity_ssa_loss(feats, ce), mmpose_ssa_loss(feats, ce), rtol=1e-9, atol=1e-14)
