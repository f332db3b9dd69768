"""The benchmark code itself: the expert baseline computes the loss of the spec, the harness
refuses implementations that disagree, its statistics and work counts are right, and the
GPU performance model's arithmetic matches a hand computation. Tiny shapes: seconds."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from bench import bench_ssa as B
from bench import gpu_model as G
from bench.baselines import expert_gram_ssa_loss, mmpose_ssa_loss
from bench.costs import Problem, active_pairs, flops, typical_active
from mtut_ops import reference as R

from .conftest import leaf, make_ce, make_feats


def _pair_terms(feats, ce, lambda_=5e-3):
    """lambda * mean_b(rho_mn sqrt(S_mn) / d) of every ordered pair (m, n), uncapped (fp64 reference)."""
    S = R.pairwise_sqdist(feats)
    rho = R.focal_weight(ce)
    d = math.prod(feats[0].shape[2:])
    M = len(feats)
    return {
        (m, n): lambda_ * (rho[:, m, n] * S[:, m, n].sqrt() / d).mean().item()
        for m in range(M)
        for n in range(M)
        if m != n
    }


@pytest.mark.parametrize("M", [2, 3])
@pytest.mark.parametrize("cap_binds", [False, True])
def test_expert_gram_matches_reference_loss_and_gradients(M, cap_binds):
    feats = make_feats(4, [9, 5, 7][:M], [3, 2, 4], seed=10 + M)
    ce = make_ce(M, 4, seed=M)
    lambda_ = 5e-3
    cap = 10.0
    if cap_binds:  # a cap between the pair terms: some pairs capped (no gradient), others not
        lambda_ = 1.0
        terms = sorted(v for v in _pair_terms(feats, ce, lambda_).values() if v > 0)
        assert len(terms) >= 2
        cap = 0.5 * (terms[0] + terms[-1])
    ref, exp, mm = leaf(feats), leaf(feats), leaf(feats)
    L_ref = R.ssa_loss(ref, ce, lambda_=lambda_, pair_cap=cap)
    L_exp = expert_gram_ssa_loss(exp, ce, lambda_=lambda_, cap=cap)
    L_mm = mmpose_ssa_loss(mm, ce, lambda_=lambda_, cap=cap)
    assert L_exp.dtype == torch.float64
    torch.testing.assert_close(L_exp, L_ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(L_mm, L_ref, rtol=1e-10, atol=0)
    L_ref.backward()
    L_exp.backward()
    scale = max(b.grad.abs().max().item() for b in ref)
    assert scale > 0
    if cap_binds:  # the capped pairs send no gradient: some modality gets none (M = 2) or less
        assert any(b.grad.abs().max() == 0 for b in ref) or M == 3
    for a, b in zip(exp, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-12 * scale)


def test_expert_gram_gradient_is_student_only():
    """Term (m, n) must not pull on X_n: with only rho_01 > 0, X_1 gets no gradient."""
    feats = leaf(make_feats(3, [6, 6], [2, 5], seed=3))
    ce = torch.tensor([[2.0, 2.5, 3.0], [0.5, 0.1, 0.2]], dtype=torch.float64)  # network 0 worse everywhere
    expert_gram_ssa_loss(feats, ce).backward()
    assert feats[0].grad.abs().max() > 0
    assert torch.equal(feats[1].grad, torch.zeros_like(feats[1].grad))


def test_expert_gram_float32_uses_float64_block_sums():
    feats = make_feats(2, [16, 16], [8, 8], dtype=torch.float32, seed=4)
    ce = make_ce(2, 2, dtype=torch.float32)
    exact = R.ssa_loss([f.double() for f in feats], ce.double())
    got = expert_gram_ssa_loss(feats, ce)
    assert got.dtype == torch.float32
    assert abs(got.item() - exact.item()) <= 1e-5 * exact.item()


# ------------------------------------------------------------------ statistics


def test_median_interval_order_statistics_and_coverage():
    lo, hi, cov = B.median_interval([5.0, 1.0, 3.0])
    assert (lo, hi) == (1.0, 5.0) and cov == pytest.approx(0.75)
    lo, hi, cov = B.median_interval([2.0, 9.0, 4.0, 1.0, 3.0])
    assert (lo, hi) == (1.0, 9.0) and cov == pytest.approx(1 - 2 / 32)
    xs = list(range(20))  # n = 20: the 6th and 15th values cover >= 90% (95.9%)
    lo, hi, cov = B.median_interval(xs, conf=0.9)
    assert (lo, hi) == (5, 14) and 0.9 <= cov < 0.99


def test_quantile_interpolates():
    assert B.quantile([0.0, 10.0], 0.2) == pytest.approx(2.0)
    assert B.quantile([3.0, 1.0, 2.0], 0.5) == 2.0


# ------------------------------------------------------------------ agreement


def test_agreement_rtol_is_derived_per_dtype_and_shape():
    s = B.SHAPES["mixed3c"]
    assert B.agreement_rtol("float32", s) == pytest.approx(1e-3)  # 36 sqrt(25088) 2^-24 = 3.4e-4 < 1e-3
    assert B.agreement_rtol("bfloat16", s) == pytest.approx(12 * 2.0**-8)
    assert B.agreement_rtol("float64", s) == pytest.approx(1e-9)
    big = B.Shape("big", 1, (8, 8), (2**26,))
    assert B.agreement_rtol("float32", big) == pytest.approx(36 * 2**13 * 2.0**-24)


def _wrong_both_ways(feats, ce):
    """The classic mistake: no detach, so term (m, n) also pulls X_n toward X_m."""
    X = torch.cat([torch.nn.functional.normalize(f.reshape(f.size(0), f.size(1), -1), dim=2) for f in feats], 1)
    c = feats[0].size(1)
    H = X @ X.transpose(1, 2)
    d = X.size(2)
    t = [
        [H[:, i * c : (i + 1) * c, j * c : (j + 1) * c].double().square().sum((1, 2)) for j in range(2)]
        for i in range(2)
    ]
    total = 0
    for m, n in ((0, 1), (1, 0)):
        rho = torch.exp(2 * (ce[m] - ce[n]).clamp(min=0)) - 1
        S = (t[m][m] - 2 * t[m][n] + t[n][n]).clamp(min=0)
        total = total + (5e-3 * (rho * S.sqrt() / d).mean()).clamp(max=10)
    return total.float()


def test_run_shape_refuses_a_disagreeing_implementation_and_times_the_rest(capsys):
    shape = B.Shape("tiny", 3, (12, 12), (5, 6))
    impls = {
        k: v
        for k, v in B.impl_table(torch.device("cpu")).items()
        if k in ("mmpose-eager", "expert-eager", "mtut-cpu-gram", "mtut-cpu-direct")
    }
    impls["wrong-both-ways"] = B.Impl("wrong-both-ways", "expert", lambda: _wrong_both_ways)
    impls["wrong-lambda"] = B.Impl(
        "wrong-lambda", "expert", lambda: lambda f, ce: expert_gram_ssa_loss(f, ce, lambda_=5.1e-3)
    )
    args = SimpleNamespace(naive_limit_gb=1.0, max_gflop=1e9, warmup=1, repeats=4, min_repeats=3, max_seconds=60.0)
    rows, record = B.run_shape(B.Meter(torch.device("cpu")), shape, "float32", impls, args, log=lambda s: None)
    by = {r.impl: r for r in rows}
    assert by["wrong-both-ways"].status == "disagrees" and by["wrong-lambda"].status == "disagrees"
    assert "DISAGREES" in capsys.readouterr().err
    for name in ("mmpose-eager", "expert-eager", "mtut-cpu-gram", "mtut-cpu-direct"):
        r = by[name]
        assert r.status == "ok" and r.rounds == 4, (name, r)
        assert r.disagreement <= r.rtol
        assert r.total_p20_ms <= r.total_ms <= r.total_p80_ms
        assert r.speedup_vs_expert_lo <= r.speedup_vs_expert <= r.speedup_vs_expert_hi
    assert by["expert-eager"].speedup_vs_expert == 1.0
    assert set(record["times_s"]) == {"mmpose-eager", "expert-eager", "mtut-cpu-gram", "mtut-cpu-direct"}
    assert record["load_before"] is not None and record["load_after"] is not None


def test_run_shape_records_what_it_cannot_run():
    shape = B.Shape("tiny", 2, (4, 4), (16, 16))
    impls = {k: v for k, v in B.impl_table(torch.device("cpu")).items() if k in ("mmpose-eager", "mtut-cpu-direct")}
    args = SimpleNamespace(naive_limit_gb=1e-6, max_gflop=1e-9, warmup=1, repeats=3, min_repeats=3, max_seconds=60.0)
    rows, _ = B.run_shape(B.Meter(torch.device("cpu")), shape, "float32", impls, args, log=lambda s: None)
    by = {r.impl: r for r in rows}
    assert by["mmpose-eager"].status == "not run" and "d x d" in by["mmpose-eager"].note
    assert by["mtut-cpu-direct"].status == "not run" and "GFLOP" in by["mtut-cpu-direct"].note


def test_results_files(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "RESULTS", tmp_path)
    shape = B.Shape("tiny", 2, (4, 6), (3, 3))
    impls = {k: v for k, v in B.impl_table(torch.device("cpu")).items() if k in ("mmpose-eager", "expert-eager")}
    args = SimpleNamespace(naive_limit_gb=1.0, max_gflop=1e9, warmup=1, repeats=3, min_repeats=3, max_seconds=60.0)
    rows, record = B.run_shape(B.Meter(torch.device("cpu")), shape, "float32", impls, args, log=lambda s: None)
    env = B.environment(torch.device("cpu"))
    paths = B.write_results(rows, env, [record], "t")
    md = (tmp_path / "t.md").read_text()
    assert "| expert-eager |" in md and "load average before" in md
    assert {p.name for p in paths} >= {"t.csv", "t.json", "t.md"}


# ------------------------------------------------------------------ work counts


def test_flop_counts_at_mixed4f_match_hand_counts():
    p = Problem(6, (832, 832), 16 * 14 * 14)
    f, b = flops(p, "expert")
    assert f + b == 4 * 6 * 3136 * 1664**2  # ~208 GFLOP: one (2C)^2 d GEMM each way
    f, b = flops(p, "cpu-gram")  # three C^2 d blocks forward, two applied backward (one modality active)
    assert f == 2 * 6 * 3136 * 3 * 832**2 and b == 2 * 6 * 3136 * 2 * 832**2
    f, b = flops(p, "naive")
    assert f + b == 6 * 6 * 3136**2 * 1664


def test_cpu_backward_counts_follow_the_focal_weights():
    p = Problem(2, (4, 6), 10)
    ce = torch.tensor([[1.0, 1.0], [0.5, 2.0]])  # sample 0: modality 0 worse; sample 1: modality 1 worse
    act = active_pairs(ce)
    assert act[0, 0, 1] and not act[0, 1, 0] and act[1, 1, 0] and not act[1, 0, 1]
    _, b = flops(p, "cpu-gram", act)
    assert b == 2 * 10 * (4 * (4 + 6) + 6 * (6 + 4))
    none = torch.zeros(2, 2, 2, dtype=torch.bool)
    assert flops(p, "cpu-gram", none)[1] == 0 and flops(p, "cpu-direct", none)[1] == 0
    assert typical_active(3, 3).sum() == 3 * 3  # M (M - 1) / 2 ordered pairs per sample


# ------------------------------------------------------------------ GPU model


def test_gpu_model_littles_law_by_hand():
    """Bytes x latency / bytes in flight, the resident blocks capped by the SMs."""
    assert G.little(10e6, 24, 1024, 370, 132) == pytest.approx(10e6 * 370e-9 / (24 * 1024), rel=1e-12)
    many = G.little(10e6, 10**6, 1024, 370, 132, resident=4)
    assert many == pytest.approx(10e6 * 370e-9 / (132 * 4 * 1024), rel=1e-12)


def test_gpu_model_kernel_time_is_the_roofline_or_latency_plus_floor():
    gpu = G.GPUS["H100-SXM"]
    lo_floor, hi_floor = (f * 1e-6 for f in G.FLOOR_US)
    # an ATen pass (fills the GPU): bytes at the copy bandwidth
    ew = G.kernel_time(G.Kernel("ew", 0, 3e9), gpu, "bf16")
    assert ew == pytest.approx((1e-3 + lo_floor, 1e-3 + hi_floor), rel=1e-12)
    # a bf16 bmm [6 x 1664 x 3136] x [3136 x 1664]: 128 x 256 tiles, 13 x 7 x 6 = 546 on 132 SMs:
    # 5 waves, 546 / 660 of them busy at the low end
    gemm = (6, 1664, 1664, 3136)
    f = 2.0 * 6 * 1664 * 1664 * 3136
    lo, hi = G.kernel_time(G.Kernel("bmm", f, 0, gemm), gpu, "bf16")
    assert lo == pytest.approx(f / (798e12 * G.GEMM_EFF[1]) + lo_floor, rel=1e-12)
    assert hi == pytest.approx(f / (798e12 * G.GEMM_EFF[0] * 546 / 660) + hi_floor, rel=1e-12)
    # a kernel of ours with 24 blocks: the latency term, not the bandwidth, sets its time; DRAM's
    # latency for 40 MB, L2's for 10 MB (under half the 50 MB L2)
    for nbytes, (lat_lo, lat_hi) in ((40e6, (370e-9, 450e-9)), (10e6, (150e-9, 270e-9))):
        lo, hi = G.kernel_time(G.Kernel("sqnorm", 0, nbytes, blocks=24, inflight=1024), gpu, "bf16")
        assert lo == pytest.approx(nbytes * lat_lo / (24 * 1024) + lo_floor, rel=1e-12)
        assert hi == pytest.approx(nbytes * lat_hi / (24 * 1024) + hi_floor, rel=1e-12)
    assert G.ratio((2.0, 4.0), (1.0, 2.0)) == (1.0, 4.0)


def test_gpu_model_work_of_whole_plans_by_hand():
    p = Problem(6, (832, 832), 3136)
    flops = lambda ks: sum(k.flops for k in ks)  # noqa: E731
    # the eager expert code, traced on meta tensors: its two bmm are all its FLOPs
    pl = G.expert_eager(p, "bf16")
    assert flops(pl.forward + pl.backward) == 4 * 6 * 3136 * 1664**2
    # ours, gram: 3 blocks forward (bmm); backward one bmm over the N student rows of modality 0
    pl = G.mtut_cuda(p, "bf16", "gram")
    assert flops(pl.forward) == 2 * 6 * 832 * 832 * 3136 * 3
    assert flops(pl.backward) == 2 * 6 * 832 * 1664 * 3136
    # the pair form's right operand (M = 2: one, shared): X read and written, X_0 read once more
    X = 6 * 1664 * 3136 * 2
    assert [k.bytes for k in pl.backward if k.name.startswith("stack")] == [2 * X + 6 * 832 * 3136 * 2]
    # M = 3: one per modality
    pl = G.mtut_cuda(Problem(6, (832,) * 3, 3136), "bf16", "gram")
    X3 = 6 * 3 * 832 * 3136 * 2
    assert [k.bytes for k in pl.backward if k.name.startswith("stack")] == [2 * X3 + 2 * 6 * 832 * 3136 * 2] * 3
    # direct: K_0, K_1 forward; backward both recomputed for the student rows, then Xh_0 E
    pl = G.mtut_cuda(p, "bf16", "direct")
    assert flops(pl.forward) == flops(pl.backward) - 2 * 6 * 832 * 3136**2 == 2 * 6 * 3136**2 * 1664


def test_gpu_model_writes_predicted_ranges(tmp_path):
    """The harness runs end to end and labels what it writes."""
    G.main(["--out", str(tmp_path)])
    md = next(tmp_path.glob("gpu-model-*.md")).read_text()
    assert "PREDICTED" in md and "| H100-SXM | mixed4f | 2 | bf16 | gram |" in md
    assert len(next(tmp_path.glob("gpu-model-*.csv")).read_text().splitlines()) == 1 + 2 * 4 * 2 * 2


@pytest.mark.deep  # ~10 s: the whole first-contact script on tiny CPU shapes
def test_gpu_check_dry_run(tmp_path):
    """tools/gpu_check.sh runs once, on a GPU we rarely get: its dry run (the calibration on tiny
    CPU shapes, no build) goes through every step, so a typo costs no GPU time."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, GPU_PYTHON=sys.executable, GPU_CHECK_OUT=str(tmp_path), OMP_WAIT_POLICY="passive")
    proc = subprocess.run(
        ["bash", "tools/gpu_check.sh", "--dry-run"], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "=== gpu-check: passed" in proc.stdout
    torch_md = (tmp_path / "calibrate-torch.md").read_text()
    assert "expert-eager mixed3c fp32" in torch_md and "model" in torch_md
    assert "mtut-cpu auto" in (tmp_path / "calibrate-mtut.md").read_text()
