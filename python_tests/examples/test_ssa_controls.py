"""The study's controls: focal weighting off (constant / indicator rho), SSA against
shuffled features, and --beta 0 no longer silently disabling SSA."""

from __future__ import annotations

import pytest
import torch

import mtut_ops
from examples.mtut_model import MTUTModel, MTUTOutput, SSAConfig, derangement, focal_weights, ssa_with_weights
from examples.train_nvgesture import main
from examples.training.config import build_parser, config_from_args
from examples.training.engine import shuffle_permutation


def _feats(channels=(6, 4, 5), n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, 2, 3, 2, generator=g, dtype=torch.float64, requires_grad=True) for c in channels]


def _grads(loss, feats):
    return torch.autograd.grad(loss, feats, allow_unused=True)


@pytest.mark.parametrize("distance", ["rms", "fro2"])
@pytest.mark.parametrize("pair_cap", [None, 0.02])
def test_weighted_ssa_with_the_papers_rho_is_the_library_loss(distance, pair_cap):
    feats = _feats()
    ce = torch.tensor(
        [[2.0, 0.1, 0.7, 1.5, 0.0], [0.3, 0.9, 0.7, 0.2, 2.5], [1.0, 1.0, 0.1, 3.0, 0.4]], dtype=torch.float64
    )
    kw = dict(lambda_=5e-3, distance=distance, pair_cap=pair_cap)
    ours = ssa_with_weights(feats, mtut_ops.focal_weight(ce, 2.0), **kw)
    lib = mtut_ops.ssa_loss(feats, ce, beta=2.0, **kw)
    assert ours > 0
    if pair_cap is not None:  # the cap binds on some pair, not on all
        uncapped = ssa_with_weights(feats, mtut_ops.focal_weight(ce, 2.0), **{**kw, "pair_cap": None})
        assert 0.02 < ours < uncapped
    torch.testing.assert_close(ours.double(), lib.double(), rtol=1e-6, atol=0)
    for a, b in zip(_grads(ours, feats), _grads(lib, feats)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


def test_constant_and_indicator_rho():
    ce = torch.tensor([[2.0, 0.1, 0.5], [0.3, 0.9, 0.5]])
    const = focal_weights(ce, "constant")
    assert torch.equal(const, torch.tensor([[0.0, 1.0], [1.0, 0.0]]).expand(3, 2, 2))
    ind = focal_weights(ce, "indicator")
    # sample 0: rgb worse -> rho_rgb,depth = 1; sample 1: depth worse; sample 2: a tie -> 0
    assert ind[:, 0, 1].tolist() == [1.0, 0.0, 0.0] and ind[:, 1, 0].tolist() == [0.0, 1.0, 0.0]
    torch.testing.assert_close(focal_weights(ce, "exp", 2.0), mtut_ops.focal_weight(ce, 2.0))
    with pytest.raises(ValueError, match="focal mode"):
        focal_weights(ce, "linear")


def _output(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    feats = {m: {"Mixed_4f": torch.randn(n, 8, 2, 2, 2, generator=g, requires_grad=True)} for m in ("rgb", "depth")}
    logits = {m: torch.randn(n, 25, generator=g) for m in ("rgb", "depth")}
    return MTUTOutput(logits, feats), torch.arange(n) % 25


def test_constant_focal_weight_is_the_plain_mean_distance_both_ways():
    out, y = _output()
    model = MTUTModel(
        ("rgb", "depth"),
        25,
        width=0.125,
        ssa_endpoints=("Mixed_4f",),
        ssa=SSAConfig(lambda_=0.1, focal="constant", pair_cap=None),
    )
    loss = model.loss(out, y, ssa=True).ssa
    fr, fd = out.features["rgb"]["Mixed_4f"], out.features["depth"]["Mixed_4f"]
    K = [mtut_ops.correlation(f.detach().double(), backend="reference") for f in (fr, fd)]
    delta = ((K[0] - K[1]) ** 2).sum((1, 2)).sqrt() / 8  # rms, d = 8
    torch.testing.assert_close(loss.double(), 0.1 * 2 * delta.mean(), rtol=1e-5, atol=0)
    # both networks get a gradient (no focal weight decides a direction)
    gr, gd = _grads(loss, [fr, fd])
    assert gr.abs().sum() > 0 and gd.abs().sum() > 0


def test_shuffled_features_are_aligned_with_other_clips_and_keep_each_clips_weight():
    out, y = _output()
    perm = torch.tensor([2, 0, 3, 1])
    model = MTUTModel(
        ("rgb", "depth"),
        25,
        width=0.125,
        ssa_endpoints=("Mixed_4f",),
        ssa=SSAConfig(lambda_=0.1, shuffle=("depth",), pair_cap=None),
    )
    loss = model.loss(out, y, ssa=True, perm=perm)
    fr, fd = out.features["rgb"]["Mixed_4f"], out.features["depth"]["Mixed_4f"]
    expected = mtut_ops.ssa_loss([fr, fd[perm]], loss.ce_per_sample, beta=2.0, lambda_=0.1, pair_cap=None)
    torch.testing.assert_close(loss.ssa, expected)
    unshuffled = mtut_ops.ssa_loss([fr, fd], loss.ce_per_sample, beta=2.0, lambda_=0.1, pair_cap=None)
    assert not torch.allclose(loss.ssa, unshuffled)
    for a, b in zip(_grads(loss.ssa, [fr, fd]), _grads(expected, [fr, fd])):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="needs the batch permutation"):
        model.loss(out, y, ssa=True)


def test_derangements_have_no_fixed_points_and_do_not_touch_the_global_rng():
    for n in range(2, 12):
        for s in range(20):
            p = derangement(n, torch.Generator().manual_seed(s))
            assert sorted(p.tolist()) == list(range(n)) and (p != torch.arange(n)).all()
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a = shuffle_permutation(6, seed=0, epoch=3, step=1, rank=0)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, shuffle_permutation(6, seed=0, epoch=3, step=1, rank=0))
    assert not all(torch.equal(a, shuffle_permutation(6, seed=0, epoch=3, step=k, rank=0)) for k in range(2, 6))


def _cfg(data_root, tmp_path, *extra):
    args = build_parser().parse_args(
        ["--data-root", str(data_root), "--out", str(tmp_path / "run"), "--preset", "cpu-small", *extra]
    )
    return config_from_args(args)


def test_beta_zero_is_refused_where_it_would_silently_turn_ssa_off(data_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--data-root", str(data_root), "--out", str(tmp_path / "run"), "--preset", "cpu-small", "--beta", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--beta 0" in err and "--focal constant" in err
    # what one means by it is available explicitly, and beta 0 is harmless where SSA never runs
    assert _cfg(data_root, tmp_path, "--beta", "0", "--focal", "constant").focal == "constant"
    assert _cfg(data_root, tmp_path, "--beta", "0", "--no-ssa").ssa is False
    assert _cfg(data_root, tmp_path, "--beta", "0", "--ssa-start", "99").beta == 0
    assert _cfg(data_root, tmp_path, "--beta", "0", "--modalities", "rgb").beta == 0


def test_control_options_are_validated(data_root, tmp_path):
    cfg = _cfg(data_root, tmp_path, "--ssa-shuffle", "depth", "--focal", "indicator")
    assert cfg.ssa_shuffle == ("depth",) and cfg.focal == "indicator"
    with pytest.raises(ValueError, match="--ssa-shuffle"):
        _cfg(data_root, tmp_path, "--ssa-shuffle", "ir")
    with pytest.raises(ValueError, match="leave at least one out"):
        _cfg(data_root, tmp_path, "--ssa-shuffle", "rgb", "depth")
    with pytest.raises(ValueError, match="--watch-test"):
        _cfg(data_root, tmp_path, "--no-eval-test", "--watch-test")
