"""The triton backend from the test process itself (no interpreter here): its registration,
imports and what torch.compile traces of it.

TRITON_INTERPRET must be set before the @triton.jit functions are built, i.e. before
mtut_ops is imported, and it must not leak into the rest of the suite (it would put the
slow interpreter under every backend test): the Makefile runs the interpreted tests in
their own pytest runs (make test: python_tests/test_triton_kernels.py; make
test-triton-interp: every backend_device test on triton). Likewise, without a GPU the
triton ops are only registered with MTUT_REGISTER_TRITON=1: make test runs the test_op_*
tests below (tracing the GPU registration on fake CUDA tensors) in a pytest run with that
set; in the main run they are skipped.
"""

from __future__ import annotations

import importlib.util
import operator
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mtut_ops
from mtut_ops.backends import has_triton_kernels, triton_interpreted

from .conftest import make_ce, make_feats

ROOT = Path(__file__).resolve().parent.parent
HAS_TRITON = importlib.util.find_spec("triton") is not None
# The triton_op registration (not the interpreter's custom ops) is live in this process.
REGISTERED = has_triton_kernels() and not triton_interpreted()
registered_ops = pytest.mark.skipif(
    not REGISTERED, reason="no triton ops registered here (make test runs these with MTUT_REGISTER_TRITON=1)"
)


def _run(args, env_extra=None, timeout=600):
    """A fresh python (a -c string or argv) at the repository root; the mtut/triton
    switches only as given."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MTUT_REGISTER_TRITON")}
    env.update(env_extra or {})
    args = ["-c", args] if isinstance(args, str) else args
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_op_annotations_say_the_schema():
    """The triton ops' schemas are inferred from their functions' annotations
    (mtut_ops/triton/ops.py; torch 2.11's triton_op ignores a schema= argument): they must
    give exactly these schemas (a bare `list` makes importing mtut_ops fail)."""
    ops = importlib.import_module("mtut_ops.triton.ops")
    schemas = {
        "triton_sqdist_forward": (
            "(Tensor[] feats, float eps, str algo, bool directed, bool for_backward) -> (Tensor, Tensor)"
        ),
        "triton_sqdist_backward": (
            "(Tensor[] feats, Tensor saved, Tensor weight, float eps, str algo, bool[] needs_grad) -> Tensor[]"
        ),
    }
    for name, schema in schemas.items():
        assert torch.library.infer_schema(getattr(ops, name), mutates_args=()) == schema, name


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("interpreted", [False, True], ids=["triton_op", "interpreter"])
def test_registration_under_strict_library_impl(interpreted):
    """torch 2.11 (the GPU machine's; 2.14 allows it) refuses a Library.impl over a kernel already
    registered from Python unless allow_override=True, and the triton ops' Autograd kernel
    replaces the one custom_op registers. Importing mtut_ops with that default must work."""
    code = (
        "import torch.library as L\n"
        "impl = L.Library.impl\n"
        "def strict(self, *args, allow_override=False, **kwargs):\n"
        "    return impl(self, *args, allow_override=allow_override, **kwargs)\n"
        "L.Library.impl = strict\n"
        "import torch, mtut_ops\n"
        "assert hasattr(torch.ops.mtut, 'triton_sqdist_forward')\n"
    )
    env = {"TRITON_INTERPRET": "1"} if interpreted else {"MTUT_REGISTER_TRITON": "1"}
    proc = _run(code, env)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_triton_dots_with_an_accumulator_say_its_dtype():
    """triton 3.6 (the GPU machine's) asserts that tl.dot's accumulator has out_dtype, which
    defaults to float32: a float64 accumulator without out_dtype fails to compile there."""
    import ast

    for path in sorted((ROOT / "mtut_ops" / "triton").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "dot"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "tl"
            ):
                keywords = {k.arg for k in node.keywords}
                if len(node.args) >= 3 or "acc" in keywords:
                    assert "out_dtype" in keywords, (
                        f"{path.name}:{node.lineno}: tl.dot with an accumulator, no out_dtype"
                    )


def test_import_without_triton():
    """No triton: mtut_ops imports, registers no triton op, and backend='triton' says why."""
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch, mtut_ops\n"
        "from mtut_ops.backends import has_triton_kernels\n"
        "assert not hasattr(torch.ops.mtut, 'triton_sqdist_forward') and not has_triton_kernels()\n"
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the triton ops are registered")
def test_import_stays_light_without_a_gpu():
    """Registering triton_ops imports torch._dynamo (seconds): not for CPU-only users."""
    proc = _run("import sys, mtut_ops; assert 'torch._dynamo' not in sys.modules, 'torch._dynamo imported'")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_cpu_tensors_need_the_interpreter():
    feats = make_feats(2, [3, 4], [2, 3])
    if not triton_interpreted():
        assert "triton" not in mtut_ops.available_backends("cpu")
        with pytest.raises(ValueError, match=r"backend 'triton' cannot run on cpu"):
            mtut_ops.pairwise_sqdist(feats, backend="triton")


@registered_ops
def test_op_rejects_cpu_tensors_without_the_interpreter():
    feats = make_feats(2, [3, 4], [2, 3])
    with pytest.raises(
        ValueError, match=r"the triton ops need CUDA tensors \(or CPU tensors with TRITON_INTERPRET=1\)"
    ):
        torch.ops.mtut.triton_sqdist_forward(feats, 1e-8, "gram", False, False)


@registered_ops
@pytest.mark.parametrize("algo", ["direct", "gram"])
def test_op_decomposes_into_kernel_launches(algo):
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

    feats, saved, weight = [fake((2, 3, 2, 3)), fake((2, 5, 2, 3))], fake((0,)), fake((2, 2, 2))

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

    fwd = launched(lambda f: torch.ops.mtut.triton_sqdist_forward(f, 1e-8, algo, True, True), feats)
    bwd = launched(
        lambda f, s, w: torch.ops.mtut.triton_sqdist_backward(f, s, w, 1e-8, algo, [True, True]), feats, saved, weight
    )
    stage = ["_stage_rows"] * 2  # one launch per modality: normalized rows in the operand type
    if algo == "direct":
        assert fwd == stage + ["_direct_forward"] and bwd == stage + ["_direct_backward"]
    else:
        assert fwd == stage + ["_gram_forward"] and bwd == stage + ["_gram_coef", "_gram_apply"]


def _fake_cuda(mode, shape, dtype=torch.float32):
    from torch._subclasses.fake_tensor import FakeTensor

    return FakeTensor(mode, torch.empty(shape, dtype=dtype, device="meta"), torch.device("cuda", 0))


def _launches(gm) -> list:
    """(kernel name, its constant arguments) of every triton launch in a traced graph."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    out = []
    for node in gm.graph.nodes:
        if node.target is torch.ops.higher_order.triton_kernel_wrapper_functional:
            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            consts = {k: v for k, v in node.kwargs["kwargs"].items() if not isinstance(v, torch.fx.Node)}
            out.append((getattr(kernel, "fn", kernel).__name__, consts))
    return out


@pytest.fixture
def tf32_state():
    b = torch.backends
    before = (b.fp32_precision, b.cuda.matmul.fp32_precision, b.mkldnn.matmul.fp32_precision)
    yield
    b.fp32_precision, b.cuda.matmul.fp32_precision, b.mkldnn.matmul.fp32_precision = before


@registered_ops
@pytest.mark.parametrize("algo", ["direct", "gram"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_op_traced_operand_type_follows_dtype_and_tf32_switch(algo, dtype, tf32_state):
    """What a compiled graph launches: every GEMM kernel gets the operand type of the
    inputs' dtype (PRECISION "tf32" only for float32 while torch allows TF32; the staged
    rows' ROUND code), as torch's switch stands when the graph is traced."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch._subclasses.functional_tensor import dispatch_functionalize
    from torch.fx.experimental.proxy_tensor import make_fx

    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        mode = FakeTensorMode()
        feats = [_fake_cuda(mode, (2, c, 4, 5), dtype) for c in (3, 5)]
        weight = _fake_cuda(mode, (2, 2, 2), torch.float64 if dtype == torch.float64 else torch.float32)
        saved = _fake_cuda(mode, (0,))

        def step(f, w):
            S = torch.ops.mtut.triton_sqdist_forward(f, 1e-8, algo, True, True)[0]
            return S, torch.ops.mtut.triton_sqdist_backward(f, saved, w, 1e-8, algo, [True, True])

        with mode:
            gm = make_fx(dispatch_functionalize(step))(feats, weight)
        launches = _launches(gm)
        want_mode = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(
            dtype, "tf32" if tf32 and dtype == torch.float32 else "ieee"
        )
        round_code = {"ieee": 0, "fp16": 1, "bf16": 2, "tf32": 3}[want_mode]
        gemms = [(name, c) for name, c in launches if name != "_stage_rows"]
        assert len(gemms) == (2 if algo == "direct" else 3), launches
        for name, consts in launches:
            if name == "_stage_rows":
                assert consts["ROUND"] == round_code, (name, consts)
                continue
            assert consts["PRECISION"] == ("tf32" if want_mode == "tf32" else "ieee"), (name, consts)
            assert consts["UPCAST"] is False
            if "ROUND" in consts:
                assert consts["ROUND"] == round_code, (name, consts)
            if "SCALED" in consts:
                assert consts["SCALED"] == (want_mode == "fp16"), (name, consts)


@registered_ops
def test_op_compiled_graph_recompiles_when_tf32_switch_flips(tf32_state):
    """A compiled graph bakes in the operand type when it is traced; dynamo's global-state
    guard covers torch's TF32 switch, so flipping it between calls recompiles (and flipping
    it back reuses the first graph) instead of running the stale choice."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward  # runs on the fake tensors: nothing is launched

    mode = FakeTensorMode()
    feats = [_fake_cuda(mode, (2, c, 6)) for c in (3, 5)]
    step = torch.compile(
        lambda fs: mtut_ops.pairwise_sqdist(fs, algo="gram", backend="triton"), fullgraph=True, backend=backend
    )
    with mode:
        torch.backends.cuda.matmul.allow_tf32 = False
        step(feats)
        step(feats)
        assert len(graphs) == 1
        torch.backends.cuda.matmul.allow_tf32 = True
        step(feats)
        assert len(graphs) == 2  # the guard failed: traced again, under the new setting
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        step(feats)
        torch.set_float32_matmul_precision("high")
        step(feats)
        assert len(graphs) == 2  # both settings have their graph


@registered_ops
def test_op_dynamo_traces_the_api_without_graph_breaks():
    """torch.compile(fullgraph=True) over the Python API with backend='triton' traces to
    one graph holding the triton op and the loss composite over its distances (fake
    propagation runs the op's torch-and-launch body). The backend stops before running
    anything: there is no GPU here."""
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
    calls = [n.target for n in graphs[0].graph.nodes if n.op == "call_function" and n.target is not operator.getitem]
    assert calls == [torch.ops.mtut.triton_sqdist_forward, torch.ops.mtut.ssa_loss_from_sqdist], calls


@pytest.mark.skipif(not (torch.cuda.is_available() and has_triton_kernels()), reason="needs CUDA and triton")
def test_triton_is_available_on_cuda():
    feats = make_feats(2, [3, 4], [2, 3], device="cuda")
    assert "triton" in mtut_ops.available_backends("cuda")
    mtut_ops.ssa_loss(feats, make_ce(2, 2, device="cuda"), backend="triton")
