"""Loads mtut_ops._C, the compiled op library, and says clearly why when it cannot.

The library is C++ compiled against one torch: its binary uses torch's C++ ABI, which
changes between torch releases. setup.py records what it was built against in
``mtut_ops/_build_info.py``; :func:`load` compares that with the torch imported now and
loads ``_C`` only when they agree. Otherwise (or when ``_C`` is missing or fails to
load) ``import mtut_ops`` still succeeds, with one warning, and only the pure-Python
``reference`` backend runs: every other backend, the Triton one included (it uses the
library's C++ ops), raises :class:`ExtensionUnavailableError` with the same message.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from typing import Optional

import torch

#: Why ``_C`` is not loaded (None when it is): one message naming the torch the library
#: was built for, the torch present, and the command that rebuilds it.
LOAD_ERROR: Optional[str] = None

#: What setup.py recorded at build time (mtut_ops/_build_info.py), or None.
BUILD_INFO: Optional[dict] = None

#: Whether ``_C`` is loaded (the ops torch.ops.mtut.* are registered): set once by :func:`load`.
_HAS_OPS: bool = False


class ExtensionUnavailableError(RuntimeError):
    """A backend that needs the compiled library (cpu, cuda, triton) was asked for."""


class ExtensionWarning(UserWarning):
    """Issued once, by ``import mtut_ops``, when the compiled library cannot be used."""


def _public(version: str) -> str:
    return version.split("+")[0]


def _source_root() -> Optional[str]:
    """The checkout this package sits in (editable install or PYTHONPATH), if any."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return root if os.path.exists(os.path.join(root, "setup.py")) else None


def rebuild_command() -> str:
    root = _source_root()
    if root is not None:
        return f"pip install --no-build-isolation -e {root}   (or `make build` there)"
    return (
        "pip install --no-build-isolation --no-deps --force-reinstall "
        "<the mtut source directory, sdist or git URL you installed from>"
    )


def _describe(info: dict) -> str:
    cuda = info.get("cuda_version")
    kernels = f"CUDA {cuda} kernels for {info.get('cuda_arch_list')}" if cuda else "CPU kernels only"
    return f"torch {info['torch_version']} ({kernels})"


def _present() -> str:
    cuda = torch.version.cuda
    return f"torch {torch.__version__} ({f'CUDA {cuda}' if cuda else 'no CUDA'})"


def mismatch(info: dict) -> Optional[str]:
    """Why a library built as ``info`` describes cannot run with the torch imported now."""
    if _public(info["torch_version"]) != _public(torch.__version__):
        return "a compiled extension runs only with the torch it was compiled against"
    if info.get("cuda_version"):
        if torch.version.cuda is None:
            return "its CUDA kernels need a torch built with CUDA"
        if info["cuda_version"].split(".")[0] != torch.version.cuda.split(".")[0]:
            return f"its CUDA kernels need a torch built with CUDA {info['cuda_version'].split('.')[0]}.x"
    return None


def _message(problem: str) -> str:
    return (
        f"mtut_ops: the compiled op library (mtut_ops._C) cannot be used: {problem}. "
        f"Only backend='reference' (the slow spec, which builds d x d matrices) is available. "
        f"Rebuild against the installed torch: {rebuild_command()}"
    )


def _read_build_info() -> Optional[dict]:
    try:
        from . import _build_info
    except ImportError:
        return None
    return {k.lower(): v for k, v in vars(_build_info).items() if k.isupper()}


def load() -> bool:
    """Imports ``mtut_ops._C`` if it was built for the torch imported now; sets LOAD_ERROR
    otherwise. Returns whether it is loaded (also kept in ``_HAS_OPS``)."""
    global LOAD_ERROR, BUILD_INFO, _HAS_OPS
    BUILD_INFO = _read_build_info()
    if importlib.util.find_spec("mtut_ops._C") is None:
        here = os.path.dirname(__file__)
        LOAD_ERROR = _message(f"it is not built (found no mtut_ops/_C*.so next to {here}/__init__.py)")
        return False
    if BUILD_INFO is not None:
        why = mismatch(BUILD_INFO)
        if why is not None:
            LOAD_ERROR = _message(f"it was built for {_describe(BUILD_INFO)}, and {_present()} is installed: {why}")
            return False
    try:
        importlib.import_module("mtut_ops._C")
    except (ImportError, OSError) as e:
        built = _describe(BUILD_INFO) if BUILD_INFO else "an unrecorded torch (no mtut_ops/_build_info.py)"
        LOAD_ERROR = _message(f"it was built for {built} and fails to load with {_present()}: {e}")
        return False
    LOAD_ERROR = None
    _HAS_OPS = True
    return True


def _require_ops(what: str = "this backend") -> None:
    """Raises ExtensionUnavailableError (with LOAD_ERROR) unless ``_C`` is loaded."""
    if not _HAS_OPS:
        raise ExtensionUnavailableError(f"{what} needs the compiled op library. {LOAD_ERROR}")


def warn() -> None:
    warnings.warn(LOAD_ERROR, ExtensionWarning, stacklevel=2)
