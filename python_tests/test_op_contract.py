"""The ops under every way PyTorch calls them, on every backend that runs here:
autocast, double backward, torch.compile with dynamic shapes, vmap and torch.func,
frozen (no-grad) modalities, no recompute in the backward, the empty batch.

Values are compared with the fp64 reference (mtut_ops.reference) or, where the point is
that a way of calling changes nothing, bit for bit with the plain eager call.

Under the triton interpreter (make test-triton-interp: TRITON_INTERPRET=1 and
MTUT_TEST_BACKEND=triton) the same tests run on the triton backend.
"""

from __future__ import annotations

import collections
import warnings

import pytest
import torch

import mtut_ops
from mtut_ops import reference as R

from .conftest import leaf, make_ce, make_feats

ALGOS = ["direct", "gram"]
GEMMS = ("aten::mm", "aten::addmm_", "aten::addmm", "aten::bmm", "aten::baddbmm_", "aten::baddbmm")


def _loss(feats, ce, backend, algo, **kw):
    return mtut_ops.ssa_loss(feats, ce, lambda_=0.5, algo=algo, backend=backend, **kw)


def _profiled(fn, shapes=False):
    """The names of the dispatcher ops fn() ran (C++-internal calls included), counted;
    with ``shapes``, also the input shapes of every GEMM among them."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=shapes) as prof:
        fn()
    names = collections.Counter(e.name for e in prof.events())
    if not shapes:
        return names
    gemms = ("aten::mm", "aten::addmm_", "aten::mm.out")
    return names, [e.input_shapes for e in prof.events() if e.name in gemms]


def _ce_each_worse_somewhere(M, N, device, dtype=torch.float64):
    """Per-sample losses where every network is the worse one on some sample, so that
    every modality gets SSA gradient (the student-only gradient skips the better one)."""
    ce = torch.zeros(M, N, dtype=dtype)
    for b in range(N):
        ce[b % M, b] = 2.0
        ce[:, b] += torch.arange(M, dtype=dtype) * 0.1
    return ce.to(device)


# ------------------------------------------------------------------ autocast


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autocast_changes_nothing(backend_device, algo, dtype):
    """Inside torch.autocast the loss and its gradients are those of the plain call, bit for
    bit: the op runs in its own precision (without the autocast kernels, CPU bf16 autocast
    crashed inside the kernels' own at::mm, and on CUDA their at::bmm ran in 16 bits)."""
    backend, device = backend_device
    feats = [f.to(dtype) for f in make_feats(3, [6, 9], [3, 4], device=device, seed=2)]
    ce = make_ce(2, 3, device=device, dtype=torch.float32)
    runs = []
    for autocast in (False, True):
        xs = leaf(feats)
        with torch.autocast(device, dtype=torch.bfloat16 if device == "cpu" else torch.float16, enabled=autocast):
            L = _loss(xs, ce, backend, algo)
            L.backward()
            S = mtut_ops.pairwise_sqdist(feats, algo=algo, backend=backend)
        runs.append([L, S] + [x.grad for x in xs])
    assert runs[1][0].dtype == torch.float32
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_autocast_kernels_are_registered():
    """Every C++ op has its autocast kernel on CPU and CUDA (checked without a GPU)."""
    for op in (
        "correlation",
        "correlation_backward",
        "sqdist_forward",
        "sqdist_backward",
        "pairwise_sqdist",
        "focal_weight",
        "ssa_loss_from_sqdist",
        "ssa_loss_from_sqdist_backward",
        "ssa_loss",
    ):
        for key in ("AutocastCPU", "AutocastCUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mtut::{op}", key), (op, key)


# ------------------------------------------------------------------ double backward


@pytest.mark.parametrize("algo", ALGOS)
def test_double_backward_is_refused_clearly(backend_device, algo):
    """create_graph=True gives the right first derivative; differentiating it again raises
    (before: a silently wrong second-order gradient)."""
    backend, device = backend_device
    feats = make_feats(2, [3, 5], [2, 3], device=device)
    ce = make_ce(2, 2, device=device)
    calls = {
        "pairwise_sqdist": lambda xs: mtut_ops.pairwise_sqdist(xs, algo=algo, backend=backend).sum(),
        "ssa_loss": lambda xs: _loss(xs, ce, backend, algo),
        "correlation": lambda xs: mtut_ops.correlation(xs[0], backend=backend).pow(2).sum(),
    }
    for name, fn in calls.items():
        xs, ref = leaf(feats), leaf(feats)
        first = torch.autograd.grad(fn(xs), xs, create_graph=True, allow_unused=True)
        plain = torch.autograd.grad(fn(ref), ref, allow_unused=True)
        for a, b in zip(first, plain):
            assert (a is None and b is None) or torch.equal(a.detach(), b)
        used = [g for g in first if g is not None and g.requires_grad]
        assert used, name
        with pytest.raises(NotImplementedError, match=r"double backward of mtut::\w+ is not supported"):
            torch.autograd.grad(sum(g.pow(2).sum() for g in used), xs, allow_unused=True)


# ------------------------------------------------------------------ torch.compile, dynamic shapes


@pytest.mark.parametrize("algo", ["auto", "direct", "gram"])
def test_compile_dynamic_shapes_one_graph(backend_device, algo):
    """torch.compile(fullgraph=True, dynamic=True) over the API: one compiled graph serves
    new N, C and d (within one regime of algo='auto'), and equals eager bit for bit."""
    import torch._dynamo.testing

    backend, device = backend_device
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    step = torch.compile(
        lambda fs, ce: mtut_ops.ssa_loss(fs, ce, lambda_=0.5, algo=algo, pair_cap=10.0, backend=backend),
        fullgraph=True,
        dynamic=True,
        backend=counter,
    )
    # (N, C, spatial): all in auto's direct regime (d (C + 2) <= C^2); no two sizes of a call equal (duck
    # sizing would tie them) and none equal to M = 2
    compiles = []
    for N, C, spatial in [(3, 20, (4, 5)), (5, 24, (6, 7)), (7, 30, (6, 8))]:
        feats = make_feats(N, [C, C + 4], list(spatial), device=device, dtype=torch.float32, seed=C)
        ce = make_ce(2, N, device=device, dtype=torch.float32)
        eager, compiled = leaf(feats), leaf(feats)
        L = mtut_ops.ssa_loss(eager, ce, lambda_=0.5, algo=algo, pair_cap=10.0, backend=backend)
        Lc = step(compiled, ce)
        assert torch.equal(L, Lc)
        L.backward()
        Lc.backward()
        for a, b in zip(eager, compiled):
            assert torch.equal(a.grad, b.grad)
        compiles.append(counter.frame_count)
    assert compiles[0] >= 1 and compiles[1:] == compiles[:1] * 2, compiles  # no recompile for new shapes


def test_compile_mark_dynamic(backend_device):
    """mark_dynamic inputs (torch.ops.mtut.ssa_loss itself for the C++ backends): no
    recompile for a new d."""
    import torch._dynamo.testing

    backend, device = backend_device
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")

    def loss(fs, ce):
        if backend in ("cpu", "cuda"):
            return torch.ops.mtut.ssa_loss(fs, ce, 2.0, 0.5, "rms", 1e-8, "gram", None)
        return mtut_ops.ssa_loss(fs, ce, beta=2.0, lambda_=0.5, distance="rms", eps=1e-8, algo="gram", backend=backend)

    step = torch.compile(loss, fullgraph=True, backend=counter)
    compiles = []
    for d in (7, 9, 11):
        feats = leaf(make_feats(3, [4, 6], [d], device=device, seed=d))
        for f in feats:
            torch._dynamo.mark_dynamic(f, 2)
        ce = make_ce(2, 3, device=device)
        L = step(feats, ce)
        torch.testing.assert_close(L, R.ssa_loss([f.detach() for f in feats], ce, lambda_=0.5), rtol=1e-12, atol=0)
        L.backward()
        compiles.append(counter.frame_count)
    assert compiles[0] >= 1 and compiles[1:] == compiles[:1] * 2, compiles


# ------------------------------------------------------------------ vmap and torch.func


def test_vmap_folds_into_the_batch(backend_device):
    """vmap over every API function matches a loop over the vmapped dimension, with no
    per-example fallback (its warning is an error here)."""
    backend, device = backend_device
    B, N = 3, 2
    xa, xb = (torch.randn(B, N, c, 2, 3, dtype=torch.float64, device=device) for c in (3, 5))
    ce = torch.rand(B, 2, N, dtype=torch.float64, device=device) * 3
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*performance drop.*")
        S = torch.vmap(lambda a, b: mtut_ops.pairwise_sqdist([a, b], backend=backend))(xa, xb)
        L = torch.vmap(lambda a, b, c: mtut_ops.ssa_loss([a, b], c, lambda_=0.5, backend=backend))(xa, xb, ce)
        K = torch.vmap(lambda a: mtut_ops.correlation(a, backend=backend))(xa)
        rho = torch.vmap(lambda c: mtut_ops.focal_weight(c, backend=backend))(ce)
    for i in range(B):
        torch.testing.assert_close(S[i].cpu(), R.pairwise_sqdist([xa[i].cpu(), xb[i].cpu()]), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(
            L[i].cpu(), R.ssa_loss([xa[i].cpu(), xb[i].cpu()], ce[i].cpu(), lambda_=0.5), rtol=1e-10, atol=1e-14
        )
        torch.testing.assert_close(K[i].cpu(), R.correlation(xa[i].cpu()), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rho[i].cpu(), R.focal_weight(ce[i].cpu()), rtol=1e-12, atol=0)


def test_func_grad_and_vmap_of_grad(backend_device):
    """torch.func.grad equals autograd's student-only gradient; vmap(grad) gives the
    per-example gradients."""
    backend, device = backend_device
    B = 3
    xa, xb = (torch.randn(B, 2, c, 3, 2, dtype=torch.float64, device=device) for c in (4, 3))
    ce = _ce_each_worse_somewhere(2, 2, device).expand(B, 2, 2).contiguous()

    def loss(a, b, c):
        return mtut_ops.ssa_loss([a, b], c, lambda_=0.5, backend=backend)

    per_example = torch.vmap(torch.func.grad(loss, argnums=(0, 1)))(xa, xb, ce)
    for i in range(B):
        a, b = leaf([xa[i].cpu(), xb[i].cpu()])
        R.ssa_loss([a, b], ce[i].cpu(), lambda_=0.5).backward()
        g = torch.func.grad(loss, argnums=(0, 1))(xa[i], xb[i], ce[i])
        for ours, vm, ref in zip(g, (per_example[0][i], per_example[1][i]), (a.grad, b.grad)):
            torch.testing.assert_close(ours.cpu(), ref, rtol=1e-9, atol=1e-14)
            torch.testing.assert_close(vm.cpu(), ref, rtol=1e-9, atol=1e-14)


# ------------------------------------------------------------------ frozen modalities, no recompute


@pytest.mark.parametrize("algo", ALGOS)
def test_frozen_modality_gets_no_gradient_work(backend_device, algo):
    """A frozen teacher (features that do not require grad): the student's gradient is
    the same bits as with both trainable, the teacher's .grad stays None, the backward op
    computes nothing for it (an empty result), and the backward runs fewer GEMMs."""
    backend, device = backend_device
    feats = make_feats(4, [6, 9], [3, 5], device=device, seed=5)
    ce = _ce_each_worse_somewhere(2, 4, device)
    both = leaf(feats)
    L_both = _loss(both, ce, backend, algo)
    student, teacher = leaf(feats[:1])[0], feats[1]
    L_frozen = _loss([student, teacher], ce, backend, algo)
    assert torch.equal(L_both, L_frozen)
    work_both = _profiled(L_both.backward)
    work_frozen = _profiled(L_frozen.backward)
    assert torch.equal(student.grad, both[0].grad) and teacher.grad is None
    gemms = lambda work: sum(work[name] for name in GEMMS)  # noqa: E731
    if backend in ("cpu", "cuda"):  # the triton kernels are launched, not dispatched: no GEMM events
        assert 0 < gemms(work_frozen) < gemms(work_both), (work_frozen, work_both)

    forward = torch.ops.mtut.sqdist_forward if backend in ("cpu", "cuda") else torch.ops.mtut.triton_sqdist_forward
    backward = torch.ops.mtut.sqdist_backward if backend in ("cpu", "cuda") else torch.ops.mtut.triton_sqdist_backward
    _, saved = forward(feats, 1e-8, algo, True, True)
    weight = torch.ones(4, 2, 2, dtype=torch.float64, device=device)
    grads = backward(feats, saved, weight, 1e-8, algo, [True, False])
    assert grads[0].shape == feats[0].shape and grads[1].numel() == 0


@pytest.mark.parametrize("algo", ALGOS)
def test_backward_does_not_recompute_the_forward(backend_device, algo):
    """The loss's backward reuses the saved squared distances (no sqdist_forward in it);
    the cpu backend's Gram backward also reuses the blocks its forward kept (no GEMM that
    forms them again, only the ones that apply them)."""
    backend, device = backend_device
    feats = leaf(make_feats(3, [5, 7], [4, 4], device=device, seed=9))
    L = _loss(feats, _ce_each_worse_somewhere(2, 3, device), backend, algo)
    work, products = _profiled(L.backward, shapes=True)
    assert not any("sqdist_forward" in name for name in work), work
    assert sum(n for name, n in work.items() if "sqdist_backward" in name) >= 1
    if backend == "cpu" and algo == "gram":
        # A product that applies a kept block multiplies it [C_m, C_n] into rows [C_n, d];
        # one that forms a block again would multiply rows [C, d] by rows transposed [d, C].
        d = 16
        right = [shapes[-1] for shapes in products if len(shapes) >= 2 and len(shapes[-1]) == 2]
        assert right and all(r[1] == d for r in right), products
        assert not any(r[0] == d for r in right), products


# ------------------------------------------------------------------ the empty batch


def test_empty_batch_is_rejected_alike_by_kernels_and_fakes(backend_device):
    from torch._subclasses.fake_tensor import FakeTensorMode

    backend, device = backend_device
    feats = [torch.randn(0, 3, 4, device=device), torch.randn(0, 5, 4, device=device)]
    ce = torch.zeros(2, 0, device=device)
    forward = torch.ops.mtut.sqdist_forward if backend in ("cpu", "cuda") else torch.ops.mtut.triton_sqdist_forward
    cases = {
        "focal_weight": (lambda f, c: torch.ops.mtut.focal_weight(c, 2.0), r"N >= 1 samples"),
        "sqdist_forward": (lambda f, c: forward(f, 1e-8, "auto", True, False), r"feats\[0\] is empty"),
    }
    for call, pattern in cases.values():
        with pytest.raises(ValueError, match=pattern):
            call(feats, ce)
        with FakeTensorMode() as mode, pytest.raises(ValueError, match=pattern):
            call([mode.from_tensor(f) for f in feats], mode.from_tensor(ce))
