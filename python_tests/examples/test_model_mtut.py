"""The MTUT model: outputs, loss terms, where the SSA gradient goes, one training step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mtut_ops
from examples.mtut_model import MTUTModel, SSAConfig

from .test_model_weights import kinetics_like_state

N, T, S = 4, 8, 48


def batch(modalities=("rgb", "depth"), seed=0):
    g = torch.Generator().manual_seed(seed)
    ch = {"rgb": 3, "depth": 1, "flow": 2, "ir": 1}
    return {m: torch.randn(N, ch[m], T, S, S, generator=g) for m in modalities}


def tiny(modalities=("rgb", "depth"), seed=0, **kw):
    torch.manual_seed(seed)
    return MTUTModel(modalities, num_classes=5, width=0.125, **kw)


def test_outputs_and_loss_terms():
    model = tiny(ssa_endpoints=("Mixed_4f", "Mixed_5c"))
    out = model(batch())
    assert {m: tuple(v.shape) for m, v in out.logits.items()} == {"rgb": (N, 5), "depth": (N, 5)}
    assert out.features["rgb"]["Mixed_5c"].shape[:2] == (N, model.nets["rgb"].channels["Mixed_5c"])
    assert set(out.features["depth"]) == {"Mixed_4f", "Mixed_5c"}
    labels = torch.tensor([0, 1, 2, 3])
    off = model.loss(out, labels, ssa=False)
    assert float(off.ssa) == 0 and not off.ssa_by_endpoint
    ce = {m: F.cross_entropy(out.logits[m], labels) for m in ("rgb", "depth")}
    torch.testing.assert_close(off.total, ce["rgb"] + ce["depth"])
    on = model.loss(out, labels, ssa=True)
    assert set(on.ssa_by_endpoint) == {"Mixed_4f", "Mixed_5c"}
    expected = sum(
        mtut_ops.ssa_loss([out.features[m][e] for m in ("rgb", "depth")], on.ce_per_sample)
        for e in ("Mixed_4f", "Mixed_5c")
    )
    torch.testing.assert_close(on.ssa, expected)
    torch.testing.assert_close(on.total, off.total + on.ssa)
    assert not on.ce_per_sample.requires_grad and on.ce_per_sample.shape == (2, N)


def test_unimodal_model_has_no_ssa():
    model = tiny(("rgb",))
    out = model(batch(("rgb",)))
    loss = model.loss(out, torch.zeros(N, dtype=torch.long), ssa=True)
    assert float(loss.ssa) == 0
    torch.testing.assert_close(loss.total, loss.ce["rgb"])


def test_ssa_gradient_reaches_only_the_worse_network():
    """Depth is better than RGB on every sample: SSA trains RGB toward depth, never depth."""
    model = tiny(ssa=SSAConfig(lambda_=1.0))
    labels = torch.zeros(N, dtype=torch.long)
    with torch.no_grad():  # a depth classifier that is confidently right on every sample
        model.nets["depth"].conv3d_0c_1x1.conv3d.bias[0] = 20.0
    out = model(batch())
    loss = model.loss(out, labels, ssa=True)
    assert (loss.ce_per_sample[1] < loss.ce_per_sample[0]).all()
    assert loss.ssa.item() > 0
    loss.ssa.backward()
    depth_grads = [p.grad for p in model.nets["depth"].parameters() if p.grad is not None]
    assert all(float(g.abs().max()) == 0 for g in depth_grads)
    rgb_backbone = model.nets["rgb"].mixed_5c.branch_0.conv3d.weight.grad
    assert rgb_backbone is not None and float(rgb_backbone.abs().max()) > 0
    # the classifier sits after Mixed_5c: SSA does not reach it
    assert model.nets["rgb"].conv3d_0c_1x1.conv3d.weight.grad is None


def test_one_training_step_lowers_the_loss():
    model = tiny()
    x, labels = batch(), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    before = model.loss(model(x), labels, ssa=True)
    opt.zero_grad()
    before.total.backward()
    opt.step()
    after = model.loss(model(x), labels, ssa=True)
    assert after.total.item() < before.total.item()
    assert all(after.ce[m].item() < before.ce[m].item() for m in ("rgb", "depth"))


def test_fusion():
    logits = {"rgb": torch.tensor([[2.0, 0.0]]), "depth": torch.tensor([[0.0, 1.0]])}
    soft = (logits["rgb"].softmax(1) + logits["depth"].softmax(1)) / 2
    torch.testing.assert_close(MTUTModel.fuse(logits), soft)
    torch.testing.assert_close(MTUTModel.fuse(logits, "logits"), torch.tensor([[1.0, 0.5]]))
    with pytest.raises(ValueError, match="fusion"):
        MTUTModel.fuse(logits, "max")


def test_argument_errors():
    with pytest.raises(ValueError, match="unknown modality 'thermal'"):
        MTUTModel(("rgb", "thermal"))
    with pytest.raises(ValueError, match="repeats"):
        MTUTModel(("rgb", "rgb"))
    with pytest.raises(ValueError, match="ssa_endpoints"):
        MTUTModel(("rgb", "depth"), ssa_endpoints=("Mixed_9z",))
    with pytest.raises(KeyError, match="depth"):
        tiny()(batch(("rgb",)))


def test_load_pretrained_rgb_file_into_every_modality(tmp_path):
    path = tmp_path / "model_rgb.pth"
    torch.save(kinetics_like_state(width=0.25), path)
    torch.manual_seed(0)
    model = MTUTModel(("rgb", "depth"), num_classes=25, width=0.25)
    reports = model.load_pretrained({"rgb": path, "depth": path})
    assert reports["rgb"].ok and not reports["rgb"].adapted
    assert reports["depth"].ok and reports["depth"].adapted
    with pytest.raises(ValueError, match="'flow' is not in the model"):
        model.load_pretrained({"flow": path})
