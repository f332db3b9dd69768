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

Importable without triton installed: it then registers nothing, and asking for
backend="triton" gives a clear error (mtut_ops.backends.pick_backend).
"""
import os

import torch

try:
    import triton
except ImportError:
    triton = None

if triton is not None and (
    torch.cuda.is_available()
    or triton.knobs.runtime.interpret
    or os.environ.get("MTUT_REGISTER_TRITON", "0") == "1"
):
    from .ops import pairwise_sqdist, ssa_loss  # noqa: F401
