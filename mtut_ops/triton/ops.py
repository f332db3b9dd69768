"""The triton backend's ops, registered in the mtut namespace:

    torch.ops.mtut.triton_sqdist_forward(Tensor[] feats, float eps, str algo, bool directed,
                                         bool for_backward) -> (Tensor, Tensor)
    torch.ops.mtut.triton_sqdist_backward(Tensor[] feats, Tensor saved, Tensor weight, float eps,
                                          str algo, bool[] needs_grad) -> Tensor[]

with the contracts of their C++ namesakes sqdist_forward / sqdist_backward
(csrc/mtut_ops.cpp); the triton kernels keep nothing for the backward (``saved`` is
empty: the Gram tiles are recomputed there). They get the same autograd formulas, vmap
rules and double-backward refusal as the C++ ops (mtut_ops._registration), and the loss
is the same C++ op over their distances: ``torch.ops.mtut.ssa_loss_from_sqdist`` (one fused
kernel each way on CUDA when the extension has its CUDA kernels, ATen ops otherwise).

Each op is a ``torch.library.triton_op`` whose launches go through ``wrap_triton``, so
torch.compile traces into the kernels. The helpers that launch kernels are called by
plain name: that is how torch finds each op's kernels for the keys of its compile caches.

Under the interpreter (TRITON_INTERPRET=1) the ops are ``torch.library.custom_op``s
with explicit fake implementations instead: torch's wrap_triton hands interpreted kernels
back unwrapped, so a triton_op could not be traced there; torch.compile then sees the
op as one opaque node.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _torch_private as P
from .. import _validation as V
from .._registration import register_sqdist
from ._common import INTERPRETED, check_device, normalize_backward, pack, pair_tables, to_square
from .direct import direct_backward, direct_forward
from .gram import gram_backward, gram_forward

# ------------------------------------------------------------------ validation


def _check_sqdist(feats, eps, algo) -> V.FeatInfo:
    info = V.check_feats(feats)
    V.check_eps(eps)
    V.check_algo(algo)
    check_device(info)
    return info


def _check_backward(feats, weight, eps, algo, needs_grad) -> V.FeatInfo:
    info = _check_sqdist(feats, eps, algo)
    V.check_weight(weight, info)
    V.check_needs_grad(needs_grad, info)
    return info


# ------------------------------------------------------------------ ops


def triton_sqdist_forward(
    feats: list[torch.Tensor], eps: float, algo: str, directed: bool, for_backward: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    info = _check_sqdist(feats, eps, algo)
    pk = pack(feats, info, eps)
    pairs, index = pair_tables(info.M, pk.z)
    if V.resolve_algo(algo, info.d, info.channels, "triton", info.dtype) == "direct":
        values = direct_forward(pk, pairs)
    else:
        values = gram_forward(pk)
    S = to_square(values, index).to(info.compute_dtype)
    return S, S.new_empty((0,))  # nothing kept: the backward recomputes its tiles


def triton_sqdist_backward(
    feats: list[torch.Tensor], saved: torch.Tensor, weight: torch.Tensor, eps: float, algo: str, needs_grad: list[bool]
) -> list[torch.Tensor]:
    info = _check_backward(feats, weight, eps, algo, needs_grad)
    pk = pack(feats, info, eps)
    if V.resolve_algo(algo, info.d, info.channels, "triton", info.dtype) == "direct":
        grad_xh = direct_backward(pk, weight, needs_grad)
    else:
        grad_xh = gram_backward(pk, weight, needs_grad)
    return normalize_backward(grad_xh, pk, feats, eps, needs_grad)


def _fake_sqdist_forward(feats, eps, algo, directed, for_backward):
    info = _check_sqdist(feats, eps, algo)
    S = feats[0].new_empty((info.N, info.M, info.M), dtype=info.compute_dtype)
    return S, S.new_empty((0,))


def _fake_sqdist_backward(feats, saved, weight, eps, algo, needs_grad):
    _check_backward(feats, weight, eps, algo, needs_grad)
    return [f.new_empty(f.shape) if need else f.new_empty((0,)) for f, need in zip(feats, needs_grad)]


def _register(fn, fake):
    """Either way the schema is inferred from fn's annotations (torch 2.11's triton_op ignores
    a schema= argument, so they are the one place that states it; test_triton.py checks it)."""
    name = "mtut::" + fn.__name__
    if INTERPRETED:
        op = torch.library.custom_op(name, fn, mutates_args=())
        op.register_fake(fake)
    else:
        # triton_op registers fn itself as the fake: it only runs torch ops and wrap_triton launches.
        op = torch.library.triton_op(name, fn, mutates_args=())
    _keep_out_of_autocast(name)
    return op


def _keep_out_of_autocast(qualname: str) -> None:
    """As every C++ mtut op (csrc/ssa_common.cpp:without_autocast): inside an autocast
    region the op runs as outside it."""
    for key in ("AutocastCPU", "AutocastCUDA"):
        keyset = P.dispatch_key_set(key)
        op = P.lookup_op(qualname)

        def kernel(*args, _op=op, _keyset=keyset):
            with P.ExcludeDispatchKeyGuard(_keyset):
                return _op(*args)

        _LIB.impl(qualname.split("::")[1], kernel, key)


_LIB = torch.library.Library("mtut", "FRAGMENT")
_register(triton_sqdist_forward, _fake_sqdist_forward)
_register(triton_sqdist_backward, _fake_sqdist_backward)
register_sqdist("mtut::triton_sqdist_forward", "mtut::triton_sqdist_backward", _LIB)


# ------------------------------------------------------------------ what mtut_ops.functional calls


def _for_backward(feats) -> bool:
    """As the C++ composites decide it (csrc/ssa_common.cpp:for_backward)."""
    return torch.is_grad_enabled() and any(f.requires_grad for f in feats)


def pairwise_sqdist(feats: list, eps: float, algo: str) -> torch.Tensor:
    return torch.ops.mtut.triton_sqdist_forward(feats, eps, algo, False, _for_backward(feats))[0]


def ssa_loss(
    feats: list,
    ce: torch.Tensor,
    beta: float,
    lambda_: float,
    distance: str,
    eps: float,
    algo: str,
    pair_cap: Optional[float],
) -> torch.Tensor:
    S = torch.ops.mtut.triton_sqdist_forward(feats, eps, algo, True, _for_backward(feats))[0]
    d = V.check_feats(feats).d
    return torch.ops.mtut.ssa_loss_from_sqdist(S, ce, beta, lambda_, distance, d, pair_cap)
