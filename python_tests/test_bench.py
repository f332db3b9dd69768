"""The benchmark code itself: the expert baseline computes the loss of the spec, the harness
refuses implementations that disagree, its statistics and work counts are right, and the
GPU performance model's arithmetic matches a hand computation. Tiny shapes: seconds."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import mtut_ops
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
    return {(m, n): lambda_ * (rho[:, m, n] * S[:, m, n].sqrt() / d).mean().item()
            for m in range(M) for n in range(M) if m != n}


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
    t = [[H[:, i * c:(i + 1) * c, j * c:(j + 1) * c].double().square().sum((1, 2)) for j in range(2)] for i in range(2)]
    total = 0
    for m, n in ((0, 1), (1, 0)):
        rho = torch.exp(2 * (ce[m] - ce[n]).clamp(min=0)) - 1
        S = (t[m][m] - 2 * t[m][n] + t[n][n]).clamp(min=0)
        total = total + (5e-3 * (rho * S.sqrt() / d).mean()).clamp(max=10)
    return total.float()


def test_run_shape_refuses_a_disagreeing_implementation_and_times_the_rest(capsys):
    shape = B.Shape("tiny", 3, (12, 12), (5, 6))
    impls = {k: v for k, v in B.impl_table(torch.device("cpu")).items()
             if k in ("mmpose-eager", "expert-eager", "mtut-cpu-gram", "mtut-cpu-direct")}
    impls["wrong-both-ways"] = B.Impl("wrong-both-ways", "expert", lambda: _wrong_both_ways)
    impls["wrong-lambda"] = B.Impl("wrong-lambda", "expert",
                                   lambda: (lambda f, ce: expert_gram_ssa_loss(f, ce, lambda_=5.1e-3)))
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


def test_gpu_model_gemm_time_by_hand():
    """One bf16 GEMM [6 x 1664 x 3136] x [3136 x 1664] on the H100 model, computed by hand."""
    gpu = G.GPUS["H100-SXM"]
    op = G.Op("gemm", flops=2 * 6 * 1664 * 1664 * 3136, bytes=0, path="cublas", prec="bf16",
              gemm=(6, 1664, 1664, 3136))
    # tiles of 128 x 256 (bf16): 13 x 7 = 91 per sample, 546 in all on 132 SMs -> 5 waves, 546 / 660
    wave = 546 / (5 * 132)
    keff = 3136 / (3136 + G.K_OVERHEAD)
    expect = op.flops / (gpu.peak["bf16"] * 1e12 * G.EFF["cublas"]["bf16"] * wave * keff)
    assert G.op_time(op, gpu) == pytest.approx(expect, rel=1e-12)


def test_gpu_model_memory_bound_op_and_launch_floor():
    gpu = G.GPUS["H200"]
    big = G.Op("ew", flops=0, bytes=8e9, path="elementwise", prec="bf16")
    assert G.op_time(big, gpu) == pytest.approx(8e9 / (gpu.hbm_tbs * 1e12 * G.EFF_HBM))
    tiny = G.Op("ew", flops=0, bytes=64, path="elementwise", prec="bf16")
    assert G.op_time(tiny, gpu) == G.MIN_KERNEL_S


def test_gpu_model_work_of_whole_plans_by_hand():
    p = Problem(6, (832, 832), 3136)
    # the eager expert code, traced on meta tensors: its two bmm are all its FLOPs
    assert G.plan("expert-eager", p, "bf16").flops() == 4 * 6 * 3136 * 1664**2
    # the CUDA gram path as it is: forward 3 blocks by cuBLAS, kept; backward M = 2 products
    # (one per term) over N (M - 1) = 6 student rows; unequal channels: M^2 = 4 applied
    # blocks over every sample (every modality needs a gradient)
    fwd = 2 * 6 * 832 * 832 * 3136 * 3
    bwd = 2 * 6 * 832 * 832 * 3136 * 2
    assert G.plan("mtut-cuda-gram", p, "bf16").flops() == pytest.approx(fwd + bwd, rel=1e-12)
    q = Problem(6, (832, 800), 3136)
    fwd = 2 * 6 * 3136 * (832 * 832 + 832 * 800 + 800 * 800)
    bwd = 2 * 6 * 3136 * (832 + 800) ** 2
    assert G.plan("mtut-cuda-gram", q, "bf16").flops() == pytest.approx(fwd + bwd, rel=1e-12)
    # the redesign: upper blocks forward, the active modality's rows backward (one per sample)
    assert G.plan("redesign-cuda-gram", p, "bf16").flops() == pytest.approx(
        2 * 6 * 3136 * 3 * 832**2 + 2 * 6 * 832 * 1664 * 3136, rel=1e-12)
    assert G.resolve_auto(p) == "gram" and G.resolve_auto(Problem(6, (1024, 1024), 392)) == "direct"


def test_gpu_model_cuda_backend_runs_every_product_in_cublas_in_the_input_precision():
    p = Problem(6, (832, 832), 3136)
    for algo in ("gram", "direct"):
        pl = G.plan(f"mtut-cuda-{algo}", p, "bf16")
        assert {o.path for o in pl.fwd + pl.bwd if o.flops} == {"cublas"}
        assert {o.prec for o in pl.fwd + pl.bwd if o.flops} == {"bf16"}
        assert {o.prec for o in G.plan(f"mtut-cuda-{algo}", p, "tf32").bwd if o.flops} == {"tf32"}


def test_gpu_check_calls_the_benchmark_with_options_it_has():
    """tools/gpu_check.sh runs once, on a GPU we rarely get: an option the benchmark does not
    know would waste that run (argparse exits 2), so its command line is parsed here."""
    import re
    import shlex
    from pathlib import Path

    script = (Path(__file__).resolve().parents[1] / "tools" / "gpu_check.sh").read_text()
    calls = [line for line in script.splitlines() if "-m bench.bench_ssa" in line and not line.lstrip().startswith("#")]
    assert calls, "tools/gpu_check.sh no longer runs bench.bench_ssa"
    for line in calls:
        argv = shlex.split(line.split("-m bench.bench_ssa", 1)[1])
        argv = [re.sub(r"\$\{?\w+\}?", "x", a) for a in argv]  # shell variables: any value
        B.parser().parse_args(argv)


def test_gpu_model_triton_configs_are_the_kernels_configs():
    """The model's copy of the Triton autotune configs (block sizes) is the modules' own."""
    pytest.importorskip("triton")
    from mtut_ops.triton import direct, gram

    def sizes(cfgs):
        return {kind: [tuple(c.kwargs.values()) for c in v] for kind, v in cfgs.items() if kind != "fp64"}

    assert sizes(direct._FORWARD_CONFIGS) == G.TRITON_CONFIGS["direct_forward"]
    assert sizes(direct._BACKWARD_CONFIGS) == G.TRITON_CONFIGS["direct_backward"]
    assert sizes(gram._CONFIGS) == G.TRITON_CONFIGS["gram"]
    assert sizes(gram._APPLY_CONFIGS) == G.TRITON_CONFIGS["gram_apply"]
    assert sizes(gram._COEF_CONFIGS) == G.TRITON_CONFIGS["gram_coef"]


def test_gpu_model_triton_runs_every_dot_on_the_operand_type_of_its_scenario():
    """Since the staged operands every Triton GEMM is a tensor-core tl.dot for bf16 and TF32
    (none left on FMA), exact FMA only for float32 without TF32; both passes stage the inputs."""
    p = Problem(6, (832, 832), 3136)
    for algo in ("gram", "direct"):
        for scen, path, prec in (("bf16", "triton-tc", "bf16"), ("tf32", "triton-tc", "tf32"),
                                 ("fp32", "triton-fma", "fp32")):
            pl = G.plan(f"mtut-triton-{algo}", p, scen)
            assert {(o.path, o.prec) for o in pl.fwd + pl.bwd if o.flops} == {(path, prec)}
            for ops in (pl.fwd, pl.bwd):
                assert sum(o.name.startswith("_stage_rows") for o in ops) == p.M


def test_gpu_model_triton_work_by_hand():
    p = Problem(6, (832, 832), 3136)  # Mixed_4f: d = 3136 = ld, C = 1664
    # staging, bf16: read the row (HBM), write it padded + norm and inv; the second read is L2
    ops, launches, _, h2d = G._stage(p, 2)
    assert launches == 2 and h2d == 1
    assert ops[0].bytes == 6 * 832 * (3136 * 2 + 3136 * 2 + 8) and ops[0].l2_bytes == 6 * 832 * 3136 * 2
    # gram, 128 x 64 tiles: forward 3 blocks of 7 x 7 tiles (diagonal blocks whole), coef the
    # 13 * 14 / 2 upper tiles of the stacked G, apply 13 row tiles x 49 column tiles, K = 1664
    fwd, coef, apply = G._gram_ops(p, 2, "tc16", 128, 64)
    assert fwd.flops == 2.0 * 128**2 * 3136 * 3 * 49 * 6 and fwd.programs == 3 * 49 * 6
    assert coef.flops == 2.0 * 128**2 * 3136 * 91 * 6 and coef.programs == 91 * 6
    assert apply.flops == 2.0 * 128 * 64 * 1664 * 13 * 49 * 6 and apply.programs == 13 * 49 * 6
    # direct forward, 128 x 64 tiles: 25 x 26 / 2 upper tiles, K_m and K_n over 832 rows each
    op = G._direct_forward_op(p, 2, "tc16", 128, 64)
    assert op.flops == 2.0 * 128**2 * (832 + 832) * 325 * 6 and op.programs == 325 * 6
    # direct backward, 64 x 64: one active modality per sample, 49 column programs, each building
    # K_m, K_n and x E for all 49 row blocks; x E has K = 64 (so the kernel's K is below 832)
    op = G._direct_backward_op(p, 2, "tc16", 64, 64, typical_active(6, 2))
    assert op.programs == 6 * 49
    assert op.flops == pytest.approx(6 * 3 * 2.0 * 64**2 * 832 * 49 * 49, rel=1e-12)
    assert op.gemm[3] == pytest.approx(1 / (2 / 3 / 832 + 1 / 3 / 64))
    # the waves of the live programs: 294 programs on 132 SMs take 3 waves
    assert G._waves(294, 132) == pytest.approx(294 / 396)


def test_gpu_model_default_backend_and_auto_rule_predicted_right():
    """The model's verdict on the code's choices for CUDA tensors at the named shapes: the
    default backend (cuda, before triton) is the faster one and algo="auto" picks each
    backend's faster algo (bench/results/gpu-model-*.md, 'Default backend and auto rule')."""
    shapes = [s for s in G.SHAPES if s.M == 2 and s.name in ("mixed4f", "mixed5c_224")]
    rows = G.predict(gpus=("H100-SXM",), shapes=shapes, scenarios=("bf16",))
    for f in G.fastest(rows):
        assert f["fastest_ours"].startswith("mtut-cuda-")
        assert f["auto_right_cuda"] and f["auto_right_triton"]


# The auto rules' regret (time of the rule's choice over the faster algorithm's, fwd +
# bwd, by the model) over C_m in 64..1024, d in 49..6272, M = 2, 3, H100: the constants of
# mtut_ops/_validation.py AUTO_RULES are read off G.crossovers(), where the crossovers
# spread over about one step of that grid (~1.2x in d), and a choice one step past its
# crossover costs up to ~1.08x for cuda bf16 and ~1.23x for triton bf16/fp32. cuda float32
# takes one rule for exact fp32 and TF32 (the choice fixes the shape of `saved`, which a
# fake must know when traced), whose crossovers differ: exact fp32's lie at d ~ 110-380
# for C_m <= 256 (the products on SIMT), TF32's at d ~ 590-840. Since the gram backward's
# student products write the gradient itself (the normalization backward folded in), exact
# fp32 gram is also faster at M = 3, C_m = 256, d = 128 (0.206 against 0.258 ms: at these
# sizes both algorithms' products fill 6 of 132 SMs), where no rule of this form picks it
# without picking it where direct is faster: every alpha in 0.05..1.0 and d_direct in
# 0..784 costs exact fp32 at least 1.252x there. (0.45, 128) costs exact fp32 up to 1.252x
# (geometric mean 1.011) and TF32 up to 1.09x (M = 3, C_m = 832, d = 1024; geometric mean
# 1.005). The CPU's FLOP rule there would cost up to 1.9x (cuda fp32) .. 2.3x (cuda bf16).
# triton TF32's worst point, M = 2, C_m = 1024, d = 1024 (gram 2.05 ms, direct 1.43 ms: the
# rule picks gram by a hair), was 1.39x; since the coefficient kernel has 64-wide tiles only
# (triton 3.6 spilled in its 128-wide ones) it is 1.43x, and every alpha in 0.05..1.0 and
# d_direct in 0..2000 costs TF32 or exact fp32 at least that much.
AUTO_REGRET = {("cuda", "fp32"): 1.26, ("cuda", "tf32"): 1.25, ("cuda", "bf16"): 1.1,
               ("triton", "fp32"): 1.25, ("triton", "bf16"): 1.25, ("triton", "tf32"): 1.45}


@pytest.mark.parametrize("backend, scen", list(AUTO_REGRET))
def test_gpu_auto_rule_follows_the_model_crossovers(backend, scen):
    g = G.GPUS["H100-SXM"]
    worst = (1.0, None)
    for M in (2, 3):
        for c in (64, 128, 256, 512, 832, 1024):
            for d in (49, 128, 256, 392, 512, 784, 1024, 1568, 2048, 3136, 6272):
                p = Problem(6, (c,) * M, d)
                t = {a: G.plan(f"mtut-{backend}-{a}", p, scen, g).times(g)[1] for a in ("direct", "gram")}
                regret = t[G.resolve_auto(p, backend, scen)] / min(t.values())
                worst = max(worst, (regret, (M, c, d)), key=lambda w: w[0])
    assert worst[0] <= AUTO_REGRET[(backend, scen)], worst
