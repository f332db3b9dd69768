"""Builds mtut_ops._C against the torch installed in this environment.

The library is C++ that uses torch's C++ ABI, which changes between torch releases, so
the binary runs only with the torch it was compiled against. Hence:
  * it compiles against the torch already installed, never one pip would fetch: build
    with ``pip install --no-build-isolation .`` (pip's default build isolation hides the
    installed torch; this script then stops at once and says so);
  * the wheel requires exactly that torch (``torch==X.Y.Z``), and
    mtut_ops/_build_info.py records the torch, CUDA and architectures it was built for,
    so that ``import mtut_ops`` with another torch says so (mtut_ops/_extension.py).
The Python side of the binary uses only the limited C API of CPython 3.10
(-DPy_LIMITED_API), so one wheel serves CPython 3.10+ (tag cp310-abi3).

Environment:
  MTUT_CPU_ONLY=1        never build the CUDA kernels.
  FORCE_CUDA=1           build the CUDA kernels or fail (instead of falling back to CPU only).
  TORCH_CUDA_ARCH_LIST   GPU architectures, e.g. "9.0" or "8.0;9.0+PTX"; default DEFAULT_ARCHS
                         below (filtered to what nvcc supports); "native": the visible GPUs.
  CUDA_HOME              the CUDA toolkit (its nvcc must have torch's CUDA major version).
  MAX_JOBS               parallel compile jobs (ninja); NVCC_THREADS: nvcc threads per .cu
                         file (architectures compiled in parallel; default 2).
  MTUT_DEBUG=1           -O0 -g.
"""

import glob
import os
import re
import subprocess
import sys
import sysconfig

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))

# SASS for every current data-center and workstation GPU generation, PTX of the newest for
# later ones (JIT-compiled by the driver). Binary compatibility within a major version
# covers the rest: 8.6 code runs on 8.7/8.9 (A10, A40, L4, L40(S), RTX 30/40/Ada),
# 10.0 on 10.3 (B300), 12.0 on 12.1. 7.5 (T4) runs the exact fp32/fp64 cores only.
DEFAULT_ARCHS = ("7.5", "8.0", "8.6", "9.0", "10.0", "12.0")
# The oldest torch this has been built and tested with; older ones get a warning. (2.11:
# the GPU machine's; built with CUDA and the whole suite run on the CPU, 2026-12-03.)
OLDEST_TESTED_TORCH = (2, 11)
PY_LIMITED_API = "0x030A0000"  # CPython 3.10, as the wheel tag cp310-abi3 says

# Commands that compile, or that write the wheel's metadata (which pins the torch):
# they need torch. sdist and egg_info do not.
TORCH_COMMANDS = {
    "build",
    "build_ext",
    "bdist_wheel",
    "bdist_egg",
    "bdist",
    "develop",
    "install",
    "editable_wheel",
    "dist_info",
}


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _fail(message):
    sys.exit("\n" + "=" * 78 + "\nmtut: " + message + "\n" + "=" * 78)


def _outer_torch():
    """The torch installed in this environment's site-packages, which pip's build isolation
    hides from this script: (version, path), or None."""
    try:
        from importlib.metadata import distributions
    except ImportError:
        return None
    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        for dist in distributions(path=[path] if path else []):
            if (dist.metadata["Name"] or "").lower() == "torch":
                return dist.version, path
    return None


def _import_torch():
    try:
        import torch
    except ImportError as e:
        outer = _outer_torch()
        if outer is not None:
            seen = (
                f"torch {outer[0]} is installed ({outer[1]}), but pip builds in an isolated environment "
                "by default, which hides it. Build without isolation, against that torch:"
            )
        else:
            seen = (
                f"torch is not importable here ({e}). Install torch first (https://pytorch.org/get-started), "
                "then build without isolation:"
            )
        _fail(
            f"the extension is compiled against the torch it will run with: {seen}\n"
            "    pip install setuptools wheel ninja\n"
            "    pip install --no-build-isolation .            # from a checkout or an unpacked sdist\n"
            "    pip install --no-build-isolation git+<url>    # from git\n"
            "(python -m build: add --no-isolation.)"
        )
    return torch


def _nvcc_version(cuda_home):
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    try:
        out = subprocess.check_output([nvcc, "--version"], text=True)
    except (OSError, subprocess.CalledProcessError):
        return None, nvcc
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (m.group(1) + "." + m.group(2) if m else None), nvcc


def _nvcc_archs(nvcc):
    """The real architectures nvcc can compile for, as "8.0"-style strings (None: unknown)."""
    try:
        out = subprocess.check_output([nvcc, "--list-gpu-arch"], text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return {f"{int(n) // 10}.{int(n) % 10}" for n in re.findall(r"compute_(\d+)\b", out)}


def _cuda_plan(torch, cuda_sources):
    """(build the CUDA kernels?, nvcc's CUDA version)."""
    from torch.utils.cpp_extension import CUDA_HOME

    if _flag("MTUT_CPU_ONLY"):
        if _flag("FORCE_CUDA"):
            _fail("FORCE_CUDA=1 and MTUT_CPU_ONLY=1 contradict each other")
        return False, None
    reasons = []
    if not cuda_sources:
        reasons.append("there are no CUDA sources in csrc/cuda")
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is built without CUDA")
    if CUDA_HOME is None:
        reasons.append("no CUDA toolkit found (set CUDA_HOME)")
    nvcc_version = None
    if not reasons:
        nvcc_version, nvcc = _nvcc_version(CUDA_HOME)
        if nvcc_version is None:
            reasons.append(f"{nvcc} does not run (set CUDA_HOME to a CUDA toolkit)")
        elif nvcc_version.split(".")[0] != torch.version.cuda.split(".")[0]:
            reasons.append(
                f"{nvcc} is CUDA {nvcc_version}, but torch {torch.__version__} was built with CUDA "
                f"{torch.version.cuda}: the kernels must be compiled by a CUDA {torch.version.cuda.split('.')[0]}.x "
                "toolkit (point CUDA_HOME at one, or install the torch build for your CUDA)"
            )
    if reasons:
        if _flag("FORCE_CUDA"):
            _fail(
                "FORCE_CUDA=1 but the CUDA kernels cannot be built: "
                + "; ".join(reasons)
                + ".\nUnset FORCE_CUDA (or set MTUT_CPU_ONLY=1) to build the CPU kernels only."
            )
        print("mtut: building the CPU kernels only: " + "; ".join(reasons), file=sys.stderr)
        return False, None
    return True, nvcc_version


def _arch_list(nvcc):
    """TORCH_CUDA_ARCH_LIST as given, or DEFAULT_ARCHS that nvcc supports, PTX for the newest."""
    given = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if given:
        return given
    supported = _nvcc_archs(nvcc)
    archs = [a for a in DEFAULT_ARCHS if supported is None or a in supported]
    if not archs:
        _fail(f"{nvcc} supports none of {';'.join(DEFAULT_ARCHS)}: set TORCH_CUDA_ARCH_LIST")
    return ";".join(archs) + "+PTX"


def _cublas_include_dirs(cuda_home):
    """Where cublas_v2.h is (the CUDA kernels call cuBLAS's pointer-array GEMM): the toolkit's
    include directory, or else the one of the cuBLAS wheel that a pip-installed CUDA torch
    depends on (nvidia/cu13/include, nvidia/cublas/include for CUDA 12)."""
    if os.path.exists(os.path.join(cuda_home, "include", "cublas_v2.h")):
        return []
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for found in sorted(glob.glob(os.path.join(root, "*", "include", "cublas_v2.h"))):
            return [os.path.dirname(found)]
    _fail(
        f"no cublas_v2.h in {cuda_home}/include nor in an nvidia-cublas wheel: install the CUDA toolkit's "
        "cuBLAS headers (or the nvidia-cublas wheel of torch's CUDA), or set MTUT_CPU_ONLY=1"
    )


def _sources():
    def rel(patterns):
        return sorted(os.path.relpath(p, HERE) for pat in patterns for p in glob.glob(os.path.join(HERE, pat)))

    return rel(["csrc/*.cpp", "csrc/cpu/*.cpp"]), rel(["csrc/cuda/*.cu", "csrc/cuda/*.cpp"])


def _torch_build():
    """ext_modules, cmdclass and install_requires for a build against the installed torch."""
    torch = _import_torch()
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    version = tuple(int(x) for x in re.findall(r"\d+", torch.__version__)[:2])
    if version < OLDEST_TESTED_TORCH:
        print(
            f"mtut: warning: torch {torch.__version__} is older than the oldest torch this is tested with "
            f"({'.'.join(map(str, OLDEST_TESTED_TORCH))}); building anyway",
            file=sys.stderr,
        )

    cpp_sources, cuda_sources = _sources()
    with_cuda, nvcc_version = _cuda_plan(torch, cuda_sources)
    opt = ["-O3"] if not _flag("MTUT_DEBUG") else ["-O0", "-g"]
    limited = [f"-DPy_LIMITED_API={PY_LIMITED_API}"]  # torch >= 2.10 adds the same; older ones do not
    cxx = opt + limited + ["-DMTUT_PYTHON_MODULE"]  # the C++ standard comes from torch
    arch_list = None
    if with_cuda:
        arch_list = _arch_list(os.path.join(CUDA_HOME, "bin", "nvcc"))
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
        threads = os.environ.get("NVCC_THREADS", "2")
        nvcc_flags = (
            opt + limited + ["-DMTUT_WITH_CUDA", "--expt-relaxed-constexpr", "-lineinfo", f"--threads={threads}"]
        )
        ext = CUDAExtension(
            "mtut_ops._C",
            cpp_sources + cuda_sources,
            include_dirs=[os.path.join(HERE, "csrc")] + _cublas_include_dirs(CUDA_HOME),
            extra_compile_args={"cxx": cxx + ["-DMTUT_WITH_CUDA"], "nvcc": nvcc_flags},
            py_limited_api=True,
        )
    else:
        ext = CppExtension(
            "mtut_ops._C",
            cpp_sources,
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx},
            py_limited_api=True,
        )

    info = {
        "TORCH_VERSION": torch.__version__,
        "TORCH_CUDA_VERSION": torch.version.cuda,
        "CUDA_VERSION": nvcc_version if with_cuda else None,
        "CUDA_ARCH_LIST": arch_list,
        "PY_LIMITED_API": PY_LIMITED_API,
    }

    class build_ext(BuildExtension.with_options(use_ninja=True)):
        """Also writes mtut_ops/_build_info.py next to the compiled library."""

        def run(self):
            super().run()
            target = os.path.join(os.path.dirname(self.get_ext_fullpath("mtut_ops._C")), "_build_info.py")
            lines = ['"""What mtut_ops._C was built against: written by setup.py, read by mtut_ops._extension."""']
            lines += [f"{k} = {v!r}" for k, v in info.items()]
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w") as f:
                f.write("\n".join(lines) + "\n")
            print(
                f"mtut: built for torch {torch.__version__}"
                + (f", CUDA {nvcc_version}, TORCH_CUDA_ARCH_LIST={arch_list}" if with_cuda else ", CPU kernels only"),
                file=sys.stderr,
            )

    public = torch.__version__.split("+")[0]
    return [ext], {"build_ext": build_ext}, [f"torch=={public}"]


def _wants_torch(argv):
    return any(arg in TORCH_COMMANDS for arg in argv[1:])


if _wants_torch(sys.argv):
    ext_modules, cmdclass, install_requires = _torch_build()
else:  # sdist, egg_info: the sources and metadata, nothing compiled
    ext_modules, cmdclass, install_requires = [], {}, ["torch"]

setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=install_requires,
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
