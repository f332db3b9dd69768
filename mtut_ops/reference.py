"""The SSA loss of docs/design.md §1, written literally: the oracle every backend is tested against.

It materializes the d x d correlation matrices K_m, so it is only for small inputs (and
for fp64 checks). Every function works in the dtype of its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F


def normalize(feat: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """[N, C, *S] -> Xh [N, C, d]: every channel row scaled to unit L2 norm over d = prod(S)."""
    # contiguous: the norm's summation order then does not depend on the layout, so equal
    # values give equal bits (identical inputs: exactly zero loss and gradient)
    x = feat.reshape(feat.shape[0], feat.shape[1], -1).contiguous()
    return F.normalize(x, dim=-1, eps=eps)


def correlation(feat: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """K = Xh^T Xh, [N, d, d]."""
    xh = normalize(feat, eps)
    return xh.transpose(1, 2) @ xh


def pairwise_sqdist(feats: Sequence[torch.Tensor], eps: float = 1e-8) -> torch.Tensor:
    """S[b, m, n] = ||K_m[b] - K_n[b]||_F^2, [N, M, M]; differentiable into every input."""
    K = [correlation(f, eps) for f in feats]
    rows = [torch.stack([((Km - Kn) ** 2).sum((-2, -1)) for Kn in K], dim=-1) for Km in K]
    return torch.stack(rows, dim=1)


def focal_weight(ce: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """rho[b, m, n] = exp(beta * max(0, ce[m, b] - ce[n, b])) - 1 from ce [M, N]; no gradient."""
    ce = ce.detach()
    diff = ce.t().unsqueeze(2) - ce.t().unsqueeze(1)
    return torch.expm1(beta * diff.clamp(min=0))  # exp(x) - 1 would cancel for small x


def rms_distance(S: torch.Tensor, d: int) -> torch.Tensor:
    """delta = sqrt(S) / d, with the gradient defined as 0 where S == 0 (where() selects the
    constant there, dropping sqrt's infinite derivative); NaN stays NaN, gradient included."""
    return torch.where(S == 0, torch.zeros_like(S), S).sqrt() / d


def capped_term(
    rho: torch.Tensor, S: torch.Tensor, delta: torch.Tensor, lambda_: float, pair_cap: Optional[float]
) -> torch.Tensor:
    """lambda mean_b(rho delta) over dim 0, min(., pair_cap). A capped term is the constant
    pair_cap (no gradient), its rho selected to 0 before anything multiplies it: an overflowed
    rho (inf) times a zero gradient would be NaN. As clamp(max=cap): the gradient passes where
    term <= cap (at equality, not for a NaN term), and a NaN term stays NaN."""
    if pair_cap is None:
        return lambda_ * weighted(rho, S, delta).mean(0)
    raw = lambda_ * weighted(rho, S, delta.detach()).mean(0)
    term = lambda_ * weighted(torch.where(raw <= pair_cap, rho, torch.zeros_like(rho)), S, delta).mean(0)
    return torch.where(raw > pair_cap, torch.full_like(term, pair_cap), term)


def weighted(rho: torch.Tensor, S: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """rho * delta with rho selected to 0 where S == 0: such a term is 0 and sends no gradient
    whatever rho is (rho overflows to inf past beta * gap ~ 88 in float32, ~ 709 in float64)."""
    return torch.where(S.detach() == 0, torch.zeros_like(rho), rho) * delta


def ssa_loss_from_sqdist(
    S: torch.Tensor,
    ce: torch.Tensor,
    beta: float = 2.0,
    lambda_: float = 5e-3,
    distance: str = "rms",
    d: int = 1,
    pair_cap: Optional[float] = None,
) -> torch.Tensor:
    """The loss over given squared distances S [N, M, M]: lambda * sum_{m, n} mean_b(rho_mn[b]
    delta_mn[b]), each pair's term capped at pair_cap (rho_mm = 0: the diagonal adds 0)."""
    delta = rms_distance(S, d) if distance == "rms" else S
    return capped_term(focal_weight(ce, beta).to(S.dtype), S, delta, lambda_, pair_cap).sum()


def pair_terms(
    S: torch.Tensor, ce: torch.Tensor, beta: float = 2.0, lambda_: float = 5e-3, distance: str = "rms", d: int = 1
) -> torch.Tensor:
    """The uncapped terms of ssa_loss_from_sqdist, [M, M]: lambda mean_b(rho_mn[b] delta_mn[b])."""
    delta = rms_distance(S, d) if distance == "rms" else S
    return lambda_ * weighted(focal_weight(ce, beta).to(S.dtype), S, delta).mean(0)


def ssa_loss(
    feats: Sequence[torch.Tensor],
    ce: torch.Tensor,
    beta: float = 2.0,
    lambda_: float = 5e-3,
    distance: str = "rms",
    eps: float = 1e-8,
    pair_cap: Optional[float] = None,
) -> torch.Tensor:
    """lambda * sum_{m != n} mean_b(rho_mn[b] * delta_mn[b]); term (m, n) sends gradient into X_m only."""
    K = [correlation(f, eps) for f in feats]
    d = K[0].shape[-1]
    rho = focal_weight(ce, beta)
    total = K[0].new_zeros(())
    for m in range(len(feats)):
        for n in range(len(feats)):
            if m == n:
                continue
            S = ((K[m] - K[n].detach()) ** 2).sum((-2, -1))
            delta = rms_distance(S, d) if distance == "rms" else S
            total = total + capped_term(rho[:, m, n].to(S.dtype), S, delta, lambda_, pair_cap)
    return total
