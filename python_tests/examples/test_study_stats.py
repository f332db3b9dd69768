"""The paired study's statistics (numpy only): Student's t, the paired t-test, the bootstrap."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from examples.study.stats import (
    betainc,
    bootstrap_ci,
    bootstrap_means,
    paired_t_test,
    student_t_cdf,
    student_t_ppf,
    student_t_sf,
    summarize_gains,
)

# Critical values t_{q, df} from published tables of Student's t (e.g. NIST/SEMATECH
# e-Handbook of Statistical Methods, table 1.3.6.7.2), 3 decimals there; q = P(T <= t).
TABLE = [(0.95, 1, 6.314), (0.975, 1, 12.706), (0.95, 4, 2.132), (0.975, 4, 2.776), (0.95, 9, 1.833),
         (0.975, 9, 2.262), (0.99, 9, 2.821), (0.95, 19, 1.729), (0.975, 19, 2.093), (0.975, 30, 2.042),
         (0.995, 10, 3.169), (0.999, 5, 5.893)]


@pytest.mark.parametrize("q,df,t", TABLE)
def test_t_quantiles_match_the_published_table(q, df, t):
    assert student_t_ppf(q, df) == pytest.approx(t, abs=6e-4)
    assert student_t_cdf(t, df) == pytest.approx(q, abs=2e-4 * (1 - q) / 0.05 + 1e-5)
    assert student_t_ppf(1 - q, df) == pytest.approx(-t, abs=6e-4)


@pytest.mark.parametrize("t", [-7.5, -1.2, -0.3, 0.0, 0.4, 1.0, 2.5, 12.0, 150.0])
def test_t_cdf_matches_the_closed_forms_for_one_and_two_degrees_of_freedom(t):
    # df = 1 is the Cauchy distribution; df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)
    assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)
    assert student_t_cdf(t, 1) + student_t_sf(t, 1) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("df", [3, 4, 9, 17, 40])
@pytest.mark.parametrize("t", [0.5, 1.7, 2.9])
def test_t_cdf_matches_a_numerical_integral_of_the_density(df, t):
    # An independent route: F(t) - 1/2 is the density's integral over [0, t] (Simpson's rule).
    x = np.linspace(0.0, t, 20_001)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    pdf = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
    h = x[1] - x[0]
    integral = h / 3 * (pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum())
    assert student_t_cdf(t, df) - 0.5 == pytest.approx(integral, rel=1e-11, abs=1e-13)
    assert student_t_sf(t, df) == pytest.approx(0.5 - integral, rel=1e-10)


def test_t_goes_to_the_normal_for_many_degrees_of_freedom():
    assert student_t_ppf(0.975, 10**7) == pytest.approx(1.959964, abs=1e-5)
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-12)  # I_0.4(2,3) = 1 - 0.6^4 - 4*0.4*0.6^3


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
