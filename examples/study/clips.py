"""Clip-level analysis of a paired study: the test clips as a sample too.

The seed-level paired test (:mod:`examples.study.stats`) treats the one fixed set of
test clips as the population: its interval covers the seeds' training variation only.
Here the per-clip outcome of every seed is kept: ``D[s, c] = correct_arm - correct_base``
in {-1, 0, +1} (seed ``s``, clip ``c``), whose mean is the mean gain. Two intervals:

* **clip bootstrap**: resample the clips with replacement, all seeds kept (the mean over
  seeds of each clip's outcome, ``scipy.stats.bootstrap`` over clips): the clip-sampling
  variation alone, for these seeds.
* **crossed clip x seed bootstrap**: resample seeds and clips independently, the mean of
  ``D[seeds*, clips*]``: both sources at once. (Two-way resampling has no scipy routine;
  it is the weighted mean ``w_s^T D w_c / (S C)`` with multinomial counts ``w``. It is
  mildly conservative, Owen 2007, "the pigeonhole bootstrap".)

Each comes with the bootstrap standard error and the minimum detectable effect (one-sided
5%, power 0.8, normal quantiles). Where only the per-seed net gains are known (no per-clip
outputs), :func:`worst_case_matrix` builds the per-clip pattern that makes the clip-level
interval widest for assumed numbers of changed clips per seed: the same clips change in
every seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .stats import bootstrap_ci, min_detectable_effect


def _check(D) -> np.ndarray:
    D = np.asarray(D)
    if D.ndim != 2 or D.shape[0] < 1 or D.shape[1] < 1:
        raise ValueError(f"D: expected a [seeds, clips] matrix of per-clip gains, got shape {D.shape}")
    if not np.isin(D, (-1, 0, 1)).all():
        raise ValueError("D: per-clip gains must be -1 (broken), 0 (unchanged) or +1 (fixed)")
    return D.astype(np.float64)


def _interval(means: np.ndarray, level: float) -> dict:
    lo, hi = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    se = float(means.std(ddof=1)) if means.size > 1 else math.nan
    return {"low": float(lo), "high": float(hi), "se": se, "mde": min_detectable_effect(se)}


def clip_bootstrap(D, resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """The percentile interval of the mean gain resampling clips (seeds kept), its
    bootstrap standard error and minimum detectable effect."""
    D = _check(D)
    per_clip = D.mean(axis=0)
    lo, hi = bootstrap_ci(per_clip, resamples, seed, level)
    # the bootstrap SE of a mean of n i.i.d. resampled values is exactly sd_pop / sqrt(n)
    se = float(per_clip.std(ddof=0) / math.sqrt(per_clip.size))
    return {
        "mean": float(D.mean()),
        "low": lo,
        "high": hi,
        "se": se,
        "mde": min_detectable_effect(se),
        "resamples": resamples,
        "bootstrap_seed": seed,
        "level": level,
    }


def crossed_means(D, resamples: int, seed: int) -> np.ndarray:
    """The means of ``resamples`` crossed resamples (seeds and clips drawn independently
    with replacement, ``default_rng(seed)``: first the seeds' indices, then the clips')."""
    D = _check(D)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    S, C = D.shape
    rng = np.random.default_rng(seed)
    rows = np.arange(resamples)[:, None]
    ws = np.zeros((resamples, S))
    np.add.at(ws, (rows, rng.integers(0, S, (resamples, S))), 1.0)
    wc = np.zeros((resamples, C))
    np.add.at(wc, (rows, rng.integers(0, C, (resamples, C))), 1.0)
    return np.einsum("rc,rc->r", ws @ D, wc) / (S * C)


def crossed_bootstrap(D, resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """The percentile interval of the mean gain under the crossed clip x seed bootstrap,
    its bootstrap standard error and minimum detectable effect."""
    means = crossed_means(D, resamples, seed)
    return {
        "mean": float(_check(D).mean()),
        **_interval(means, level),
        "resamples": resamples,
        "bootstrap_seed": seed,
        "level": level,
    }


def clip_counts(D) -> dict:
    """Fixed / broken clips per seed and across seeds."""
    D = _check(D)
    return {
        "fixed_per_seed": [int(v) for v in (D > 0).sum(axis=1)],
        "broken_per_seed": [int(v) for v in (D < 0).sum(axis=1)],
        "clips_changed_in_some_seed": int((D != 0).any(axis=0).sum()),
        "clips_fixed_in_some_seed": int((D > 0).any(axis=0).sum()),
        "clips_broken_in_some_seed": int((D < 0).any(axis=0).sum()),
        "clips_fixed_and_broken": int(((D > 0).any(axis=0) & (D < 0).any(axis=0)).sum()),
    }


def clip_level(D, resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """Counts, the clip bootstrap and the crossed bootstrap of one arm's ``D``."""
    D = _check(D)
    return {
        "seeds": D.shape[0],
        "clips": D.shape[1],
        "mean": float(D.mean()),
        **clip_counts(D),
        "clip_bootstrap": clip_bootstrap(D, resamples, seed, level),
        "crossed_bootstrap": crossed_bootstrap(D, resamples, seed, level),
    }


def worst_case_matrix(net: Sequence[int], changed: Sequence[int], clips: int) -> np.ndarray:
    """A ``[seeds, clips]`` per-clip gain matrix with seed ``s``'s net gain ``net[s]`` (in
    clips) and ``changed[s]`` changed clips (raised by one where the parity of ``net``
    asks), in which the same clips change in every seed: seed ``s`` fixes clips ``0 ..
    f_s - 1`` and breaks clips ``C - 1`` down to ``C - b_s``. Piling the changes onto the
    fewest clips maximizes the spread of the per-clip means, hence the clip-level interval."""
    if len(net) != len(changed):
        raise ValueError(f"net and changed: one value per seed each, got {len(net)} and {len(changed)}")
    D = np.zeros((len(net), clips), dtype=np.int8)
    for s, (n, k) in enumerate(zip(net, changed)):
        k = max(int(k), abs(int(n)))
        k += (k - int(n)) % 2  # fixed + broken = k and fixed - broken = n need k = n (mod 2)
        f, b = (k + n) // 2, (k - n) // 2
        if f + b > clips:
            raise ValueError(f"seed {s}: {f} fixed + {b} broken clips do not fit in {clips} clips")
        D[s, :f] = 1
        if b:
            D[s, clips - b :] = -1
    return D
