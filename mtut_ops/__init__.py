"""mtut_ops: fused custom ops for the MTUT spatiotemporal semantic alignment (SSA) loss.

Importing this package registers ``torch.ops.mtut.*`` (correlation, pairwise_sqdist,
focal_weight, ssa_loss and their backward ops) with their fake implementations and
autograd formulas. The friendly API below validates inputs and picks the backend.
"""
import torch  # noqa: F401  (first: _C links against torch's shared libraries)

from . import _C  # noqa: F401  (loads the C++ library: TORCH_LIBRARY(mtut, ...))
from . import _registration  # noqa: F401  (fake implementations and autograd)
from . import triton as _triton_backend  # noqa: F401  (registers the triton ops when triton is present)
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
