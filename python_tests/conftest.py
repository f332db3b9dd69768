"""Shared fixtures: backends to test, hypothesis profiles, input builders, the tiers.

Tiers (Makefile): `make test` runs `-m "not deep"`, `make test-deep` runs `-m deep`. A test
is `deep` when marked so, or when it runs on the interpreted triton backend or the emulated
CUDA kernels through `backend_device` where pytest_collection_modifyitems says so
(MTUT_TEST_BACKEND=triton or cuda-emulated: runs of their own, which the Makefile starts).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import mtut_ops

# "ci": the fast tier's budget (derandomized: the same examples every run); "deep": make
# test-deep's full budget (`-m hypothesis`, the marker hypothesis gives its tests); "dev":
# a local hunt for new examples.
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("MTUT_HYPOTHESIS_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=_QUIET,
    derandomize=True,
)
settings.register_profile("deep", max_examples=200, deadline=None, suppress_health_check=_QUIET, derandomize=True)
settings.register_profile("dev", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("MTUT_HYPOTHESIS_PROFILE", "ci"))


def _fused_backends():
    """(backend, device) pairs of every fused implementation runnable here.

    Triton on CPU (TRITON_INTERPRET=1, which must be set before mtut_ops is imported)
    is the one backend of a run with MTUT_TEST_BACKEND=triton: the fast tier runs
    test_accuracy.py's per-op checks so, `make test-triton-interp` every other
    backend_device test (pytest_collection_modifyitems marks them deep: the interpreter
    is far too slow for the whole fast tier).
    The CUDA kernels on CPU tensors (the emulation of python_tests/cuda_emulation, routed
    into torch.ops.mtut by the fixture) are the one backend of a run with
    MTUT_TEST_BACKEND=cuda-emulated.
    """
    if os.environ.get("MTUT_TEST_BACKEND") == "triton":
        return [("triton", "cuda" if torch.cuda.is_available() else "cpu")]
    if os.environ.get("MTUT_TEST_BACKEND") == "cuda-emulated":
        return [EMULATED]
    out = [("cpu", "cpu")]
    if torch.cuda.is_available():
        out += [(b, "cuda") for b in mtut_ops.available_backends("cuda") if b != "reference"]
    return out


#: The CUDA kernels on CPU tensors: only the emulation runs them (python_tests/cuda_emulation).
EMULATED = ("cuda", "cpu")
FUSED = _fused_backends()


def _opcheck_importable() -> bool:
    """torch.library.opcheck's test machinery imports (on some torch versions it needs
    expecttest, which e.g. a GPU machine's python may lack)."""
    try:
        import torch.testing._internal.optests  # noqa: F401
    except ImportError:
        return False
    return True


needs_opcheck = pytest.mark.skipif(not _opcheck_importable(), reason="torch.library.opcheck cannot import here")


@pytest.fixture(scope="module", params=FUSED, ids=["cuda-emulated" if p == EMULATED else "-".join(p) for p in FUSED])
def backend_device(request):
    if request.param == EMULATED:
        from .cuda_emulation import route

        route()  # torch.ops.mtut's CPU kernels become the emulated CUDA ones (this process only)
    return request.param


#: Under the interpreter, the fast tier's check of the triton backend against the fp64
#: reference: test_accuracy.py's per-op tests, but for its property tests and the d = 2625
#: one (the cpu/cuda kernels' tiles; minutes interpreted), which run deep.
_TRITON_FAST_MODULES = {"test_accuracy.py"}
_TRITON_DEEP_TESTS = {"test_many_tiles_and_strips_fp64"}


#: On the emulated CUDA kernels (MTUT_TEST_BACKEND=cuda-emulated), the backend_device tests
#: of _EMULATED_FAST_MODULES run in the fast tier but for these (test name: the one algo, or
#: None for all), which take seconds to a minute each emulated, as do test_accuracy.py's and
#: the property tests: deep (make test-cuda-emulated).
_EMULATED_FAST_MODULES = {"test_edge_cases.py", "test_op_contract.py", "test_op_registration.py"}
_EMULATED_DEEP_TESTS = {
    "test_deterministic_run_to_run": "direct",
    "test_compile_dynamic_shapes_one_graph": None,
    "test_compile_mark_dynamic": None,
    "test_torch_compile_fullgraph_matches_eager": None,
    "test_gradcheck": None,
    "test_gradcheck_loss_from_sqdist": None,
}

_FAKES_DESCRIBE_THE_DEVICE = (
    "the fake implementations describe the kernels of the tensors' device (CPU tensors: the cpu "
    "kernels' saved buffer); the emulated CUDA kernels keep CUDA's (on a GPU the main run opchecks them)"
)


def _emulated_skip(item):
    """Why a backend_device test does not run on the emulated CUDA kernels, or None."""
    if item.originalname in ("test_opcheck_sqdist_forward_and_backward", "test_opcheck_ssa_loss"):
        return _FAKES_DESCRIBE_THE_DEVICE
    if item.originalname == "test_opcheck_correlation_and_focal_weight":
        return "ops without a CUDA kernel of their own (the same code on every device): the main run's"
    if hasattr(item, "callspec") and item.callspec.params.get("which") == "reference":
        return "the reference, whatever the backend: the main run's"
    return None


def _emulated_deep(item) -> bool:
    if item.path.name not in _EMULATED_FAST_MODULES or getattr(item.obj, "is_hypothesis_test", False):
        return True
    if item.originalname not in _EMULATED_DEEP_TESTS:
        return False
    algo = _EMULATED_DEEP_TESTS[item.originalname]
    return algo is None or item.callspec.params.get("algo") == algo


def pytest_collection_modifyitems(config, items):
    """On the interpreted triton backend, the backend_device tests are deep but for the
    per-op reference checks of _TRITON_FAST_MODULES. On the emulated CUDA kernels, a run
    of the backend_device tests only (the others are the main run's: here torch.ops.mtut's
    CPU kernels are the emulated CUDA ones), deep as _emulated_deep says."""
    which = os.environ.get("MTUT_TEST_BACKEND")
    if which == "cuda-emulated":
        for item in items:
            if "backend_device" not in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.skip(reason="no backend_device: the main run's, not the emulation's"))
                continue
            item.add_marker(pytest.mark.emulated)
            why = _emulated_skip(item)
            if why is not None:
                item.add_marker(pytest.mark.skip(reason=why))
            elif _emulated_deep(item):
                item.add_marker(pytest.mark.deep)
        return
    if which != "triton" or torch.cuda.is_available():
        return
    for item in items:
        if "backend_device" not in getattr(item, "fixturenames", ()):
            continue
        item.add_marker(pytest.mark.interpreted)
        # (the attribute @given sets: hypothesis's own marker comes after this hook, with -m's selection)
        if (
            item.path.name not in _TRITON_FAST_MODULES
            or getattr(item.obj, "is_hypothesis_test", False)
            or item.originalname in _TRITON_DEEP_TESTS
        ):
            item.add_marker(pytest.mark.deep)


def make_feats(N, channels, spatial, dtype=torch.float64, device="cpu", noncontiguous=False, seed=0):
    """M feature maps [N, C_m, *spatial]; non-contiguous ones are strided views of bigger tensors."""
    g = torch.Generator().manual_seed(seed)
    feats = []
    for C in channels:
        if noncontiguous:
            # channels-last-like permutation plus a stride-2 slice: neither contiguous nor dense
            big = torch.randn(N, *spatial, 2 * C, generator=g, dtype=torch.float64)
            f = big[..., ::2].movedim(-1, 1)
        else:
            f = torch.randn(N, C, *spatial, generator=g, dtype=torch.float64)
        feats.append(f.to(device=device, dtype=dtype))
    return feats


def make_ce(M, N, dtype=torch.float64, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(M, N, generator=g, dtype=torch.float64) * 3).to(device=device, dtype=dtype)


def leaf(feats):
    # detach() keeps the strides, so non-contiguous inputs stay non-contiguous leaves
    return [f.detach().requires_grad_() for f in feats]
