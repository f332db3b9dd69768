"""Which implementation runs an op: chosen by the inputs' device unless asked for.

| backend     | device | what runs                                                  |
|-------------|--------|------------------------------------------------------------|
| "reference" | any    | mtut_ops.reference: the literal spec (builds d x d)        |
| "cpu"       | cpu    | torch.ops.mtut.* C++ kernels (csrc/cpu)                    |
| "cuda"      | cuda   | torch.ops.mtut.* CUDA kernels (csrc/cuda), when compiled   |
| "triton"    | cuda   | Triton kernels (mtut_ops/triton), when triton is present   |

Without the compiled library (``_extension._HAS_OPS`` false: ``_C`` missing or built for
another torch) only "reference" runs; asking for any other backend, or for the default,
raises ExtensionUnavailableError with the reason (``_extension._require_ops``).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

from . import _extension
from . import _torch_private as P

BACKENDS = ("reference", "cpu", "cuda", "triton")


def has_cuda_kernels() -> bool:
    """True when the extension was built with its CUDA kernels."""
    return _HAS_CUDA_KERNELS


# Asked once (the package loads mtut_ops._C before this module): torch.compile reads a
# module constant, but cannot trace the dispatcher query (a graph break under
# fullgraph=True for every CUDA input).
_HAS_CUDA_KERNELS = _extension._HAS_OPS and P.has_kernel("mtut::sqdist_forward", "CUDA")


# Asked once, at import: otherwise a file-system search in every call of the API.
_TRITON_IMPORTABLE = importlib.util.find_spec("triton") is not None


def has_triton_kernels() -> bool:
    """True when mtut_ops.triton registered its ops (triton importable)."""
    return _extension._HAS_OPS and _TRITON_IMPORTABLE and hasattr(torch.ops.mtut, "triton_sqdist_forward")


def triton_interpreted() -> bool:
    """TRITON_INTERPRET set, read as triton reads it (1, true, on, yes, y)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes", "y")


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    device = torch.device(device)
    out = ["reference"]
    if not _extension._HAS_OPS:
        return out
    if device.type == "cpu":
        out.append("cpu")
        if has_triton_kernels() and triton_interpreted():
            out.append("triton")
    elif device.type == "cuda":
        if has_cuda_kernels():
            out.append("cuda")
        if has_triton_kernels():
            out.append("triton")
    return out


def pick_backend(backend: Optional[str], device: torch.device) -> str:
    """The backend to run on ``device``: ``backend`` checked, or the default for the device."""
    # The usual cases first, without listing every backend (the triton query costs host
    # time in every call); what _pick_listed would choose (python_tests/test_errors.py checks it)
    if device.type == "cuda" and _HAS_CUDA_KERNELS and backend in (None, "cuda"):
        return "cuda"
    cpu_default = backend is None and not triton_interpreted()
    if device.type == "cpu" and _extension._HAS_OPS and (backend == "cpu" or cpu_default):
        return "cpu"
    return _pick_listed(backend, device)


def _pick_listed(backend: Optional[str], device: torch.device) -> str:
    """pick_backend from the list of the backends available on ``device``."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"mtut: backend must be one of {BACKENDS} or None, got {backend!r}")
    if device.type == "meta" and backend != "reference":  # (the reference's ATen ops run on meta)
        raise ValueError(
            "mtut: the tensors are on the meta device (shapes without data): the API's backends compute on cpu "
            "or cuda tensors; for shapes alone call the torch.ops.mtut ops (their fake implementations accept "
            "meta tensors) or trace under torch.compile / FakeTensorMode"
        )
    if backend != "reference":
        # None included: the default is a fused backend, never silently the d x d reference
        _extension._require_ops(
            f"backend={backend!r}" if backend is not None else f"the default backend for tensors on {device}"
        )
    available = available_backends(device)
    if backend is None:
        for choice in ("cuda", "triton", "cpu"):  # fused kernels first; never the d x d reference by default
            if choice in available:
                return choice
        raise RuntimeError(
            f"mtut: no fused backend for tensors on {device}: the extension has no CUDA kernels and triton "
            "is not available; rebuild with CUDA (FORCE_CUDA=1), install triton, or pass backend='reference' "
            "(the slow spec, which builds d x d matrices)"
        )
    if backend not in available:
        hint = {
            "cpu": "it needs CPU tensors",
            "cuda": "it needs CUDA tensors and an extension built with CUDA (FORCE_CUDA=1)",
            "triton": "it needs triton and CUDA tensors (or CPU tensors with TRITON_INTERPRET=1)",
        }.get(backend, "")
        raise ValueError(f"mtut: backend {backend!r} cannot run on {device}: {hint}; available: {available}")
    return backend
