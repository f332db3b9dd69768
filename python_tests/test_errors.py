"""Bad input gets a clear error naming the argument, from the API and from torch.ops.mtut alike."""

from __future__ import annotations

import pytest
import torch

import mtut_ops

from .conftest import make_ce, make_feats

F2 = make_feats(2, [3, 4], [2, 3])
CE = make_ce(2, 2)

# (feats, ce, kwargs, exception type, message pattern); {ce} stands for the argument's name
# as the caller knows it: the API's ce_losses, torch.ops.mtut.ssa_loss's ce
BAD_LOSS_INPUTS = {
    "one modality": ([F2[0]], CE[:1], {}, ValueError, r"feats must hold at least 2"),
    "batch differs": ([F2[0], make_feats(3, [4], [2, 3])[0]], CE, {}, ValueError, r"feats\[1\] has batch size N = 3"),
    "d differs": ([F2[0], make_feats(2, [4], [3, 3])[0]], CE, {}, ValueError, r"feats\[1\] has d = .* = 9"),
    "integer feats": ([F2[0], F2[1].long()], CE, {}, TypeError, r"feats\[1\] must be a floating-point"),
    "complex feats": ([F2[0].cfloat(), F2[1].cfloat()], CE, {}, TypeError, r"feats\[0\] must be a floating-point"),
    "dtypes differ": ([F2[0], F2[1].float()], CE, {}, TypeError, r"feats\[1\] has dtype"),
    "1-d feats": (
        [F2[0], torch.randn(4, dtype=torch.float64)],
        CE,
        {},
        ValueError,
        r"feats\[1\] must have shape \[N, C, \*S\]",
    ),
    "empty feats": ([F2[0], torch.randn(2, 0, 2, 3, dtype=torch.float64)], CE, {}, ValueError, r"feats\[1\] is empty"),
    "ce transposed": (F2, make_ce(2, 3).t(), {}, ValueError, r"{ce} must have shape \[M, N\] = \[2, 2\]"),
    "ce 1-d": (F2, CE.flatten(), {}, ValueError, r"{ce} must have shape \[M, N\]"),
    "ce integer": (F2, CE.long(), {}, TypeError, r"{ce} must be a floating-point"),
    "unknown distance": (F2, CE, {"distance": "l2"}, ValueError, r"distance must be 'rms' or 'fro2', got 'l2'"),
    "unknown algo": (F2, CE, {"algo": "fast"}, ValueError, r"algo must be 'auto', 'direct' or 'gram', got 'fast'"),
    "negative eps": (F2, CE, {"eps": -1e-8}, ValueError, r"eps must be a finite number >= 0"),
    "nan eps": (F2, CE, {"eps": float("nan")}, ValueError, r"eps must be a finite number >= 0"),
    "negative beta": (F2, CE, {"beta": -1.0}, ValueError, r"beta must be a finite number >= 0"),
    "negative lambda": (F2, CE, {"lambda_": -1.0}, ValueError, r"lambda_ must be a finite number >= 0"),
    "negative cap": (F2, CE, {"pair_cap": -1.0}, ValueError, r"pair_cap must be None or a number >= 0"),
}


@pytest.mark.parametrize("case", BAD_LOSS_INPUTS, ids=list(BAD_LOSS_INPUTS))
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_api_rejects(case, backend):
    feats, ce, kwargs, exc, pattern = BAD_LOSS_INPUTS[case]
    with pytest.raises(exc, match=pattern.replace("{ce}", "ce_losses")):
        mtut_ops.ssa_loss(feats, ce, backend=backend, **kwargs)


def test_api_options_are_keyword_only():
    """An old positional call (beta, lambda_ after ce) is refused with the keywords to use,
    never read as something else; SSALoss passes its options by name."""
    meant = r"ssa_loss\(\) takes 2 positional .* write ssa_loss\(\.\.\., beta=1\.5, lambda_=0\.1\)"
    with pytest.raises(TypeError, match=meant):
        mtut_ops.ssa_loss(F2, CE, 1.5, 0.1)
    with pytest.raises(TypeError, match=r"beta, lambda_, distance, eps, algo, pair_cap, backend"):
        mtut_ops.ssa_loss(F2, CE, 2.0)
    crit = mtut_ops.SSALoss(beta=1.5, lambda_=0.1, distance="fro2", backend="cpu")
    torch.testing.assert_close(crit(F2, CE), mtut_ops.ssa_loss(F2, CE, beta=1.5, lambda_=0.1, distance="fro2"))


@pytest.mark.parametrize("case", BAD_LOSS_INPUTS, ids=list(BAD_LOSS_INPUTS))
def test_torch_ops_rejects(case):
    """Callers of torch.ops.mtut.ssa_loss get the same message from the C++ checks."""
    feats, ce, kwargs, exc, pattern = BAD_LOSS_INPUTS[case]
    args = dict(beta=2.0, lambda_=5e-3, distance="rms", eps=1e-8, algo="auto", pair_cap=None)
    args.update(kwargs)
    with pytest.raises(exc, match=pattern.replace("{ce}", "ce")):
        torch.ops.mtut.ssa_loss(list(feats), ce, *args.values())


def test_torch_ops_rejects_bad_weight_and_grad():
    none = torch.empty(0, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"weight must have shape \[N, M, M\] = \[2, 2, 2\]"):
        torch.ops.mtut.sqdist_backward(F2, none, torch.zeros(2, 2), 1e-8, "gram", [True, True])
    with pytest.raises(ValueError, match=r"needs_grad must hold one flag per modality \(M = 2\), got 3"):
        torch.ops.mtut.sqdist_backward(F2, none, torch.zeros(2, 2, 2), 1e-8, "gram", [True, True, False])
    with pytest.raises(ValueError, match=r"saved must be empty or what sqdist_forward returned"):
        torch.ops.mtut.sqdist_backward(F2, torch.zeros(2, 5), torch.zeros(2, 2, 2), 1e-8, "gram", [True, True])
    for device in ("cpu", "meta"):  # the kernels and the fake
        with pytest.raises(ValueError, match=r"students must be >= 0 \(0: any number of modalities per sample"):
            torch.ops.mtut.sqdist_backward(
                [f.to(device) for f in F2],
                none.to(device),
                torch.zeros(2, 2, 2, device=device),
                1e-8,
                "gram",
                [True, True],
                -1,
            )
    with pytest.raises(ValueError, match=r"grad must have shape \[N, d, d\]"):
        torch.ops.mtut.correlation_backward(torch.zeros(2, 3, 3), F2[0], 1e-8)
    with pytest.raises(ValueError, match=r"ce must have shape \[M, N\] with M >= 2"):
        torch.ops.mtut.focal_weight(torch.zeros(1, 3), 2.0)


def test_ce_list_of_wrong_length_or_shape():
    with pytest.raises(ValueError, match=r"ce_losses must be a tensor \[M, N\] or a list of M = 2"):
        mtut_ops.ssa_loss(F2, [CE[0]])
    with pytest.raises(ValueError, match=r"each of ce_losses must have shape \[N\] = \[2\]"):
        mtut_ops.ssa_loss(F2, [CE[0], torch.zeros(3, dtype=torch.float64)])


def test_feats_not_a_list():
    with pytest.raises(TypeError, match=r"feats must be a list or tuple"):
        mtut_ops.ssa_loss(torch.stack([F2[0], F2[0]]), CE)


def test_unknown_or_unavailable_backend():
    with pytest.raises(ValueError, match=r"backend must be one of"):
        mtut_ops.ssa_loss(F2, CE, backend="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"backend 'cuda' cannot run on cpu"):
            mtut_ops.ssa_loss(F2, CE, backend="cuda")


@pytest.mark.parametrize("interpret", ["0", "1"])
@pytest.mark.parametrize("triton_ops", [False, True])
@pytest.mark.parametrize("cuda_kernels", [False, True])
def test_backend_fast_path_chooses_as_the_list(monkeypatch, interpret, triton_ops, cuda_kernels):
    """pick_backend's shortcut for the usual cases chooses what the rule over the list of
    available backends chooses, or raises the same error, for every device, backend,
    interpreter setting and build (with and without CUDA kernels and triton ops)."""
    from mtut_ops import backends as B

    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    monkeypatch.setattr(B, "_HAS_CUDA_KERNELS", cuda_kernels)
    monkeypatch.setattr(B, "has_triton_kernels", lambda: triton_ops)

    def outcome(pick, backend, device):
        try:
            return pick(backend, device)
        except (ValueError, RuntimeError) as e:
            return type(e), str(e)

    for device in (torch.device("cpu"), torch.device("cuda"), torch.device("meta")):
        for backend in (None, *B.BACKENDS, "tpu"):
            assert outcome(B.pick_backend, backend, device) == outcome(B._pick_listed, backend, device), (
                backend,
                device,
            )


def test_module_rejects_bad_config():
    with pytest.raises(ValueError, match=r"algo must be"):
        mtut_ops.SSALoss(algo="fastest")
    with pytest.raises(ValueError, match=r"distance must be"):
        mtut_ops.SSALoss(distance="cosine")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_tensors_on_different_devices():
    feats = [F2[0], F2[1].cuda()]
    with pytest.raises(ValueError, match=r"feats\[1\] is on cuda"):
        mtut_ops.ssa_loss(feats, CE)
    with pytest.raises(ValueError, match=r"ce_losses is on cuda"):
        mtut_ops.ssa_loss(F2, CE.cuda())


def test_tensors_on_different_devices_meta():
    """The same check without a GPU: a meta tensor is another device."""
    feats = [F2[0], F2[1].to("meta")]
    with pytest.raises(ValueError, match=r"feats\[1\] is on meta"):
        mtut_ops.ssa_loss(feats, CE, backend="reference")
    with pytest.raises(ValueError, match=r"ce_losses is on meta"):
        mtut_ops.ssa_loss(F2, CE.to("meta"), backend="cpu")


def test_api_names_ce_losses():
    """The API's parameter is ce_losses (focal_weight's too); the ops' is ce."""
    with pytest.raises(ValueError, match=r"mtut: ce_losses must have shape \[M, N\] with M >= 2"):
        mtut_ops.focal_weight(torch.zeros(1, 3))
    with pytest.raises(TypeError, match=r"mtut: ce_losses must be a floating-point"):
        mtut_ops.focal_weight(torch.zeros(2, 3, dtype=torch.long))


def test_meta_tensors_get_a_message_not_a_rebuild_hint():
    feats = [f.to("meta") for f in F2]
    for backend in (None, "cpu"):
        with pytest.raises(ValueError, match=r"mtut: the tensors are on the meta device .*torch\.ops\.mtut") as info:
            mtut_ops.ssa_loss(feats, CE.to("meta"), backend=backend)
        assert "rebuild" not in str(info.value)
    # the ops themselves run on meta tensors (their fake implementations)
    out = torch.ops.mtut.ssa_loss(feats, CE.to("meta"), 2.0, 5e-3, "rms", 1e-8, "auto", None)
    assert out.device.type == "meta" and out.shape == ()
