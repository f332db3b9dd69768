"""Smoke tests of an installed or separately built mtut, run by .ci/check_install.sh.

    python smoke_install.py installed          mtut from site-packages (built from the sdist)
    python smoke_install.py mismatch           mtut_ops whose _C was built for another torch
    python smoke_install.py cmake LIB REF      the CMake library LIB, checked against the
                                               reference implementation in file REF

Each mode prints what it checked and exits non-zero on the first failure.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
import warnings

import torch


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")
    print(f"ok: {what}")


def inputs():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(3, c, 2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True) for c in (5, 7)]
    ce = torch.rand(2, 3, dtype=torch.float64, generator=g) * 3
    return feats, ce


def close(a, b, what):
    err = (a - b).abs().max().item()
    scale = b.abs().max().item()
    check(err <= 1e-9 * max(scale, 1.0), f"{what}: max |diff| {err:.2e} against reference magnitude {scale:.2e}")


def installed():
    import mtut_ops
    from mtut_ops import _extension, reference

    here = os.path.abspath(mtut_ops.__file__)
    check("site-packages" in here, f"mtut_ops imported from the installed package ({here})")
    check(_extension.LOAD_ERROR is None, f"the compiled library loaded ({_extension.LOAD_ERROR})")
    check(
        _extension.BUILD_INFO["torch_version"] == torch.__version__,
        f"built for the torch present ({_extension.BUILD_INFO['torch_version']})",
    )
    requires = importlib.metadata.requires("mtut") or []
    pin = "torch==" + torch.__version__.split("+")[0]
    check(pin in requires, f"the wheel's metadata requires {pin} ({[r for r in requires if 'extra' not in r]})")
    check("cpu" in mtut_ops.available_backends("cpu"), f"backends {mtut_ops.available_backends('cpu')}")
    feats, ce = inputs()
    loss = mtut_ops.ssa_loss(feats, ce, backend="cpu", algo="direct")
    grads = torch.autograd.grad(loss, feats)
    ref = reference.ssa_loss(feats, ce)
    ref_grads = torch.autograd.grad(ref, feats)
    close(loss, ref, "ssa_loss, cpu backend vs reference")
    for m, (g, r) in enumerate(zip(grads, ref_grads)):
        close(g, r, f"gradient into modality {m}")
    close(mtut_ops.pairwise_sqdist(feats, algo="gram"), reference.pairwise_sqdist(feats), "pairwise_sqdist (gram)")


def mismatch():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import mtut_ops
    from mtut_ops import _extension

    ours = [w for w in caught if issubclass(w.category, _extension.ExtensionWarning)]
    check(len(ours) == 1, f"import mtut_ops gave one ExtensionWarning (got {len(ours)})")
    text = str(ours[0].message)
    print("   message:", text)
    built = _extension.BUILD_INFO["torch_version"]
    check(built != torch.__version__, f"the library was built for another torch ({built})")
    check(f"torch {built}" in text and f"torch {torch.__version__}" in text, "the message names both torches")
    check("--no-build-isolation" in text, "the message says how to rebuild")
    check(mtut_ops.available_backends("cpu") == ["reference"], f"backends {mtut_ops.available_backends('cpu')}")
    check(not mtut_ops.has_cuda_kernels(), "no CUDA kernels claimed")
    feats, ce = inputs()
    loss = mtut_ops.ssa_loss(feats, ce, backend="reference")
    loss.backward()
    check(torch.isfinite(loss).item() and feats[0].grad is not None, "the reference backend runs, with gradients")
    for backend in (None, "cpu", "triton"):
        try:
            mtut_ops.ssa_loss(feats, ce, backend=backend)
        except _extension.ExtensionUnavailableError as e:
            check(text in str(e), f"backend={backend!r} raises ExtensionUnavailableError with the message")
        else:
            check(False, f"backend={backend!r} should raise")


def cmake(lib, ref_file):
    spec = importlib.util.spec_from_file_location("mtut_reference", ref_file)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)  # torch only: not the mtut_ops package, whose _C would clash
    torch.ops.load_library(lib)
    ops = torch.ops.mtut
    names = ("ssa_loss", "pairwise_sqdist", "sqdist_forward", "sqdist_backward", "focal_weight", "correlation")
    check(all(hasattr(ops, n) for n in names), f"{lib} registers torch.ops.mtut.{{{', '.join(names)}}}")
    feats, ce = inputs()
    x = [f.detach() for f in feats]
    for algo in ("direct", "gram"):
        close(ops.pairwise_sqdist(x, 1e-8, algo), reference.pairwise_sqdist(x), f"pairwise_sqdist ({algo})")
    loss = ops.ssa_loss(x, ce, 2.0, 5e-3, "rms", 1e-8, "auto", None)
    close(loss, reference.ssa_loss(feats, ce), "ssa_loss")
    # From C++ there is no autograd: the backward op takes dL/dS. For L = sum(W * S) with S
    # symmetric, the weight of pair (m, n) is W_mn + W_nm (the diagonal plays no part).
    W = torch.rand(3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref_grads = torch.autograd.grad((W * reference.pairwise_sqdist(feats)).sum(), feats)
    for algo in ("direct", "gram"):
        _, saved = ops.sqdist_forward(x, 1e-8, algo, False, True)
        grads = ops.sqdist_backward(x, saved, W + W.transpose(1, 2), 1e-8, algo, [True, True])
        for m, (g, r) in enumerate(zip(grads, ref_grads)):
            close(g, r, f"sqdist_backward ({algo}) into modality {m}")
    close(ops.focal_weight(ce, 2.0), reference.focal_weight(ce, 2.0), "focal_weight")


if __name__ == "__main__":
    mode = sys.argv[1]
    {"installed": installed, "mismatch": mismatch, "cmake": lambda: cmake(sys.argv[2], sys.argv[3])}[mode]()
    print(f"smoke {mode}: all checks passed")
