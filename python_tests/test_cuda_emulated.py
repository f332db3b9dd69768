"""The CUDA kernels of csrc/cuda, run on the CPU (python_tests/cuda_emulation/cuda_emulation.h).

The emulation runs every CUDA thread of a block as a host thread, with real barriers and
warp shuffles, and the cuBLAS products as CPU at::bmm on fp32-upcast operands (exact for
16-bit operands, as on the tensor cores). It checks what can go wrong without a GPU in
sight: the host code (the kept Gram blocks and their layout, the strips of K, the
coefficients and their per-sample factor, the rounded operands), the row-chunk and strip
indexing with ragged edges, the upper-triangle weights, the per-pair slots and the
fixed-order reductions of our kernels, and the normalization backward. It says nothing
about speed, races, or cuBLAS itself; python_tests run the real kernels on a GPU.

The properties every backend shares (edge cases, the op contract: autocast, vmap, frozen
modalities..., the accuracy against the reference) are the backend_device tests', which
run on these kernels as the backend ("cuda", "cpu") in a run of their own
(MTUT_TEST_BACKEND=cuda-emulated: make test-fast-cuda-emulated, make test-cuda-emulated;
cuda_emulation/__init__.py routes torch.ops.mtut to them). This file keeps what is
specific to the CUDA kernels: their host code, budgets, products and promises, called
through torch.ops.mtut_emulated.

Tolerances: the bounds of python_tests/error_bounds.py, against the exact S of the
operands the products see (error_bounds.cuda_operand_sqdist: the reference itself, except
the direct algorithm's bf16-rounded left operand).
"""

from __future__ import annotations

import pytest
import torch

from mtut_ops import _validation as V
from mtut_ops import reference as R

from . import cuda_emulation
from .conftest import leaf, make_ce, make_feats
from .error_bounds import assert_cuda_grads_within_bound, cuda_operand_sqdist, loss_from_sqdist_bounds, sqdist_bound

EPS = 1e-8


@pytest.fixture(scope="module")
def emulated():
    return Emulated(cuda_emulation.load())


class Emulated:
    """The emulated CUDA kernels as the tests call them: the distances, the backward op,
    and the loss's gradient as the composite op forms it (sqdist_forward's S through
    ssa_loss_from_sqdist, whose gradient w.r.t. S is the backward op's weight)."""

    def __init__(self, ops):
        self.ops = ops

    def pairwise_sqdist(self, feats, eps, algo):
        return self.ops.sqdist_forward(feats, eps, algo, False, False)[0]

    def sqdist_backward(self, feats, weight, eps, algo, needs_grad=None):
        needs = [True] * len(feats) if needs_grad is None else needs_grad
        return self.ops.sqdist_backward(feats, torch.empty(0), weight, eps, algo, needs)

    def ssa_loss_grads(self, feats, ce, algo, needs_grad=None, **loss_args):
        args = dict(beta=2.0, lambda_=0.5, distance="rms", pair_cap=None)
        args.update(loss_args)
        S, saved = self.ops.sqdist_forward(feats, EPS, algo, True, True)  # as autograd would: blocks kept
        S.requires_grad_()
        L = torch.ops.mtut.ssa_loss_from_sqdist(
            S, ce, args["beta"], args["lambda_"], args["distance"], feats[0][0, 0].numel(), args["pair_cap"]
        )
        (weight,) = torch.autograd.grad(L, S)
        needs = [True] * len(feats) if needs_grad is None else needs_grad
        # the promise mtut::ssa_loss's backward makes (the lowest-ce modality teaches, never learns)
        return self.ops.sqdist_backward(feats, saved, weight, EPS, algo, needs, len(feats) - 1)


DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
SHAPES = [
    # N, channels, spatial: d = 70 and 65 make the direct strips ragged (the emulated build's
    # strip budget is 3072 entries); C = 70 gives Gram blocks of 4900 entries (padded to
    # 4928 in the kept buffer); M = 4 runs 6 pairs and 10 blocks.
    (2, [5, 70], [2, 5, 7]),
    (1, [3, 40, 17], [65]),
    (2, [4, 9, 2, 6], [3, 3]),
    (1, [1, 2], []),  # d = 1
]


def operands_of(dtype):
    return torch.bfloat16 if dtype == torch.bfloat16 else None


@pytest.mark.parametrize("algo", ["direct", "gram"])
@pytest.mark.parametrize(
    "shape", SHAPES, ids=lambda s: f"N{s[0]}-C{'.'.join(map(str, s[1]))}-S{'x'.join(map(str, s[2]))}"
)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_pairwise_sqdist(emulated, algo, shape, dtype):
    N, channels, spatial = shape
    feats = [f.to(dtype) for f in make_feats(N, channels, spatial, seed=len(channels))]
    S = emulated.pairwise_sqdist(feats, EPS, algo)
    assert S.shape == (N, len(channels), len(channels))
    assert S.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    d = feats[0][0, 0].numel()
    ref = cuda_operand_sqdist(feats, algo, operands_of(dtype))
    err = (S.double() - ref).abs()
    assert (err <= sqdist_bound(channels, d, dtype, algo, ref)).all(), err.max()
    if operands_of(dtype) is not None and algo == "direct":
        # The rounded operands move S measurably; the kernels must follow them, not the exact rows.
        moved = (ref - R.pairwise_sqdist([f.double() for f in feats])).abs().max()
        if moved > 0:
            assert err.max() < 0.1 * moved, (err.max(), moved)
    assert torch.equal(S, S.transpose(1, 2)) and (S.diagonal(dim1=1, dim2=2) == 0).all()


def assert_sqdist_matches_reference(S, feats):
    """S of fp64 maps against the fp64 reference."""
    S_ref = R.pairwise_sqdist(feats)
    torch.testing.assert_close(S, S_ref, rtol=1e-9, atol=1e-9 * S_ref.abs().max().item())


def assert_backward_matches_reference(emulated, feats, kept, algo, seed):
    """sqdist_backward for the symmetric distances (a random weight g + g^T), from the kept
    blocks and without them, against autograd through the fp64 reference."""
    N, M = feats[0].shape[0], len(feats)
    g = torch.randn(N, M, M, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    ref = leaf(feats)
    (R.pairwise_sqdist(ref) * g).sum().backward()
    for saved in (kept, torch.empty(0, dtype=torch.float64)):
        grads = emulated.ops.sqdist_backward(feats, saved, g + g.transpose(1, 2), EPS, algo, [True] * M)
        for a, b in zip(grads, ref):
            torch.testing.assert_close(a, b.grad, rtol=1e-9, atol=1e-9 * b.grad.abs().max().item())


@pytest.mark.parametrize("algo", ["direct", "gram"])
def test_backward_ops_fp64(emulated, algo):
    """The distances, and sqdist_backward for the symmetric distances and for the loss,
    against the reference (autograd through it), on strided inputs, from the kept blocks
    and without them."""
    feats = make_feats(2, [5, 7, 3], [2, 35], seed=9, noncontiguous=True)
    S, kept = emulated.ops.sqdist_forward(feats, EPS, algo, False, True)
    assert_sqdist_matches_reference(S, feats)
    # 6 blocks, each padded to 64 entries (gram), then the 2 x 15 row norms and scales, padded to 64
    assert kept.shape == (2, (6 * 64 if algo == "gram" else 0) + 64)
    assert kept.shape[1] == V.saved_width([5, 7, 3], algo, "cuda")
    assert_backward_matches_reference(emulated, feats, kept, algo, seed=1)

    ce = make_ce(3, 2, seed=4)
    ref = leaf(feats)
    R.ssa_loss(ref, ce, lambda_=0.5, pair_cap=10.0).backward()
    grads = emulated.ssa_loss_grads(feats, ce, algo, pair_cap=10.0)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b.grad, rtol=1e-8, atol=1e-10 * (1 + b.grad.abs().max().item()))


@pytest.mark.parametrize("algo", ["direct", "gram"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_rows_without_weight_are_not_read(emulated, algo, dtype):
    """A (sample, modality) whose weights are all 0 (the better network of a pair, M = 2)
    gets gradient exactly 0 without its rows being read: with a NaN in the other
    network's map the products give that row NaN, and the normalization backward still
    writes 0 (the full formula would give 0 * NaN). The rows with weight are unchanged:
    NaN on the NaN sample, the values of a clean run on the other."""
    feats = [f.to(dtype) for f in make_feats(2, [5, 7], [3, 4], seed=7)]
    weight = torch.zeros(2, 2, 2, dtype=torch.float64)
    weight[:, 0, 1] = torch.tensor([0.7, 1.3])  # term (0, n = 1): only modality 0 is pulled
    clean = emulated.ops.sqdist_backward(feats, torch.empty(0, dtype=torch.float64), weight, EPS, algo, [True, True])
    feats[1][0, 3, 1, 2] = float("nan")
    grads = emulated.ops.sqdist_backward(feats, torch.empty(0, dtype=torch.float64), weight, EPS, algo, [True, True])
    assert torch.equal(grads[1], torch.zeros_like(grads[1])) and torch.equal(clean[1], grads[1])
    assert grads[0][0].isnan().all() and torch.equal(grads[0][1], clean[0][1]) and clean[0][1].abs().sum() > 0


@pytest.mark.parametrize("algo", ["direct", "gram"])
def test_backward_reads_the_forwards_row_norms(emulated, algo):
    """The backward takes the row norms and scales from `saved` (no pass over the inputs for
    them): the same bits as when it computes them again (an empty saved), and different
    ones when the saved scales are changed."""
    feats = make_feats(2, [5, 7], [3, 4], seed=4)
    _, saved = emulated.ops.sqdist_forward(feats, EPS, algo, True, True)
    weight = torch.rand(2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    kept = emulated.ops.sqdist_backward(feats, saved, weight, EPS, algo, [True, True])
    again = emulated.ops.sqdist_backward(feats, torch.empty(0, dtype=torch.float64), weight, EPS, algo, [True, True])
    assert all(torch.equal(a, b) for a, b in zip(kept, again))
    scales = saved.shape[1] - 64 + 12  # the scales of both modalities (after their 12 norms)
    tampered = saved.clone()
    tampered[:, scales : scales + 12] *= 2
    changed = emulated.ops.sqdist_backward(feats, tampered, weight, EPS, algo, [True, True])
    assert not any(torch.equal(a, b) for a, b in zip(changed, kept))


@pytest.mark.parametrize("algo", ["direct", "gram"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_forward_writes_every_entry(emulated, algo, dtype):
    """S, the saved buffer and the direct algorithm's partial sums are written whole by the
    kernels (no zero-fill launches): the emulation fills such buffers with NaN (common.cuh
    unwritten()), so an entry left out shows as NaN. Three modalities, strips of unequal
    length (the emulated strip budget) and a saved row with padding; the saved row is the
    norms, the scales, then zeros."""
    channels = [5, 7, 3]
    feats = [f.to(dtype) for f in make_feats(2, channels, [5, 7], seed=6)]
    S, saved = emulated.ops.sqdist_forward(feats, EPS, algo, True, True)
    assert not S.isnan().any() and torch.equal(S.diagonal(dim1=1, dim2=2), torch.zeros_like(S[:, 0]))
    assert saved.shape == (2, V.saved_width(channels, algo, "cuda")) and not saved.isnan().any()
    rows = sum(channels)
    tail = saved[:, saved.shape[1] - V.saved_width(channels, "direct", "cuda") :]
    r = torch.cat([f.reshape(2, c, -1).double() for f, c in zip(feats, channels)], dim=1).norm(dim=2)
    # fp64 sums of d = 35 squares in another order, sqrt and 1/r, then one rounding to saved's dtype
    rtol = torch.finfo(saved.dtype).eps / 2 + (35 + 2) * 2.0**-53
    torch.testing.assert_close(tail[:, :rows].double(), r, rtol=rtol, atol=0)
    torch.testing.assert_close(tail[:, rows : 2 * rows].double(), 1 / r, rtol=rtol, atol=0)
    assert torch.equal(tail[:, 2 * rows :], torch.zeros_like(tail[:, 2 * rows :]))


@pytest.mark.parametrize("layout", ["channels_last", "padded_rows"])
def test_gram_layouts(emulated, layout):
    """The gram forward's products read both layouts cuBLAS takes without a copy: channels
    contiguous (channels-last maps) and positions contiguous with rows longer than d.
    Distances and gradients (from the kept blocks and without) against the fp64 reference."""
    N, channels, spatial = 2, [5, 7, 3], [2, 35]
    feats = make_feats(N, channels, spatial, seed=9)
    if layout == "channels_last":
        feats = [f.movedim(1, -1).contiguous().movedim(-1, 1) for f in feats]
        assert all(f.stride(1) == 1 and f.stride(-1) == f.shape[1] for f in feats)
    else:
        feats = [torch.nn.functional.pad(f.flatten(2), (0, 3))[..., :70].unflatten(2, spatial) for f in feats]
        assert all(f.stride(-1) == 1 and f.stride(1) == 73 for f in feats)
    S, kept = emulated.ops.sqdist_forward(feats, EPS, "gram", False, True)
    assert_sqdist_matches_reference(S, feats)
    assert_backward_matches_reference(emulated, feats, kept, "gram", seed=1)


@pytest.mark.parametrize("noncontiguous", [False, True])
def test_gram_blocks_are_one_product_each(emulated, noncontiguous):
    """The forward's blocks are one at::bmm each over the samples, written into the kept
    buffer, whatever the maps' layout: channels [6, 6, 4] give six. Distances and gradients
    against the fp64 reference either way."""
    N, channels, spatial = 2, [6, 6, 4], [5, 7]
    feats = make_feats(N, channels, spatial, seed=12, noncontiguous=noncontiguous)
    emulated.ops.take_gemm_log()
    S, kept = emulated.ops.sqdist_forward(feats, EPS, "gram", False, True)
    assert emulated.ops.take_gemm_log() == ["DoublexDouble->Double"] * 6
    assert_sqdist_matches_reference(S, feats)
    assert_backward_matches_reference(emulated, feats, kept, "gram", seed=2)


def test_gram_square_sums_in_long_chunks(emulated):
    """Blocks large enough that a chunk of the square-sum pass (two waves on the emulated
    4-SM device: 64 blocks) gives threads four entries or more: the unrolled loop, its
    four sums and the ragged tail, against the fp64 reference; identical maps give S = 0."""
    feats = make_feats(2, [190, 200], [3, 5], seed=14)
    assert 190 * 200 * 2 // 64 >= 4 * 256
    assert_sqdist_matches_reference(emulated.pairwise_sqdist(feats, EPS, "gram"), feats)
    same = [feats[1], feats[1].clone()]
    S = emulated.pairwise_sqdist(same, EPS, "gram")
    assert torch.equal(S, torch.zeros_like(S))


# direct at d = 2100 emulates ~70 s of strips on 2 cores: the deep tier's
@pytest.mark.parametrize("algo", ["gram", pytest.param("direct", marks=pytest.mark.deep)])
def test_long_rows_in_segments(emulated, algo):
    """Rows long enough that the passes over them are cut into segments of blocks (on the
    emulated 4-SM device, d = 2100: the row norms in 16 segments, summed in order; the folded
    gram backward's last pass in 2): the saved norms within the fp64 summation bound, and
    distances and gradients against the fp64 reference."""
    feats = make_feats(2, [4, 4], [2100], seed=15)
    S, saved = emulated.ops.sqdist_forward(feats, EPS, algo, True, True)
    assert_sqdist_matches_reference(S, feats)
    tail = saved[:, saved.shape[1] - V.saved_width([4, 4], "direct", "cuda") :]
    r = torch.cat([f.reshape(2, 4, -1) for f in feats], dim=1).norm(dim=2)
    torch.testing.assert_close(tail[:, :8], r, rtol=(2100 + 2) * 2.0**-53, atol=0)
    ce = make_ce(2, 2, seed=6)
    ref = leaf(feats)
    R.ssa_loss(ref, ce, lambda_=0.5).backward()
    for a, b in zip(emulated.ssa_loss_grads(feats, ce, algo), ref):
        torch.testing.assert_close(a, b.grad, rtol=1e-8, atol=1e-10 * (1 + b.grad.abs().max().item()))


def test_long_rows_copied_four_at_a_time(emulated):
    """The gram backward's copies over long rows step four entries a thread at a time, then
    the ragged rest. The stacked bf16 strip (C = 1: N M C = 2 rows, 1536 positions within the
    emulated budget; a position left out is NaN) within the bound of the fp64 reference; the
    fp16 gradient's rounding pass over d = 2000 (its products run on fp32 copies into an fp32
    buffer) gives the fp32 inputs' gradient rounded, bit for bit."""
    feats = [f.to(torch.bfloat16) for f in make_feats(1, [1, 1], [2000], seed=16)]
    ce = make_ce(2, 1, seed=7)
    ref = leaf([f.double() for f in feats])
    R.ssa_loss(ref, ce, lambda_=0.5).backward()
    emulated.ops.take_gemm_log()
    emulated.ops.take_fallbacks()
    grads = emulated.ssa_loss_grads(feats, ce.float(), "gram")
    assert "BFloat16xBFloat16->BFloat16" in emulated.ops.take_gemm_log() and emulated.ops.take_fallbacks() == []
    assert_cuda_grads_within_bound(grads, ref, feats, ce, "gram", torch.bfloat16)

    half = [f.half() for f in make_feats(1, [2, 2], [2000], seed=16)]
    weight = torch.rand(1, 2, 2, generator=torch.Generator().manual_seed(3)) + 0.5
    g16 = emulated.sqdist_backward(half, weight, EPS, "gram")
    g32 = emulated.sqdist_backward([f.float() for f in half], weight, EPS, "gram")
    assert emulated.ops.take_fallbacks() == [] and all(g.abs().max() > 0 for g in g16)
    assert all(torch.equal(a, b.half()) for a, b in zip(g16, g32))


def test_backward_strips(emulated):
    """The direct backward in strips of rows: the emulated build's strip budget (3072
    entries, 7 rows, rounded to 8) cuts d = 203 into strips of 8 rows, the last one ragged."""
    feats = make_feats(1, [4, 3], [7, 29], seed=3)
    ce = torch.tensor([[1.0], [0.1]], dtype=torch.float64)
    ref = leaf(feats)
    R.ssa_loss(ref, ce, lambda_=0.5).backward()
    grads = emulated.ssa_loss_grads(feats, ce, "direct")
    torch.testing.assert_close(grads[0], ref[0].grad, rtol=1e-8, atol=1e-12 * ref[0].grad.abs().max().item())
    assert torch.equal(grads[1], torch.zeros_like(grads[1]))  # the better network gets nothing
    frozen = emulated.ssa_loss_grads(feats, ce, "direct", needs_grad=[True, False])
    assert torch.equal(frozen[0], grads[0]) and frozen[1].numel() == 0  # a frozen teacher: no work, same student


@pytest.mark.parametrize("algo", ["direct", "gram"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("channels", [[6, 9], [8, 8]], ids=["per-block", "students"])
def test_backward_low_precision_inputs(emulated, algo, dtype, channels):
    """float32 gradients are finished in place, float16/bfloat16 ones into a new tensor;
    a zero row (float32) takes the eps rule of the normalization backward. Equal channel
    counts take the gram backward's student products, the normalization backward folded into
    their weighted blocks (rounded alike; its eps rule too)."""
    feats = [f.to(dtype) for f in make_feats(2, channels, [5, 7], seed=6)]
    if dtype == torch.float32:
        feats[0][1, 2] = 0
    ce = make_ce(2, 2, seed=3)
    ref = leaf([f.double() for f in feats])
    R.ssa_loss(ref, ce, lambda_=0.5).backward()
    grads = emulated.ssa_loss_grads(feats, ce.float(), algo)
    assert_cuda_grads_within_bound(grads, ref, feats, ce, algo, dtype)


@pytest.mark.parametrize("M", [2, 3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_folded_student_products_bf16(emulated, M, layout):
    """bf16, equal channel counts, gram: the normalization backward folded into the weighted
    blocks and, per strip of positions, ONE product over the student's stacked right operand
    [X_m; X_n - X_m] (K = M C) that writes the bf16 gradient itself (no fp32 buffer); every
    strip (the emulated budget cuts d = 56 into several) within the bf16 bound, and rows
    without weight exactly 0. (C d = 448: the gradient's samples and the strips' offsets
    16-byte aligned, as the products need.)"""
    N, C, spatial = 4, 8, [2, 28]
    feats = [f.to(torch.bfloat16) for f in make_feats(N, [C] * M, spatial, seed=11)]
    if layout == "channels_last":
        feats = [f.movedim(1, -1).contiguous().movedim(-1, 1) for f in feats]
    ce = make_ce(M, N, seed=5)
    ce[:, 1] = 0.75  # sample 1: every network equally good, no student
    ref = leaf([f.double() for f in feats])
    R.ssa_loss(ref, ce, lambda_=0.5).backward()
    emulated.ops.take_gemm_log()
    emulated.pairwise_sqdist(feats, EPS, "gram")
    forward = len(emulated.ops.take_gemm_log())
    grads = emulated.ssa_loss_grads(feats, ce.float(), "gram")
    # the emulated build's strip budget: 3072 entries over the stacked operands of M C rows (one for
    # M = 2, else M), at least 16 positions wide (stack_strip_width)
    strips = -(-56 // max(16, 3072 // (N * M * (1 if M == 2 else M) * C)))
    assert strips > 1
    log = emulated.ops.take_gemm_log()
    assert log[forward:] == ["BFloat16xBFloat16->BFloat16"] * strips, log
    assert_cuda_grads_within_bound(grads, ref, feats, ce, "gram", torch.bfloat16)
    for a in grads:
        assert torch.equal(a[1], torch.zeros_like(a[1])) and a.abs().sum() > 0


def loss_weight(emulated, feats, ce, algo):
    """(saved, dL/dS) of the loss as mtut::ssa_loss forms them (blocks kept)."""
    S, saved = emulated.ops.sqdist_forward(feats, EPS, algo, True, True)
    S.requires_grad_()
    L = torch.ops.mtut.ssa_loss_from_sqdist(S, ce, 2.0, 0.5, "rms", feats[0][0, 0].numel(), None)
    return saved, torch.autograd.grad(L, S)[0]


@pytest.mark.parametrize("algo", ["gram", "direct"])
# M = 3 direct (~7 s each, emulated) in the deep tier; M = 2 direct keeps every layout fast
@pytest.mark.parametrize("M", [2, pytest.param(3, marks=pytest.mark.deep)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "padded_rows"])
def test_student_products(emulated, M, layout, algo):
    """Equal channel counts: the backward's products run over the students' rows only, over
    N (M - 1) entries (the loss's promise): gram, one pointer-array product a strip of
    positions (K = M C, the pair form) where the per-block path runs 2 M (M - 1); direct,
    one a strip (besides the strip's M products of K) where it ran M. The gradients against
    the fp64 reference (a tie of every ce on one sample: no student there, zero gradient),
    and the same bits as with a slot for every modality (students = 0)."""
    N, spatial = 4, [2, 35]
    feats = make_feats(N, [6] * M, spatial, seed=11)
    if layout == "channels_last":
        feats = [f.movedim(1, -1).contiguous().movedim(-1, 1) for f in feats]
    elif layout == "padded_rows":
        feats = [torch.nn.functional.pad(f.flatten(2), (0, 3))[..., :70].unflatten(2, spatial) for f in feats]
    ce = make_ce(M, N, seed=5)
    ce[:, 1] = 0.75  # sample 1: every network equally good
    ref = leaf(feats)
    R.ssa_loss(ref, ce, lambda_=0.5).backward()
    emulated.ops.take_gemm_log()
    emulated.pairwise_sqdist(feats, EPS, algo)
    forward = len(emulated.ops.take_gemm_log())
    grads = emulated.ssa_loss_grads(feats, ce, algo)
    if algo == "gram":  # one product a strip over M C stacked rows, one stack (M = 2) or M, at least 16 wide
        products = -(-70 // max(16, 3072 // (N * M * (1 if M == 2 else M) * 6)))
    else:  # the emulated build's strip budget: 3072 entries, rows rounded to a multiple of 8
        products = -(-70 // max(8, 3072 // (N * 70 * M) // 8 * 8)) * (M + 1)
    assert len(emulated.ops.take_gemm_log()) - forward == products
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b.grad, rtol=1e-8, atol=1e-10 * (1 + b.grad.abs().max().item()))
        assert torch.equal(a[1], torch.zeros_like(a[1])) and a.abs().sum() > 0
    saved, weight = loss_weight(emulated, feats, ce, algo)
    every = emulated.ops.sqdist_backward(feats, saved, weight, EPS, algo, [True] * M, 0)
    assert all(torch.equal(a, b) for a, b in zip(every, grads))


@pytest.mark.parametrize("algo", ["gram", "direct"])
@pytest.mark.parametrize("needs", [[False, True], [True, False, True]])
def test_student_products_with_frozen_modalities(emulated, needs, algo):
    """A modality that needs no gradient takes no slot: with fewer modalities to train than
    the promise (L = min(students, trained)), the slots go to the trained ones, students first."""
    M, N = len(needs), 5
    feats = make_feats(N, [5] * M, [3, 4], seed=2)
    ce = make_ce(M, N, seed=8)
    ref = [f.detach().requires_grad_(n) for f, n in zip(feats, needs)]
    R.ssa_loss(ref, ce, lambda_=0.5).backward()
    grads = emulated.ssa_loss_grads(feats, ce, algo, needs_grad=needs)
    for a, b, n in zip(grads, ref, needs):
        if n:
            torch.testing.assert_close(a, b.grad, rtol=1e-8, atol=1e-10 * (1 + b.grad.abs().max().item()))
        else:
            assert a.numel() == 0


@pytest.mark.parametrize("algo", ["gram", "direct"])
def test_student_promise_broken_or_nan(emulated, algo):
    """Rows whose weight is NaN take no slot (their gradient is NaN anyway); a student beyond
    the caller's promise gets a NaN gradient, never a wrong number; a promise of M is no
    promise (the same bits as students = 0)."""
    M, N = 3, 3
    feats = make_feats(N, [4] * M, [2, 5], seed=3)
    weight = torch.rand(N, M, M, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) + 0.1
    weight[0, 0, 2] = float("nan")  # sample 0: modality 0's row is NaN
    weight[0, 2] = 0  # and modality 2 is nobody's student: modality 1 is its only student
    none = torch.empty(0, dtype=torch.float64)
    every = emulated.ops.sqdist_backward(feats, none, weight, EPS, algo, [True] * M, 0)

    def same(a, b):  # the same bits, NaN where NaN
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0), b.nan_to_num(0))

    assert all(
        same(a, b) for a, b in zip(every, emulated.ops.sqdist_backward(feats, none, weight, EPS, algo, [True] * M, M))
    )
    one = emulated.ops.sqdist_backward(feats, none, weight, EPS, algo, [True] * M, 1)
    assert one[0][0].isnan().all() and every[0][0].isnan().all()
    assert torch.equal(one[1][0], every[1][0]) and one[1][0].abs().sum() > 0
    assert torch.equal(one[2][0], torch.zeros_like(one[2][0])) and torch.equal(one[2][0], every[2][0])
    # samples 1 and 2: three students each, one slot: modality 0 takes it, 1 and 2 are NaN
    assert torch.equal(one[0][1:], every[0][1:]) and not every[0][1:].isnan().any()
    assert one[1][1:].isnan().all() and one[2][1:].isnan().all()


def with_storage_offset(f):
    """The same values as a view one element into a bigger tensor: its base pointer 2, 4 or 8
    bytes past an aligned allocation."""
    flat = torch.cat([torch.zeros(1, dtype=f.dtype), f.flatten()])
    return flat[1:].view(f.shape)


@pytest.mark.parametrize(
    "case, algo, dtype, spatial, unaligned",
    [
        # C d = 4 x 75: the bf16 gradient's sample stride and rows, 150 bytes
        ("odd_cd", "gram", torch.bfloat16, [3, 25], "gram students"),
        ("odd_cd_control", "gram", torch.bfloat16, [4, 20], None),  # C d = 4 x 80: aligned, the folded path
        # the user's maps are the left operands of the direct student products; the gram ones read
        # their stacked copies (X_m; X_n - X_m) instead
        ("storage_offset", "gram", torch.float64, [4, 20], None),
        ("storage_offset", "direct", torch.float64, [4, 20], "direct students"),
        ("storage_offset", "gram", torch.bfloat16, [4, 20], None),
        # d = 70 in strips of 8 rows (the emulated budget, 5 rows, rounded up): the offsets i0 of
        # every strip and the last strip's E (6 rows: 840 bytes a sample in bf16, padded) are
        # aligned, so the products run
        ("last_strip", "direct", torch.float64, [2, 35], None),
        ("last_strip", "direct", torch.bfloat16, [2, 35], None),
        ("last_strip", "direct", torch.float32, [4, 19], None),
    ],
)
def test_unaligned_pointer_products_take_aten(emulated, case, algo, dtype, spatial, unaligned):
    """A student product (cublasGemmBatchedEx, pointers formed on the GPU) runs only where
    the host has proven every pointer and leading dimension 16-byte aligned; otherwise the
    backward takes its ATen path (counted by the emulation) with the same result. The
    emulated product itself raises on a misaligned pointer, as the GPU would fault."""
    N, C, M = 4, 4, 2
    feats = [f.to(dtype) for f in make_feats(N, [C] * M, spatial, seed=21)]
    if case == "storage_offset":
        feats = [with_storage_offset(f) for f in feats]
        assert all(f.storage_offset() == 1 for f in feats)
    ce = make_ce(M, N, seed=5)
    ce[:, 1] = 0.75  # a sample without a student
    ref = leaf([f.double() for f in feats])
    R.ssa_loss(ref, ce, lambda_=0.5).backward()
    emulated.ops.take_fallbacks()
    emulated.ops.take_gemm_log()
    grads = emulated.ssa_loss_grads(feats, ce.to(torch.float64 if dtype == torch.float64 else torch.float32), algo)
    log = emulated.ops.take_gemm_log()
    assert emulated.ops.take_fallbacks() == ([unaligned] if unaligned else []), case
    if dtype == torch.float64:
        for a, b in zip(grads, ref):
            torch.testing.assert_close(a, b.grad, rtol=1e-8, atol=1e-10 * (1 + b.grad.abs().max().item()))
    else:
        assert_cuda_grads_within_bound(grads, ref, feats, ce, algo, dtype)
    if case == "odd_cd_control":  # the folded bf16 products wrote the gradient
        assert "BFloat16xBFloat16->BFloat16" in log, log
    if case == "odd_cd":
        assert "BFloat16xBFloat16->BFloat16" not in log, log


@pytest.mark.parametrize("algo", ["direct", "gram"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_products_run_in_the_input_precision(emulated, algo, dtype):
    """The cuBLAS products' operand dtypes, forward and backward (what runs on tensor cores):
    bf16 inputs, every product on bf16 operands; fp16 inputs, the forward Gram blocks on fp16
    operands and the products whose operands carry the scales in fp32 (fp16's range); fp32 and
    fp64 inputs, their own dtype (fp32 becomes TF32 in cuBLAS exactly when torch allows it)."""
    feats = [f.to(dtype) for f in make_feats(2, [6, 9], [5, 7], seed=6)]
    emulated.ops.take_gemm_log()
    emulated.ssa_loss_grads(
        feats, make_ce(2, 2, seed=3).to(torch.float64 if dtype == torch.float64 else torch.float32), algo
    )
    log = emulated.ops.take_gemm_log()
    name = {torch.bfloat16: "BFloat16", torch.float16: "Half", torch.float32: "Float", torch.float64: "Double"}[dtype]
    out = "Double" if dtype == torch.float64 else "Float"
    own, fp32 = f"{name}x{name}->{out}", "FloatxFloat->Float"
    blocks = 3 if algo == "gram" else 0  # P_00, P_01, P_11 in the forward
    assert len(log) > blocks
    if dtype == torch.float16:
        assert log[:blocks] == [own] * blocks and set(log[blocks:]) == {fp32}, log
    else:
        assert set(log) == {own}, log


# ------------------------------------------------------------------ the loss over S


def loss_case(N, M, dtype, seed):
    """Distances [N, M, M] (0 on the diagonal and, for N > 1, at one pair: identical
    features) and per-sample losses [M, N], exact in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    S = torch.rand(N, M, M, generator=g, dtype=torch.float64) * 3
    S[:, range(M), range(M)] = 0
    if N > 1:
        S[0, 0, 1] = 0
    ce = torch.rand(M, N, generator=g, dtype=torch.float64) * 2
    return S.to(dtype), ce.to(dtype)


def cap_between_terms(terms):
    """A pair_cap below the largest term and above the others (half of it if it is the
    only positive one), far from every term, so rounding cannot change which are capped."""
    top = terms.flatten().unique()[-2:]  # sorted
    cap = (top.sum() / 2 if len(top) == 2 and top[0] > 0 else top[-1] / 2).item()
    assert ((terms - cap).abs() > 1e-6 * cap).all()
    return cap


@pytest.mark.parametrize("capped", [False, True], ids=["uncapped", "capped"])
@pytest.mark.parametrize("distance", ["rms", "fro2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("N, M", [(1, 2), (7, 3), (300, 5)])  # N = 300: more samples than threads
def test_loss_from_sqdist_kernels(emulated, N, M, dtype, distance, capped):
    """The cuda kernels of ssa_loss_from_sqdist and its backward (one block each), and the
    ATen arithmetic every other device runs, against the fp64 loss of the same S and ce and
    its autograd gradient, within error_bounds.loss_from_sqdist_bounds."""
    S, ce = loss_case(N, M, dtype, seed=N + M)
    beta, lambda_, d, g = 2.0, 0.5, 49, 1.5
    terms = R.pair_terms(S.double(), ce.double(), beta, lambda_, distance, d)
    cap = cap_between_terms(terms) if capped else None
    S_ref = S.double().requires_grad_()
    L_ref = R.ssa_loss_from_sqdist(S_ref, ce.double(), beta, lambda_, distance, d, cap)
    (G_ref,) = torch.autograd.grad(L_ref * g, S_ref)
    loss_err, grad_rel = loss_from_sqdist_bounds(S, ce, beta, lambda_, distance, d, dtype)
    args = (ce, beta, lambda_, distance, d, cap)
    for ops in (emulated.ops, torch.ops.mtut):
        L = ops.ssa_loss_from_sqdist(S, *args)
        assert L.dtype == dtype and L.shape == ()
        assert (L.double() - L_ref).abs().item() <= loss_err, (L.item(), L_ref.item(), loss_err)
        G = ops.ssa_loss_from_sqdist_backward(torch.tensor(g, dtype=dtype), S, *args)
        assert G.dtype == dtype and G.shape == S.shape
        err = (G.double() - G_ref).abs()
        assert (err <= grad_rel * G_ref.abs()).all(), (err / G_ref.abs()).nan_to_num().max()
    if capped:  # the capped pair passes no gradient, the others with a positive term do
        assert (G_ref[:, terms > cap] == 0).all() and (terms > cap).any()
        assert (G_ref[:, (terms > 0) & (terms < cap)] != 0).any(0).all()


def test_loss_from_sqdist_kernels_nan(emulated):
    """A NaN distance makes the loss NaN and its own gradient entry NaN, in the kernels as
    in the ATen arithmetic (with a cap too: the NaN pair passes zero gradient, times
    1 / sqrt(NaN)); the identical pair's entries (S == 0) get gradient 0."""
    S, ce = loss_case(4, 3, torch.float32, seed=3)
    S[1, 2, 0] = float("nan")
    # the kernels against the ATen arithmetic, both float32
    _, grad_rel = loss_from_sqdist_bounds(S.nan_to_num(), ce, 2.0, 0.5, "rms", 49, torch.float32, torch.float32)
    for cap in (None, 1e-3):
        args = (ce, 2.0, 0.5, "rms", 49, cap)
        assert emulated.ops.ssa_loss_from_sqdist(S, *args).isnan()
        assert torch.ops.mtut.ssa_loss_from_sqdist(S, *args).isnan()
        one = torch.tensor(1.0)
        G = emulated.ops.ssa_loss_from_sqdist_backward(one, S, *args)
        G_aten = torch.ops.mtut.ssa_loss_from_sqdist_backward(one, S, *args)
        assert G.isnan().nonzero().tolist() == [[1, 2, 0]]
        torch.testing.assert_close(G, G_aten, rtol=grad_rel, atol=0, equal_nan=True)
        assert (G[S == 0] == 0).all()
