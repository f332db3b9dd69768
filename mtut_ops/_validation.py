"""Input checks and the algorithm cost model, shared by every Python-side path.

The C++ kernels make the same checks with the same messages (csrc/ssa_common.cpp) for
callers of ``torch.ops.mtut.*``; these run in the Python API (every backend) and in the
fake implementations, so that errors read the same eagerly and under ``torch.compile``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

DISTANCES = ("rms", "fro2")
ALGOS = ("auto", "direct", "gram")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class FeatInfo:
    N: int
    M: int
    d: int
    channels: tuple
    dtype: torch.dtype
    device: torch.device

    @property
    def compute_dtype(self) -> torch.dtype:
        return compute_dtype(self.dtype)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float16, bfloat16 and float32 are computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _prod(sizes) -> int:
    d = 1
    for s in sizes:
        d = d * s
    return d


def check_feats(feats: Sequence[torch.Tensor]) -> FeatInfo:
    if isinstance(feats, torch.Tensor) or not isinstance(feats, (list, tuple)):
        raise TypeError(
            f"mtut: feats must be a list or tuple of M >= 2 feature maps [N, C_m, *S], got {type(feats).__name__}"
        )
    if len(feats) < 2:
        raise ValueError(f"mtut: feats must hold at least 2 modality feature maps [N, C_m, *S], got {len(feats)}")
    first = None
    channels = []
    for i, f in enumerate(feats):
        if not isinstance(f, torch.Tensor):
            raise TypeError(f"mtut: feats[{i}] must be a torch.Tensor, got {type(f).__name__}")
        if f.dtype not in _FLOATS:
            raise TypeError(
                f"mtut: feats[{i}] must be a floating-point tensor (float16, bfloat16, float32 or float64), got {f.dtype}"
            )
        if f.dim() < 2:
            raise ValueError(f"mtut: feats[{i}] must have shape [N, C, *S] (at least 2 dims), got shape {list(f.shape)}")
        if f.numel() == 0:
            raise ValueError(
                f"mtut: feats[{i}] is empty (shape {list(f.shape)}); N, C and every spatiotemporal dim must be >= 1"
            )
        d = _prod(f.shape[2:])
        if first is None:
            first = FeatInfo(f.shape[0], len(feats), d, (), f.dtype, f.device)
        else:
            if f.device != first.device:
                raise ValueError(
                    f"mtut: feats[{i}] is on {f.device} but feats[0] is on {first.device}; "
                    "all feature maps must be on one device"
                )
            if f.dtype != first.dtype:
                raise TypeError(
                    f"mtut: feats[{i}] has dtype {f.dtype} but feats[0] has {first.dtype}; "
                    "all feature maps must share one dtype"
                )
            if f.shape[0] != first.N:
                raise ValueError(f"mtut: feats[{i}] has batch size N = {f.shape[0]} but feats[0] has N = {first.N}")
            if d != first.d:
                raise ValueError(
                    f"mtut: feats[{i}] has d = prod(spatiotemporal dims) = {d} (shape {list(f.shape)}) "
                    f"but feats[0] has d = {first.d}"
                )
        channels.append(f.shape[1])
    return FeatInfo(first.N, first.M, first.d, tuple(channels), first.dtype, first.device)


def check_ce(ce: torch.Tensor, info: FeatInfo) -> None:
    if not isinstance(ce, torch.Tensor):
        raise TypeError(f"mtut: ce must be a tensor [M, N] of per-sample losses, got {type(ce).__name__}")
    if not ce.is_floating_point():
        raise TypeError(f"mtut: ce must be a floating-point tensor of per-sample losses, got {ce.dtype}")
    if ce.dim() != 2 or ce.shape[0] != info.M or ce.shape[1] != info.N:
        raise ValueError(
            f"mtut: ce must have shape [M, N] = [{info.M}, {info.N}] (one per-sample loss per modality and sample), "
            f"got shape {list(ce.shape)}"
        )
    if ce.device != info.device:
        raise ValueError(f"mtut: ce is on {ce.device} but feats are on {info.device}")


def check_eps(eps: float) -> None:
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"mtut: eps must be a finite number >= 0, got {eps}")


def check_loss_args(beta: float, lambda_: float, pair_cap: Optional[float]) -> None:
    if not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"mtut: beta must be a finite number >= 0, got {beta}")
    if not isinstance(lambda_, (int, float)) or not math.isfinite(lambda_) or lambda_ < 0:
        raise ValueError(f"mtut: lambda_ must be a finite number >= 0, got {lambda_}")
    if pair_cap is not None and (not isinstance(pair_cap, (int, float)) or not pair_cap >= 0):
        raise ValueError(f"mtut: pair_cap must be None or a number >= 0, got {pair_cap}")


def check_distance(distance: str) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"mtut: distance must be 'rms' or 'fro2', got {distance!r}")


def resolve_algo(algo: str, d: int, channels: Sequence[int]) -> str:
    """'direct' or 'gram'; 'auto' by the cost model of csrc/ssa_common.cpp:resolve_algo.

    Per sample, with C = sum(channels) and P = M(M-1)/2 pairs, the direct algorithm costs
    about d^2 (C + 2P) and the Gram algorithm about d C^2 (forward and backward alike),
    so direct is chosen while d (C + 2P) <= C^2, i.e. roughly while d <= C.
    """
    if algo in ("direct", "gram"):
        return algo
    if algo != "auto":
        raise ValueError(f"mtut: algo must be 'auto', 'direct' or 'gram', got {algo!r}")
    C = sum(int(c) for c in channels)
    M = len(channels)
    return "direct" if int(d) * (C + M * (M - 1)) <= C * C else "gram"
