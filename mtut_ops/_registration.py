"""Fake (meta) implementations, autograd formulas and vmap rules of the torch.ops.mtut ops.

The schemas, kernels, composites and autocast rules are registered in C++ (csrc/); here
each backend op gets what torch.compile, autograd and torch.func need:

* a fake implementation (shapes only; the checks of ``_validation``);
* an autograd formula whose backward is itself a registered op, and, on every backward
  op, a formula that refuses double backward with a clear error;
* a vmap rule that folds the vmapped dimension into the batch N (every op is per sample).

The composites (``ssa_loss``, ``pairwise_sqdist``) need none of this: they decompose into
``sqdist_forward`` and ``ssa_loss_from_sqdist``. ``ssa_loss`` on CPU and CUDA tensors still
gets an autograd kernel, for speed: its two parts in one node (see the end of the file).

The autograd kernels are registered by :func:`register_autograd` below rather than by
``torch.library.register_autograd``, whose generated ``autograd.Function`` refuses the
``torch.func`` transforms (pytorch/pytorch#170834): ours builds a single-level node, as
functorch does for its own transform-local nodes, so ``torch.func.grad`` and
``vmap(grad(...))`` work over the ops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch

from . import _torch_private as P
from . import _validation as V

_NS = "mtut"
_lib = torch.library.Library(_NS, "FRAGMENT")  # the Autograd kernels registered here


# ------------------------------------------------------------------ autograd machinery


def _flatten(args: Sequence) -> tuple[list, list]:
    """Arguments -> (flat list, layout): a Tensor[] argument becomes its tensors, so that
    autograd sees every tensor as an input of the node."""
    flat, layout = [], []
    for a in args:
        if isinstance(a, (list, tuple)) and len(a) > 0 and all(isinstance(t, torch.Tensor) for t in a):
            layout.append(len(a))
            flat.extend(a)
        else:
            layout.append(None)
            flat.append(a)
    return flat, layout


def _unflatten(flat: Sequence, layout: list) -> list:
    out, i = [], 0
    for n in layout:
        if n is None:
            out.append(flat[i])
            i += 1
        else:
            out.append(list(flat[i : i + n]))
            i += n
    return out


def register_autograd(
    qualname: str,
    setup: Callable,
    backward: Callable,
    lib: torch.library.Library = _lib,
    *,
    compute: Optional[Callable] = None,
    keys: Sequence[str] = ("Autograd",),
) -> None:
    """The Autograd kernel of op ``qualname``.

    ``setup(ctx, args, output)`` saves what the backward needs (``args`` as the op takes
    them, Tensor[] as lists); ``backward(ctx, *grads)`` returns one gradient per argument
    (a list for a Tensor[] argument, None where there is none). ``ctx.needs_input_grad``
    is given in the same structure (a list of bools for a Tensor[] argument).

    ``compute(ctx, args) -> output``, when given, is what the node runs below autograd in
    place of the op and ``setup`` (it saves what the backward needs itself): a composite
    whose parts run in ONE node (one Python node each way, not one per part). ``keys``:
    the dispatch keys registered (``AutogradCPU`` etc. where the op's composite kernel
    must keep the others: the alias ``Autograd`` ranks below ``CompositeImplicitAutograd``)."""
    op = P.lookup_op(qualname)

    class Node(P.SingleLevelFunction):
        @staticmethod
        def forward(ctx, layout, *flat):
            args = _unflatten(flat, layout)
            ctx.layout = layout
            with P.AutoDispatchBelowAutograd():
                out = op(*args) if compute is None else compute(ctx, args)
            if compute is None:
                setup(ctx, args, out)
            # autograd.Function returns tensors or tuples of them, not lists (Tensor[] outputs)
            return tuple(out) if isinstance(out, list) else out

        @staticmethod
        def backward(ctx, *grads):
            ctx.needs = _unflatten(ctx.needs_input_grad[1:], ctx.layout)
            structured = backward(ctx, *grads)
            flat = []
            for n, g in zip(ctx.layout, structured):
                flat.extend([g] if n is None else (g if g is not None else [None] * n))
            return (None, *flat)

    returns_list = op._schema.returns[0].type.kind() == "ListType"

    def kernel(*args):
        if torch.is_grad_enabled():
            flat, layout = _flatten(args)
            needs_node = any(isinstance(t, torch.Tensor) and t.requires_grad for t in flat)
        else:
            needs_node = False  # (and no flattening: eval loops call the op often)
        if not needs_node:
            with P.AutoDispatchBelowAutograd():
                return op(*args)
        with P.enable_single_level_autograd_function():
            out = Node.apply(layout, *flat)
        return list(out) if returns_list else out

    for key in keys:
        # a custom_op (the triton backend's ops) comes with an Autograd kernel of its own: replace it
        P.impl_override(lib, qualname.split("::")[1], kernel, key)


def _no_saving(ctx, args, output):
    pass


def refuse_double_backward(qualname: str, of: str, lib: torch.library.Library = _lib) -> None:
    """Autograd kernel of a backward op: it runs, but differentiating it raises."""

    def backward(ctx, *grads):
        raise NotImplementedError(
            f"mtut: double backward of {of} is not supported (its backward op {qualname} has no derivative); "
            "differentiate the loss once (no create_graph=True through it), or use mtut_ops.reference"
        )

    register_autograd(qualname, _no_saving, backward, lib)


def sqdist_formulas(backward_op: Callable) -> tuple[Callable, Callable]:
    """(setup, backward) of an op (feats, eps, algo, directed, for_backward) -> (S, saved)
    whose first-argument partials are ``backward_op(feats, saved, weight, eps, algo, needs_grad)``."""

    def setup(ctx, args, output):
        feats, eps, algo, directed, _ = args
        S, saved = output
        ctx.save_for_backward(*feats, saved)
        ctx.mark_non_differentiable(saved)
        ctx.eps, ctx.algo, ctx.directed = eps, algo, directed

    def backward(ctx, grad_S, _grad_saved):
        *feats, saved = ctx.saved_tensors
        needs = list(ctx.needs[0])
        if grad_S is None or not any(needs):
            return None, None, None, None, None
        # directed: term (m, n) flows into X_m only (weight g); else S_mn = S_nm depends on
        # both inputs (weight g + g^T). The diagonal of the weight plays no part.
        weight = grad_S if ctx.directed else grad_S + grad_S.transpose(1, 2)
        grads = backward_op(feats, saved, weight, ctx.eps, ctx.algo, needs)
        # a modality that needs no gradient got an empty tensor and no work
        return [g if n else None for g, n in zip(grads, needs)], None, None, None, None

    return setup, backward


# ------------------------------------------------------------------ vmap machinery


def _fold(x: Optional[torch.Tensor], bdim: Optional[int], batch: int) -> Optional[torch.Tensor]:
    """[..B..] at bdim -> the batch B folded into dim 0 (N): [B * N, ...]."""
    if x is None:
        return None
    x = x.movedim(bdim, 0) if bdim is not None else x.expand(batch, *x.shape)
    return x.reshape(batch * x.shape[1], *x.shape[2:])


def _unfold(y: torch.Tensor, batch: int) -> torch.Tensor:
    return y.reshape(batch, y.shape[0] // batch, *y.shape[1:])


def _per_sample_outputs(outputs: Sequence[torch.Tensor], batch: int):
    """Unfolds each output; an empty tensor (nothing computed) stays unbatched."""
    out = [(_unfold(y, batch), 0) if y.numel() > 0 else (y, None) for y in outputs]
    return [y for y, _ in out], [d for _, d in out]


def _sqdist_vmap(op):
    def rule(info, in_dims, feats, eps, algo, directed, for_backward):
        B = info.batch_size
        S, saved = op([_fold(f, d, B) for f, d in zip(feats, in_dims[0])], eps, algo, directed, for_backward)
        outs, dims = _per_sample_outputs([S, saved], B)
        return tuple(outs), tuple(dims)

    return rule


def _sqdist_backward_vmap(op):
    def rule(info, in_dims, feats, saved, weight, eps, algo, needs_grad, *students):
        B = info.batch_size
        saved = _fold(saved, in_dims[1], B) if saved.numel() > 0 else saved
        # (the batch entries' samples become samples: a per-sample promise `students` still holds)
        grads = op(
            [_fold(f, d, B) for f, d in zip(feats, in_dims[0])],
            saved,
            _fold(weight, in_dims[2], B),
            eps,
            algo,
            needs_grad,
            *students,
        )
        return _per_sample_outputs(grads, B)

    return rule


def register_sqdist(forward_op: str, backward_op: str, lib: torch.library.Library = _lib) -> None:
    """Autograd formulas and vmap rules of a backend's (sqdist_forward, sqdist_backward) pair."""
    fwd = P.lookup_op(forward_op)
    bwd = P.lookup_op(backward_op)
    register_autograd(forward_op, *sqdist_formulas(lambda *a: bwd(*a)), lib)
    refuse_double_backward(backward_op, forward_op, lib)
    torch.library.register_vmap(forward_op, _sqdist_vmap(fwd), lib=lib)
    torch.library.register_vmap(backward_op, _sqdist_backward_vmap(bwd), lib=lib)


# ------------------------------------------------------------------ fakes of the C++ ops


@torch.library.register_fake(f"{_NS}::sqdist_forward")
def _sqdist_forward_fake(feats, eps, algo, directed, for_backward):
    info = V.check_feats(feats)
    V.check_eps(eps)
    V.check_algo(algo)
    S = feats[0].new_empty((info.N, info.M, info.M), dtype=info.compute_dtype)
    # What the kernels keep for the backward (V.saved_width): the Gram blocks (algorithm gram),
    # and on cuda the row norms and scales.
    backend = "cuda" if info.device.type == "cuda" else "cpu"
    width = V.saved_width(info.channels, V.resolve_algo(algo, info.d, info.channels, backend, info.dtype), backend)
    saved_shape = (info.N, width) if for_backward and width > 0 else (0,)
    return S, feats[0].new_empty(saved_shape, dtype=info.compute_dtype)


@torch.library.register_fake(f"{_NS}::sqdist_backward")
def _sqdist_backward_fake(feats, saved, weight, eps, algo, needs_grad, students=0):
    info = V.check_feats(feats)
    V.check_weight(weight, info)
    V.check_eps(eps)
    V.check_algo(algo)
    V.check_needs_grad(needs_grad, info)
    V.check_students(students)
    return [f.new_empty(f.shape) if need else f.new_empty((0,)) for f, need in zip(feats, needs_grad)]


@torch.library.register_fake(f"{_NS}::correlation")
def _correlation_fake(feat, eps):
    info = V.check_feats([feat, feat])
    V.check_eps(eps)
    return feat.new_empty((info.N, info.d, info.d))


@torch.library.register_fake(f"{_NS}::correlation_backward")
def _correlation_backward_fake(grad, feat, eps):
    V.check_feats([feat, feat])
    V.check_eps(eps)
    return feat.new_empty(feat.shape)


@torch.library.register_fake(f"{_NS}::focal_weight")
def _focal_weight_fake(ce, beta):
    V.check_focal_ce(ce, "ce")
    V.check_loss_args(beta, 0.0, None)
    M, N = ce.shape
    return ce.new_empty((N, M, M), dtype=V.compute_dtype(ce.dtype))


def _check_loss_from_sqdist(S, ce, beta, lambda_, distance, d, pair_cap):
    V.check_loss_args(beta, lambda_, pair_cap)
    V.check_distance(distance)
    if S.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"mtut: S must be a float32 or float64 tensor of squared distances, got {S.dtype}")
    if S.dim() != 3:
        raise ValueError(f"mtut: S must have shape [N, M, M], got shape {list(S.shape)}")
    V._value_check(S.shape[1] == S.shape[2], lambda: f"mtut: S must have shape [N, M, M], got shape {list(S.shape)}")
    V._value_check(
        S.shape[0] >= 1 and S.shape[1] >= 2,
        lambda: (
            f"mtut: S must have shape [N, M, M] with N >= 1 samples and M >= 2 modalities, got shape {list(S.shape)}"
        ),
    )
    V.check_ce(ce, V.FeatInfo(S.shape[0], S.shape[1], d, (), S.dtype, S.device), "ce")
    V._value_check(d >= 1, lambda: f"mtut: d (the number of positions) must be >= 1, got {d}")


@torch.library.register_fake(f"{_NS}::ssa_loss_from_sqdist")
def _ssa_loss_from_sqdist_fake(S, ce, beta, lambda_, distance, d, pair_cap):
    _check_loss_from_sqdist(S, ce, beta, lambda_, distance, d, pair_cap)
    return S.new_empty(())


@torch.library.register_fake(f"{_NS}::ssa_loss_from_sqdist_backward")
def _ssa_loss_from_sqdist_backward_fake(grad, S, ce, beta, lambda_, distance, d, pair_cap):
    _check_loss_from_sqdist(S, ce, beta, lambda_, distance, d, pair_cap)
    if grad.dim() != 0:
        raise ValueError(f"mtut: grad of the loss must be a scalar, got shape {list(grad.shape)}")
    return S.new_empty(S.shape)


# ------------------------------------------------------------------ autograd and vmap of the C++ ops

register_sqdist(f"{_NS}::sqdist_forward", f"{_NS}::sqdist_backward")


def _correlation_setup(ctx, args, output):
    feat, eps = args
    ctx.save_for_backward(feat)
    ctx.eps = eps


def _correlation_backward(ctx, grad):
    (feat,) = ctx.saved_tensors
    return torch.ops.mtut.correlation_backward(grad, feat, ctx.eps), None


register_autograd(f"{_NS}::correlation", _correlation_setup, _correlation_backward)
refuse_double_backward(f"{_NS}::correlation_backward", f"{_NS}::correlation")


def _focal_weight_backward(ctx, grad):
    return None, None  # rho is a constant weight: no gradient flows into the classification losses


register_autograd(f"{_NS}::focal_weight", _no_saving, _focal_weight_backward)


def _correlation_vmap(info, in_dims, feat, eps):
    return _unfold(torch.ops.mtut.correlation(_fold(feat, in_dims[0], info.batch_size), eps), info.batch_size), 0


def _correlation_backward_vmap(info, in_dims, grad, feat, eps):
    B = info.batch_size
    grad, feat = _fold(grad, in_dims[0], B), _fold(feat, in_dims[1], B)
    return _unfold(torch.ops.mtut.correlation_backward(grad, feat, eps), B), 0


def _focal_weight_vmap(info, in_dims, ce, beta):
    # ce [B, M, N] -> [M, B * N]: the samples of every batch entry side by side
    B, bdim = info.batch_size, in_dims[0]
    ce = ce.movedim(bdim, 0) if bdim is not None else ce.expand(B, *ce.shape)
    M, N = ce.shape[1], ce.shape[2]
    rho = torch.ops.mtut.focal_weight(ce.transpose(0, 1).reshape(M, B * N), beta)
    return rho.reshape(B, N, M, M), 0


torch.library.register_vmap(f"{_NS}::correlation", _correlation_vmap, lib=_lib)
torch.library.register_vmap(f"{_NS}::correlation_backward", _correlation_backward_vmap, lib=_lib)
torch.library.register_vmap(f"{_NS}::focal_weight", _focal_weight_vmap, lib=_lib)


def _loss_setup(ctx, args, output):
    S, ce, *ctx.loss_args = args
    ctx.save_for_backward(S, ce)


def _loss_backward(ctx, grad):
    S, ce = ctx.saved_tensors
    grad_S = torch.ops.mtut.ssa_loss_from_sqdist_backward(grad, S, ce, *ctx.loss_args) if ctx.needs[0] else None
    return grad_S, None, None, None, None, None, None  # no gradient into ce (rho is a constant weight)


register_autograd(f"{_NS}::ssa_loss_from_sqdist", _loss_setup, _loss_backward)
refuse_double_backward(f"{_NS}::ssa_loss_from_sqdist_backward", f"{_NS}::ssa_loss_from_sqdist")


def _batched(x: Optional[torch.Tensor], bdim: Optional[int], batch: int) -> torch.Tensor:
    return x.movedim(bdim, 0) if bdim is not None else x.expand(batch, *x.shape)


# The loss is a mean over the batch N, so the vmapped dimension cannot fold into N: one
# call per batch entry (vmap of the loss is rare; its parts' rules do the heavy work).
def _loss_vmap(info, in_dims, S, ce, *loss_args):
    B = info.batch_size
    S, ce = _batched(S, in_dims[0], B), _batched(ce, in_dims[1], B)
    return torch.stack([torch.ops.mtut.ssa_loss_from_sqdist(S[i], ce[i], *loss_args) for i in range(B)]), 0


def _loss_backward_vmap(info, in_dims, grad, S, ce, *loss_args):
    B = info.batch_size
    grad, S, ce = (_batched(t, dim, B) for t, dim in zip((grad, S, ce), in_dims))
    op = torch.ops.mtut.ssa_loss_from_sqdist_backward
    return torch.stack([op(grad[i], S[i], ce[i], *loss_args) for i in range(B)]), 0


torch.library.register_vmap(f"{_NS}::ssa_loss_from_sqdist", _loss_vmap, lib=_lib)
torch.library.register_vmap(f"{_NS}::ssa_loss_from_sqdist_backward", _loss_backward_vmap, lib=_lib)


# ------------------------------------------------------------------ the loss in one autograd node

# mtut::ssa_loss is a C++ composite of sqdist_forward and ssa_loss_from_sqdist: through
# autograd it would record both ops' Python nodes, and at small shapes (I3D's Mixed_5c) the
# host time of a Python node bounds the loss. On CPU and CUDA tensors it gets
# one node running the same two ops each way (the same bits); elsewhere (meta tensors, vmap's
# decomposition, no gradient) the composite runs. ce and the loss arguments are checked by
# ssa_loss_from_sqdist, after the distances (the functional API checks them first).


def _ssa_loss_compute(ctx, args):
    feats, ce, beta, lambda_, distance, eps, algo, pair_cap = args
    # (GradMode is off in here: the op's own for_backward test would say no)
    for_backward = any(f.requires_grad for f in feats)
    S, saved = torch.ops.mtut.sqdist_forward(feats, eps, algo, True, for_backward)  # directed: term (m, n) -> X_m
    loss_args = (beta, lambda_, distance, V._prod(feats[0].shape[2:]), pair_cap)
    loss = torch.ops.mtut.ssa_loss_from_sqdist(S, ce, *loss_args)
    ctx.save_for_backward(*feats, saved, S, ce)
    ctx.loss_args, ctx.eps, ctx.algo = loss_args, eps, algo
    return loss


def _ssa_loss_backward(ctx, grad):
    *feats, saved, S, ce = ctx.saved_tensors
    needs = list(ctx.needs[0])
    rest = (None,) * 7  # ce (rho is a constant weight) and the non-tensor arguments
    if not any(needs):
        return (None, *rest)
    grad_S = torch.ops.mtut.ssa_loss_from_sqdist_backward(grad, S, ce, *ctx.loss_args)
    # students = M - 1: the modality with the lowest ce has rho = 0 towards every other, so its
    # weight row is 0 (or NaN where S, ce or grad is not finite): the CUDA gram backward then
    # multiplies M - 1 rows per sample instead of M (for M = 2, half the products' work)
    grads = torch.ops.mtut.sqdist_backward(feats, saved, grad_S, ctx.eps, ctx.algo, needs, len(feats) - 1)
    return ([g if n else None for g, n in zip(grads, needs)], *rest)


register_autograd(
    f"{_NS}::ssa_loss", _no_saving, _ssa_loss_backward, compute=_ssa_loss_compute, keys=("AutogradCPU", "AutogradCUDA")
)
