"""The functional API: validated, backend-dispatching wrappers over torch.ops.mtut."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from . import _validation as V
from . import reference
from .backends import pick_backend

Losses = Union[torch.Tensor, Sequence[torch.Tensor]]


def _stack_ce(ce_losses: Losses, info: V.FeatInfo) -> torch.Tensor:
    if isinstance(ce_losses, (list, tuple)):
        if len(ce_losses) != info.M or not all(isinstance(c, torch.Tensor) for c in ce_losses):
            raise ValueError(
                f"mtut: ce_losses must be a tensor [M, N] or a list of M = {info.M} tensors [N], "
                f"got a {type(ce_losses).__name__} of {len(ce_losses)}"
            )
        shapes = {tuple(c.shape) for c in ce_losses}
        if shapes != {(info.N,)}:
            raise ValueError(f"mtut: each of ce_losses must have shape [N] = [{info.N}], got shapes {sorted(shapes)}")
        ce_losses = torch.stack([c.detach() for c in ce_losses])
    elif isinstance(ce_losses, torch.Tensor):
        ce_losses = ce_losses.detach()
    V.check_ce(ce_losses, info)
    return ce_losses


def _triton():
    from . import triton as triton_ops  # imported lazily: triton is optional

    return triton_ops


def correlation(feat: torch.Tensor, eps: float = 1e-8, backend: Optional[str] = None) -> torch.Tensor:
    """The normalized spatiotemporal correlation K = Xh^T Xh of one feature map.

    feat [N, C, *S] -> [N, d, d], d = prod(S), with Xh the rows of feat scaled to unit
    L2 norm (``F.normalize(x, dim=-1, eps=eps)``). It builds the d x d matrix: use it to
    inspect, not inside the loss.
    """
    V.check_feats([feat, feat])
    V.check_eps(eps)
    chosen = pick_backend(backend, feat.device)
    if chosen == "reference":
        return reference.correlation(feat, eps)
    if chosen == "triton":
        return _triton().correlation(feat, eps)
    return torch.ops.mtut.correlation(feat, eps)


def pairwise_sqdist(
    feats: Sequence[torch.Tensor], eps: float = 1e-8, algo: str = "auto", backend: Optional[str] = None
) -> torch.Tensor:
    """S[b, m, n] = ||K_m[b] - K_n[b]||_F^2 for every pair of the M modalities, [N, M, M].

    feats: M tensors [N, C_m, *S] with a common N and d = prod(S) (C_m may differ).
    algo: "direct" (tiled d x d walk), "gram" (shared C x C Gram blocks) or "auto"
    (the cost model in mtut_ops._validation.resolve_algo). Neither builds a d x d matrix.
    Differentiable into every input. Returned in float32 (float64 for float64 inputs).
    """
    info = V.check_feats(feats)
    V.check_eps(eps)
    V.resolve_algo(algo, info.d, info.channels)
    chosen = pick_backend(backend, info.device)
    if chosen == "reference":
        return reference.pairwise_sqdist(feats, eps).to(info.compute_dtype)
    if chosen == "triton":
        return _triton().pairwise_sqdist(list(feats), eps, algo)
    return torch.ops.mtut.pairwise_sqdist(list(feats), eps, algo)


def focal_weight(ce_losses: torch.Tensor, beta: float = 2.0, backend: Optional[str] = None) -> torch.Tensor:
    """The focal regularization parameter rho[b, m, n] = exp(beta * max(0, l_m[b] - l_n[b])) - 1.

    ce_losses [M, N] per-sample classification losses -> [N, M, M]. rho_mn > 0 only where
    network n does better than m on sample b. It carries no gradient.
    """
    if not isinstance(ce_losses, torch.Tensor) or ce_losses.dim() != 2 or ce_losses.shape[0] < 2:
        shape = list(ce_losses.shape) if isinstance(ce_losses, torch.Tensor) else type(ce_losses).__name__
        raise ValueError(f"mtut: ce must have shape [M, N] with M >= 2 modalities and N >= 1 samples, got {shape}")
    if not ce_losses.is_floating_point():
        raise TypeError(f"mtut: ce must be a floating-point tensor of per-sample losses, got {ce_losses.dtype}")
    V.check_loss_args(beta, 0.0, None)
    chosen = pick_backend(backend, ce_losses.device)
    if chosen == "reference":
        return reference.focal_weight(ce_losses, beta).to(V.compute_dtype(ce_losses.dtype))
    if chosen == "triton":
        return _triton().focal_weight(ce_losses.detach(), beta)
    return torch.ops.mtut.focal_weight(ce_losses.detach(), beta)


def ssa_loss(
    feats: Sequence[torch.Tensor],
    ce_losses: Losses,
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
    correlation structure of n where n classifies sample b better.

    Args:
        feats: M >= 2 feature maps [N, C_m, *S] (e.g. I3D Mixed_5c [N, 1024, 8, 7, 7]).
        ce_losses: per-sample classification losses, [M, N] or a list of M tensors [N].
        beta, lambda_: the focal and loss weights (defaults: mmpose's, tuned for "rms").
        distance: "rms" or "fro2".
        eps: the normalization's floor on a channel's norm.
        algo: "direct", "gram" or "auto".
        pair_cap: cap every ordered pair's term at this value (mmpose uses 10); None: no cap.
        backend: "cpu", "cuda", "triton", "reference", or None for the device's default.

    Returns a 0-dim tensor, float32 (float64 for float64 feats).
    """
    info = V.check_feats(feats)
    ce = _stack_ce(ce_losses, info)
    V.check_loss_args(beta, lambda_, pair_cap)
    V.check_distance(distance)
    V.check_eps(eps)
    V.resolve_algo(algo, info.d, info.channels)
    pair_cap = None if pair_cap is None else float(pair_cap)
    args = (float(beta), float(lambda_), distance, float(eps), algo, pair_cap)
    chosen = pick_backend(backend, info.device)
    if chosen == "reference":
        return reference.ssa_loss(feats, ce, beta, lambda_, distance, eps, pair_cap).to(info.compute_dtype)
    if chosen == "triton":
        return _triton().ssa_loss(list(feats), ce, *args)
    return torch.ops.mtut.ssa_loss(list(feats), ce, *args)
