"""torch.library.opcheck on every op, gradcheck in fp64, torch.compile(fullgraph=True)."""

from __future__ import annotations

import pytest
import torch

import mtut_ops
from mtut_ops import reference as R

from .conftest import leaf, make_ce, make_feats, needs_opcheck
from .error_bounds import loss_from_sqdist_bounds

ALGOS = ["direct", "gram"]


def _feats(device, noncontiguous=False, requires_grad=True):
    feats = make_feats(2, [3, 5], [2, 3], device=device, noncontiguous=noncontiguous)
    return leaf(feats) if requires_grad else feats


def _opcheck_backward_op(op, args):
    """opcheck of a backward op: with differentiable inputs all but the AOT test (which
    would take its refused double backward), then everything on detached inputs."""
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    detached = [
        [t.detach() for t in a]
        if isinstance(a, list) and a and isinstance(a[0], torch.Tensor)
        else a.detach()
        if isinstance(a, torch.Tensor)
        else a
        for a in args
    ]
    torch.library.opcheck(op, tuple(detached))


def _native(backend):
    if backend not in ("cpu", "cuda"):
        pytest.skip("torch.ops.mtut ops are the cpu/cuda backends")


@needs_opcheck
@pytest.mark.parametrize("directed", [False, True])
@pytest.mark.parametrize("noncontiguous", [False, True])
@pytest.mark.parametrize("algo", ALGOS)
def test_opcheck_sqdist_forward_and_backward(backend_device, algo, noncontiguous, directed):
    """Every opcheck test (schema, autograd registration, fake tensors, AOT dispatch with
    dynamic shapes), with inputs that require grad. The backward op is checked with
    differentiable inputs too (its autograd formula, the double-backward refusal, must be
    registered), except for AOT dispatch, which would differentiate it; that test runs on
    detached inputs."""
    backend, device = backend_device
    _native(backend)
    feats = _feats(device, noncontiguous)
    for for_backward in (False, True):
        torch.library.opcheck(torch.ops.mtut.sqdist_forward.default, (feats, 1e-8, algo, directed, for_backward))
    _, saved = torch.ops.mtut.sqdist_forward(feats, 1e-8, algo, directed, True)
    weight = torch.rand(2, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    for needs, students in (([True, True], ()), ([False, True], ()), ([True, True], (2,))):
        args = (feats, saved.detach(), weight, 1e-8, algo, needs, *students)  # (a dense weight: no promise)
        _opcheck_backward_op(torch.ops.mtut.sqdist_backward.default, args)
    torch.library.opcheck(torch.ops.mtut.pairwise_sqdist.default, (feats, 1e-8, algo))


@needs_opcheck
@pytest.mark.parametrize("algo", ALGOS)
def test_opcheck_triton_sqdist_forward_and_backward(backend_device, algo):
    """The triton backend's ops (triton_op on a GPU, custom ops under the interpreter):
    schema, autograd registration and fake tensors (its backward op takes no promise)."""
    backend, device = backend_device
    if backend != "triton":
        pytest.skip("torch.ops.mtut.triton_* are the triton backend")
    feats = _feats(device)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    for directed in (False, True):
        torch.library.opcheck(
            torch.ops.mtut.triton_sqdist_forward.default, (feats, 1e-8, algo, directed, True), test_utils=tests
        )
    weight = torch.rand(2, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    saved = torch.empty(0, dtype=torch.float64, device=device)
    for needs in ([True, True], [True, False]):
        torch.library.opcheck(
            torch.ops.mtut.triton_sqdist_backward.default, (feats, saved, weight, 1e-8, algo, needs), test_utils=tests
        )


def test_vmap_of_the_backward_op_passes_students_on(backend_device):
    """vmap of sqdist_backward with a promise (students = 1: one weighted row per sample, as
    the loss's backward makes for M = 2) equals the loop over the vmapped dimension."""
    backend, device = backend_device
    _native(backend)
    B, N = 3, 2
    xa, xb = (torch.randn(B, N, 4, 2, 3, dtype=torch.float64, device=device) for _ in range(2))
    weight = torch.zeros(B, N, 2, 2, dtype=torch.float64, device=device)
    weight[:, 0, 0, 1] = 0.7  # sample 0: modality 0 learns from 1; sample 1: 1 from 0
    weight[:, 1, 1, 0] = 1.3
    none = torch.empty(0, dtype=torch.float64, device=device)

    def backward(a, b, w):
        return torch.ops.mtut.sqdist_backward([a, b], none, w, 1e-8, "gram", [True, True], 1)

    batched = torch.vmap(backward)(xa, xb, weight)
    for i in range(B):
        for vm, one in zip(batched, backward(xa[i], xb[i], weight[i])):
            torch.testing.assert_close(vm[i], one, rtol=1e-12, atol=1e-14)
            assert one.abs().sum() > 0


@needs_opcheck
@pytest.mark.parametrize("cap", [None, 10.0])
@pytest.mark.parametrize("algo", ALGOS)
def test_opcheck_ssa_loss(backend_device, algo, cap):
    backend, device = backend_device
    _native(backend)
    feats, ce = _feats(device), make_ce(2, 2, device=device)
    torch.library.opcheck(torch.ops.mtut.ssa_loss.default, (feats, ce, 2.0, 0.5, "rms", 1e-8, algo, cap))
    S = torch.ops.mtut.pairwise_sqdist(feats, 1e-8, algo)
    for distance in ("rms", "fro2"):
        torch.library.opcheck(torch.ops.mtut.ssa_loss_from_sqdist.default, (S, ce, 2.0, 0.5, distance, 6, cap))
        grad = torch.tensor(1.5, dtype=S.dtype, device=device, requires_grad=True)
        _opcheck_backward_op(
            torch.ops.mtut.ssa_loss_from_sqdist_backward.default,
            (grad, S.detach().requires_grad_(), ce, 2.0, 0.5, distance, 6, cap),
        )


@pytest.mark.parametrize("cap", [None, 0.05])
@pytest.mark.parametrize("distance", ["rms", "fro2"])
def test_gradcheck_loss_from_sqdist(backend_device, distance, cap):
    """The loss over S is its own op with a backward op (one kernel each on cuda): its
    gradient is the derivative of its forward (gradcheck, fp64; the cap binds on some pairs
    at 0.05) and equals autograd through the reference arithmetic."""
    backend, device = backend_device
    _native(backend)
    g = torch.Generator().manual_seed(5)
    S = (torch.rand(4, 3, 3, generator=g, dtype=torch.float64) + 0.1).to(device).requires_grad_()
    ce = make_ce(3, 4, device=device)
    args = (ce, 2.0, 0.5, distance, 6, cap)
    assert torch.autograd.gradcheck(lambda s: torch.ops.mtut.ssa_loss_from_sqdist(s, *args), (S,))
    (got,) = torch.autograd.grad(torch.ops.mtut.ssa_loss_from_sqdist(S, *args), S)
    (want,) = torch.autograd.grad(R.ssa_loss_from_sqdist(S, *args), S)
    # both fp64, each within error_bounds' relative bound of the exact gradient (the cuda
    # kernel multiplies by reciprocals where ATen divides)
    _, rel = loss_from_sqdist_bounds(S.detach(), ce, 2.0, 0.5, distance, 6, torch.float64)
    assert ((got - want).abs() <= rel * want.abs()).all()
    if cap is not None:  # it binds: some pair passes no gradient
        assert ((want == 0).all(0) & (R.focal_weight(ce, 2.0) > 0).any(0)).any()


@needs_opcheck
def test_opcheck_correlation_and_focal_weight(backend_device):
    backend, device = backend_device
    _native(backend)
    feat = _feats(device, noncontiguous=True)[0]
    torch.library.opcheck(torch.ops.mtut.correlation.default, (feat, 1e-8))
    grad = torch.randn(2, 6, 6, dtype=torch.float64, device=device, requires_grad=True)
    _opcheck_backward_op(torch.ops.mtut.correlation_backward.default, (grad, feat, 1e-8))
    ce = make_ce(3, 4, device=device).requires_grad_()
    torch.library.opcheck(torch.ops.mtut.focal_weight.default, (ce, 2.0))


@pytest.mark.parametrize("algo", ALGOS)
def test_gradcheck(backend_device, algo):
    backend, device = backend_device
    feats = _feats(device)
    ce = make_ce(2, 2, device=device)
    assert torch.autograd.gradcheck(lambda *fs: mtut_ops.pairwise_sqdist(list(fs), algo=algo, backend=backend), feats)
    # The SSA gradient is the student-only one (X_n constant in term (m, n)). With
    # network m worse on every sample, term (m, n) is the only one that depends on X_m,
    # so there the student-only gradient is the true derivative that gradcheck measures.
    for m in range(2):
        ce = torch.tensor([[0.4, 0.9], [0.4, 0.9]], dtype=torch.float64, device=device)
        ce[m] += 0.7

        def loss_of(x, m=m, ce=ce):
            fs = [f.detach() for f in feats]
            fs[m] = x
            return mtut_ops.ssa_loss(fs, ce, lambda_=0.5, algo=algo, backend=backend)

        assert torch.autograd.gradcheck(loss_of, (feats[m],))
    assert torch.autograd.gradcheck(lambda f: mtut_ops.correlation(f, backend=backend), (feats[0],))


@pytest.mark.parametrize("algo", ALGOS)
def test_ssa_loss_is_one_autograd_node(backend_device, algo):
    """Through autograd, ssa_loss records ONE node (its parts, sqdist_forward and
    ssa_loss_from_sqdist, would record one each: twice the Python host time each way) that
    runs the same ops: the loss and every gradient are the parts' bits, a modality without
    requires_grad gets none, and the node keeps the forward's saved buffer."""
    backend, device = backend_device
    _native(backend)
    args = (2.0, 0.5, "rms", 1e-8, algo, 10.0)
    ce = make_ce(2, 2, device=device)

    def by_parts(fs):
        S, _ = torch.ops.mtut.sqdist_forward(fs, 1e-8, algo, True, True)
        return torch.ops.mtut.ssa_loss_from_sqdist(S, ce, 2.0, 0.5, "rms", 6, 10.0)

    for grads_of in ([0, 1], [1]):
        feats = _feats(device, requires_grad=False)
        fused = [f.detach().requires_grad_(m in grads_of) for m, f in enumerate(feats)]
        parts = [f.detach().requires_grad_(m in grads_of) for m, f in enumerate(feats)]
        L = torch.ops.mtut.ssa_loss(fused, ce, *args)
        leaves = [type(n).__name__ for n, _ in L.grad_fn.next_functions if n is not None]
        assert leaves == ["AccumulateGrad"] * len(grads_of), leaves
        kept = torch.ops.mtut.sqdist_forward(parts, 1e-8, algo, True, True)[1]
        assert L.grad_fn.saved_tensors[2].shape == kept.shape
        L_parts = by_parts(parts)
        assert torch.equal(L, L_parts)
        L.backward()
        L_parts.backward()
        for f, g in zip(fused, parts):
            assert (f.grad is None) == (g.grad is None)
            if g.grad is not None:
                assert torch.equal(f.grad, g.grad)
        with torch.no_grad():
            assert torch.equal(torch.ops.mtut.ssa_loss(fused, ce, *args), L_parts)


@pytest.mark.parametrize("algo", ["direct", "gram", "auto"])
def test_torch_compile_fullgraph_matches_eager(backend_device, algo):
    backend, device = backend_device
    torch._dynamo.reset()
    feats = _feats(device)
    ce = make_ce(2, 2, device=device)

    def step(fs, ce):
        return (
            torch.ops.mtut.ssa_loss(fs, ce, 2.0, 0.5, "rms", 1e-8, algo, 10.0)
            if backend in ("cpu", "cuda")
            else mtut_ops.ssa_loss(fs, ce, lambda_=0.5, algo=algo, pair_cap=10.0, backend=backend)
        )

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    eager_feats, comp_feats = leaf(feats), leaf(feats)
    L_eager = step(eager_feats, ce)
    L_comp = compiled(comp_feats, ce)
    torch.testing.assert_close(L_comp, L_eager, rtol=0, atol=0)
    L_eager.backward()
    L_comp.backward()
    for a, b in zip(comp_feats, eager_feats):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    torch.testing.assert_close(
        L_eager.cpu(), R.ssa_loss([f.cpu() for f in feats], ce.cpu(), lambda_=0.5, pair_cap=10.0)
    )


def test_compile_python_api_with_module(backend_device):
    """The nn.Module path compiles too (validation runs at trace time)."""
    backend, device = backend_device
    torch._dynamo.reset()
    crit = mtut_ops.SSALoss(lambda_=0.5, backend=backend)
    feats, ce = _feats(device), make_ce(2, 2, device=device)
    compiled = torch.compile(crit, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(feats, ce), crit(feats, ce), rtol=0, atol=0)


@pytest.mark.skipif(
    not (mtut_ops._extension.BUILD_INFO or {}).get("cuda_arch_list"),
    reason="built without the CUDA kernels (make gpu-static builds them and runs this test)",
)
def test_cuda_kernels_are_compiled_in():
    """A library built with the CUDA kernels (its build record says so: make test on a GPU
    machine; make gpu-static on a CPU one, i.e. CI) carries them, and it imports without a GPU."""
    assert mtut_ops.backends.has_cuda_kernels()
    for op in ("sqdist_forward", "sqdist_backward", "ssa_loss_from_sqdist", "ssa_loss_from_sqdist_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mtut::{op}", "CUDA"), op
    # the device-agnostic ops and the composites are registered once, for every device
    for op in (
        "correlation",
        "correlation_backward",
        "focal_weight",
        "ssa_loss_from_sqdist",
        "ssa_loss_from_sqdist_backward",
    ):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mtut::{op}", "CompositeExplicitAutograd"), op
    for op in ("pairwise_sqdist", "ssa_loss"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mtut::{op}", "CompositeImplicitAutograd"), op
