"""mtut_ops: fused custom ops for the MTUT spatiotemporal semantic alignment (SSA) loss.

Importing this package registers ``torch.ops.mtut.*`` (correlation, pairwise_sqdist,
focal_weight, ssa_loss and their backward ops) with their fake implementations and
autograd formulas. The friendly API below validates inputs and picks the backend.

The ops are compiled C++ (mtut_ops._C) built against one torch. If that library is
missing or was built for another torch, the import still succeeds with one warning
(mtut_ops._extension.ExtensionWarning, which names both torches and the command that
rebuilds it); then only ``backend="reference"`` runs and ``available_backends()`` says so.
"""
import sys

import torch  # noqa: F401  (first: _C links against torch's shared libraries)

from . import _extension

if _extension.load():  # imports mtut_ops._C: TORCH_LIBRARY(mtut, ...)
    from . import _registration  # noqa: F401  (fake implementations and autograd)
    from . import triton as _triton_backend  # noqa: F401  (registers the triton ops where triton can run)
else:
    from . import _reference_only

    sys.modules[__name__ + ".backends"] = _reference_only  # what functional.py picks backends with
    _extension.warn()

from . import reference
from .backends import BACKENDS, available_backends, has_cuda_kernels
from .functional import correlation, focal_weight, pairwise_sqdist, ssa_loss
from .modules import SSALoss

__all__ = [
    "BACKENDS",
    "SSALoss",
    "available_backends",
    "correlation",
    "focal_weight",
    "has_cuda_kernels",
    "pairwise_sqdist",
    "reference",
    "ssa_loss",
]
__version__ = "0.1.0"
