"""What only a GPU can show about the CUDA kernels (skipped without one).

The rest of the suite runs every op test on CUDA too (conftest.FUSED); the kernels'
logic is also checked on the CPU through the emulation (test_cuda_emulated.py).
"""

from __future__ import annotations

import math

import pytest
import torch

import mtut_ops
from mtut_ops import reference as R

from .conftest import leaf, make_ce, make_feats
from .error_bounds import assert_cuda_grads_within_bound, cuda_operand_sqdist, loss_from_sqdist_bounds, sqdist_bound

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and mtut_ops.backends.has_cuda_kernels()),
    reason="needs a GPU and the extension built with its CUDA kernels (make test-gpu)",
)


@pytest.mark.parametrize("algo", ["direct", "gram"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bit_identical_run_to_run(algo, dtype):
    feats = leaf([f.to("cuda", dtype) for f in make_feats(3, [96, 130], [4, 7, 9], seed=1)])
    ce = make_ce(2, 3, device="cuda")
    runs = []
    for _ in range(3):
        for f in feats:
            f.grad = None
        S = mtut_ops.pairwise_sqdist(feats, algo=algo, backend="cuda")
        mtut_ops.ssa_loss(feats, ce, algo=algo, backend="cuda").backward()
        runs.append([S.detach().clone()] + [f.grad.clone() for f in feats])
    for later in runs[1:]:
        for a, b in zip(runs[0], later):
            assert torch.equal(a, b)


@pytest.mark.parametrize("algo", ["direct", "gram"])
def test_no_host_synchronization(algo):
    """The loss forward and backward never make the host wait for the GPU (in a training step
    that would stall the host behind the networks' whole forward): torch's sync debug mode
    raises on every synchronizing call of ATen's."""
    feats = leaf([f.to("cuda", torch.bfloat16) for f in make_feats(3, [96, 130], [4, 7, 9], seed=1)])
    ce = make_ce(2, 3, device="cuda")
    mtut_ops.ssa_loss(feats, ce, algo=algo, backend="cuda").backward()  # (first-call setup)
    torch.cuda.set_sync_debug_mode("error")
    try:
        mtut_ops.ssa_loss(feats, ce, algo=algo, backend="cuda").backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("algo", ["direct", "gram"])
def test_side_stream_and_cuda_graphs(algo):
    """On a side stream, and captured by torch.compile(mode='reduce-overhead') (CUDA
    graphs), the results equal eager ones on the default stream."""
    feats = [f.to("cuda", torch.float32) for f in make_feats(2, [64, 80], [3, 8, 8], seed=2)]
    ce = make_ce(2, 2, device="cuda", dtype=torch.float32)
    eager = mtut_ops.ssa_loss(feats, ce, algo=algo, backend="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        on_side = mtut_ops.ssa_loss(feats, ce, algo=algo, backend="cuda")
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(on_side, eager)

    def step(fs, c):
        fs = [f.detach().requires_grad_() for f in fs]
        loss = mtut_ops.ssa_loss(fs, c, algo=algo, backend="cuda")
        return loss, torch.autograd.grad(loss, fs)

    compiled = torch.compile(step, mode="reduce-overhead")
    ref_loss, ref_grads = step(feats, ce)
    for _ in range(3):  # warm-up, record, replay
        loss, grads = compiled(feats, ce)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("algo", ["direct", "gram"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_with_1024_channels_stay_finite(algo, dtype):
    """C = 1024: the Gram norms reach C^2 ~ 1e6, past float16's range; accumulation in
    fp32/fp64 keeps everything finite, within the float32 bound of the exact S of the
    products' operands (python_tests/error_bounds.py)."""
    feats = [f.to("cuda", dtype) for f in make_feats(2, [1024, 1024], [2, 3, 3], seed=3)]
    S = mtut_ops.pairwise_sqdist(feats, algo=algo, backend="cuda")
    assert torch.isfinite(S).all()
    ref = cuda_operand_sqdist([f.cpu() for f in feats], algo, dtype if dtype == torch.bfloat16 else None)
    assert ((S.double().cpu() - ref).abs() <= sqdist_bound([1024, 1024], 18, torch.float32, algo, ref)).all()
    fs = leaf(feats)
    loss = mtut_ops.ssa_loss(fs, make_ce(2, 2, device="cuda"), algo=algo, backend="cuda")
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(f.grad).all() for f in fs)


@pytest.mark.parametrize(
    "algo, channels, spatial",
    [
        ("direct", [256, 256], [4, 7, 7]),
        ("gram", [64, 64], [16, 16, 16]),  # d = 4096: the blocks' at::bmm, on torch's TF32 choice
    ],
)
def test_tf32_only_when_torch_allows_it(algo, channels, spatial):
    d = math.prod(spatial)
    feats = [f.to("cuda", torch.float32) for f in make_feats(2, channels, spatial, seed=4 if algo == "direct" else 5)]
    ref = R.pairwise_sqdist([f.double().cpu() for f in feats])
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        exact = mtut_ops.pairwise_sqdist(feats, algo=algo, backend="cuda").double().cpu()
        torch.backends.cuda.matmul.allow_tf32 = True
        tf32 = mtut_ops.pairwise_sqdist(feats, algo=algo, backend="cuda").double().cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert ((exact - ref).abs() <= sqdist_bound(channels, d, torch.float32, algo, ref)).all()
    # cuBLAS rounds TF32 operands to nearest or truncates them (undocumented): one of the two
    # models must hold, and the result must follow the rounded operands (the TF32 path ran).
    fits = []
    for truncate in (False, True):
        staged = cuda_operand_sqdist([f.cpu() for f in feats], algo, "tf32", truncate=truncate)
        within = ((tf32 - staged).abs() <= sqdist_bound(channels, d, torch.float32, algo, staged)).all()
        fits.append(bool(within) and (tf32 - ref).abs().max() > 10 * (tf32 - staged).abs().max())
    assert any(fits)


def test_large_d_peak_memory():
    """N=6, C=480, 32x28x28 (d = 25088): one fp32 K per sample would be 2.5 GB, the
    reference needs tens of GB. Forward + backward must stay within O(N M C^2) beyond
    the inputs and their gradients."""
    N, C, spatial = 6, 480, (32, 28, 28)
    g = torch.Generator(device="cuda").manual_seed(0)
    feats = [torch.randn(N, C, *spatial, device="cuda", generator=g).requires_grad_() for _ in range(2)]
    ce = torch.tensor([[2.0, 1.0] * 3, [1.0, 2.0] * 3], device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = mtut_ops.ssa_loss(feats, ce, backend="cuda")  # auto -> gram
    loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    inputs = sum(f.numel() * f.element_size() for f in feats)
    gram = N * (2 * C) ** 2 * 4
    assert torch.isfinite(loss) and all(torch.isfinite(f.grad).all() for f in feats)
    # the gradients (the size of the inputs) are returned, finished in place; the rest is
    # Gram blocks and their scaled temporaries
    assert extra <= inputs + 8 * gram + 64 * 2**20, (extra, inputs, gram)
    assert extra < 4 * spatial[0] ** 2 * (28 * 28) ** 2  # far below one d x d fp32 matrix per sample


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "padded_rows"])
def test_gram_layouts_on_cublas(layout):
    """The gram forward's blocks (one at::bmm each into the kept buffer, the maps read
    without a copy in each layout) against the fp64 reference, forward and backward."""
    N, channels, spatial = 2, [48, 72], [16, 16, 16]  # d = 4096: a long contraction
    feats = [f.cuda() for f in make_feats(N, channels, spatial, seed=4)]
    if layout == "channels_last":
        feats = [f.movedim(1, -1).contiguous().movedim(-1, 1) for f in feats]
    elif layout == "padded_rows":
        feats = [torch.nn.functional.pad(f.flatten(2), (0, 8))[..., :4096].unflatten(2, spatial) for f in feats]
    ref = leaf([f.cpu() for f in feats])
    S_ref = R.pairwise_sqdist(ref)
    S = mtut_ops.pairwise_sqdist(feats, algo="gram", backend="cuda")
    torch.testing.assert_close(S.cpu(), S_ref.detach(), rtol=1e-9, atol=1e-9 * S_ref.abs().max().item())
    ce = make_ce(2, N)
    R.ssa_loss(ref, ce).backward()
    got = leaf(feats)
    mtut_ops.ssa_loss(got, ce.cuda(), algo="gram", backend="cuda").backward()
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=1e-8, atol=1e-10 * (1 + b.grad.abs().max().item()))


@pytest.mark.parametrize("algo", ["gram", "direct"])
@pytest.mark.parametrize("M", [2, 3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "padded_rows"])
def test_student_products_on_cublas(layout, M, algo):
    """The backward's student products (pointer-array cuBLAS products over the rows with
    weight, picked on the GPU) against the fp64 reference in each layout cuBLAS reads without a
    copy, and a broken promise (a dense weight, students = 1) gives NaN rows, not numbers: the
    emulation checks the slots, only a GPU the transposes, leading dimensions and beta."""
    N, spatial = 4, [4, 8, 8]
    feats = [f.cuda() for f in make_feats(N, [40] * M, spatial, seed=12)]
    if layout == "channels_last":
        feats = [f.movedim(1, -1).contiguous().movedim(-1, 1) for f in feats]
    elif layout == "padded_rows":
        feats = [torch.nn.functional.pad(f.flatten(2), (0, 8))[..., :256].unflatten(2, spatial) for f in feats]
    ce = make_ce(M, N)
    ref = leaf([f.cpu() for f in feats])
    R.ssa_loss(ref, ce).backward()
    got = leaf(feats)
    mtut_ops.ssa_loss(got, ce.cuda(), algo=algo, backend="cuda").backward()
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=1e-8, atol=1e-10 * (1 + b.grad.abs().max().item()))
    weight = torch.rand(N, M, M, dtype=torch.float64, device="cuda") + 0.1  # every row a student
    none = torch.empty(0, dtype=torch.float64, device="cuda")
    one = torch.ops.mtut.sqdist_backward(feats, none, weight, 1e-8, algo, [True] * M, 1)
    every = torch.ops.mtut.sqdist_backward(feats, none, weight, 1e-8, algo, [True] * M, 0)
    assert not every[0].isnan().any()  # (another batch count: cuBLAS may pick another kernel)
    torch.testing.assert_close(one[0], every[0], rtol=1e-10, atol=1e-12 * every[0].abs().max().item())
    assert all(g.isnan().all() for g in one[1:])


@pytest.mark.parametrize("algo", ["gram", "direct"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("case", ["odd_cd", "storage_offset"])
def test_unaligned_inputs_on_cublas(case, dtype, algo):
    """Inputs whose student products would read or write misaligned pointers (C d = 4 x 75:
    the gradient's samples 150 bytes apart in bf16; maps one element into their storage) run
    without a fault (the host's alignment proof sends them to ATen) and within the bound."""
    N, C, M = 4, 4, 2
    feats = [f.to(dtype) for f in make_feats(N, [C] * M, [3, 25], seed=21)]
    ce = make_ce(M, N)
    ref = leaf([f.double() for f in feats])
    R.ssa_loss(ref, ce, lambda_=0.5).backward()
    got = [f.cuda() for f in feats]
    if case == "storage_offset":  # (the copy to the GPU made them contiguous again)
        got = [torch.cat([torch.zeros(1, dtype=dtype, device="cuda"), f.flatten()])[1:].view(f.shape) for f in got]
        assert all(g.data_ptr() % 16 != 0 for g in got)
    got = leaf(got)
    mtut_ops.ssa_loss(got, ce.float().cuda(), lambda_=0.5, algo=algo, backend="cuda").backward()
    torch.cuda.synchronize()
    assert_cuda_grads_within_bound([g.grad for g in got], ref, feats, ce, algo, dtype)


@pytest.mark.parametrize("M", [2, 3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_folded_student_products_bf16_on_cublas(layout, M):
    """bf16, equal channel counts, gram: the folded student products (per strip of positions
    one cuBLAS product over the stacked [X_0; X_1 - X_0] (M = 2) or [X_m; X_n - X_m] (M = 3),
    K = M C, bf16 output with the gradient's leading dimension) within the bf16 bound of the
    fp64 reference; d = 16384 is cut into strips of 2^24 / (N M C x stacks) positions (rounded
    to 256): two for M = 2 (one stack), ten for M = 3 (three)."""
    N, C, spatial = 4, 256, [4, 64, 64]
    feats = [f.to(torch.bfloat16) for f in make_feats(N, [C] * M, spatial, seed=13)]
    if layout == "channels_last":
        feats = [f.movedim(1, -1).contiguous().movedim(-1, 1) for f in feats]
    ce = make_ce(M, N)
    ref = leaf([f.double() for f in feats])
    R.ssa_loss(ref, ce, lambda_=0.5).backward()
    got = leaf([f.cuda() for f in feats])
    mtut_ops.ssa_loss(got, ce.float().cuda(), lambda_=0.5, algo="gram", backend="cuda").backward()
    assert_cuda_grads_within_bound([g.grad for g in got], ref, feats, ce, "gram", torch.bfloat16)


@pytest.mark.parametrize("cap", [None, 0.02])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_from_sqdist_kernels_on_the_gpu(dtype, cap):
    """The fused loss kernels (one block each way) against the fp64 loss of the same S and
    ce and its autograd gradient, and bit-identical from run to run."""
    g = torch.Generator().manual_seed(0)
    S = (torch.rand(300, 3, 3, generator=g, dtype=torch.float64) * 3).to(dtype)
    ce = (torch.rand(3, 300, generator=g, dtype=torch.float64) * 2).to(dtype)
    args = (2.0, 0.5, "rms", 49, cap)
    S_ref = S.double().requires_grad_()
    (G_ref,) = torch.autograd.grad(R.ssa_loss_from_sqdist(S_ref, ce.double(), *args), S_ref)
    loss_err, grad_rel = loss_from_sqdist_bounds(S, ce, 2.0, 0.5, "rms", 49, dtype)
    Sc = S.cuda().requires_grad_()
    runs = []
    for _ in range(2):
        L = torch.ops.mtut.ssa_loss_from_sqdist(Sc, ce.cuda(), *args)
        (G,) = torch.autograd.grad(L, Sc)
        runs.append((L, G))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    L_ref = R.ssa_loss_from_sqdist(S.double(), ce.double(), *args)
    assert (L.double().cpu() - L_ref).abs().item() <= loss_err
    assert ((G.double().cpu() - G_ref).abs() <= grad_rel * G_ref.abs()).all()
