"""Triton kernels of the mtut ops (the "triton" backend).

Importing this package registers torch.ops.mtut.triton_sqdist_forward and
triton_sqdist_backward (see ops.py):

    _common.py   interpreter switch, autotuning, packing of the M maps, the normalization
    direct.py    the direct algorithm: tiles of K_m - K_n, forward and backward kernels
    gram.py      the gram algorithm: tiles of the shared Gram matrix, forward and backward
    ops.py       the triton_ops (torch.compile traces into them) and the API's entry points

The ops are registered where they can run: with CUDA, or on CPU under the triton
interpreter (TRITON_INTERPRET=1). Set MTUT_REGISTER_TRITON=1 to register them anyway,
e.g. to trace or export them on a host without a GPU. (Registering a triton_op imports
torch._dynamo, seconds of import time that CPU-only users need not pay.)

Importable without triton installed, or with a triton older than MIN_TRITON: it then
registers nothing (UNAVAILABLE says why), and asking for backend="triton" gives a clear
error (mtut_ops.backends.pick_backend).
"""

import os

import torch

#: The oldest triton the kernels are written for: 3.4 brought ``triton.knobs`` (read for
#: the interpreter switch); the triton releases torch 2.6 and 2.7 pin (3.2, 3.3) lack it.
MIN_TRITON = (3, 4)


def _version(text: str) -> tuple:
    parts = []
    for piece in text.split("+")[0].split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


try:
    import triton
except ImportError:
    triton = None
    UNAVAILABLE = "triton is not installed"
else:
    UNAVAILABLE = None
    if _version(triton.__version__) < MIN_TRITON or not hasattr(triton, "knobs"):
        UNAVAILABLE = (
            f"triton {triton.__version__} is older than the {'.'.join(map(str, MIN_TRITON))} "
            "the triton kernels need (triton.knobs)"
        )
        triton = None

if triton is not None and (
    torch.cuda.is_available() or triton.knobs.runtime.interpret or os.environ.get("MTUT_REGISTER_TRITON", "0") == "1"
):
    from .ops import pairwise_sqdist, ssa_loss  # noqa: F401
