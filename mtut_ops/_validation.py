"""Input checks and the algorithm cost model: the one Python place for them.

The API (``functional.py``, ``modules.py``), the fake implementations and the triton
ops call these; the C++ kernels make the same checks with the same messages
(``csrc/ssa_common.cpp``) for callers of ``torch.ops.mtut.*``, so errors read the same
eagerly and under ``torch.compile``.

Every check works on symbolic sizes and scalars too (``torch.compile(dynamic=True)``):
a condition on a symbolic value goes through ``torch._check_*``, which raises at once
when the value is concrete and otherwise records a runtime assertion instead of
specializing the shape; nothing here calls ``int()`` on a size.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch

DISTANCES = ("rms", "fro2")
ALGOS = ("auto", "direct", "gram")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SYMBOLIC = (torch.SymInt, torch.SymFloat)


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


def _value_check(cond, message: Callable[[], str]) -> None:
    """ValueError(message()) unless cond. A symbolic cond (torch.compile's dynamic shapes)
    becomes a runtime assertion instead of a guard; its message cannot hold symbolic values."""
    if isinstance(cond, torch.SymBool):
        torch._check_value(cond)
    elif not cond:
        raise ValueError(message())


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
                f"mtut: feats[{i}] must be a floating-point tensor (float16, bfloat16, float32 or float64), "
                f"got {f.dtype}"
            )
        if f.dim() < 2:
            raise ValueError(
                f"mtut: feats[{i}] must have shape [N, C, *S] (at least 2 dims), got shape {list(f.shape)}"
            )
        _value_check(
            f.numel() != 0,
            lambda: (
                f"mtut: feats[{i}] is empty (shape {list(f.shape)}); N, C and every spatiotemporal dim must be >= 1"
            ),
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
            _value_check(
                f.shape[0] == first.N,
                lambda: f"mtut: feats[{i}] has batch size N = {f.shape[0]} but feats[0] has N = {first.N}",
            )
            _value_check(
                d == first.d,
                lambda: (
                    f"mtut: feats[{i}] has d = prod(spatiotemporal dims) = {d} (shape {list(f.shape)}) "
                    f"but feats[0] has d = {first.d}"
                ),
            )
        channels.append(f.shape[1])
    return FeatInfo(first.N, first.M, first.d, tuple(channels), first.dtype, first.device)


def check_ce(ce: torch.Tensor, info: FeatInfo, name: str = "ce_losses") -> None:
    """``name``: the argument as the caller knows it (the API's ce_losses, the ops' ce)."""
    if not isinstance(ce, torch.Tensor):
        raise TypeError(f"mtut: {name} must be a tensor [M, N] of per-sample losses, got {type(ce).__name__}")
    if not ce.is_floating_point():
        raise TypeError(f"mtut: {name} must be a floating-point tensor of per-sample losses, got {ce.dtype}")

    def message():
        return (
            f"mtut: {name} must have shape [M, N] = [{info.M}, {info.N}] (one per-sample loss per modality and "
            f"sample), got shape {list(ce.shape)}"
        )

    if ce.dim() != 2:
        raise ValueError(message())
    _value_check(ce.shape[0] == info.M, message)
    _value_check(ce.shape[1] == info.N, message)
    if ce.device != info.device:
        raise ValueError(f"mtut: {name} is on {ce.device} but feats are on {info.device}")


def check_focal_ce(ce: torch.Tensor, name: str = "ce_losses") -> None:
    """ce of focal_weight: [M, N], M >= 2, N >= 1, floating."""
    message = f"mtut: {name} must have shape [M, N] with M >= 2 modalities and N >= 1 samples, got shape "
    if not isinstance(ce, torch.Tensor):
        raise ValueError(message + type(ce).__name__)
    if ce.dim() != 2:
        raise ValueError(message + str(list(ce.shape)))
    if not ce.is_floating_point():
        raise TypeError(f"mtut: {name} must be a floating-point tensor of per-sample losses, got {ce.dtype}")
    _value_check(ce.shape[0] >= 2, lambda: message + str(list(ce.shape)))
    _value_check(ce.shape[1] >= 1, lambda: message + str(list(ce.shape)))


def warn_single_position(info: FeatInfo) -> None:
    """d = 1 (pooled [N, C] features, or every spatiotemporal dim 1): each channel row
    normalizes to +-1, so K_m is the 1 x 1 matrix [C_m] whatever the features: the loss is
    a constant and sends no gradient. Almost surely features taken after global pooling;
    a warning, not an error, as the loss is defined."""
    if isinstance(info.d, int) and info.d == 1:  # (a symbolic d is not specialized on)
        warnings.warn(
            "mtut: the feature maps have d = 1 position (shape [N, C], or every spatiotemporal dim 1): each "
            "correlation K_m is then [[C_m]] whatever the features, so the SSA loss is a constant and sends them "
            "no gradient. SSA aligns correlations between positions: pass feature maps [N, C, *S] from before "
            "global pooling (e.g. I3D Mixed_5c [N, 1024, 8, 7, 7])",
            UserWarning,
            stacklevel=4,
        )


def check_weight(weight: torch.Tensor, info: FeatInfo) -> None:
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError(f"mtut: weight must be a floating-point tensor, got {getattr(weight, 'dtype', type(weight))}")

    def message():
        return (
            f"mtut: weight must have shape [N, M, M] = [{info.N}, {info.M}, {info.M}], got shape {list(weight.shape)}"
        )

    if weight.dim() != 3:
        raise ValueError(message())
    for have, want in zip(weight.shape, (info.N, info.M, info.M)):
        _value_check(have == want, message)
    if weight.device != info.device:
        raise ValueError(f"mtut: weight is on {weight.device} but feats are on {info.device}")


def check_needs_grad(needs_grad: Sequence[bool], info: FeatInfo) -> None:
    if len(needs_grad) != info.M:
        raise ValueError(f"mtut: needs_grad must hold one flag per modality (M = {info.M}), got {len(needs_grad)}")


def check_students(students: int) -> None:
    """sqdist_backward's promise (csrc/ssa_common.h check_students): 0, or at most this many
    modalities per sample have a weight row that is neither 0 nor NaN."""
    if isinstance(students, bool) or not isinstance(students, int) or students < 0:
        raise ValueError(
            "mtut: students must be >= 0 (0: any number of modalities per sample; k: at most k "
            f"modalities per sample have a non-zero weight row), got {students}"
        )


def _check_number(value, name: str, rule: str) -> None:
    """value >= 0 and finite; for a symbolic value the sign becomes a runtime assertion."""
    if isinstance(value, _SYMBOLIC):
        _value_check(value >= 0, lambda: "")
        return
    # (value == value: not NaN; written without math.isfinite, which torch.compile does not trace)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value == value and 0 <= value < math.inf):
        raise ValueError(f"mtut: {name} must be {rule}, got {value}")


def check_eps(eps: float) -> None:
    _check_number(eps, "eps", "a finite number >= 0")


def check_loss_args(beta: float, lambda_: float, pair_cap: Optional[float]) -> None:
    _check_number(beta, "beta", "a finite number >= 0")
    _check_number(lambda_, "lambda_", "a finite number >= 0")
    if pair_cap is not None:
        if isinstance(pair_cap, _SYMBOLIC):
            _value_check(pair_cap >= 0, lambda: "")
        elif isinstance(pair_cap, bool) or not isinstance(pair_cap, (int, float)) or not pair_cap >= 0:
            raise ValueError(f"mtut: pair_cap must be None or a number >= 0, got {pair_cap}")


def check_distance(distance: str) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"mtut: distance must be 'rms' or 'fro2', got {distance!r}")


def check_algo(algo: str) -> None:
    if algo not in ALGOS:
        raise ValueError(f"mtut: algo must be 'auto', 'direct' or 'gram', got {algo!r}")


def check_loss_inputs(
    feats, ce, beta, lambda_, distance, eps, algo, pair_cap, info: Optional[FeatInfo] = None
) -> FeatInfo:
    """Every argument of ssa_loss (cheap checks only: no kernel runs); ``info``: feats'
    check_feats, where the caller has it."""
    info = check_feats(feats) if info is None else info
    check_ce(ce, info)
    warn_single_position(info)
    check_loss_args(beta, lambda_, pair_cap)
    check_distance(distance)
    check_eps(eps)
    check_algo(algo)
    return info


def _C_constant(name: str):
    """A constant csrc/ssa_common states once, from the loaded mtut_ops._C (None without it:
    then only the reference backend runs, which needs none of them)."""
    lib = sys.modules.get(__package__ + "._C")
    if lib is None:
        return None
    if not hasattr(lib, name):
        raise ImportError(
            f"mtut_ops._C lacks {name}: it was built from older sources; rebuild it "
            "(python setup.py build_ext --inplace, or make build)"
        )
    return getattr(lib, name)


#: algo="auto": direct while d (C + 2P) <= factor C^2, one factor per device
#: (csrc/ssa_common.cpp:auto_factor says why; the CUDA factor is provisional, unmeasured).
#: The triton backend runs GPU kernels (on CPU only under its interpreter): the CUDA factor.
AUTO_FACTORS = {"cpu": _C_constant("AUTO_FACTOR_CPU"), "cuda": _C_constant("AUTO_FACTOR_CUDA")}
AUTO_FACTORS["triton"] = AUTO_FACTORS["cuda"]
#: Each kept Gram block and the cuda backend's norms-and-scales tail start at a multiple of
#: this many entries (csrc/ssa_common.h:kSavedAlign).
SAVED_ALIGN = _C_constant("SAVED_ALIGN")


def resolve_algo(
    algo: str, d: int, channels: Sequence[int], backend: str = "cpu", dtype: torch.dtype = torch.float32
) -> str:
    """'direct' or 'gram'; 'auto' by the FLOP rule of ``backend``'s device (``AUTO_FACTORS``).

    Per sample, with C = sum(channels) and P = M(M-1)/2 pairs, the direct algorithm costs
    about d^2 (C + 2P) multiply-adds and the Gram algorithm about d C^2 (forward and
    backward alike): direct while d (C + 2P) <= factor C^2. ``dtype`` does not enter the
    provisional rule. On symbolic sizes the comparison becomes a guard (a recompile only
    where the choice flips).
    """
    check_algo(algo)
    if algo != "auto":
        return algo
    if backend not in AUTO_FACTORS:
        raise ValueError(f"mtut: backend must be one of {', '.join(AUTO_FACTORS)}, got {backend!r}")
    C = sum(channels)
    M = len(channels)
    return "direct" if d * (C + M * (M - 1)) <= AUTO_FACTORS[backend] * C * C else "gram"


def kept_gram_size(channels: Sequence[int]):
    """The Gram entries per sample sqdist_forward keeps for the backward (algorithm gram): the
    blocks C_m x C_n, n >= m, each padded to a multiple of SAVED_ALIGN (csrc/ssa_common.cpp)."""
    M = len(channels)
    return sum(_aligned(channels[m] * channels[n]) for m in range(M) for n in range(m, M))


def _aligned(n):
    return (n + SAVED_ALIGN - 1) // SAVED_ALIGN * SAVED_ALIGN


def saved_width(channels: Sequence[int], algo: str, backend: str) -> int:
    """The entries per sample of sqdist_forward's ``saved`` (for_backward; ``algo`` resolved):
    the cpu backend keeps the Gram blocks (gram) or nothing; the cuda backend keeps them too,
    followed by the row norms and scales of every modality, padded to SAVED_ALIGN (csrc/ssa_common.h)."""
    blocks = kept_gram_size(channels) if algo == "gram" else 0
    return blocks if backend == "cpu" else blocks + _aligned(2 * sum(channels))
