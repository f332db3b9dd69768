"""The paired study's statistics (scipy.stats) on toy inputs worked out by hand: the paired
t-test, the bootstrap, the minimum detectable effect."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from examples.study.stats import (
    bootstrap_ci,
    bootstrap_means,
    min_detectable_effect,
    paired_t_test,
    summarize_gains,
)


def test_paired_t_test_on_a_toy_input_against_a_hand_computation():
    gains = [0.02, 0.05, -0.01, 0.04, 0.03]
    # mean 0.026; deviations -0.006, 0.024, -0.036, 0.014, 0.004; sum of squares 2.12e-3
    sd = math.sqrt(2.12e-3 / 4)
    se = sd / math.sqrt(5)
    t = 0.026 / se
    r = paired_t_test(gains)
    assert (r.n, r.df) == (5, 4)
    assert r.mean == pytest.approx(0.026, abs=1e-15) and r.sd == pytest.approx(sd, rel=1e-12)
    assert r.t == pytest.approx(t, rel=1e-12) and t == pytest.approx(2.52534, abs=1e-5)
    # t lies between the table's one-sided 5% (2.132) and 2.5% (2.776) points for df 4
    assert 0.025 < r.p_one_sided < 0.05
    # and the p-value is the df-4 tail at t: 1 - F(t), F by the closed form for even df = 4,
    # F(t) = 1/2 + (3/4) s (1 - s^2 / 3) with s = t / sqrt(4 + t^2)
    s = t / math.sqrt(4 + t * t)
    assert r.p_one_sided == pytest.approx(1 - (0.5 + 0.75 * s * (1 - s * s / 3)), rel=1e-10)
    half = 2.776445 * se  # t_{0.975, 4}
    assert r.ci_low == pytest.approx(0.026 - half, abs=1e-6) and r.ci_high == pytest.approx(0.026 + half, abs=1e-6)


def test_paired_t_test_edge_cases():
    assert math.isnan(paired_t_test([0.1]).p_one_sided)
    assert paired_t_test([0.02, 0.02, 0.02]).p_one_sided == 0.0  # no spread, all up
    # equal gains whose float mean is off by an ulp (std 1.7e-17 before the guard): no spread
    # either, not t ~ 1e16
    flat = paired_t_test([0.1, 0.1, 0.1])
    assert flat.sd == 0 and flat.t == math.inf and flat.ci_low == flat.ci_high == flat.mean
    assert paired_t_test([-0.02, -0.02]).p_one_sided == 1.0
    assert math.isnan(paired_t_test([0.0, 0.0, 0.0]).p_one_sided)
    symmetric = paired_t_test([-0.03, 0.03, -0.01, 0.01])
    assert symmetric.t == 0 and symmetric.p_one_sided == pytest.approx(0.5, abs=1e-15)


def test_bootstrap_matches_the_exact_bootstrap_distribution():
    # With 4 values every one of the 4^4 resamples is equally likely: the exact
    # distribution of the resampled mean, against the seeded Monte Carlo one.
    gains = np.array([-0.04, 0.01, 0.03, 0.12])
    exact = np.sort([gains[list(ix)].mean() for ix in itertools.product(range(4), repeat=4)])
    means = bootstrap_means(gains, 40_000, seed=7)
    assert means.mean() == pytest.approx(gains.mean(), abs=3e-4)
    assert means.std() == pytest.approx(exact.std(), rel=0.02)
    lo, hi = bootstrap_ci(gains, 40_000, seed=7)

    def q(p):  # exact quantile (inverted CDF)
        return exact[min(len(exact) - 1, math.ceil(p * len(exact)) - 1)]

    assert q(0.015) <= lo <= q(0.035)
    assert q(0.965) <= hi <= q(0.985)
    # seeded: the same seed gives the same interval, another seed (slightly) another
    spread = np.random.default_rng(0).normal(0.01, 0.03, 12)
    assert bootstrap_ci(spread, 2000, seed=3) == bootstrap_ci(spread, 2000, seed=3)
    assert bootstrap_ci(spread, 2000, seed=3) != bootstrap_ci(spread, 2000, seed=4)


def test_summary_counts_and_interval_contain_the_mean():
    out = summarize_gains([0.01, -0.02, 0.0, 0.05, 0.03], resamples=5000, seed=1)
    assert (out["positive"], out["zero"], out["negative"]) == (3, 1, 1)
    assert out["bootstrap_low"] < out["mean"] < out["bootstrap_high"]
    assert out["resamples"] == 5000 and out["bootstrap_seed"] == 1


def test_minimum_detectable_effect_against_table_quantiles():
    # published tables (3 decimals there, hence abs 1e-5 on se 0.01): normal z_0.95 = 1.645,
    # z_0.80 = 0.842; Student's t with 9 df 1.833 and 0.883, with 4 df 2.132 and 0.941
    assert min_detectable_effect(0.01) == pytest.approx((1.645 + 0.842) * 0.01, abs=1e-5)
    assert min_detectable_effect(0.01, df=9) == pytest.approx((1.833 + 0.883) * 0.01, abs=1e-5)
    assert min_detectable_effect(0.01, df=9, power=0.5) == pytest.approx(1.833 * 0.01, abs=1e-5)
    out = summarize_gains([0.02, 0.05, -0.01, 0.04, 0.03], resamples=100)
    se = math.sqrt(2.12e-3 / 4) / math.sqrt(5)  # the toy test above
    assert out["mde"] == pytest.approx((2.132 + 0.941) * se, abs=1e-3 * se)
