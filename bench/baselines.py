"""What a user would run without mtut: the baselines of the benchmarks.

All take feats [N, C_m, *S] (M >= 2 maps, the same N and d = prod(S)) and per-sample
classification losses ce [M, N], and return the SSA loss of docs/design.md §1 with mmpose's
defaults (distance "rms", beta 2, lambda 5e-3, every ordered-pair term capped at 10);
term (m, n) sends its gradient into X_m only.

* ``mmpose_ssa_loss``: the published OpenMMLab mmpose 0.x formulation (MultiModalSSAHead),
  restated: normalize -> bmm -> per ordered pair sqrt(mean_ij (K_m - K_n.detach())^2),
  times the detached focal weight, mean over the batch, times lambda, capped at 10.
  It materializes every K_m (d x d per sample): ~6 N d^2 C FLOPs forward + backward.
* ``expert_gram_ssa_loss``: the best a user would write in eager PyTorch (docs/design.md §6):
  normalize, concatenate the M modalities' rows into X [N, C, d] (C = sum C_m), ONE
  ``bmm(X, X.detach()^T)`` gives H [N, C, C] with every Gram block H_mn = Xh_m Xh_n^T at
  once; the block square-sums ||H_mn||^2 are accumulated in float64;
  S_mn = ||H_mm||^2 - 2 ||H_mn||^2 + ||H_nn||^2 (clamped at 0) is the value, and the
  student-only gradient comes from the surrogate 2 ||H_mm||^2 - 2 ||H_mn||^2, whose
  gradient (X_n and the right factor of every block constant) is exactly
  dS_mn/dXh_m = 4 (G_mm Xh_m - G_mn Xh_n). 4 N d C^2 FLOPs forward + backward (one
  C x C x d GEMM each way), nothing d x d.
* ``gram_identity_ssa_loss``: a weaker Gram variant, kept for comparison and for the
  tests that use it: three bmms per *ordered* pair (G_mm, G_mn, G_nn recomputed for every
  pair, each with its own backward), ~24 N d C_m^2 FLOPs for M = 2 against the expert
  code's 16. Not in the default benchmark set (``--impls gram-eager`` runs it).
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


def expert_gram_ssa_loss(feats, ce, beta=2.0, lambda_=5e-3, cap=10.0, eps=1e-8):
    N = feats[0].size(0)
    sizes = [f.size(1) for f in feats]
    X = torch.cat([F.normalize(f.reshape(N, f.size(1), -1), dim=2, eps=eps) for f in feats], dim=1)
    d = X.size(2)
    H = torch.bmm(X, X.detach().transpose(1, 2))  # [N, C, C]: every block, one GEMM
    # q[m][n] = ||H_mn||^2 per sample, accumulated in float64 (the identity is a
    # difference of terms of size up to (C_m + C_n)^2).
    blocks = [row.split(sizes, dim=2) for row in H.split(sizes, dim=1)]
    q = [[blk.double().square().sum((1, 2)) for blk in row] for row in blocks]
    total = X.new_zeros((), dtype=X.dtype)
    for m, n in itertools.permutations(range(len(feats)), 2):
        rho = (torch.exp(beta * (ce[m] - ce[n]).clamp(min=0)) - 1).detach()
        surrogate = 2 * q[m][m] - 2 * q[m][n]  # grad: 4 (G_mm Xh_m - G_mn Xh_n), into X_m only
        value = (q[m][m] - 2 * q[m][n] + q[n][n]).clamp(min=0)
        S = surrogate + (value - surrogate).detach()  # the value of S, the gradient of the surrogate
        # rms distance sqrt(S) / d, gradient 0 where S == 0 (where() selects the constant there)
        delta = torch.where(S == 0, torch.zeros_like(S), S).sqrt() / d
        term = (rho.to(delta.dtype) * delta).mean() * lambda_
        total = total + term.clamp(max=cap).to(X.dtype)
    return total


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
