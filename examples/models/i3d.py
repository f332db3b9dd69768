"""I3D: Inception-v1 inflated to 3D (Carreira & Zisserman, CVPR 2017).

The module and parameter names follow the widely used PyTorch port of the Kinetics
I3D checkpoints (``conv3d_1a_7x7.conv3d.weight``, ``conv3d_1a_7x7.batch3d.*``,
``mixed_3b.branch_1.0.conv3d.weight``, ..., ``conv3d_0c_1x1.conv3d.{weight,bias}``), so
its converted Kinetics-400 state dicts load with :func:`load_i3d_weights`. Padding is
TensorFlow's ``SAME`` (computed from the input size, asymmetric where TF pads
asymmetrically), so every layer maps ``n`` positions to ``ceil(n / stride)``:
64x224x224 gives ``Mixed_5c`` ``[N, 1024, 8, 7, 7]``.

Beyond the original: any number of input channels (3 RGB, 1 depth, 2 flow), a width
multiplier on every layer's channels (``width=0.25`` for small CPU runs), and features
at any named endpoint (``Mixed_3c``, ``Mixed_4f``, ``Mixed_5c``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Batch-norm epsilon of the TensorFlow original, which the converted statistics assume.
BN_EPS = 1e-3

# Output channels of each Inception block's branches at width 1.0: branch 0 (1x1),
# branch 1 (1x1 -> 3x3x3), branch 2 (1x1 -> 3x3x3), branch 3 (3x3x3 max pool -> 1x1).
_MIXED: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

# The feature endpoints in network order (the TensorFlow original's names).
ENDPOINTS: tuple[str, ...] = (
    "Conv3d_1a_7x7",
    "MaxPool3d_2a_3x3",
    "Conv3d_2b_1x1",
    "Conv3d_2c_3x3",
    "MaxPool3d_3a_3x3",
    "Mixed_3b",
    "Mixed_3c",
    "MaxPool3d_4a_3x3",
    "Mixed_4b",
    "Mixed_4c",
    "Mixed_4d",
    "Mixed_4e",
    "Mixed_4f",
    "MaxPool3d_5a_2x2",
    "Mixed_5b",
    "Mixed_5c",
)


def _attr(endpoint: str) -> str:
    """Module attribute of an endpoint: the port's lower-case names (``Mixed_3b`` -> ``mixed_3b``)."""
    return endpoint[0].lower() + endpoint[1:]


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else (int(v[0]), int(v[1]), int(v[2]))


def same_padding(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> list[int]:
    """TensorFlow ``SAME`` padding of a ``[T, H, W]`` input, in ``F.pad`` order.

    Each dim is padded by ``max((ceil(n / s) - 1) * s + k - n, 0)``, the smaller half
    in front, so the output has ``ceil(n / s)`` positions.
    """
    pads: list[int] = []
    for n, k, s in zip(reversed(size), reversed(kernel), reversed(stride)):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return pads


class Unit3D(nn.Module):
    """Conv3d (TF ``SAME`` padding) -> BatchNorm3d -> ReLU, as in the port (``conv3d``, ``batch3d``).

    Symmetric padding goes into the convolution itself; only layers whose TF padding is
    asymmetric for the given input (stride 2) pad explicitly.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size=1,
        stride=1,
        *,
        activation: bool = True,
        use_bn: bool = True,
        use_bias: bool = False,
    ):
        super().__init__()
        self.kernel_size, self.stride = _triple(kernel_size), _triple(stride)
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel_size, self.stride, bias=use_bias)
        self.batch3d = nn.BatchNorm3d(out_channels, eps=BN_EPS) if use_bn else None
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = same_padding(x.shape[2:], self.kernel_size, self.stride)
        if pads[0::2] == pads[1::2]:
            x = F.conv3d(x, self.conv3d.weight, self.conv3d.bias, self.stride, tuple(reversed(pads[0::2])))
        else:
            x = self.conv3d(F.pad(x, pads))
        if self.batch3d is not None:
            x = self.batch3d(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max pooling with TF ``SAME`` padding (padded positions never win)."""

    def __init__(self, kernel_size, stride):
        super().__init__()
        self.kernel_size, self.stride = _triple(kernel_size), _triple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = same_padding(x.shape[2:], self.kernel_size, self.stride)
        if any(pads):
            x = F.pad(x, pads, value=float("-inf"))
        return F.max_pool3d(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class Mixed(nn.Module):
    """An inflated Inception block: four branches concatenated along channels."""

    def __init__(self, in_channels: int, out: Sequence[int]):
        super().__init__()
        self.branch_0 = Unit3D(in_channels, out[0])
        self.branch_1 = nn.Sequential(Unit3D(in_channels, out[1]), Unit3D(out[1], out[2], 3))
        self.branch_2 = nn.Sequential(Unit3D(in_channels, out[3]), Unit3D(out[3], out[4], 3))
        self.branch_3 = nn.Sequential(MaxPool3dSame(3, 1), Unit3D(in_channels, out[5]))
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch_0(x), self.branch_1(x), self.branch_2(x), self.branch_3(x)], 1)


class I3D(nn.Module):
    """I3D backbone with an optional classifier.

    Args:
        num_classes: classes of the classifier ``conv3d_0c_1x1``; ``None`` builds the
            backbone only (features, no logits).
        in_channels: input channels (3 RGB, 1 depth, 2 flow, ...).
        width: multiplier on every layer's channels (1.0 is the original; ``Mixed_5c``
            then has 1024 channels).
        dropout: dropout before the classifier.

    The classifier follows the original: average over space, then a 1x1x1 convolution
    over a sliding window of 2 time steps, then the per-time-step logits averaged over
    time. ``forward`` returns ``[N, num_classes]``; :meth:`extract` also returns features.
    """

    def __init__(self, num_classes: int | None = 400, in_channels: int = 3, width: float = 1.0, dropout: float = 0.0):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {num_classes}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels, self.width, self.num_classes = in_channels, width, num_classes

        def c(n: int) -> int:
            return max(1, round(n * width))

        self.channels: dict[str, int] = {}
        self.conv3d_1a_7x7 = Unit3D(in_channels, c(64), 7, 2)
        self.maxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.conv3d_2b_1x1 = Unit3D(c(64), c(64))
        self.conv3d_2c_3x3 = Unit3D(c(64), c(192), 3)
        self.maxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.maxPool3d_4a_3x3 = MaxPool3dSame(3, 2)
        self.maxPool3d_5a_2x2 = MaxPool3dSame(2, 2)
        channels = c(192)
        for name, out in _MIXED.items():
            block = Mixed(channels, [c(n) for n in out])
            setattr(self, _attr(name), block)
            channels = block.out_channels
        for name in ENDPOINTS:
            module = getattr(self, _attr(name))
            if isinstance(module, Unit3D):
                channels = module.conv3d.out_channels
            elif isinstance(module, Mixed):
                channels = module.out_channels
            self.channels[name] = channels  # pools keep their input's channels
        self.feature_channels = self.channels["Mixed_5c"]
        if num_classes is not None:
            self.dropout = nn.Dropout(dropout)
            self.conv3d_0c_1x1 = Unit3D(
                self.feature_channels, num_classes, activation=False, use_bn=False, use_bias=True
            )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal convolutions (fan-out, ReLU), unit batch norms, a zero classifier bias."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.num_classes is not None:
            nn.init.normal_(self.conv3d_0c_1x1.conv3d.weight, std=0.01)

    def features(self, x: torch.Tensor, endpoints: Iterable[str] = ("Mixed_5c",)) -> dict[str, torch.Tensor]:
        """Feature maps ``[N, C, T, H, W]`` at the named ``endpoints`` (see :data:`ENDPOINTS`).

        Stops after the deepest requested endpoint.
        """
        wanted = set(endpoints)
        unknown = wanted.difference(ENDPOINTS)
        if unknown:
            raise ValueError(f"unknown I3D endpoint(s) {sorted(unknown)}; known: {', '.join(ENDPOINTS)}")
        self._check_input(x)
        out: dict[str, torch.Tensor] = {}
        for name in ENDPOINTS:
            if len(out) == len(wanted):
                break
            x = getattr(self, _attr(name))(x)
            if name in wanted:
                out[name] = x
        return out

    def classify(self, feat: torch.Tensor) -> torch.Tensor:
        """Per-time-step logits ``[N, num_classes, T']`` of a ``Mixed_5c`` feature map."""
        if self.num_classes is None:
            raise RuntimeError("this I3D was built with num_classes=None: it has no classifier")
        # The original's AvgPool3d((2, 7, 7), stride 1) at 224x224, for any input size.
        x = F.avg_pool3d(feat, (min(2, feat.shape[2]), *feat.shape[3:]), stride=1)
        x = self.conv3d_0c_1x1(self.dropout(x))
        return x.flatten(2)

    def extract(
        self, x: torch.Tensor, endpoints: Iterable[str] = ("Mixed_5c",)
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(logits [N, num_classes], {endpoint: feature map})`` in one pass."""
        endpoints = tuple(endpoints)
        feats = self.features(x, (*endpoints, "Mixed_5c"))
        logits = self.classify(feats["Mixed_5c"]).mean(2)
        return logits, {name: feats[name] for name in endpoints}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` (per-time-step logits averaged over time)."""
        return self.classify(self.features(x)["Mixed_5c"]).mean(2)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"I3D expects input [N, {self.in_channels}, T, H, W], got {list(x.shape)}")

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, width={self.width}, num_classes={self.num_classes}"
