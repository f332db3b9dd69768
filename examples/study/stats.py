"""The statistics of a paired study, on ``scipy.stats``.

* :func:`paired_t_test`: the one-sided paired t-test of ``mean(gain) > 0``
  (``scipy.stats.ttest_1samp`` of the per-pair differences against 0, which is
  ``ttest_rel`` of the two arms) and the two-sided t interval of the mean (``t.ppf``).
* :func:`bootstrap_ci`: the percentile bootstrap interval of the mean gain
  (``scipy.stats.bootstrap``), resampling the pairs (seeds) with replacement from
  ``numpy.random.default_rng(seed)`` with a stated number of resamples.
* :func:`min_detectable_effect`: the smallest true gain a one-sided test at ``alpha``
  detects with probability ``power``, from a standard error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as st


@dataclass(frozen=True)
class PairedTest:
    """A one-sided paired t-test of ``mean > 0`` over ``n`` paired differences.

    ``p_one_sided`` is ``P(T_{n-1} >= t)``: small when the mean gain is reliably positive.
    ``ci_low``/``ci_high``: the two-sided ``level`` t interval of the mean. With ``n < 2``
    everything but ``n`` and ``mean`` is NaN; with all differences equal (``sd = 0``) ``t``
    is +-inf (p 0 or 1), or NaN when they are all 0.
    """

    n: int
    mean: float
    sd: float
    se: float
    t: float
    df: int
    p_one_sided: float
    ci_low: float
    ci_high: float
    level: float

    def to_dict(self) -> dict:
        return asdict(self)


def paired_t_test(diffs: Sequence[float], level: float = 0.95) -> PairedTest:
    """One-sided paired t-test of ``mean(diffs) > 0`` (``diffs``: one per pair, e.g. per seed)."""
    x = np.asarray(diffs, dtype=np.float64)
    n = int(x.size)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        nan = math.nan
        return PairedTest(n, mean, nan, nan, nan, max(n - 1, 0), nan, nan, nan, level)
    df = n - 1
    sd = float(x.std(ddof=1))
    if sd <= 16 * np.finfo(np.float64).eps * float(np.abs(x).max()):
        # equal differences whose float mean is off by an ulp (numpy's mean of [0.1] * 3 is
        # not 0.1, so std gives 1.7e-17): sd = 0, not a residue that would make t ~1e16
        t = math.copysign(math.inf, mean) if mean != 0 else math.nan
        p = float(st.t.sf(t, df)) if not math.isnan(t) else math.nan
        return PairedTest(n, mean, 0.0, 0.0, t, df, p, mean, mean, level)
    se = sd / math.sqrt(n)
    res = st.ttest_1samp(x, 0.0, alternative="greater")
    half = float(st.t.ppf(0.5 + level / 2.0, df)) * se
    return PairedTest(n, mean, sd, se, float(res.statistic), df, float(res.pvalue), mean - half, mean + half, level)


def _bootstrap(x: np.ndarray, resamples: int, seed: int, level: float):
    if x.size == 0:
        raise ValueError("bootstrap of no values")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    # percentile: the interval the study registered; one batch draws
    # rng.integers(0, n, (resamples, n)), the resample indices of the numpy-only version
    return st.bootstrap(
        (x,),
        np.mean,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
        vectorized=True,
    )


def bootstrap_means(diffs: Sequence[float], resamples: int, seed: int) -> np.ndarray:
    """The means of ``resamples`` resamples (with replacement, same size) of ``diffs``:
    ``scipy.stats.bootstrap``'s bootstrap distribution from ``default_rng(seed)``."""
    x = np.asarray(diffs, dtype=np.float64)
    return _bootstrap(x, resamples, seed, 0.95).bootstrap_distribution


def bootstrap_ci(
    diffs: Sequence[float], resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """The percentile bootstrap ``level`` interval of the mean of ``diffs`` (a single
    value has the degenerate interval ``(value, value)``)."""
    x = np.asarray(diffs, dtype=np.float64)
    if x.size == 1 and resamples >= 1:  # scipy refuses one observation; every resample is that value
        return float(x[0]), float(x[0])
    ci = _bootstrap(x, resamples, seed, level).confidence_interval
    return float(ci.low), float(ci.high)


def min_detectable_effect(se: float, df: float = math.inf, alpha: float = 0.05, power: float = 0.8) -> float:
    """``(q_{1-alpha} + q_{power}) * se``: the true gain a one-sided test at ``alpha`` detects
    with probability ``power``; ``q`` are Student's t quantiles with ``df`` degrees of
    freedom (the normal's for ``df = inf``, as for a bootstrap standard error)."""
    dist = st.norm if math.isinf(df) else st.t(df)
    return float((dist.ppf(1.0 - alpha) + dist.ppf(power)) * se)


def summarize_gains(diffs: Sequence[float], *, resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """The paired t-test, the bootstrap interval, the minimum detectable effect (one-sided
    5%, power 0.8, from the t test's standard error) and simple counts of one set of gains."""
    x = np.asarray(diffs, dtype=np.float64)
    out = paired_t_test(x, level).to_dict()
    if x.size:
        out["bootstrap_low"], out["bootstrap_high"] = bootstrap_ci(x, resamples, seed, level)
    else:
        out["bootstrap_low"] = out["bootstrap_high"] = math.nan
    out["mde"] = min_detectable_effect(out["se"], out["df"]) if out["df"] > 0 else math.nan
    out |= {
        "resamples": resamples,
        "bootstrap_seed": seed,
        "positive": int((x > 0).sum()),
        "zero": int((x == 0).sum()),
        "negative": int((x < 0).sum()),
    }
    return out
