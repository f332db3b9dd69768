"""Work models of every implementation the benchmarks run: multiply-adds x 2 (FLOPs) of the
forward and the backward, counted from the code (bench/baselines.py, csrc/cpu/ssa_cpu.cpp).

Used by bench_ssa (achieved GFLOP/s, and the "too much work to run here" rule) and by
gpu_model (which adds the CUDA and Triton kernels' own counts).

The backward of the mtut ops skips work where the weight of a pair is exactly zero: the
focal weight rho_mn[b] = exp(beta max(0, l_m - l_n)) - 1 is zero unless network m is worse
than network n on sample b, so ``active[b, m, n]`` (m worse than n) says which ordered
pairs carry gradient. For M = 2 that is one modality per sample (usually).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

# the cpu direct algorithm's strips (csrc/cpu/ssa_cpu.cpp: kTile, kStrip)
CPU_TILE = 256


@dataclass(frozen=True)
class Problem:
    N: int
    channels: tuple
    d: int

    @property
    def C(self) -> int:
        return sum(self.channels)

    @property
    def M(self) -> int:
        return len(self.channels)


def active_pairs(ce: torch.Tensor) -> torch.Tensor:
    """[N, M, M] bool: ordered pair (m, n) has a non-zero focal weight on sample b (ce [M, N])."""
    ce = ce.detach().double().cpu()
    return ce.t()[:, :, None] > ce.t()[:, None, :]


def typical_active(N: int, M: int) -> torch.Tensor:
    """The pattern of distinct per-sample losses: modality 0 worst, M - 1 best on every sample
    (any strict order gives the same counts): (m, n) active iff m < n."""
    a = torch.zeros(N, M, M, dtype=torch.bool)
    for m in range(M):
        a[:, m, m + 1 :] = True
    return a


def _direct_strips(d: int, tile: int = CPU_TILE) -> tuple:
    """(T, T_diag): entries of the upper strips of d x d that the cpu direct algorithm forms
    (rows i0..i0+ti, columns i0..d), and those of its diagonal tiles (sum ti^2)."""
    T = T_diag = 0
    for i0 in range(0, d, tile):
        ti = min(tile, d - i0)
        T += ti * (d - i0)
        T_diag += ti * ti
    return T, T_diag


def flops(p: Problem, kind: str, active: Optional[torch.Tensor] = None) -> tuple:
    """(forward, backward) FLOPs of one implementation kind on problem p.

    kinds: "naive" (mmpose, mtut-reference: every K_m in full, autograd through bmm),
    "expert" (one C x C x d GEMM each way), "gram-pairs" (the weaker eager Gram variant),
    "cpu-direct", "cpu-gram" (the mtut cpu kernels; their backward depends on ``active``,
    default: the typical pattern)."""
    N, d, C, M, ch = p.N, p.d, p.C, p.M, p.channels
    if kind == "naive":  # K_m = Xh^T Xh per modality; backward: both bmm operands
        return 2.0 * N * d * d * C, 4.0 * N * d * d * C
    if kind == "expert":  # H = X X^T over the stacked rows; backward: dH @ X
        return 2.0 * N * d * C * C, 2.0 * N * d * C * C
    if kind == "gram-pairs":  # three bmms per ordered pair; backward: 2 (G_mm) + 1 (G_mn)
        f = b = 0.0
        for m in range(M):
            for n in range(M):
                if m != n:
                    f += 2.0 * N * d * (ch[m] ** 2 + ch[m] * ch[n] + ch[n] ** 2)
                    b += 2.0 * N * d * (2 * ch[m] ** 2 + ch[m] * ch[n])
        return f, b
    act = typical_active(N, M) if active is None else active
    if kind == "cpu-gram":
        fwd = 2.0 * N * d * sum(ch[m] * ch[n] for m in range(M) for n in range(m, M))
        bwd = 0.0
        for b in range(N):
            for m in range(M):
                partners = [n for n in range(M) if n != m and bool(act[b, m, n])]
                if partners:  # coef_mm = 4 a_m and coef_mn = -4 w_mn: one applied block each
                    bwd += 2.0 * d * ch[m] * (ch[m] + sum(ch[n] for n in partners))
        return fwd, bwd
    if kind == "cpu-direct":
        T, T_diag = _direct_strips(d)
        fwd = 2.0 * N * C * T
        bwd = 0.0
        for b in range(N):
            rows = [m for m in range(M) if any(bool(act[b, m, n]) for n in range(M) if n != m)]
            need_k = set(rows) | {n for m in rows for n in range(M) if n != m and bool(act[b, m, n])}
            bwd += sum(2.0 * ch[k] * T for k in need_k)  # the K strips
            bwd += sum(2.0 * ch[m] * (2 * T - T_diag) for m in rows)  # X_I E and X_J E^T
        return fwd, bwd
    raise ValueError(f"unknown kind {kind!r}")


def naive_bytes(p: Problem, elem: int) -> int:
    """A lower bound on what the mmpose code holds at once: every K_m and one difference."""
    return (p.M + 2) * p.N * p.d * p.d * elem
