"""Builds mtut_ops._C: the CPU kernels always, the CUDA kernels when they can be built.

Environment:
  MTUT_CPU_ONLY=1   never build CUDA sources.
  FORCE_CUDA=1      build CUDA sources or fail (instead of silently building CPU only).
  MAX_JOBS, TORCH_CUDA_ARCH_LIST, CUDA_HOME: as for any torch extension.
"""
import glob
import os

from setuptools import setup

import torch
from torch.utils.cpp_extension import (
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _want_cuda(cuda_sources):
    if _flag("MTUT_CPU_ONLY"):
        if _flag("FORCE_CUDA"):
            raise RuntimeError("FORCE_CUDA=1 and MTUT_CPU_ONLY=1 contradict each other")
        return False
    reasons = []
    if not cuda_sources:
        reasons.append("there are no CUDA sources in csrc/cuda")
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is built without CUDA")
    if CUDA_HOME is None:
        reasons.append("no CUDA toolkit found (set CUDA_HOME)")
    if reasons:
        if _flag("FORCE_CUDA"):
            raise RuntimeError("FORCE_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(reasons))
        print("mtut: building CPU kernels only: " + "; ".join(reasons))
        return False
    return True


def extensions():
    rel = lambda paths: sorted(os.path.relpath(p, HERE) for p in paths)
    cpp_sources = rel(glob.glob(os.path.join(HERE, "csrc", "*.cpp")) + glob.glob(os.path.join(HERE, "csrc", "cpu", "*.cpp")))
    cuda_sources = rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")) + glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cpp")))
    opt = ["-O3"] if not _flag("MTUT_DEBUG") else ["-O0", "-g"]
    cxx = opt + ["-DMTUT_PYTHON_MODULE"]  # the C++ standard comes from torch (C++20)
    if _want_cuda(cuda_sources):
        return [
            CUDAExtension(
                "mtut_ops._C",
                cpp_sources + cuda_sources,
                include_dirs=[os.path.join(HERE, "csrc")],
                extra_compile_args={"cxx": cxx + ["-DMTUT_WITH_CUDA"], "nvcc": opt + ["-DMTUT_WITH_CUDA", "--expt-relaxed-constexpr", "-lineinfo"]},
                py_limited_api=True,
            )
        ]
    return [
        CppExtension(
            "mtut_ops._C",
            cpp_sources,
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx},
            py_limited_api=True,
        )
    ]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
