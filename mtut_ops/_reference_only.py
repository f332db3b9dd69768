"""Stands in for mtut_ops.backends when the compiled op library is not loaded.

mtut_ops/__init__.py installs this module as ``mtut_ops.backends`` when ``_C`` is missing
or built for another torch (see _extension.py), so that the API (functional.py,
modules.py) keeps working with ``backend="reference"`` and every other request raises
one clear error: the cpu and cuda backends are the library's kernels, and the triton
backend registers its ops next to the library's (the loss composite, the fakes).
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from . import _extension

BACKENDS = ("reference", "cpu", "cuda", "triton")


def has_cuda_kernels() -> bool:
    """False: the compiled library (and with it any CUDA kernel) is not loaded."""
    return False


def has_triton_kernels() -> bool:
    return False


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes", "y")


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    torch.device(device)  # the same check of the argument as with the library
    return ["reference"]


def pick_backend(backend: Optional[str], device: torch.device) -> str:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"mtut: backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "reference":
        return backend
    # None included: the default is a fused backend, never silently the d x d reference
    _extension.require(f"backend={backend!r}" if backend is not None else f"the default backend for tensors on {device}")
    raise AssertionError("unreachable: pick_backend is only installed while the library is not loaded")
