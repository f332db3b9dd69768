"""mtut_ops: fused custom ops for the MTUT spatiotemporal semantic alignment (SSA) loss.

Importing this package registers ``torch.ops.mtut.*`` (correlation, pairwise_sqdist,
focal_weight, ssa_loss and their backward ops) with their fake implementations and
autograd formulas. The friendly API below validates inputs and picks the backend.

The ops are compiled C++ (mtut_ops._C) built against one torch. If that library is
missing or was built for another torch, the import still succeeds with one warning
(mtut_ops._extension.ExtensionWarning, which names both torches and the command that
rebuilds it); then ``_HAS_OPS`` is False, only ``backend="reference"`` runs and
``available_backends()`` says so (every other backend raises through ``_require_ops``).

Names: the distribution is ``mtut`` (the project, named after the method), the import
``mtut_ops`` (what is installed: the ops only; the training code in ``examples/`` is not),
and the op namespace ``mtut`` (``torch.ops.mtut.*``, the method's name in traced graphs).
"""

import torch  # noqa: F401  (first: _C links against torch's shared libraries)

from . import _extension
from ._extension import _require_ops  # noqa: F401  (raises ExtensionUnavailableError without _C)

_HAS_OPS = _extension.load()  # imports mtut_ops._C: TORCH_LIBRARY(mtut, ...)
if _HAS_OPS:
    from . import _registration  # noqa: F401  (fake implementations and autograd)
    from . import triton as _triton_backend  # noqa: F401  (registers the triton ops where triton can run)
else:
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
