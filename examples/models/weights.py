"""Loading converted Kinetics I3D checkpoints (local files only) into :class:`I3D`.

The checkpoints of the widely used PyTorch I3D port (e.g. its ``model_rgb.pth``, 400
Kinetics classes) are plain state dicts with exactly this package's parameter names.
Differences are handled explicitly and reported, never ignored:

* the stem ``conv3d_1a_7x7.conv3d.weight`` of a 3-channel checkpoint is adapted to a
  model with another number of input channels (1 depth, 2 flow) by summing or
  averaging over the checkpoint's input channels;
* the classifier ``conv3d_0c_1x1.*`` (400 Kinetics classes) is skipped when the model
  has a different number of classes (or none);
* any other missing, unexpected or wrongly shaped key is an error (or, with
  ``strict=False``, listed in the returned :class:`LoadReport`).

``num_batches_tracked`` buffers are optional: converted files predate them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .i3d import I3D

STEM_KEY = "conv3d_1a_7x7.conv3d.weight"
LOGITS_PREFIX = "conv3d_0c_1x1."
STEM_MODES = ("mean", "sum")


class I3DWeightsError(ValueError):
    """A checkpoint does not fit the model; ``report`` lists every difference."""

    def __init__(self, message: str, report: LoadReport):
        super().__init__(f"{message}\n{report}")
        self.report = report


@dataclass
class LoadReport:
    """What :func:`load_i3d_state_dict` did with every key."""

    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every model parameter came from the checkpoint (adapted or not)
        and every checkpoint key was used or deliberately skipped."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.adapted:
            lines.append(f"adapted: {_some(self.adapted)}")
        if self.skipped:
            lines.append(f"skipped (classifier of another size): {_some(self.skipped)}")
        if self.missing:
            lines.append(f"missing from the checkpoint: {_some(self.missing)}")
        if self.unexpected:
            lines.append(f"not in the model: {_some(self.unexpected)}")
        for key, got, want in self.mismatched[:_SHOWN]:
            lines.append(f"shape mismatch: {key}: checkpoint {list(got)} vs model {list(want)}")
        if len(self.mismatched) > _SHOWN:
            lines.append(f"... and {len(self.mismatched) - _SHOWN} more shape mismatches")
        return "\n".join(lines)


_SHOWN = 8  # keys listed per kind in a report: a wrong file differs in hundreds


def _some(keys: list[str]) -> str:
    more = f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def adapt_stem(weight: torch.Tensor, in_channels: int, mode: str = "mean") -> torch.Tensor:
    """A stem weight ``[O, C_src, kT, kH, kW]`` for ``in_channels`` input channels.

    ``"mean"``: every new channel gets the mean over the source channels (the usual
    choice, e.g. for a depth I3D started from RGB Kinetics weights). ``"sum"``: the sum
    over source channels, split evenly over the new channels, so a gray input (the same
    value in every channel) gives the same response as in the source model.
    """
    if mode not in STEM_MODES:
        raise ValueError(f"stem mode must be one of {STEM_MODES}, got {mode!r}")
    reduced = weight.mean(1, keepdim=True) if mode == "mean" else weight.sum(1, keepdim=True) / in_channels
    return reduced.expand(-1, in_channels, -1, -1, -1).contiguous()


def _unwrap(state: Mapping) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: itself, or its ``state_dict``/``model`` entry,
    with a DistributedDataParallel ``module.`` prefix removed."""
    for key in ("state_dict", "model"):
        if key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("checkpoint is not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def load_i3d_state_dict(model: I3D, state: Mapping, *, stem: str = "mean", strict: bool = True) -> LoadReport:
    """Copy a converted-layout I3D state dict into ``model``.

    Args:
        model: the target network (any ``in_channels``; ``width`` must be the
            checkpoint's, 1.0 for the Kinetics files).
        state: the state dict (or a checkpoint holding one under ``state_dict``/``model``).
        stem: how a stem with other input channels is adapted (:func:`adapt_stem`).
        strict: raise :class:`I3DWeightsError` unless :attr:`LoadReport.ok`; with
            ``False`` every key that fits is loaded and the rest is reported.

    Returns:
        the :class:`LoadReport`.
    """
    if stem not in STEM_MODES:
        raise ValueError(f"stem must be one of {STEM_MODES}, got {stem!r}")
    source = _unwrap(state)
    target = model.state_dict()
    report = LoadReport()
    to_load: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if key not in target:
            if key.startswith(LOGITS_PREFIX) and model.num_classes is None:
                report.skipped.append(key)
            else:
                report.unexpected.append(key)
            continue
        want = target[key].shape
        if (
            key == STEM_KEY
            and value.dim() == 5
            and value.shape[1] != want[1]
            and value.shape[2:] == want[2:]
            and value.shape[0] == want[0]
        ):
            value = adapt_stem(value, want[1], stem)
            report.adapted.append(f"{key} ({stem} over {source[key].shape[1]} input channels -> {want[1]})")
        if value.shape != want:
            if key.startswith(LOGITS_PREFIX) and value.shape[0] != want[0]:
                report.skipped.append(key)
            else:
                report.mismatched.append((key, tuple(value.shape), tuple(want)))
            continue
        to_load[key] = value
        report.loaded.append(key)
    for key in target:
        if key in to_load or key.endswith("num_batches_tracked"):
            continue
        if key.startswith(LOGITS_PREFIX) and key in report.skipped:
            continue
        report.missing.append(key)
    if strict and not report.ok:
        raise I3DWeightsError("the checkpoint does not fit this I3D", report)
    with torch.no_grad():
        for key, value in to_load.items():
            target[key].copy_(value)
    return report


def load_i3d_weights(model: I3D, path: str | Path, *, stem: str = "mean", strict: bool = True) -> LoadReport:
    """Load a converted Kinetics I3D checkpoint from a local file (never downloads).

    See :func:`load_i3d_state_dict` for ``stem`` and ``strict``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        I3DWeightsError: the checkpoint does not fit (with ``strict``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"I3D checkpoint not found: {path} (weights are never downloaded; give a local converted Kinetics file)"
        )
    from examples.training.checkpoint import CheckpointError, read_safely  # training builds on models

    state = read_safely(path)  # weights_only, with a CheckpointError for what is not a torch file
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict of I3D weights, got {type(state).__name__}")
    if "model" in state and "config" in state and "optimizer" in state:
        raise CheckpointError(
            f"{path}: a training checkpoint of this package, not converted Kinetics I3D weights: "
            f"start from its weights with --init-from {path} (or continue its run with --resume)"
        )
    try:
        return load_i3d_state_dict(model, state, stem=stem, strict=strict)
    except I3DWeightsError as e:
        raise I3DWeightsError(
            f"{path}: these weights do not fit this I3D (a converted Kinetics I3D checkpoint is "
            "expected; a file of this package's training runs goes with --init-from)",
            e.report,
        ) from None
