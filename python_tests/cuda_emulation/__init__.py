"""The CUDA kernels of csrc/cuda compiled for and run on the CPU (cuda_emulation.h): their
loader, and the route that makes them the backend ("cuda", "cpu") of conftest.backend_device.

``load()`` builds ssa_cuda_emulated.cpp once (ninja keeps build/cuda_emulated, or
build/$MTUT_EMULATION_BUILD_DIR) and returns its ops, torch.ops.mtut_emulated.*, which
test_cuda_emulated.py calls directly for what is specific to the CUDA kernels.

``route()`` (the run with MTUT_TEST_BACKEND=cuda-emulated: make test-fast-cuda-emulated)
makes the emulated CUDA kernels the CPU kernels of the torch.ops.mtut ops that have a
CUDA kernel, in this process, and lets the functional API take backend="cuda" for CPU
tensors: the shared backend_device tests (test_edge_cases.py, test_op_contract.py,
test_op_registration.py, test_accuracy.py) then run the CUDA kernels through the same
autograd formulas, autocast kernels, vmap rules and composites as on a GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

#: The ops with a CUDA kernel of their own (csrc/cuda); the others (correlation,
#: focal_weight, the composites) run the same code on every device.
ROUTED_OPS = ("sqdist_forward", "sqdist_backward", "ssa_loss_from_sqdist", "ssa_loss_from_sqdist_backward")


def load():
    """torch.ops.mtut_emulated: the CUDA kernels built for the CPU (built on the first call)."""
    from torch.utils import cpp_extension

    build = ROOT / "build" / os.environ.get("MTUT_EMULATION_BUILD_DIR", "cuda_emulated")
    build.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name="mtut_cuda_emulated",
        sources=[str(HERE / "ssa_cuda_emulated.cpp"), str(ROOT / "csrc" / "ssa_common.cpp")],
        extra_include_paths=[str(ROOT / "csrc"), str(HERE)],
        extra_cflags=["-O2", "-std=c++20"],  # the emulation's std::barrier; torch may default to C++17
        build_directory=str(build),
        is_python_module=False,
    )
    return torch.ops.mtut_emulated


_routed: list = []  # the Library holding the routed kernels (kept alive: dropping it unregisters them)


def route() -> None:
    """torch.ops.mtut.<ROUTED_OPS> on CPU tensors run the emulated CUDA kernels from now on
    (this process only), and mtut_ops' API takes backend="cuda" for CPU tensors (its ops
    for "cuda" are torch.ops.mtut.*). Idempotent."""
    if _routed:
        return
    from mtut_ops import _torch_private as P
    from mtut_ops import functional

    ops = load()
    lib = torch.library.Library("mtut", "IMPL")
    for name in ROUTED_OPS:
        P.impl_override(lib, name, getattr(ops, name).default, "CPU")
    pick = functional.pick_backend

    def pick_backend(backend, device):
        return "cuda" if backend == "cuda" and device.type == "cpu" else pick(backend, device)

    functional.pick_backend = pick_backend  # (what functional._ops calls)
    _routed.append(lib)
