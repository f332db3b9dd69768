"""The functional API: validated wrappers over the ops, dispatched through one backend table."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch

from . import _validation as V
from . import reference
from .backends import pick_backend

Losses = Union[torch.Tensor, Sequence[torch.Tensor]]


@dataclass(frozen=True)
class _Ops:
    """What a backend runs for each API function (arguments as the torch.ops.mtut ops take them)."""

    pairwise_sqdist: Callable  # (feats, eps, algo) -> S [N, M, M]
    ssa_loss: Callable  # (feats, ce, beta, lambda_, distance, eps, algo, pair_cap) -> loss
    correlation: Callable  # (feat, eps) -> K [N, d, d]
    focal_weight: Callable  # (ce, beta) -> rho [N, M, M]


def _reference_ops() -> _Ops:
    def as_compute(x, like):
        return x.to(V.compute_dtype(like.dtype))

    return _Ops(
        pairwise_sqdist=lambda feats, eps, algo: as_compute(reference.pairwise_sqdist(feats, eps), feats[0]),
        ssa_loss=lambda feats, ce, beta, lambda_, distance, eps, algo, cap: as_compute(
            reference.ssa_loss(feats, ce, beta, lambda_, distance, eps, cap), feats[0]
        ),
        correlation=reference.correlation,
        focal_weight=lambda ce, beta: as_compute(reference.focal_weight(ce, beta), ce),
    )


def _native_ops() -> _Ops:
    """The C++ ops: the cpu kernels for CPU tensors, the cuda kernels for CUDA tensors."""
    ops = torch.ops.mtut
    return _Ops(
        pairwise_sqdist=ops.pairwise_sqdist,
        ssa_loss=ops.ssa_loss,
        correlation=ops.correlation,
        focal_weight=ops.focal_weight,
    )


def _triton_ops() -> _Ops:
    from . import triton as triton_ops  # imported lazily: triton is optional

    return _Ops(
        pairwise_sqdist=triton_ops.pairwise_sqdist,
        ssa_loss=triton_ops.ssa_loss,
        correlation=torch.ops.mtut.correlation,  # device-agnostic: builds d x d anyway
        focal_weight=torch.ops.mtut.focal_weight,
    )


_BACKEND_OPS = {"reference": _reference_ops, "cpu": _native_ops, "cuda": _native_ops, "triton": _triton_ops}


def _ops(backend: Optional[str], device: torch.device) -> _Ops:
    # (built per call: a cache filled inside a torch.compile'd call is a guard that fails on
    # the next one, so the first graph would be traced twice)
    return _BACKEND_OPS[pick_backend(backend, device)]()


def _stack_ce(ce_losses: Losses, info: V.FeatInfo) -> torch.Tensor:
    if isinstance(ce_losses, (list, tuple)):
        if len(ce_losses) != info.M or not all(isinstance(c, torch.Tensor) for c in ce_losses):
            raise ValueError(
                f"mtut: ce_losses must be a tensor [M, N] or a list of M = {info.M} tensors [N], "
                f"got a {type(ce_losses).__name__} of {len(ce_losses)}"
            )

        def message():
            shapes = [list(c.shape) for c in ce_losses]
            return f"mtut: each of ce_losses must have shape [N] = [{info.N}], got shapes {shapes}"

        for c in ce_losses:
            if c.dim() != 1:
                raise ValueError(message())
            V._value_check(c.shape[0] == info.N, message)
        ce_losses = torch.stack([c.detach() for c in ce_losses])
    elif isinstance(ce_losses, torch.Tensor):
        ce_losses = ce_losses.detach()
    V.check_ce(ce_losses, info)
    return ce_losses


def _keyword_only_options(fn: Callable) -> Callable:
    """``fn`` with a clear TypeError for an options argument passed by position.

    The options were once positional: an old call ``ssa_loss(feats, ce, 2.0, 5e-3)`` gets a
    message naming the keywords its values were meant for, never a silent reinterpretation."""
    params = inspect.signature(fn).parameters.values()
    n_positional = sum(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
    options = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]

    @functools.wraps(fn)  # (inspect.signature(wrapper) shows fn's: the options after *)
    def wrapper(*args, **kwargs):
        if len(args) > n_positional:
            extra = args[n_positional:]
            meant = ", ".join(f"{name}={value!r}" for name, value in zip(options, extra))
            raise TypeError(
                f"mtut: {fn.__name__}() takes {n_positional} positional arguments and its options by keyword "
                f"only ({', '.join(options)}); got {len(args)} positional arguments: write "
                f"{fn.__name__}(..., {meant})"
            )
        return fn(*args, **kwargs)

    return wrapper


def correlation(feat: torch.Tensor, eps: float = 1e-8, backend: Optional[str] = None) -> torch.Tensor:
    """The normalized spatiotemporal correlation K = Xh^T Xh of one feature map.

    feat [N, C, *S] -> [N, d, d], d = prod(S), with Xh the rows of feat scaled to unit
    L2 norm (``F.normalize(x, dim=-1, eps=eps)``). It builds the d x d matrix: use it to
    inspect, not inside the loss.
    """
    V.check_feats([feat, feat])
    V.check_eps(eps)
    return _ops(backend, feat.device).correlation(feat, eps)


def pairwise_sqdist(
    feats: Sequence[torch.Tensor], eps: float = 1e-8, algo: str = "auto", backend: Optional[str] = None
) -> torch.Tensor:
    """S[b, m, n] = ||K_m[b] - K_n[b]||_F^2 for every pair of the M modalities, [N, M, M].

    feats: M tensors [N, C_m, *S] with a common N and d = prod(S) (C_m may differ).
    algo: "direct" (tiled d x d walk), "gram" (shared C x C Gram blocks) or "auto"
    (the cost model of the backend and dtype in mtut_ops._validation.resolve_algo). Neither
    builds a d x d matrix.
    Differentiable into every input. Returned in float32 (float64 for float64 inputs).
    """
    info = V.check_feats(feats)
    V.check_eps(eps)
    V.check_algo(algo)
    return _ops(backend, info.device).pairwise_sqdist(list(feats), eps, algo)


def focal_weight(ce_losses: torch.Tensor, beta: float = 2.0, backend: Optional[str] = None) -> torch.Tensor:
    """The focal regularization parameter rho[b, m, n] = exp(beta * max(0, l_m[b] - l_n[b])) - 1.

    ce_losses [M, N] per-sample classification losses -> [N, M, M]. rho_mn > 0 only where
    network n does better than m on sample b. It carries no gradient.
    """
    V.check_focal_ce(ce_losses)
    V.check_loss_args(beta, 0.0, None)
    return _ops(backend, ce_losses.device).focal_weight(ce_losses.detach(), beta)


@_keyword_only_options
def ssa_loss(
    feats: Sequence[torch.Tensor],
    ce_losses: Losses,
    *,
    beta: float = 2.0,
    lambda_: float = 5e-3,
    distance: str = "rms",
    eps: float = 1e-8,
    algo: str = "auto",
    pair_cap: Optional[float] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """The MTUT spatiotemporal semantic alignment loss (a scalar).

        L = lambda_ * sum_{m != n} mean_b( rho_mn[b] * delta_mn[b] )
        rho_mn[b] = exp(beta * max(0, l_m[b] - l_n[b])) - 1          (no gradient)
        delta_mn  = sqrt(S_mn) / d   ("rms", mmpose's)   or   S_mn   ("fro2", the paper's)
        S_mn[b]   = ||K_m[b] - K_n[b]||_F^2,  K_m = Xh_m^T Xh_m  (d x d, never built)

    In term (m, n) the gradient flows into X_m only: network m is pulled toward the
    correlation structure of n where n classifies sample b better. Inputs that do not
    require grad (a frozen teacher network's features) cost no gradient work.

    Args (the options after ``ce_losses`` by keyword only):
        feats: M >= 2 feature maps [N, C_m, *S] (e.g. I3D Mixed_5c [N, 1024, 8, 7, 7]).
        ce_losses: per-sample classification losses, [M, N] or a list of M tensors [N].
        beta, lambda_: the focal and loss weights (defaults: mmpose's, tuned for "rms").
        distance: "rms" or "fro2".
        eps: the normalization's floor on a channel's norm.
        algo: "direct", "gram" or "auto".
        pair_cap: cap every ordered pair's term at this value (mmpose uses 10); None: no cap.
        backend: "cpu", "cuda", "triton", "reference", or None for the device's default.

    Returns a 0-dim tensor, float32 (float64 for float64 feats). Inside an autocast
    region it computes exactly as outside (float16/bfloat16 inputs are handled by the op).
    """
    info = V.check_feats(feats)
    ce = _stack_ce(ce_losses, info)
    V.check_loss_inputs(feats, ce, beta, lambda_, distance, eps, algo, pair_cap, info)
    pair_cap = None if pair_cap is None else float(pair_cap)
    return _ops(backend, info.device).ssa_loss(list(feats), ce, beta, lambda_, distance, eps, algo, pair_cap)
