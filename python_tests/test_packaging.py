"""How mtut is built and loaded: the build record, abi3, the wheel's torch pin, the sdist,
setup.py without torch, and import mtut_ops with a missing or mismatched library or an
old triton. Each check runs in seconds (subprocesses on copies of the package); the
slow ones (a fresh venv with another torch, the sdist built into a wheel, CMake) are in
.ci/check_install.sh.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import site
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

import mtut_ops
from mtut_ops import _extension

ROOT = Path(__file__).resolve().parent.parent
PKG = Path(mtut_ops.__file__).resolve().parent
IN_CHECKOUT = (ROOT / "setup.py").exists() and PKG.parent == ROOT


# An editable install (pip install -e .) maps mtut_ops._C to the checkout's library
# through a finder on sys.meta_path: the copies below must not see it.
NO_EDITABLE = (
    "import sys\n"
    "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in str(getattr(f, '__module__', ''))]\n"
)


def run_python(code: str, pythonpath: Path, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    code = NO_EDITABLE + code
    e = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    e.update(env or {})
    e["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code], cwd=cwd, env=e, capture_output=True, text=True, timeout=300
    )


def copy_package(dest: Path, build_info: str | None = "keep", with_library: bool = True) -> Path:
    """A copy of the installed mtut_ops under dest, with its build record replaced or removed."""
    target = dest / "mtut_ops"
    skip = ("__pycache__",) if with_library else ("__pycache__", "_C*.so")
    shutil.copytree(PKG, target, ignore=shutil.ignore_patterns(*skip))
    if build_info is None:
        (target / "_build_info.py").unlink(missing_ok=True)
    elif build_info != "keep":
        (target / "_build_info.py").write_text(build_info)
    return dest


PROBE = """
import warnings, torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import mtut_ops
from mtut_ops import _extension
ours = [str(w.message) for w in caught if issubclass(w.category, _extension.ExtensionWarning)]
print("WARNINGS", len(ours))
print("BACKENDS", mtut_ops.available_backends("cpu"), mtut_ops.has_cuda_kernels())
x = [torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 5, 4, dtype=torch.float64)]
ce = torch.rand(2, 2, dtype=torch.float64)
print("REFERENCE", float(mtut_ops.ssa_loss(x, ce, backend="reference")) >= 0)
for backend in (None, "cpu"):
    try:
        mtut_ops.ssa_loss(x, ce, backend=backend)
        print("RAN", backend)
    except _extension.ExtensionUnavailableError as e:
        print("RAISED", backend, ours[0] in str(e))
print("MESSAGE", ours[0] if ours else "")
"""


# ------------------------------------------------------------------ the build in use


def test_library_loaded_and_built_for_this_torch():
    assert _extension.LOAD_ERROR is None
    info = _extension.BUILD_INFO
    assert info is not None, "mtut_ops/_build_info.py is missing: the library was not built by setup.py"
    assert info["torch_version"] == torch.__version__
    assert info["torch_cuda_version"] == torch.version.cuda
    assert bool(info["cuda_version"]) == mtut_ops.has_cuda_kernels()
    if info["cuda_version"]:
        assert info["cuda_arch_list"], "a CUDA build records its architectures"


def test_abi3_is_enforced():
    """The library is tagged abi3: built with the limited API of CPython 3.10 and not
    linked to libtorch_python (which uses the full C API)."""
    so = list(PKG.glob("_C*.so"))
    assert len(so) == 1 and so[0].name == "_C.abi3.so", so
    assert _extension.BUILD_INFO["py_limited_api"] == "0x030A0000"
    if shutil.which("readelf") is None:
        pytest.skip("readelf is not installed")
    needed = subprocess.run(["readelf", "-d", str(so[0])], capture_output=True, text=True, check=True).stdout
    assert "libtorch_cpu.so" in needed  # the check reads the right table
    assert "libtorch_python" not in needed and "libpython" not in needed


def test_wheel_metadata_pins_the_torch_it_was_built_against():
    # the installed metadata (site-packages), not a checkout's mtut.egg-info that any
    # later setup.py egg_info / isolated pip run rewrites without the pin
    dists = list(importlib.metadata.distributions(name="mtut", path=site.getsitepackages()))
    assert len(dists) == 1, "mtut is not installed (pip install --no-build-isolation -e .)"
    requires = dists[0].requires
    assert requires is not None
    torch_reqs = [r for r in requires if r.startswith("torch")]
    assert torch_reqs == ["torch==" + torch.__version__.split("+")[0]]


# ------------------------------------------------------------------ import with a broken library


@pytest.mark.deep  # a fresh python (or setup.py) in a subprocess: seconds each
def test_mismatched_library_leaves_the_reference_backend(tmp_path):
    info = (PKG / "_build_info.py").read_text().replace(repr(torch.__version__), repr("2.0.0+cu118"))
    assert "2.0.0+cu118" in info
    out = run_python(PROBE, copy_package(tmp_path, info), tmp_path)
    assert out.returncode == 0, out.stderr
    assert "WARNINGS 1" in out.stdout
    assert "BACKENDS ['reference'] False" in out.stdout
    assert "REFERENCE True" in out.stdout
    assert "RAISED None True" in out.stdout and "RAISED cpu True" in out.stdout
    message = out.stdout.split("MESSAGE ", 1)[1]
    assert "torch 2.0.0+cu118" in message and f"torch {torch.__version__}" in message
    assert "--no-build-isolation" in message


@pytest.mark.deep  # a fresh python (or setup.py) in a subprocess: seconds each
def test_missing_library_says_it_is_not_built(tmp_path):
    out = run_python(PROBE, copy_package(tmp_path, None, with_library=False), tmp_path)
    assert out.returncode == 0, out.stderr
    assert "WARNINGS 1" in out.stdout and "BACKENDS ['reference'] False" in out.stdout
    assert "RAISED None True" in out.stdout
    assert "it is not built" in out.stdout


def test_cuda_library_with_a_cpu_torch_is_refused():
    """The record alone decides (no load attempted): CUDA kernels need a CUDA torch of the same major."""
    info = dict(_extension.BUILD_INFO, cuda_version="13.0", cuda_arch_list="9.0")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.version, "cuda", None)
        assert "CUDA" in _extension.mismatch(info)
        mp.setattr(torch.version, "cuda", "12.8")
        assert "CUDA 13.x" in _extension.mismatch(info)
        mp.setattr(torch.version, "cuda", "13.2")
        assert _extension.mismatch(info) is None
    assert _extension.mismatch(dict(info, cuda_version=None)) is None  # CPU kernels run with any build of this torch
    assert "compiled against" in _extension.mismatch(dict(info, torch_version="2.0.0"))


@pytest.mark.deep  # a fresh python (or setup.py) in a subprocess: seconds each
def test_old_triton_is_not_used(tmp_path):
    """A triton without triton.knobs (< 3.4, as torch 2.6/2.7 pin) neither breaks the
    import nor registers the triton ops, even with TRITON_INTERPRET=1."""
    fake = tmp_path / "fake" / "triton"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("__version__ = '3.3.1'\n")
    code = (
        "import mtut_ops, mtut_ops.triton as t\n"
        "from mtut_ops.backends import has_triton_kernels\n"
        "print('UNAVAILABLE', t.UNAVAILABLE)\nprint('REGISTERED', has_triton_kernels())\n"
        "print('BACKENDS', mtut_ops.available_backends('cpu'))\n"
    )
    pythonpath = f"{tmp_path / 'fake'}{os.pathsep}{PKG.parent}"
    out = run_python(code, pythonpath, tmp_path, env={"TRITON_INTERPRET": "1"})
    assert out.returncode == 0, out.stderr
    assert "UNAVAILABLE triton 3.3.1 is older than the 3.4" in out.stdout
    assert "REGISTERED False" in out.stdout and "BACKENDS ['reference', 'cpu']" in out.stdout


def test_without_the_library_the_api_binds_the_one_backends_module(tmp_path):
    """Without _C, mtut_ops.backends is still backends.py (no module stands in for it), so
    what functional.py binds does not depend on import order; it answers reference-only."""
    code = (
        "import sys, torch, mtut_ops, mtut_ops.functional as F\n"
        "from mtut_ops import backends, _extension\n"
        "print('HAS_OPS', mtut_ops._HAS_OPS)\n"
        "print('MODULE', sys.modules['mtut_ops.backends'].__file__.endswith('backends.py'), "
        "F.pick_backend is backends.pick_backend)\n"
        "print('CUDA', backends.available_backends('cuda'), backends.has_triton_kernels())\n"
        "print('PICK', backends.pick_backend('reference', torch.device('cpu')))\n"
        "for b in ('cpu', 'triton'):\n"
        "    try:\n"
        "        backends.pick_backend(b, torch.device('cpu'))\n"
        "    except _extension.ExtensionUnavailableError as e:\n"
        "        print('RAISED', b, 'not built' in str(e))\n"
    )
    out = run_python(code, copy_package(tmp_path, None, with_library=False), tmp_path)
    assert out.returncode == 0, out.stderr
    assert "HAS_OPS False" in out.stdout and "MODULE True True" in out.stdout
    assert "CUDA ['reference'] False" in out.stdout and "PICK reference" in out.stdout
    assert "RAISED cpu True" in out.stdout and "RAISED triton True" in out.stdout


# ------------------------------------------------------------------ setup.py and the sdist

checkout_only = pytest.mark.skipif(not IN_CHECKOUT, reason="needs the source checkout (setup.py)")


def poisoned_torch(tmp_path: Path) -> Path:
    """A directory whose torch package fails to import, as in pip's isolated build env."""
    d = tmp_path / "notorch" / "torch"
    d.mkdir(parents=True)
    (d / "__init__.py").write_text("raise ImportError('torch hidden by the test')\n")
    return d.parent


@pytest.mark.deep  # a fresh python (or setup.py) in a subprocess: seconds each
@checkout_only
def test_setup_without_torch_fails_fast_with_the_command(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(poisoned_torch(tmp_path))
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(ROOT / "setup.py"), "dist_info", "--output-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - start
    assert out.returncode != 0
    assert "pip install --no-build-isolation ." in out.stderr, out.stderr[-2000:]
    assert elapsed < 30, elapsed


@pytest.mark.deep  # a fresh python (or setup.py) in a subprocess: seconds each
@checkout_only
def test_sdist_is_complete_and_needs_no_torch(tmp_path):
    """The sdist builds without torch (as python -m build does, isolated) and holds every
    source, header and CUDA file, and no build output."""
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    tree = tmp_path / "tree"  # the tracked files only, so that the checkout's mtut.egg-info is left alone
    for f in subprocess.run(
        ["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True
    ).stdout.split():
        if (ROOT / f).is_file():
            (tree / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, tree / f)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(poisoned_torch(tmp_path))
    out = subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (sdist,) = tmp_path.glob("mtut-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "csrc", "CMakeLists.txt", "setup.py", "pyproject.toml", "MANIFEST.in"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    wanted = set(tracked)  # everything under csrc/ ships (the CUDA emulation lives with the tests)
    assert any(f.endswith(".cu") for f in wanted) and any(f.endswith(".h") for f in wanted)
    assert wanted <= names, sorted(wanted - names)
    assert not [n for n in names if n.endswith((".so", ".o")) or n.endswith("_build_info.py")]


def function_of_setup_py(name: str):
    """One function of setup.py (which runs setup() when imported), with its module's imports."""
    import ast

    tree = ast.parse((ROOT / "setup.py").read_text())
    body = [
        n
        for n in tree.body
        if isinstance(n, (ast.Import, ast.ImportFrom)) or (isinstance(n, ast.FunctionDef) and n.name in (name, "_fail"))
    ]
    namespace: dict = {}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(ROOT / "setup.py"), "exec"), namespace)
    return namespace[name]


@checkout_only
def test_cublas_header_from_the_toolkit_or_the_cublas_wheel(tmp_path):
    """The CUDA kernels include cublas_v2.h: the toolkit's when it has one (nothing to add),
    else the include directory of the nvidia-cublas wheel a pip-installed CUDA torch brings."""
    find = function_of_setup_py("_cublas_include_dirs")
    full = tmp_path / "full"
    (full / "include").mkdir(parents=True)
    (full / "include" / "cublas_v2.h").write_text("")
    assert find(str(full)) == []
    bare = tmp_path / "bare"
    (bare / "include").mkdir(parents=True)
    if importlib.util.find_spec("nvidia") is None:
        with pytest.raises(SystemExit, match="cublas_v2.h"):
            find(str(bare))
    else:
        (found,) = find(str(bare))
        assert (Path(found) / "cublas_v2.h").is_file() and "nvidia" in Path(found).parts


@pytest.mark.deep  # a fresh python (or setup.py) in a subprocess: seconds each
@checkout_only
@pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of torch")
def test_nvcc_of_another_cuda_major_is_named(tmp_path):
    """FORCE_CUDA=1 with an nvcc whose CUDA major differs from torch's stops before
    compiling, naming both versions (instead of failing somewhere in the compile)."""
    major = int(torch.version.cuda.split(".")[0])
    other = f"{major - 1}.4"
    (tmp_path / "bin").mkdir()
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {other}, V{other}.99'\n")
    nvcc.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MTUT_CPU_ONLY", "TORCH_CUDA_ARCH_LIST")}
    env.update(CUDA_HOME=str(tmp_path), FORCE_CUDA="1")
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "setup.py"),
            "build_ext",
            "--build-temp",
            str(tmp_path / "tmp"),
            "--build-lib",
            str(tmp_path / "lib"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert f"CUDA {other}" in out.stderr and f"CUDA {torch.version.cuda}" in out.stderr, out.stderr[-2000:]
    assert "MTUT_CPU_ONLY=1" in out.stderr
    assert not (tmp_path / "lib").exists()  # nothing was compiled
