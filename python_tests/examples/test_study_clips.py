"""Clip-level analysis of the paired study on toy per-clip gains worked out by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from examples.study.clips import (
    clip_bootstrap,
    clip_counts,
    clip_level,
    crossed_bootstrap,
    crossed_means,
    worst_case_matrix,
)

# 2 seeds x 4 clips: clip means over the seeds 1, 0.5, 0, -0.5 (mean 0.25)
D = np.array([[1, 0, 0, -1], [1, 1, 0, 0]])


def _exact_quantile(sorted_values: np.ndarray, p: float) -> float:  # inverted CDF
    return sorted_values[min(len(sorted_values) - 1, math.ceil(p * len(sorted_values)) - 1)]


def test_clip_bootstrap_against_its_exact_distribution():
    m = np.array([1.0, 0.5, 0.0, -0.5])
    # by hand: deviations from 0.25 are 0.75, 0.25, -0.25, -0.75; population variance
    # (0.5625 + 0.0625 + 0.0625 + 0.5625) / 4 = 0.3125; the bootstrap SE of a mean of 4 is
    # sqrt(0.3125 / 4) = 0.279508
    r = clip_bootstrap(D, resamples=40_000, seed=3)
    assert r["mean"] == 0.25 and r["se"] == pytest.approx(0.279508, abs=1e-6)
    assert r["mde"] == pytest.approx((1.645 + 0.842) * 0.279508, abs=1e-3)
    exact = np.sort([m[list(ix)].mean() for ix in itertools.product(range(4), repeat=4)])
    assert exact.std() == pytest.approx(0.279508, abs=1e-6)
    assert _exact_quantile(exact, 0.015) <= r["low"] <= _exact_quantile(exact, 0.035)
    assert _exact_quantile(exact, 0.965) <= r["high"] <= _exact_quantile(exact, 0.985)


def test_crossed_bootstrap_against_its_exact_distribution():
    d = np.array([[1, 0, -1], [1, 1, 0]])
    # every one of the 2^2 seed draws x 3^3 clip draws is equally likely
    exact = np.sort(
        [
            d[np.ix_(s, c)].mean()
            for s in itertools.product(range(2), repeat=2)
            for c in itertools.product(range(3), repeat=3)
        ]
    )
    means = crossed_means(d, 40_000, seed=5)
    assert means.mean() == pytest.approx(exact.mean(), abs=3e-3) and exact.mean() == pytest.approx(1 / 3)
    assert means.std() == pytest.approx(exact.std(), rel=0.02)
    r = crossed_bootstrap(d, resamples=40_000, seed=5)
    assert _exact_quantile(exact, 0.015) <= r["low"] <= _exact_quantile(exact, 0.035)
    assert _exact_quantile(exact, 0.965) <= r["high"] <= _exact_quantile(exact, 0.985)
    assert r["mde"] == pytest.approx((1.645 + 0.842) * r["se"], abs=1e-3 * r["se"])


def test_crossed_bootstrap_reduces_to_one_way_when_one_source_has_no_spread():
    # every seed the same: resampling seeds changes nothing, only the clips count
    same_seeds = np.array([[1, 0, 0, -1]] * 3)
    assert np.allclose(crossed_means(same_seeds, 2000, 1).std(), clip_bootstrap(same_seeds)["se"], rtol=0.05)
    # every clip the same within a seed: a seed bootstrap of the seeds' gains 1, 0, 0, -1,
    # whose SE is sqrt(0.5 / 4) (population variance 0.5)
    same_clips = np.repeat(np.array([[1], [0], [0], [-1]]), 5, axis=1)
    assert crossed_means(same_clips, 20_000, 1).std() == pytest.approx(math.sqrt(0.5 / 4), rel=0.02)
    assert clip_bootstrap(same_clips)["se"] == 0  # the clip bootstrap sees none of it


def test_counts_per_seed_and_across_seeds():
    c = clip_counts(D)
    assert c["fixed_per_seed"] == [1, 2] and c["broken_per_seed"] == [1, 0]
    assert (
        c["clips_changed_in_some_seed"],
        c["clips_fixed_in_some_seed"],
        c["clips_broken_in_some_seed"],
        c["clips_fixed_and_broken"],
    ) == (3, 2, 1, 0)
    assert clip_counts([[1, -1], [-1, 0]])["clips_fixed_and_broken"] == 1
    full = clip_level(D, resamples=500)
    assert (full["seeds"], full["clips"], full["mean"]) == (2, 4, 0.25)
    assert full["clip_bootstrap"]["resamples"] == full["crossed_bootstrap"]["resamples"] == 500


def test_worst_case_piles_the_changes_onto_the_same_clips():
    # nets +1, -1, +1 clips; 3, 3, 1 changed: seed 0 fixes 2 and breaks 1, seed 1 fixes 1
    # and breaks 2, seed 2 fixes 1; net 0 with 3 changed cannot be (parity): 4, 2 + 2
    w = worst_case_matrix([1, -1, 1, 0], [3, 3, 1, 3], 5)
    assert w.tolist() == [[1, 1, 0, 0, -1], [1, 0, 0, -1, -1], [1, 0, 0, 0, 0], [1, 1, 0, -1, -1]]
    assert w.sum(axis=1).tolist() == [1, -1, 1, 0]
    # the same fixed / broken counts on different clips in every seed: a narrower interval
    spread = np.zeros((4, 20), dtype=int)
    for s, (fixed, broken) in enumerate([((0, 1), (2,)), ((3,), (4, 5)), ((6,), ()), ((7, 8), (9, 10))]):
        spread[s, list(fixed)], spread[s, list(broken)] = 1, -1
    worst = worst_case_matrix([1, -1, 1, 0], [3, 3, 1, 3], 20)
    assert (np.abs(worst).sum(axis=1) == np.abs(spread).sum(axis=1)).all()
    assert clip_bootstrap(worst)["se"] > 1.5 * clip_bootstrap(spread)["se"]
    with pytest.raises(ValueError, match="do not fit"):
        worst_case_matrix([1], [9], 5)
    with pytest.raises(ValueError, match="one value per seed"):
        worst_case_matrix([1, 2], [3], 5)


def test_bad_input_names_what_was_expected():
    with pytest.raises(ValueError, match=r"\[seeds, clips\] matrix"):
        clip_level([1, 0, -1])
    with pytest.raises(ValueError, match="-1 \\(broken\\), 0 \\(unchanged\\) or \\+1"):
        clip_level([[2, 0]])
