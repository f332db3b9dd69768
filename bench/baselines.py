"""What a user would run without mtut: the baselines of the benchmarks.

* ``mmpose_ssa_loss``: the published OpenMMLab mmpose 0.x formulation (MultiModalSSAHead),
  restated: normalize -> bmm -> per ordered pair sqrt(mean_ij (K_m - K_n.detach())^2),
  times the detached focal weight, mean over the batch, times lambda, capped at 10.
  It materializes every K_m (d x d per sample).
* ``gram_identity_ssa_loss``: the best a user would write in eager PyTorch without d x d
  matrices: S = ||G_mm||^2 - 2 ||G_mn||^2 + ||G_nn||^2 from C x C Gram blocks, with the
  student-only gradient obtained by detaching X_n.
Both take feats [N, C_m, *S] and per-sample losses ce [M, N].
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def mmpose_ssa_loss(feats, ce, beta=2.0, lambda_=5e-3, cap=10.0):
    def corr(fmap):
        fmap = fmap.reshape(fmap.size(0), fmap.size(1), -1)
        fmap = F.normalize(fmap, dim=2, eps=1e-8)
        return torch.bmm(fmap.permute(0, 2, 1), fmap).reshape(fmap.size(0), -1)

    corrs = [corr(f) for f in feats]
    terms = []
    for a, b in itertools.combinations(range(len(feats)), 2):
        for i, j in ((a, b), (b, a)):
            rho = (torch.exp(beta * (ce[i] - ce[j]).clamp(min=0)) - 1).detach()
            ssa = corrs[i] - corrs[j].detach()
            ssa = rho * ssa.pow(2).mean(dim=1).pow(0.5)
            terms.append((ssa.mean() * lambda_).clamp(max=cap))
    return sum(terms)


def gram_identity_ssa_loss(feats, ce, beta=2.0, lambda_=5e-3, cap=10.0):
    xh = [F.normalize(f.reshape(f.size(0), f.size(1), -1), dim=2, eps=1e-8) for f in feats]
    d = xh[0].size(2)

    def sqnorm_gram(x, y):  # ||x y^T||_F^2 per sample, accumulated in float64
        return torch.bmm(x, y.transpose(1, 2)).double().pow(2).sum((1, 2))

    terms = []
    for i, j in itertools.permutations(range(len(feats)), 2):
        rho = (torch.exp(beta * (ce[i] - ce[j]).clamp(min=0)) - 1).detach()
        t = xh[j].detach()
        S = (sqnorm_gram(xh[i], xh[i]) - 2 * sqnorm_gram(xh[i], t) + sqnorm_gram(t, t)).clamp(min=0)
        delta = S.clamp(min=1e-30).sqrt().to(xh[i].dtype) / d
        terms.append(((rho * delta).mean() * lambda_).clamp(max=cap))
    return sum(terms)
