"""Every private torch API mtut uses, in one place, each with why no public one serves.

Private APIs change without notice. The package is built and tested with torch 2.11 to
2.14 (setup.py warns below 2.11); when a later torch drops one of these, the import of
this module fails with a message naming it, not some call deep inside an op.
"""

from __future__ import annotations

import importlib
import inspect

import torch

#: The torch releases these names were checked against.
TESTED_TORCH = ("2.11", "2.14")


def _get(module: str, name: str, why: str):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ImportError(
            f"mtut_ops needs {module}.{name} (a private torch API, present in torch {TESTED_TORCH[0]} to "
            f"{TESTED_TORCH[1]}; used because {why}), and torch {torch.__version__} lacks it: {e}"
        ) from e


# torch.library.register_autograd builds an autograd.Function that refuses the torch.func
# transforms (pytorch/pytorch#170834); a single-level Function, as functorch uses for its own
# transform-local nodes, lets torch.func.grad and vmap(grad(...)) run over the ops.
SingleLevelFunction = _get(
    "torch.autograd.function", "_SingleLevelFunction", "register_autograd's Function refuses torch.func"
)
enable_single_level_autograd_function = _get(
    "torch._functorch.utils", "enable_single_level_autograd_function", "it lets a single-level Function apply"
)

# An autograd kernel runs the op's own kernel below the Autograd key without recording a node:
# what autograd.Function's forward does internally; no public guard does it.
AutoDispatchBelowAutograd = _get(
    "torch._C", "_AutoDispatchBelowAutograd", "an autograd kernel must call the op below the Autograd key"
)

# The triton ops skip autocast as the C++ ops do (csrc: without_autocast): redispatch with the
# Autocast key excluded. torch.library offers no such fallthrough for a Python kernel.
ExcludeDispatchKeyGuard = _get(
    "torch._C", "_ExcludeDispatchKeyGuard", "a Python autocast kernel must redispatch past its own key"
)


def dispatch_key_set(key: str):
    """The key set of one dispatch key (e.g. "AutocastCUDA"), for ExcludeDispatchKeyGuard."""
    return torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))


# Whether _C holds CUDA kernels: asked once at import. torch.compile reads a module constant
# but cannot trace this query, and no public API answers it.
_dispatch_has_kernel_for_dispatch_key = _get(
    "torch._C", "_dispatch_has_kernel_for_dispatch_key", "only the dispatcher knows which kernels _C registered"
)


def has_kernel(qualname: str, key: str) -> bool:
    """True when the registered op ``qualname`` has a kernel for dispatch key ``key``."""
    return bool(_dispatch_has_kernel_for_dispatch_key(qualname, key))


# The triton ops' Python kernels skip shape-only (fake) tensors; FakeTensor has no public check.
is_fake = _get("torch._subclasses.fake_tensor", "is_fake", "a kernel must tell fake tensors from real ones")


# Library.impl's allow_override is public but its default changed: torch 2.11 refuses to replace
# an existing kernel, 2.14 allows it. Our Autograd kernels replace the one a custom_op (the
# triton backend's ops) comes with, so it is passed explicitly where the argument exists.
_IMPL_TAKES_ALLOW_OVERRIDE = "allow_override" in inspect.signature(torch.library.Library.impl).parameters


def impl_override(lib: torch.library.Library, name: str, fn, key: str) -> None:
    """``lib.impl(name, fn, key)``, replacing a kernel already registered for ``key``."""
    if _IMPL_TAKES_ALLOW_OVERRIDE:
        lib.impl(name, fn, key, allow_override=True)
    else:
        lib.impl(name, fn, key)


def lookup_op(qualname: str) -> torch._ops.OpOverload:
    """The OpOverload of "ns::name" or "ns::name.overload", through the public torch.ops
    (what the private torch._library.utils.lookup_op does)."""
    namespace, name = qualname.split("::")
    name, _, overload = name.partition(".")
    return getattr(getattr(getattr(torch.ops, namespace), name), overload or "default")
