"""The statistics of a paired study, with numpy and the standard library only.

* :func:`student_t_cdf` / :func:`student_t_sf` / :func:`student_t_ppf`: Student's t
  distribution through the regularized incomplete beta function
  ``P(T <= t) = 1 - I_x(df/2, 1/2) / 2`` for ``t >= 0``, ``x = df / (df + t^2)``, evaluated
  by its continued fraction (modified Lentz; Press et al., *Numerical Recipes*, 6.4), to
  about 1e-12 absolute. The tests check it against published table values, the closed
  forms for 1 and 2 degrees of freedom, and a numerical integration of the density.
* :func:`paired_t_test`: the one-sided paired t-test of ``mean(gain) > 0`` and the
  two-sided t interval of the mean.
* :func:`bootstrap_ci`: the percentile bootstrap interval of the mean gain, resampling
  the pairs (seeds) with replacement, from a seeded generator with a stated number of
  resamples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

_TINY = 1e-300


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)`` for ``a, b > 0``, ``0 <= x <= 1``."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a, b > 0, got {a}, {b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_sf(t: float, df: float) -> float:
    """``P(T > t)`` for Student's t with ``df > 0`` degrees of freedom."""
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return tail if t >= 0 else 1.0 - tail


def student_t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df`` degrees of freedom."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t) or t < 0:
        return student_t_sf(-t, df)
    return 1.0 - student_t_sf(t, df)


def student_t_ppf(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t (bisection on :func:`student_t_cdf` to ~1e-12)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if q < 0.5:
        return -student_t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < q:
        lo, hi = hi, hi * 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


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
    sd = float(x.std(ddof=1))
    if sd <= 16 * np.finfo(np.float64).eps * float(np.abs(x).max()):
        # equal differences whose float mean is off by an ulp (numpy's mean of [0.1] * 3 is
        # not 0.1, so std gives 1.7e-17): sd = 0, not a residue that would make t ~1e16
        sd = 0.0
    se = sd / math.sqrt(n)
    df = n - 1
    if se > 0:
        t = mean / se
    else:
        t = math.copysign(math.inf, mean) if mean != 0 else math.nan
    p = student_t_sf(t, df) if not math.isnan(t) else math.nan
    half = student_t_ppf(0.5 + level / 2.0, df) * se
    return PairedTest(n, mean, sd, se, t, df, p, mean - half, mean + half, level)


def bootstrap_means(diffs: Sequence[float], resamples: int, seed: int) -> np.ndarray:
    """The means of ``resamples`` resamples (with replacement, same size) of ``diffs``,
    drawn by ``numpy.random.default_rng(seed).integers(0, n, (resamples, n))``."""
    x = np.asarray(diffs, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap of no values")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    return x[idx].mean(axis=1)


def bootstrap_ci(diffs: Sequence[float], resamples: int = 10_000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap ``level`` interval of the mean of ``diffs``: the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (numpy's default, linear) of
    :func:`bootstrap_means`."""
    means = bootstrap_means(diffs, resamples, seed)
    lo, hi = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def summarize_gains(diffs: Sequence[float], *, resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """The paired t-test, the bootstrap interval and simple counts of one set of gains."""
    x = np.asarray(diffs, dtype=np.float64)
    out = paired_t_test(x, level).to_dict()
    if x.size:
        out["bootstrap_low"], out["bootstrap_high"] = bootstrap_ci(x, resamples, seed, level)
    else:
        out["bootstrap_low"] = out["bootstrap_high"] = math.nan
    out |= {"resamples": resamples, "bootstrap_seed": seed, "positive": int((x > 0).sum()),
            "zero": int((x == 0).sum()), "negative": int((x < 0).sum())}
    return out
