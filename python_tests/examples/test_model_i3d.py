"""I3D: endpoint shapes, TF SAME padding, channel bookkeeping, input checks."""

from __future__ import annotations

import math

import pytest
import torch

from examples.models import ENDPOINTS, I3D, same_padding


def test_mixed_5c_at_64x224_is_1024x8x7x7():
    # The full-size forward runs on the meta device: the same code (padding, pools,
    # concatenations) computes every shape without the ~100 GFLOPs a CPU would need.
    net = I3D(num_classes=25, width=1.0).eval().to("meta")
    with torch.no_grad():
        logits, feats = net.extract(torch.empty(2, 3, 64, 224, 224, device="meta"), ("Mixed_4f", "Mixed_5c"))
    assert feats["Mixed_5c"].shape == (2, 1024, 8, 7, 7)
    assert feats["Mixed_4f"].shape == (2, 832, 16, 14, 14)
    assert logits.shape == (2, 25)


@pytest.mark.deep
def test_mixed_5c_at_64x224_computed():
    net = I3D(num_classes=None, width=1.0).eval()
    with torch.no_grad():
        feats = net.features(torch.randn(1, 3, 64, 224, 224))
    assert feats["Mixed_5c"].shape == (1, 1024, 8, 7, 7)
    assert torch.isfinite(feats["Mixed_5c"]).all()


def test_endpoints_at_16x112():
    torch.manual_seed(0)
    net = I3D(num_classes=25, width=0.25).eval()
    x = torch.randn(2, 3, 16, 112, 112)
    with torch.no_grad():
        feats = net.features(x, ("Mixed_3c", "Mixed_4f", "Mixed_5c"))
        logits, extracted = net.extract(x, ("Mixed_4f",))
    assert feats["Mixed_3c"].shape == (2, net.channels["Mixed_3c"], 8, 14, 14)
    assert feats["Mixed_4f"].shape == (2, net.channels["Mixed_4f"], 4, 7, 7)
    assert feats["Mixed_5c"].shape == (2, net.channels["Mixed_5c"], 2, 4, 4)
    assert logits.shape == (2, 25)
    assert list(extracted) == ["Mixed_4f"]
    torch.testing.assert_close(extracted["Mixed_4f"], feats["Mixed_4f"])
    torch.testing.assert_close(net(x), logits)


def test_width_one_channels_are_the_originals():
    net = I3D(num_classes=400)
    assert (net.channels["Mixed_3c"], net.channels["Mixed_4f"], net.channels["Mixed_5c"]) == (480, 832, 1024)
    assert net.conv3d_0c_1x1.conv3d.weight.shape == (400, 1024, 1, 1, 1)
    assert set(net.channels) == set(ENDPOINTS)


@pytest.mark.parametrize("in_channels", [1, 2, 3])
def test_any_input_channels(in_channels):
    net = I3D(num_classes=5, in_channels=in_channels, width=0.125).eval()
    with torch.no_grad():
        assert net(torch.randn(1, in_channels, 8, 32, 32)).shape == (1, 5)


@pytest.mark.parametrize("size", [(15, 17, 19), (16, 112, 112), (7, 9, 5)])
@pytest.mark.parametrize(
    "kernel,stride", [((7, 7, 7), (2, 2, 2)), ((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (1, 1, 1)), ((2, 2, 2), (2, 2, 2))]
)
def test_same_padding_gives_ceil(size, kernel, stride):
    pads = same_padding(size, kernel, stride)
    for i, (n, k, s) in enumerate(zip(size, kernel, stride)):
        front, back = pads[2 * (2 - i)], pads[2 * (2 - i) + 1]
        assert back - front in (0, 1)  # TF puts the extra pixel at the end
        assert (n + front + back - k) // s + 1 == math.ceil(n / s)


def test_odd_sizes_follow_ceil_through_the_network():
    net = I3D(num_classes=None, width=0.125).eval()
    with torch.no_grad():
        feats = net.features(torch.randn(1, 3, 9, 45, 37), ENDPOINTS)
    t, h, w = 9, 45, 37
    expected = {}
    for name in ENDPOINTS:
        if name == "Conv3d_1a_7x7":
            t, h, w = math.ceil(t / 2), math.ceil(h / 2), math.ceil(w / 2)
        elif name in ("MaxPool3d_2a_3x3", "MaxPool3d_3a_3x3"):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        elif name in ("MaxPool3d_4a_3x3", "MaxPool3d_5a_2x2"):
            t, h, w = math.ceil(t / 2), math.ceil(h / 2), math.ceil(w / 2)
        expected[name] = (t, h, w)
    assert {k: tuple(v.shape[2:]) for k, v in feats.items()} == expected
    assert {k: v.shape[1] for k, v in feats.items()} == net.channels


def test_input_and_argument_errors():
    net = I3D(num_classes=3, in_channels=1, width=0.125)
    with pytest.raises(ValueError, match=r"expects input \[N, 1, T, H, W\]"):
        net(torch.randn(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="unknown I3D endpoint"):
        net.features(torch.randn(1, 1, 8, 32, 32), ("Mixed_9z",))
    with pytest.raises(ValueError, match="width"):
        I3D(width=0)
    with pytest.raises(ValueError, match="in_channels"):
        I3D(in_channels=0)
    with pytest.raises(RuntimeError, match="no classifier"):
        I3D(num_classes=None, width=0.125).classify(torch.randn(1, 128, 2, 2, 2))
