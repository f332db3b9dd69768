"""Fake (meta) implementations and autograd formulas of the torch.ops.mtut ops.

The kernels are registered in C++ (csrc/cpu, csrc/cuda); here each op gets the shape
function torch.compile and opcheck need, and its backward, which is itself a
registered op.
"""
from __future__ import annotations

import torch

from . import _validation as V

_lib = "mtut::"


def _sq_info(feats, eps, algo):
    info = V.check_feats(feats)
    V.check_eps(eps)
    V.resolve_algo(algo, info.d, info.channels)
    return info


# ------------------------------------------------------------------ fakes


@torch.library.register_fake(_lib + "correlation")
def _correlation_fake(feat, eps):
    info = V.check_feats([feat, feat])
    V.check_eps(eps)
    return feat.new_empty((info.N, info.d, info.d))


@torch.library.register_fake(_lib + "correlation_backward")
def _correlation_backward_fake(grad, feat, eps):
    return feat.new_empty(feat.shape)


@torch.library.register_fake(_lib + "pairwise_sqdist")
def _pairwise_sqdist_fake(feats, eps, algo):
    info = _sq_info(feats, eps, algo)
    return feats[0].new_empty((info.N, info.M, info.M), dtype=info.compute_dtype)


@torch.library.register_fake(_lib + "sqdist_backward")
def _sqdist_backward_fake(feats, weight, eps, algo):
    _sq_info(feats, eps, algo)
    return [f.new_empty(f.shape) for f in feats]


@torch.library.register_fake(_lib + "focal_weight")
def _focal_weight_fake(ce, beta):
    if not ce.is_floating_point():
        raise TypeError(f"mtut: ce must be a floating-point tensor of per-sample losses, got {ce.dtype}")
    if ce.dim() != 2 or ce.shape[0] < 2:
        raise ValueError(
            f"mtut: ce must have shape [M, N] with M >= 2 modalities and N >= 1 samples, got shape {list(ce.shape)}"
        )
    V.check_loss_args(beta, 0.0, None)
    M, N = ce.shape
    return ce.new_empty((N, M, M), dtype=V.compute_dtype(ce.dtype))


def _loss_info(feats, ce, beta, lambda_, distance, eps, algo, pair_cap):
    info = _sq_info(feats, eps, algo)
    V.check_ce(ce, info)
    V.check_loss_args(beta, lambda_, pair_cap)
    V.check_distance(distance)
    return info


@torch.library.register_fake(_lib + "ssa_loss")
def _ssa_loss_fake(feats, ce, beta, lambda_, distance, eps, algo, pair_cap):
    info = _loss_info(feats, ce, beta, lambda_, distance, eps, algo, pair_cap)
    return feats[0].new_empty((), dtype=info.compute_dtype)


@torch.library.register_fake(_lib + "ssa_loss_backward")
def _ssa_loss_backward_fake(grad, feats, ce, beta, lambda_, distance, eps, algo, pair_cap):
    _loss_info(feats, ce, beta, lambda_, distance, eps, algo, pair_cap)
    return [f.new_empty(f.shape) for f in feats]


# ------------------------------------------------------------------ autograd


def _correlation_setup(ctx, inputs, output):
    feat, eps = inputs
    ctx.save_for_backward(feat)
    ctx.eps = eps


def _correlation_bwd(ctx, grad):
    (feat,) = ctx.saved_tensors
    return torch.ops.mtut.correlation_backward(grad, feat, ctx.eps), None


torch.library.register_autograd(_lib + "correlation", _correlation_bwd, setup_context=_correlation_setup)


def sqdist_autograd(backward_op):
    """(backward, setup_context) of an op (feats, eps, algo) -> S [N, M, M] whose
    first-argument partials are ``backward_op(feats, weight, eps, algo)``."""

    def setup(ctx, inputs, output):
        feats, eps, algo = inputs
        ctx.save_for_backward(*feats)
        ctx.eps, ctx.algo = eps, algo

    def backward(ctx, grad):
        # S_mn = S_nm both depend on X_m: its gradient is the first-argument partial weighted by g + g^T.
        weight = grad + grad.transpose(1, 2)
        return list(backward_op(list(ctx.saved_tensors), weight, ctx.eps, ctx.algo)), None, None

    return backward, setup


def ssa_loss_autograd(backward_op):
    """(backward, setup_context) of an op (feats, ce, beta, lambda_, distance, eps, algo, pair_cap)
    -> loss whose backward is ``backward_op(grad, feats, ce, *args)``; ce gets no gradient."""

    def setup(ctx, inputs, output):
        feats, ce, *args = inputs
        ctx.save_for_backward(ce, *feats)
        ctx.args = args  # beta, lambda_, distance, eps, algo, pair_cap

    def backward(ctx, grad):
        ce, *feats = ctx.saved_tensors
        grads = backward_op(grad, feats, ce, *ctx.args)
        return (list(grads), None) + (None,) * len(ctx.args)

    return backward, setup


def _register(qualname, formulas):
    backward, setup = formulas
    torch.library.register_autograd(qualname, backward, setup_context=setup)


_register(_lib + "pairwise_sqdist", sqdist_autograd(lambda *a: torch.ops.mtut.sqdist_backward(*a)))


def _focal_weight_setup(ctx, inputs, output):
    pass


def _focal_weight_bwd(ctx, grad):
    return None, None  # rho is a constant weight: no gradient flows into the classification losses


torch.library.register_autograd(_lib + "focal_weight", _focal_weight_bwd, setup_context=_focal_weight_setup)


_register(_lib + "ssa_loss", ssa_loss_autograd(lambda *a: torch.ops.mtut.ssa_loss_backward(*a)))
