"""Triton kernels of the mtut ops (the "triton" backend).

Importing this package registers torch.ops.mtut.triton_pairwise_sqdist,
triton_sqdist_backward, triton_ssa_loss and triton_ssa_loss_backward (see ops.py):

    _common.py   interpreter switch, autotuning, packing of the M maps, the normalization
    direct.py    the direct algorithm: tiles of K_m - K_n, forward and backward kernels
    gram.py      the gram algorithm: tiles of the shared Gram matrix, forward and backward
    ops.py       the triton_ops (torch.compile traces into them), autograd, the API's entry points

Importable without triton installed: it then registers nothing, and asking for
backend="triton" gives a clear error (mtut_ops.backends.pick_backend).
"""
try:
    import triton  # noqa: F401
except ImportError:
    pass
else:
    from .ops import correlation, focal_weight, pairwise_sqdist, ssa_loss  # noqa: F401
