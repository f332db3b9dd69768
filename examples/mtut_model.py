"""The MTUT model: one I3D per modality, trained together with the SSA loss.

Each modality's network classifies on its own (per-time-step logits averaged over
time, per-sample cross-entropy); from a start epoch the spatiotemporal semantic
alignment loss (:func:`mtut_ops.ssa_loss`) pulls the feature correlations of each
network toward those of the others on the samples where they do better. At test time
every network runs alone on its own modality.

    model = MTUTModel(("rgb", "depth"), num_classes=25)
    out = model({"rgb": rgb, "depth": depth})            # logits and SSA features
    losses = model.loss(out, labels, ssa=epoch >= 61)    # total = sum of mean CE + SSA
    losses.total.backward()
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import mtut_ops
from examples.data import MODALITIES
from examples.models import ENDPOINTS, I3D, LoadReport, load_i3d_weights

FUSIONS = ("softmax", "logits")


@dataclass(frozen=True)
class SSAConfig:
    """Arguments of :func:`mtut_ops.ssa_loss` (defaults: mmpose's recipe)."""

    beta: float = 2.0
    lambda_: float = 5e-3
    distance: str = "rms"
    eps: float = 1e-8
    algo: str = "auto"
    pair_cap: float | None = None
    backend: str | None = None
    # Cast the features to float32 before the SSA op. Under autocast the I3D features are
    # bf16/fp16; the op accepts them (it accumulates in float32, and the cuda backend runs
    # them on tensor cores), but that low-precision path has not been checked on a GPU yet,
    # so the trainer feeds float32 by default (--ssa-fp32 / --no-ssa-fp32).
    inputs_fp32: bool = True
    # The focal weight rho: "exp" (the paper's), "constant" (1 on every ordered pair) or
    # "indicator" (1 where the other network's CE is lower, else 0). See ssa_with_weights.
    focal: str = "exp"
    # Modalities whose SSA features are permuted within the batch (a control); the
    # permutation is passed to MTUTModel.loss.
    shuffle: tuple[str, ...] = ()


FOCAL_MODES = ("exp", "constant", "indicator")


def focal_weights(ce: torch.Tensor, mode: str, beta: float = 2.0) -> torch.Tensor:
    """rho ``[N, M, M]`` from per-sample CE ``[M, N]`` (no gradient; zero diagonal).

    ``exp``: ``exp(beta * max(0, l_m - l_n)) - 1`` (:func:`mtut_ops.focal_weight`, the
    paper's); ``constant``: 1 for every ordered pair ``m != n``; ``indicator``: 1 where
    ``l_m > l_n`` (network n does better), else 0.
    """
    ce = ce.detach().float()
    M, N = ce.shape
    off_diagonal = 1 - torch.eye(M, dtype=ce.dtype, device=ce.device)
    if mode == "exp":
        return mtut_ops.focal_weight(ce, beta)
    if mode == "constant":
        return off_diagonal.expand(N, M, M).clone()
    if mode == "indicator":
        return (ce.t()[:, :, None] > ce.t()[:, None, :]).to(ce.dtype) * off_diagonal
    raise ValueError(f"focal mode must be one of {FOCAL_MODES}, got {mode!r}")


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with gradient 0 (not infinity) at 0, as the library defines d sqrt(S) / dS at S = 0."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def ssa_with_weights(
    feats: Sequence[torch.Tensor],
    rho: torch.Tensor,
    *,
    lambda_: float,
    distance: str = "rms",
    eps: float = 1e-8,
    algo: str = "auto",
    pair_cap: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """The SSA loss with given focal weights ``rho`` ``[N, M, M]`` (no gradient):
    ``lambda_ * sum_{m != n} mean_b(rho[b, m, n] * delta_mn[b])``, each pair term capped at
    ``pair_cap``, the gradient of term (m, n) into ``feats[m]`` only.

    With ``rho = mtut_ops.focal_weight(ce, beta)`` it is :func:`mtut_ops.ssa_loss` (tested);
    it exists for the controls whose rho the library's op cannot express (constant,
    indicator). Each ordered pair costs one :func:`mtut_ops.pairwise_sqdist` call on
    ``[X_m, X_n.detach()]`` (nothing ``d x d`` is built); pairs whose weights are all 0
    are skipped (they add 0 and no gradient).
    """
    rho = rho.detach().float()
    d = math.prod(feats[0].shape[2:])
    total = torch.zeros((), dtype=torch.float32, device=feats[0].device)
    for m in range(len(feats)):
        for n in range(len(feats)):
            if m == n or not bool((rho[:, m, n] != 0).any()):
                continue
            S = mtut_ops.pairwise_sqdist([feats[m], feats[n].detach()], eps=eps, algo=algo, backend=backend)[:, 0, 1]
            delta = _safe_sqrt(S) / d if distance == "rms" else S
            term = lambda_ * (rho[:, m, n].to(delta.dtype) * delta).mean()
            if pair_cap is not None:
                term = torch.clamp(term, max=pair_cap)
            total = total + term.float()
    return total


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random cyclic permutation of ``range(n)`` (Sattolo's algorithm): no
    element stays in place when ``n >= 2``."""
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(torch.randint(0, i, (), generator=generator))
        perm[i], perm[j] = perm[j], perm[i]
    return torch.tensor(perm, dtype=torch.long)


@dataclass
class MTUTOutput:
    """Forward results: ``logits[m]`` ``[N, K]`` and ``features[m][endpoint]`` ``[N, C, T, H, W]``."""

    logits: dict[str, torch.Tensor]
    features: dict[str, dict[str, torch.Tensor]]


@dataclass
class MTUTLoss:
    """Loss terms of one batch.

    Attributes:
        total: sum over modalities of the mean CE, plus the SSA loss when it is on.
        ce: mean CE per modality.
        ce_per_sample: ``[M, N]`` per-sample CE (detached; drives the focal weights).
        ssa: SSA loss summed over the SSA endpoints (0 when off or with one modality).
        ssa_by_endpoint: the SSA loss at each endpoint (empty when off).
    """

    total: torch.Tensor
    ce: dict[str, torch.Tensor]
    ce_per_sample: torch.Tensor
    ssa: torch.Tensor
    ssa_by_endpoint: dict[str, torch.Tensor] = field(default_factory=dict)


def _check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    if isinstance(modalities, str):
        modalities = (modalities,)
    modalities = tuple(modalities)
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ValueError(f"modalities: unknown modality {unknown[0]!r}; known: {', '.join(MODALITIES)}")
    if not modalities or len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities must be non-empty and without repeats, got {list(modalities)}")
    return modalities


class MTUTModel(nn.Module):
    """One I3D per modality with a per-modality classifier, and the MTUT loss.

    Args:
        modalities: input modalities, e.g. ``("rgb", "depth")``; one modality is the
            unimodal baseline (no SSA).
        num_classes: classes of every classifier (25 for NVGesture).
        width: I3D width multiplier (1.0 = the original network).
        dropout: dropout before each classifier.
        ssa_endpoints: I3D endpoints whose feature maps are aligned (the SSA loss is
            summed over them); ``Mixed_5c`` is mmpose's choice.
        ssa: the SSA loss settings.
    """

    def __init__(
        self,
        modalities: Sequence[str] = ("rgb", "depth"),
        num_classes: int = 25,
        *,
        width: float = 1.0,
        dropout: float = 0.0,
        ssa_endpoints: Sequence[str] = ("Mixed_5c",),
        ssa: SSAConfig = SSAConfig(),
    ):
        super().__init__()
        self.modalities = _check_modalities(modalities)
        if isinstance(ssa_endpoints, str):
            ssa_endpoints = (ssa_endpoints,)
        self.ssa_endpoints = tuple(ssa_endpoints)
        unknown = [e for e in self.ssa_endpoints if e not in ENDPOINTS]
        if unknown or not self.ssa_endpoints:
            raise ValueError(f"ssa_endpoints: {unknown or 'empty'} not I3D endpoints; known: {', '.join(ENDPOINTS)}")
        self.num_classes, self.ssa_config = num_classes, ssa
        self.nets = nn.ModuleDict(
            {
                m: I3D(num_classes, in_channels=MODALITIES[m].channels, width=width, dropout=dropout)
                for m in self.modalities
            }
        )

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> MTUTOutput:
        """Run every modality's network on its input ``[N, C_m, T, H, W]``."""
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise KeyError(f"inputs lack modality {missing[0]!r} (model modalities: {list(self.modalities)})")
        logits, features = {}, {}
        for m in self.modalities:
            logits[m], features[m] = self.nets[m].extract(inputs[m], self.ssa_endpoints)
        return MTUTOutput(logits, features)

    def loss(
        self, out: MTUTOutput, labels: torch.Tensor, ssa: bool = False, perm: torch.Tensor | None = None
    ) -> MTUTLoss:
        """Cross-entropy of every network, plus the SSA loss when ``ssa`` is on.

        The CE is computed in float32 (also under autocast). In the SSA term (m, n) the
        gradient reaches network m's features only, and never the CE (the focal
        weights are detached inside :func:`mtut_ops.ssa_loss`). With ``ssa.shuffle``
        modalities, ``perm`` (a permutation of the batch) reorders their SSA features;
        the focal weights stay those of each clip's own CE.
        """
        ce_per_sample = torch.stack(
            [F.cross_entropy(out.logits[m].float(), labels, reduction="none") for m in self.modalities]
        )
        ce = {m: ce_per_sample[i].mean() for i, m in enumerate(self.modalities)}
        total = ce_per_sample.mean(1).sum()
        ssa_total = total.new_zeros(())
        by_endpoint: dict[str, torch.Tensor] = {}
        if ssa and len(self.modalities) > 1:
            c = self.ssa_config
            if c.shuffle and perm is None:
                raise ValueError(f"SSA with shuffled {list(c.shuffle)} features needs the batch permutation (perm)")
            rho = None if c.focal == "exp" else focal_weights(ce_per_sample, c.focal, c.beta)
            for e in self.ssa_endpoints:
                feats = [out.features[m][e][perm] if m in c.shuffle else out.features[m][e] for m in self.modalities]
                if c.inputs_fp32:
                    feats = [f.float() for f in feats]
                if rho is None:
                    by_endpoint[e] = mtut_ops.ssa_loss(
                        feats,
                        ce_per_sample.detach(),
                        beta=c.beta,
                        lambda_=c.lambda_,
                        distance=c.distance,
                        eps=c.eps,
                        algo=c.algo,
                        pair_cap=c.pair_cap,
                        backend=c.backend,
                    ).float()
                else:
                    by_endpoint[e] = ssa_with_weights(
                        feats,
                        rho,
                        lambda_=c.lambda_,
                        distance=c.distance,
                        eps=c.eps,
                        algo=c.algo,
                        pair_cap=c.pair_cap,
                        backend=c.backend,
                    )
            ssa_total = sum(by_endpoint.values())
            total = total + ssa_total
        return MTUTLoss(total, ce, ce_per_sample.detach(), ssa_total, by_endpoint)

    @staticmethod
    def fuse(logits: Mapping[str, torch.Tensor], how: str = "softmax") -> torch.Tensor:
        """The fused score of all modalities: mean of the softmaxes, or of the logits."""
        if how not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {how!r}")
        stacked = torch.stack([lg.float() for lg in logits.values()])
        return (stacked.softmax(-1) if how == "softmax" else stacked).mean(0)

    def load_pretrained(
        self, paths: Mapping[str, str | Path], *, stem: str = "mean", strict: bool = True
    ) -> dict[str, LoadReport]:
        """Load converted Kinetics I3D checkpoints (local files) into the named modalities.

        ``paths`` maps a modality to its file (the same RGB file may serve every
        modality: the stem is adapted, the 400-class classifier skipped). Returns the
        :class:`~examples.models.LoadReport` of each.
        """
        unknown = [m for m in paths if m not in self.modalities]
        if unknown:
            raise ValueError(f"pretrained: modality {unknown[0]!r} is not in the model ({list(self.modalities)})")
        return {m: load_i3d_weights(self.nets[m], p, stem=stem, strict=strict) for m, p in paths.items()}
