"""nn.Module wrappers over mtut_ops.functional."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import nn

from . import _validation as V
from .functional import Losses, ssa_loss


class SSALoss(nn.Module):
    """The MTUT SSA loss as a module; see :func:`mtut_ops.ssa_loss` for the formula.

    Example::

        crit = SSALoss()                                    # beta=2, lambda_=5e-3, "rms"
        ce = [F.cross_entropy(lg, y, reduction="none") for lg in logits]
        loss = sum(c.mean() for c in ce) + crit([f_rgb, f_depth], ce)
    """

    def __init__(
        self,
        beta: float = 2.0,
        lambda_: float = 5e-3,
        distance: str = "rms",
        eps: float = 1e-8,
        algo: str = "auto",
        pair_cap: Optional[float] = None,
        backend: Optional[str] = None,
    ):
        super().__init__()
        V.check_loss_args(beta, lambda_, pair_cap)
        V.check_distance(distance)
        V.check_eps(eps)
        V.check_algo(algo)
        self.beta, self.lambda_, self.distance, self.eps = beta, lambda_, distance, eps
        self.algo, self.pair_cap, self.backend = algo, pair_cap, backend

    def forward(self, feats: Sequence[torch.Tensor], ce_losses: Losses) -> torch.Tensor:
        return ssa_loss(
            feats,
            ce_losses,
            beta=self.beta,
            lambda_=self.lambda_,
            distance=self.distance,
            eps=self.eps,
            algo=self.algo,
            pair_cap=self.pair_cap,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        cap = "" if self.pair_cap is None else f", pair_cap={self.pair_cap}"
        return f"beta={self.beta}, lambda_={self.lambda_}, distance={self.distance!r}, algo={self.algo!r}{cap}"
