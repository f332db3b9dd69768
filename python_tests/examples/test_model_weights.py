"""Loading converted Kinetics I3D state dicts: key layout, round trip, stem adaptation, reports."""

from __future__ import annotations

import pytest
import torch

from examples.models import I3D, I3DWeightsError, adapt_stem, load_i3d_state_dict, load_i3d_weights

# The converted files' layout, written out independently of examples.models: every
# unit is ``<name>.conv3d.weight`` plus ``<name>.batch3d.{weight,bias,running_mean,running_var}``
# (no num_batches_tracked: the files predate it); branches 1 and 2 are Sequentials of two
# units, branch 3 a Sequential of (pool, unit); the classifier has a bias and no batch norm.
_BN = ("weight", "bias", "running_mean", "running_var")
_MIXED = ("mixed_3b", "mixed_3c", "mixed_4b", "mixed_4c", "mixed_4d", "mixed_4e", "mixed_4f", "mixed_5b", "mixed_5c")


def converted_layout_keys() -> set[str]:
    units = ["conv3d_1a_7x7", "conv3d_2b_1x1", "conv3d_2c_3x3"]
    for m in _MIXED:
        units += [
            f"{m}.branch_0",
            f"{m}.branch_1.0",
            f"{m}.branch_1.1",
            f"{m}.branch_2.0",
            f"{m}.branch_2.1",
            f"{m}.branch_3.1",
        ]
    keys = {f"{u}.conv3d.weight" for u in units} | {f"{u}.batch3d.{p}" for u in units for p in _BN}
    return keys | {"conv3d_0c_1x1.conv3d.weight", "conv3d_0c_1x1.conv3d.bias"}


def kinetics_like_state(width: float = 1.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the converted Kinetics-400 layout with random (non-trivial) values."""
    torch.manual_seed(seed)
    net = I3D(num_classes=400, width=width)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm3d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
                mod.bias.normal_(0, 0.1)
    return {k: v.clone() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_parameter_names_are_the_converted_layout():
    state = kinetics_like_state()
    assert set(state) == converted_layout_keys()
    assert state["conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    assert state["mixed_4f.branch_1.1.conv3d.weight"].shape == (320, 160, 3, 3, 3)
    assert state["mixed_5c.branch_3.1.conv3d.weight"].shape == (128, 832, 1, 1, 1)
    assert state["conv3d_0c_1x1.conv3d.weight"].shape == (400, 1024, 1, 1, 1)


def test_round_trip_through_a_file_gives_the_same_outputs(tmp_path):
    state = kinetics_like_state(width=0.25)
    path = tmp_path / "model_rgb.pth"
    torch.save(state, path)
    src = I3D(num_classes=400, width=0.25)
    src.load_state_dict(state, strict=False)  # num_batches_tracked absent, as in the files
    dst = I3D(num_classes=400, width=0.25)
    report = load_i3d_weights(dst, path)
    assert report.ok and not report.adapted and not report.skipped
    assert len(report.loaded) == len(state)
    x = torch.randn(2, 3, 8, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(dst.eval()(x), src.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_one_channel_stem_from_rgb(mode):
    state = kinetics_like_state(width=0.25)
    depth = I3D(num_classes=25, in_channels=1, width=0.25)
    report = load_i3d_state_dict(depth, state, stem=mode)
    assert report.ok
    assert report.adapted and "conv3d_1a_7x7" in report.adapted[0]
    assert sorted(report.skipped) == ["conv3d_0c_1x1.conv3d.bias", "conv3d_0c_1x1.conv3d.weight"]
    w = state["conv3d_1a_7x7.conv3d.weight"]
    expected = w.mean(1, keepdim=True) if mode == "mean" else w.sum(1, keepdim=True)
    torch.testing.assert_close(depth.conv3d_1a_7x7.conv3d.weight, expected, rtol=0, atol=0)


def test_summed_stem_sees_gray_like_the_rgb_model():
    state = kinetics_like_state(width=0.25)
    rgb, gray = I3D(400, 3, width=0.25), I3D(400, 1, width=0.25)
    load_i3d_state_dict(rgb, state)
    load_i3d_state_dict(gray, state, stem="sum")
    x = torch.randn(1, 1, 8, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(gray.eval()(x), rgb.eval()(x.expand(-1, 3, -1, -1, -1)), rtol=1e-4, atol=1e-5)


def test_two_channel_stem_for_flow():
    w = torch.randn(8, 3, 7, 7, 7)
    torch.testing.assert_close(adapt_stem(w, 2, "mean"), w.mean(1, keepdim=True).expand(-1, 2, -1, -1, -1))
    torch.testing.assert_close(adapt_stem(w, 2, "sum").sum(1), w.sum(1))
    with pytest.raises(ValueError, match="stem mode"):
        adapt_stem(w, 2, "median")


def test_missing_keys_are_an_error_or_reported():
    state = kinetics_like_state(width=0.25)
    del state["mixed_4c.branch_2.1.conv3d.weight"]
    with pytest.raises(I3DWeightsError, match="missing from the checkpoint: mixed_4c.branch_2.1.conv3d.weight"):
        load_i3d_state_dict(I3D(400, width=0.25), state)
    net = I3D(400, width=0.25)
    before = net.mixed_4c.branch_2[1].conv3d.weight.clone()
    report = load_i3d_state_dict(net, state, strict=False)
    assert not report.ok and report.missing == ["mixed_4c.branch_2.1.conv3d.weight"]
    assert torch.equal(net.mixed_4c.branch_2[1].conv3d.weight, before)  # left as initialized, and said so
    torch.testing.assert_close(net.mixed_3b.branch_0.conv3d.weight, state["mixed_3b.branch_0.conv3d.weight"])


def test_unexpected_and_mismatched_keys_are_errors():
    state = kinetics_like_state(width=0.25)
    state["mixed_6a.branch_0.conv3d.weight"] = torch.zeros(1)
    with pytest.raises(I3DWeightsError, match="not in the model: mixed_6a.branch_0.conv3d.weight"):
        load_i3d_state_dict(I3D(400, width=0.25), state)
    with pytest.raises(I3DWeightsError, match="shape mismatch: conv3d_2b_1x1.conv3d.weight"):
        load_i3d_state_dict(I3D(400, width=0.5), kinetics_like_state(width=0.25))


def test_wrapped_checkpoints_and_missing_file(tmp_path):
    state = kinetics_like_state(width=0.25)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    assert load_i3d_state_dict(I3D(400, width=0.25), wrapped).ok
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_i3d_weights(I3D(400, width=0.25), tmp_path / "absent.pth")


def test_backbone_only_model_skips_the_classifier():
    report = load_i3d_state_dict(I3D(None, width=0.25), kinetics_like_state(width=0.25))
    assert report.ok and len(report.skipped) == 2
