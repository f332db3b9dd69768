"""The triton backend from the test process itself (no interpreter here), and the runner
of python_tests/test_triton_kernels.py under the triton interpreter on CPU.

TRITON_INTERPRET must be set before the @triton.jit functions are built, i.e. before
mtut_ops is imported, and it must not leak into the rest of the suite (it would put the
slow interpreter under every backend test): so the kernel tests run in a subprocess
with the variable set.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mtut_ops
from mtut_ops.backends import has_triton_kernels, triton_interpreted

from .conftest import FUSED, make_ce, make_feats

ROOT = Path(__file__).resolve().parent.parent
needs_triton = pytest.mark.skipif(not has_triton_kernels(), reason="triton is not installed")


def _run(code_or_args, env_extra=None, timeout=600):
    """A fresh python (a -c string or argv) at the repository root, TRITON_INTERPRET only if given."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(env_extra or {})
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@needs_triton
@pytest.mark.skipif(triton_interpreted(), reason="this process is interpreted: test_triton_kernels.py runs in it")
def test_kernels_under_the_interpreter():
    """python_tests/test_triton_kernels.py on CPU with TRITON_INTERPRET=1 (a few minutes)."""
    proc = _run(
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", "python_tests/test_triton_kernels.py"],
        env_extra={"TRITON_INTERPRET": "1", "OMP_WAIT_POLICY": "passive"},
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]


def test_import_without_triton():
    """No triton: mtut_ops imports, registers no triton op, and backend='triton' says why."""
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch, mtut_ops\n"
        "from mtut_ops.backends import has_triton_kernels\n"
        "assert not hasattr(torch.ops.mtut, 'triton_ssa_loss') and not has_triton_kernels()\n"
        "assert 'triton' not in mtut_ops.available_backends('cpu')\n"
        "f = [torch.randn(2, 3, 4), torch.randn(2, 5, 4)]\n"
        "try:\n"
        "    mtut_ops.ssa_loss(f, torch.rand(2, 2), backend='triton')\n"
        "except ValueError as e:\n"
        "    print(e)\n"
        "print(float(mtut_ops.ssa_loss(f, torch.rand(2, 2))))\n"  # the cpu backend still works
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "backend 'triton' cannot run on cpu: it needs triton and CUDA tensors" in proc.stdout


@needs_triton
@pytest.mark.skipif(triton_interpreted(), reason="the ops are plain custom ops under the interpreter")
def test_cpu_tensors_need_the_interpreter():
    feats = make_feats(2, [3, 4], [2, 3])
    assert "triton" not in mtut_ops.available_backends("cpu")
    assert ("triton", "cpu") not in FUSED  # the interpreter is kept out of the backend-wide tests
    with pytest.raises(ValueError, match=r"backend 'triton' cannot run on cpu"):
        mtut_ops.pairwise_sqdist(feats, backend="triton")
    with pytest.raises(ValueError, match=r"the triton ops need CUDA tensors \(or CPU tensors with TRITON_INTERPRET=1\)"):
        torch.ops.mtut.triton_pairwise_sqdist(feats, 1e-8, "gram")


@needs_triton
@pytest.mark.skipif(triton_interpreted(), reason="the ops are plain custom ops under the interpreter")
@pytest.mark.parametrize("algo", ["direct", "gram"])
def test_triton_ops_decompose_into_kernel_launches(algo):
    """What torch.compile sees of the GPU registration, traced here without a GPU: the
    triton_ops decompose (AOTAutograd's functionalization) into torch ops and
    triton_kernel_wrapper_functional launches of our kernels, forward and backward.

    Uses torch internals (FakeTensor on a CUDA device over meta storage) so that it runs
    on CPU-only CI; on a GPU, test_triton_kernels.py compiles the real thing with inductor.
    """
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    from torch._subclasses.functional_tensor import dispatch_functionalize
    from torch.fx.experimental.proxy_tensor import make_fx

    mode = FakeTensorMode()

    def fake(shape):
        return FakeTensor(mode, torch.empty(shape, dtype=torch.float32, device="meta"), torch.device("cuda", 0))

    feats, ce, grad = [fake((2, 3, 2, 3)), fake((2, 5, 2, 3))], fake((2, 2)), fake(())
    args = (2.0, 0.5, "rms", 1e-8, algo, None)

    def launched(fn, *inputs):
        with mode:
            gm = make_fx(dispatch_functionalize(fn))(*inputs)
        names = []
        for node in gm.graph.nodes:
            if node.target is torch.ops.higher_order.triton_kernel_wrapper_functional:
                kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
                names.append(getattr(kernel, "fn", kernel).__name__)
            assert "mtut" not in str(node.target), node.target  # nothing opaque left
        return names

    fwd = launched(lambda f, c: torch.ops.mtut.triton_ssa_loss(f, c, *args), feats, ce)
    bwd = launched(lambda g, f, c: torch.ops.mtut.triton_ssa_loss_backward(g, f, c, *args), grad, feats, ce)
    sq_bwd = launched(lambda f, w: torch.ops.mtut.triton_sqdist_backward(f, w, 1e-8, algo), feats, fake((2, 2, 2)))
    if algo == "direct":
        assert fwd == ["_direct_forward_kernel"] and sq_bwd == ["_direct_backward_kernel"]
        assert bwd == ["_direct_forward_kernel", "_direct_backward_kernel"]  # S is recomputed
    else:
        assert fwd == ["_gram_forward_kernel"] and sq_bwd == ["_gram_coef_kernel", "_gram_apply_kernel"]
        assert bwd == ["_gram_forward_kernel", "_gram_coef_kernel", "_gram_apply_kernel"]


@needs_triton
@pytest.mark.skipif(triton_interpreted(), reason="compile treats the interpreted ops as opaque")
def test_dynamo_traces_the_api_without_graph_breaks():
    """torch.compile(fullgraph=True) over the Python API with backend='triton' traces to
    one graph holding the triton op (fake propagation runs the op's torch-and-launch body).
    The backend stops before running anything: there is no GPU here."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    torch._dynamo.reset()
    graphs = []

    class Stop(Exception):
        pass

    def backend(gm, example_inputs):
        graphs.append(gm)
        raise Stop

    mode = FakeTensorMode()
    feats = [FakeTensor(mode, torch.empty(2, c, 6, device="meta"), torch.device("cuda", 0)) for c in (3, 5)]
    ce = FakeTensor(mode, torch.empty(2, 2, device="meta"), torch.device("cuda", 0))

    def step(fs, ce):
        return mtut_ops.ssa_loss(fs, ce, lambda_=0.5, algo="gram", pair_cap=10.0, backend="triton")

    with pytest.raises(Exception) as info:
        with mode:
            torch.compile(step, fullgraph=True, backend=backend)(feats, ce)
    assert graphs, f"no graph: {info.value!r}"  # e.g. a graph break in the API's backend choice
    calls = [n.target for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert calls == [torch.ops.mtut.triton_ssa_loss], calls


@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_is_a_default_on_cuda():
    feats = make_feats(2, [3, 4], [2, 3], device="cuda")
    assert "triton" in mtut_ops.available_backends("cuda")
    mtut_ops.ssa_loss(feats, make_ce(2, 2, device="cuda"), backend="triton")
