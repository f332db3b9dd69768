"""The triton backend's ops, registered in the mtut namespace:

    torch.ops.mtut.triton_pairwise_sqdist(Tensor[] feats, float eps, str algo) -> Tensor
    torch.ops.mtut.triton_sqdist_backward(Tensor[] feats, Tensor weight, float eps, str algo) -> Tensor[]
    torch.ops.mtut.triton_ssa_loss(Tensor[] feats, Tensor ce, float beta, float lambda_, str distance,
                                   float eps, str algo, float? pair_cap) -> Tensor
    torch.ops.mtut.triton_ssa_loss_backward(Tensor grad, Tensor[] feats, Tensor ce, ...) -> Tensor[]

with the contracts of their C++ namesakes (csrc/mtut_ops.cpp). Each is a
``torch.library.triton_op`` whose launches go through ``wrap_triton``, so torch.compile
traces into the kernels; pairwise_sqdist and ssa_loss get their backward op through
``register_autograd``. The helpers that launch kernels are called by plain name: that is
how torch finds each op's kernels for the keys of its compile caches. The [N, M, M]
arithmetic of the loss (focal weight, distance, cap) is torch, written exactly as
csrc/ssa_common.cpp's loss_terms and ssa_backward_weight.

Under the interpreter (TRITON_INTERPRET=1) the ops are ``torch.library.custom_op``s
with explicit fake implementations instead: torch's wrap_triton hands interpreted kernels
back unwrapped, so a triton_op could not be traced there; torch.compile then sees the
op as one opaque node.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _validation as V
from .._registration import sqdist_autograd, ssa_loss_autograd
from ._common import INTERPRETED, check_device, normalize_backward, pack, pair_tables, to_square
from .direct import direct_backward, direct_forward
from .gram import gram_backward, gram_forward

# ------------------------------------------------------------------ validation


def _check_sqdist(feats, eps, algo) -> V.FeatInfo:
    info = V.check_feats(feats)
    V.check_eps(eps)
    V.resolve_algo(algo, info.d, info.channels)
    check_device(info)
    return info


def _check_weight(weight, info: V.FeatInfo) -> None:
    if not weight.is_floating_point():
        raise TypeError(f"mtut: weight must be a floating-point tensor, got {weight.dtype}")
    if tuple(weight.shape) != (info.N, info.M, info.M):
        raise ValueError(
            f"mtut: weight must have shape [N, M, M] = [{info.N}, {info.M}, {info.M}], got shape {list(weight.shape)}"
        )
    if weight.device != info.device:
        raise ValueError(f"mtut: weight is on {weight.device} but feats are on {info.device}")


def _check_loss(feats, ce, beta, lambda_, distance, eps, algo, pair_cap) -> V.FeatInfo:
    info = _check_sqdist(feats, eps, algo)
    V.check_ce(ce, info)
    V.check_loss_args(beta, lambda_, pair_cap)
    V.check_distance(distance)
    return info


# ------------------------------------------------------------------ implementations


def _sqdist(feats, eps, algo, info: V.FeatInfo) -> torch.Tensor:
    pk = pack(feats, info, eps)
    pairs, index = pair_tables(info.M, pk.z.device)
    if V.resolve_algo(algo, info.d, info.channels) == "direct":
        values = direct_forward(pk, pairs)
    else:
        values = gram_forward(pk)
    return to_square(values, index).to(info.compute_dtype)


def _sqdist_backward(feats, weight, eps, algo, info: V.FeatInfo) -> list:
    pk = pack(feats, info, eps)
    if V.resolve_algo(algo, info.d, info.channels) == "direct":
        grad_xh = direct_backward(pk, weight)
    else:
        grad_xh = gram_backward(pk, weight)
    return normalize_backward(grad_xh, pk, feats, eps)


def focal_weight(ce: torch.Tensor, beta: float) -> torch.Tensor:
    """rho[b, m, n] = expm1(beta * max(0, ce[m, b] - ce[n, b])), as csrc/ssa_common.cpp:focal_weight."""
    c = ce.detach().to(V.compute_dtype(ce.dtype)).t()
    diff = c.unsqueeze(2) - c.unsqueeze(1)
    return (diff.clamp_min(0) * beta).expm1().contiguous()  # clamp_min keeps NaN


def _loss_terms(feats, ce, beta, lambda_, distance, eps, algo, pair_cap, info: V.FeatInfo):
    """(rho, d delta / d S, the capped [M, M] pair terms, where the cap lets the gradient through)."""
    S = _sqdist(feats, eps, algo, info)
    rho = focal_weight(ce, beta).to(S.dtype)
    if distance == "rms":
        root = S.sqrt()
        delta = root / float(info.d)
        # d delta / d S = 1 / (2 d sqrt(S)), defined as 0 at S == 0 (identical features); NaN stays NaN.
        ddelta = torch.where(S == 0, torch.zeros_like(S), root.reciprocal() / (2.0 * float(info.d)))
    else:
        delta = S
        ddelta = torch.ones_like(S)
    terms = (rho * delta).mean(0) * lambda_
    if pair_cap is not None:
        active = (terms <= pair_cap).to(S.dtype)  # clamp's gradient rule: through at equality
        terms = terms.clamp_max(pair_cap)
    else:
        active = torch.ones_like(terms)
    return rho, ddelta, terms, active


def _ssa_weight(grad, feats, ce, beta, lambda_, distance, eps, algo, pair_cap, info) -> torch.Tensor:
    """The [N, M, M] weight of the student-only gradient (S is recomputed, as in the cpu backend)."""
    rho, ddelta, _, active = _loss_terms(feats, ce, beta, lambda_, distance, eps, algo, pair_cap, info)
    return grad.to(rho.dtype) * (lambda_ / info.N) * rho * ddelta * active.unsqueeze(0)


# ------------------------------------------------------------------ ops


def triton_pairwise_sqdist(feats: list, eps: float, algo: str) -> torch.Tensor:
    info = _check_sqdist(feats, eps, algo)
    return _sqdist(feats, eps, algo, info)


def triton_sqdist_backward(feats: list, weight: torch.Tensor, eps: float, algo: str) -> list:
    info = _check_sqdist(feats, eps, algo)
    _check_weight(weight, info)
    return _sqdist_backward(feats, weight, eps, algo, info)


def triton_ssa_loss(feats: list, ce: torch.Tensor, beta: float, lambda_: float, distance: str, eps: float,
                    algo: str, pair_cap: Optional[float]) -> torch.Tensor:
    info = _check_loss(feats, ce, beta, lambda_, distance, eps, algo, pair_cap)
    return _loss_terms(feats, ce, beta, lambda_, distance, eps, algo, pair_cap, info)[2].sum()


def triton_ssa_loss_backward(grad: torch.Tensor, feats: list, ce: torch.Tensor, beta: float, lambda_: float,
                             distance: str, eps: float, algo: str, pair_cap: Optional[float]) -> list:
    info = _check_loss(feats, ce, beta, lambda_, distance, eps, algo, pair_cap)
    weight = _ssa_weight(grad, feats, ce, beta, lambda_, distance, eps, algo, pair_cap, info)
    return _sqdist_backward(feats, weight, eps, algo, info)


_LOSS_ARGS = "float beta, float lambda_, str distance, float eps, str algo, float? pair_cap"
_SCHEMAS = {
    "triton_pairwise_sqdist": "(Tensor[] feats, float eps, str algo) -> Tensor",
    "triton_sqdist_backward": "(Tensor[] feats, Tensor weight, float eps, str algo) -> Tensor[]",
    "triton_ssa_loss": f"(Tensor[] feats, Tensor ce, {_LOSS_ARGS}) -> Tensor",
    "triton_ssa_loss_backward": f"(Tensor grad, Tensor[] feats, Tensor ce, {_LOSS_ARGS}) -> Tensor[]",
}


def _fake_pairwise_sqdist(feats, eps, algo):
    info = _check_sqdist(feats, eps, algo)
    return feats[0].new_empty((info.N, info.M, info.M), dtype=info.compute_dtype)


def _fake_sqdist_backward(feats, weight, eps, algo):
    _check_weight(weight, _check_sqdist(feats, eps, algo))
    return [f.new_empty(f.shape) for f in feats]


def _fake_ssa_loss(feats, ce, *args):
    info = _check_loss(feats, ce, *args)
    return feats[0].new_empty((), dtype=info.compute_dtype)


def _fake_ssa_loss_backward(grad, feats, ce, *args):
    _check_loss(feats, ce, *args)
    return [f.new_empty(f.shape) for f in feats]


def _register(fn, fake):
    name = "mtut::" + fn.__name__
    if INTERPRETED:
        op = torch.library.custom_op(name, fn, mutates_args=(), schema=_SCHEMAS[fn.__name__])
        op.register_fake(fake)
    else:
        # triton_op registers fn itself as the fake: it only runs torch ops and wrap_triton launches.
        op = torch.library.triton_op(name, fn, mutates_args=(), schema=_SCHEMAS[fn.__name__])
    return op


_pairwise_sqdist_op = _register(triton_pairwise_sqdist, _fake_pairwise_sqdist)
_register(triton_sqdist_backward, _fake_sqdist_backward)
_ssa_loss_op = _register(triton_ssa_loss, _fake_ssa_loss)
_register(triton_ssa_loss_backward, _fake_ssa_loss_backward)


# The same autograd formulas as the C++ ops, over the triton backward ops.
for _op, (_backward, _setup) in (
    (_pairwise_sqdist_op, sqdist_autograd(lambda *a: torch.ops.mtut.triton_sqdist_backward(*a))),
    (_ssa_loss_op, ssa_loss_autograd(lambda *a: torch.ops.mtut.triton_ssa_loss_backward(*a))),
):
    _op.register_autograd(_backward, setup_context=_setup)


# ------------------------------------------------------------------ what mtut_ops.functional calls


def pairwise_sqdist(feats: list, eps: float, algo: str) -> torch.Tensor:
    return torch.ops.mtut.triton_pairwise_sqdist(feats, eps, algo)


def ssa_loss(feats: list, ce: torch.Tensor, beta: float, lambda_: float, distance: str, eps: float, algo: str,
             pair_cap: Optional[float]) -> torch.Tensor:
    return torch.ops.mtut.triton_ssa_loss(feats, ce, beta, lambda_, distance, eps, algo, pair_cap)


def correlation(feat: torch.Tensor, eps: float) -> torch.Tensor:
    """K = Xh^T Xh [N, d, d], for inspection (it builds d x d, so no kernel of its own):
    torch ops, in the compute dtype, returned in feat's dtype like the C++ op."""
    cdt = V.compute_dtype(feat.dtype)
    xh = torch.nn.functional.normalize(feat.reshape(feat.shape[0], feat.shape[1], -1).to(cdt), dim=-1, eps=eps)
    return (xh.transpose(1, 2) @ xh).to(feat.dtype)
