"""Pieces shared by the triton kernels: the interpreter switch, autotuning, input packing,
the normalization and its backward.

The kernels see the M feature maps as one stacked tensor ``z`` [N, C, d] (C = sum_m C_m,
modality m owning the channel rows ``offsets[m]:offsets[m+1]``), in the inputs' dtype,
plus a per-channel scale ``inv = 1 / max(||row||, eps)`` in the compute dtype. The
normalization is folded into the kernels through ``inv`` (Xh = z * inv row-wise), so no
normalized copy is made; ``inv`` itself is one torch reduction over z (memory bound, and
torch's norm is as good as a hand-written one). The compute dtype is float32 for
float16/bfloat16/float32 inputs and float64 for float64 inputs: the kernels take it from
``inv``'s element type, so every tile, accumulator and dot runs in float64 for float64
inputs (tl.dot supports it), exactly like the cpu backend.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import triton
from torch._subclasses.fake_tensor import is_fake

from .. import _validation as V

#: True when triton.jit builds interpreted kernels (TRITON_INTERPRET=1): fixed at import.
INTERPRETED = bool(getattr(triton, "knobs", None) and triton.knobs.runtime.interpret)  # no knobs: triton < 3.4, never registered


def launchers(kernel, configs: list, fp64_config, interpreted, key: list, **kwargs) -> tuple:
    """Two launchers of one @triton.jit ``kernel``: autotuned over ``configs`` (for
    float16, bfloat16 and float32 inputs), and fixed to ``fp64_config`` (float64 inputs).

    Inductor re-autotunes the kernels it compiles and may pick another config than eager
    mode did, i.e. another rounding: float64, the oracle dtype, gets one config so that
    eager and compiled results agree bit for bit. Under the interpreter both use the one
    ``interpreted`` config (benchmarking interpreted kernels would take minutes). Every
    block size is >= 16, the smallest tl.dot accepts on a GPU."""
    if INTERPRETED:
        configs, fp64_config = [interpreted], interpreted
    return (
        triton.autotune(configs=configs, key=key, **kwargs)(kernel),
        triton.autotune(configs=[fp64_config], key=key, **kwargs)(kernel),
    )


def min_block(kernel, name: str) -> int:
    """The smallest value of a block size over a launcher's configs (sizes the
    partial-sum buffers, whose shape must not depend on the config autotuning picks)."""
    return min(c.kwargs[name] for c in kernel.configs)


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input_precision: IEEE fp32 unless PyTorch allows TF32 for matmuls (as the
    cuda backend does); float64 is always IEEE."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def on_device(t: torch.Tensor):
    """Launch on ``t``'s GPU (triton launches on the current device). While tracing (fake
    tensors) nothing is launched, and the compiled graph's launches bring their own guard."""
    return torch.cuda.device(t.device) if t.is_cuda and not is_fake(t) else contextlib.nullcontext()


def check_device(info: V.FeatInfo) -> None:
    if info.device.type == "cuda" or (info.device.type == "cpu" and INTERPRETED):
        return
    raise ValueError(
        f"mtut: the triton ops need CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got tensors on {info.device}"
    )


@dataclass
class Packed:
    """The M feature maps as the kernels read them."""

    info: V.FeatInfo
    z: torch.Tensor  # [N, C, d] stacked maps, inputs' dtype, contiguous
    norm: torch.Tensor  # [N, C] row norms, compute dtype
    inv: torch.Tensor  # [N, C] 1 / max(norm, eps), compute dtype
    offsets: list  # M + 1 channel offsets (python ints)
    offsets_t: torch.Tensor  # the same, int32 on the device

    @property
    def C(self) -> int:
        return self.offsets[-1]


def pack(feats, info: V.FeatInfo, eps: float) -> Packed:
    # reshape is a view for the usual strided inputs; cat makes the one contiguous copy.
    z = torch.cat([f.reshape(info.N, f.shape[1], info.d) for f in feats], dim=1)
    norm = torch.linalg.vector_norm(z, dim=-1, dtype=info.compute_dtype)
    inv = 1.0 / norm.clamp_min(eps)
    offsets = [0]
    for c in info.channels:
        offsets.append(offsets[-1] + int(c))
    offsets_t = torch.tensor(offsets, dtype=torch.int32, device=z.device)
    return Packed(info, z, norm, inv, offsets, offsets_t)


def normalize_backward(grad_xh: torch.Tensor, pk: Packed, feats, eps: float, needs_grad) -> list:
    """dX from dXh for every modality with needs_grad[m]: dx = (g - xh <xh, g>) / r where
    r > eps, else g / eps (csrc/ssa_common.cpp:normalize_rows_backward), each in its
    input's shape and dtype; an empty tensor for the others."""
    grads = []
    for m, f in enumerate(feats):
        if not needs_grad[m]:
            grads.append(f.new_empty((0,)))
            continue
        lo, hi = pk.offsets[m], pk.offsets[m + 1]
        g = grad_xh[:, lo:hi]
        r = pk.norm[:, lo:hi, None]
        xh = pk.z[:, lo:hi].to(g.dtype) * pk.inv[:, lo:hi, None]
        dot = (xh * g).sum(-1, keepdim=True)
        dx = torch.where(r > eps, (g - xh * dot) / r, g / eps)
        grads.append(dx.reshape(f.shape).to(f.dtype))
    return grads


def pair_tables(M: int, device) -> tuple:
    """The unordered pairs m < n as an int32 [P, 2] table, and a [M, M] long map from
    (m, n) to 1 + the pair's index (0 on the diagonal), to scatter [N, P] into [N, M, M]."""
    pairs = [(m, n) for m in range(M) for n in range(m + 1, M)]
    index = [[0] * M for _ in range(M)]
    for p, (m, n) in enumerate(pairs):
        index[m][n] = index[n][m] = p + 1
    return (
        torch.tensor(pairs, dtype=torch.int32, device=device),
        torch.tensor(index, dtype=torch.long, device=device),
    )


def to_square(pair_values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[N, P] values of the pairs m < n -> symmetric [N, M, M] with a zero diagonal."""
    padded = torch.cat([pair_values.new_zeros(pair_values.shape[0], 1), pair_values], dim=1)
    return padded[:, index]
