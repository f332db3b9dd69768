"""Clip transforms: one random draw per clip, applied to every modality.

A transform takes and returns a *sample*: a dict holding one array per modality
(``"rgb"``, ``"depth"``, ``"ir"``, ``"flow"``; ``[T, H, W, C]``, uint8 for videos and
float32 in ``[-1, 1]`` for flow), ``"label"`` (0-based int), ``"path"`` (the list's clip
path) and ``"meta"`` (``{"fps": {modality: frames per second}}``). Random transforms
draw from torch's global RNG, which ``DataLoader`` seeds differently in every worker.
Transforms replace the sample's entries and never write into its arrays, so a caller
may keep (cache) the arrays of an untransformed sample.

Modalities of a clip are assumed spatially registered (true for NVGesture's
``sk_color``/``sk_depth`` pair): every crop cuts the same box out of each of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from .boxes import BoxJitterCrop, ColorJitter, MergeFrameBoxes
from .classes import FLIP_LABEL_MAP
from .errors import BadClipError, read_json_object
from .listfile import normalize_clip_path
from .modalities import modalities_of

Sample = dict
Transform = Callable[[Sample], Sample]

# ImageNet statistics, in [0, 1] units, the usual choice for Kinetics-pretrained I3D.
RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)


def _common_hw(sample: Sample, what: str) -> tuple[int, int]:
    shapes = {m: sample[m].shape[1:3] for m in modalities_of(sample)}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"{what}: modalities of clip {sample['path']} differ in size {shapes}; resize first")
    return next(iter(shapes.values()))


def _uniform() -> float:
    return float(torch.rand(()))


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class TemporalSample:
    """Sample ``frames`` frames at ``fps`` frames per second from each modality.

    All modalities share one draw ``u`` in ``[0, 1]`` (random in training, 0.5 for
    test) that places the sampled span inside the clip: the span starts at
    ``u * (N - span)`` source frames, so a clip shorter than the span is padded by
    repeating its first and last frames (centered when ``u = 0.5``).

    Args:
        frames: output length T; ``None`` keeps the whole clip from its first frame
            (T = the longest modality's length at ``fps``; shorter ones are padded at
            the end with their last frame).
        fps: sampling rate; ``None`` takes every frame at each modality's own rate.
        random: draw ``u`` at random (training) or use 0.5 (test).
    """

    def __init__(self, frames: int | None, fps: float | None = None, random: bool = True):
        if frames is not None and frames < 1:
            raise ValueError(f"frames must be >= 1 or None, got {frames}")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0 or None, got {fps}")
        self.frames, self.fps, self.random = frames, fps, random

    def indices(self, n: int, step: float, frames: int, u: float) -> np.ndarray:
        """Source frame indices for ``frames`` samples ``step`` apart, placed by ``u``."""
        offset = u * (n - frames * step)
        # The epsilon keeps exact multiples (step 1, integer offsets) from rounding down.
        idx = np.floor(offset + step * np.arange(frames) + 1e-6).astype(np.int64)
        return np.clip(idx, 0, n - 1)

    def __call__(self, sample: Sample) -> Sample:
        mods = modalities_of(sample)
        fps = sample["meta"]["fps"]
        steps = {m: (fps[m] / self.fps if self.fps else 1.0) for m in mods}
        frames = self.frames
        if frames is None:
            frames = max(math.ceil(len(sample[m]) / steps[m] - 1e-6) for m in mods)
            u = 0.0
        else:
            u = _uniform() if self.random else 0.5
        chosen = {}
        for m in mods:
            chosen[m] = self.indices(len(sample[m]), steps[m], frames, u)
            sample[m] = sample[m][chosen[m]]
        # which frames of each window were taken (per-frame hand boxes follow them)
        sample["meta"] = {**sample["meta"], "indices": chosen}
        return sample

    def __repr__(self) -> str:
        return f"TemporalSample(frames={self.frames}, fps={self.fps}, random={self.random})"


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``[T, H, W, C]`` frames (C <= 4) to ``[T, height, width, C]``.

    Area interpolation when shrinking (no aliasing), bilinear when enlarging. Frame by
    frame because OpenCV's area resize takes at most 4 channels.
    """
    t, h, w, c = frames.shape
    if (h, w) == (height, width):
        return frames
    interp = cv2.INTER_AREA if height < h else cv2.INTER_LINEAR
    out = np.empty((t, height, width, c), frames.dtype)
    for i in range(t):
        out[i] = cv2.resize(frames[i], (width, height), interpolation=interp).reshape(height, width, c)
    return out


class Resize:
    """Resize so the shorter edge is ``short_edge``, keeping the first modality's aspect.

    Every modality is resized to the same ``(H, W)``. Flow values are not rescaled
    (they stay in source pixels / bound, as precomputed).
    """

    def __init__(self, short_edge: int):
        if short_edge < 1:
            raise ValueError(f"short_edge must be >= 1, got {short_edge}")
        self.short_edge = short_edge

    def __call__(self, sample: Sample) -> Sample:
        mods = modalities_of(sample)
        h, w = sample[mods[0]].shape[1:3]
        scale = self.short_edge / min(h, w)
        out_h, out_w = max(1, round(h * scale)), max(1, round(w * scale))
        for m in mods:
            sample[m] = resize_frames(sample[m], out_h, out_w)
        return sample

    def __repr__(self) -> str:
        return f"Resize({self.short_edge})"


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class _Crop:
    def __init__(self, size: int | tuple[int, int]):
        self.size = _pair(size)

    def box(self, h: int, w: int) -> tuple[int, int]:
        raise NotImplementedError

    def __call__(self, sample: Sample) -> Sample:
        h, w = _common_hw(sample, type(self).__name__)
        ch, cw = self.size
        if ch > h or cw > w:
            raise ValueError(
                f"{type(self).__name__}: crop {ch}x{cw} is larger than the {h}x{w} frames of {sample['path']}"
            )
        y0, x0 = self.box(h, w)
        for m in modalities_of(sample):
            sample[m] = np.ascontiguousarray(sample[m][:, y0 : y0 + ch, x0 : x0 + cw])
        return sample

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.size})"


class RandomCrop(_Crop):
    """Crop ``size`` (int or (h, w)) at one random position, the same in every modality."""

    def box(self, h: int, w: int) -> tuple[int, int]:
        ch, cw = self.size
        y0 = int(torch.randint(0, h - ch + 1, ()))
        x0 = int(torch.randint(0, w - cw + 1, ()))
        return y0, x0


class CenterCrop(_Crop):
    """Crop ``size`` (int or (h, w)) from the center of every modality."""

    def box(self, h: int, w: int) -> tuple[int, int]:
        ch, cw = self.size
        return (h - ch) // 2, (w - cw) // 2


def hflip(sample: Sample, label_map: Sequence[int] = FLIP_LABEL_MAP) -> Sample:
    """Mirror every modality left-right and swap the label of mirrored gestures.

    Flow also changes the sign of its horizontal component.
    """
    for m in modalities_of(sample):
        flipped = sample[m][:, :, ::-1].copy()
        if m == "flow":
            flipped[..., 0] *= -1
        sample[m] = flipped
    sample["label"] = label_map[sample["label"]]
    return sample


class RandomHorizontalFlip:
    """With probability ``p``, :func:`hflip` the whole clip (label swap included)."""

    def __init__(self, p: float = 0.5, label_map: Sequence[int] = FLIP_LABEL_MAP):
        self.p, self.label_map = p, tuple(label_map)

    def __call__(self, sample: Sample) -> Sample:
        return hflip(sample, self.label_map) if _uniform() < self.p else sample

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def load_boxes(path: str | Path) -> dict[str, tuple[float, float, float, float]]:
    """Read a hand-box file.

    Format: a JSON object mapping a clip path (as in the list file, with or without
    ``./``) to ``[x0, y0, x1, y1]``, the hand's box over the clip's valid window as
    fractions of the frame width and height (``0 <= x0 < x1 <= 1``, same for y), e.g.
    ``{"./Video_data/class_01/subject13_r0": [0.41, 0.30, 0.66, 0.72]}``. The
    synthetic generator writes one (``hand_boxes.json``) at the dataset root.

    Raises:
        ValueError: naming the file and clip for a malformed entry.
    """
    path = Path(path)
    raw = read_json_object(path, "clip path -> [x0, y0, x1, y1]")
    boxes = {}
    for clip, box in raw.items():
        ok = isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
        if not ok or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
            raise ValueError(f"{path}: clip {clip}: box {box!r} is not [x0, y0, x1, y1] within [0, 1]")
        boxes[normalize_clip_path(clip)] = tuple(float(v) for v in box)
    return boxes


class HandBoxCrop:
    """Crop every modality to the clip's hand box (see :func:`load_boxes`).

    The box grows by ``margin`` of its size on each side, then (``square``) to a square
    in pixels, and is shifted to lie inside the frame. Modalities of different frame
    sizes each get the same box in their own pixels. Place it before :class:`Resize`
    (after :class:`TemporalSample`, which makes it cheaper).

    Args:
        boxes: a box file path or an already loaded mapping.
        margin: fraction of the box's width/height added on each side.
        square: make the crop square so a later square crop keeps the whole hand.

    Raises (when called):
        BadClipError: the clip has no box (naming the box file and clip).
    """

    def __init__(self, boxes: str | Path | Mapping[str, Sequence[float]], margin: float = 0.15, square: bool = True):
        if isinstance(boxes, (str, Path)):
            self.source = str(boxes)
            boxes = load_boxes(boxes)
        else:
            self.source = "<boxes mapping>"
            boxes = {normalize_clip_path(k): tuple(v) for k, v in boxes.items()}
        self.boxes, self.margin, self.square = boxes, margin, square

    def pixel_box(self, box: Sequence[float], h: int, w: int) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` in pixels of an ``h x w`` frame."""
        x0, y0, x1, y1 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
        bw, bh = x1 - x0, y1 - y0
        x0, x1 = x0 - self.margin * bw, x1 + self.margin * bw
        y0, y1 = y0 - self.margin * bh, y1 + self.margin * bh
        if self.square:
            side = max(x1 - x0, y1 - y0)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            x0, x1, y0, y1 = cx - side / 2, cx + side / 2, cy - side / 2, cy + side / 2
        bw, bh = min(w, max(1, round(x1 - x0))), min(h, max(1, round(y1 - y0)))
        ix0 = min(max(0, round(x0)), w - bw)
        iy0 = min(max(0, round(y0)), h - bh)
        return iy0, iy0 + bh, ix0, ix0 + bw

    def __call__(self, sample: Sample) -> Sample:
        box = self.boxes.get(normalize_clip_path(sample["path"]))
        if box is None:
            raise BadClipError("no hand box for this clip", clip=sample["path"], file=self.source)
        for m in modalities_of(sample):  # the box is in fractions: each modality in its own pixels
            y0, y1, x0, x1 = self.pixel_box(box, *sample[m].shape[1:3])
            sample[m] = np.ascontiguousarray(sample[m][:, y0:y1, x0:x1])
        return sample

    def __repr__(self) -> str:
        return f"HandBoxCrop({self.source!r}, margin={self.margin}, square={self.square})"


class Normalize:
    """Convert to float32: RGB ``(x / 255 - mean) / std``, depth and IR ``x / 255``.

    Flow is already float in ``[-1, 1]`` and passes through.
    """

    def __init__(self, mean: Sequence[float] = RGB_MEAN, std: Sequence[float] = RGB_STD):
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    def __call__(self, sample: Sample) -> Sample:
        for m in modalities_of(sample):
            x = sample[m]
            if m == "flow":
                sample[m] = x.astype(np.float32, copy=False)
            elif m == "rgb":
                sample[m] = (x.astype(np.float32) / 255.0 - self.mean) / self.std
            else:
                sample[m] = x.astype(np.float32) / 255.0
        return sample

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


def build_transforms(
    train: bool,
    *,
    frames: int | None = 32,
    size: int = 112,
    resize: int | None = None,
    fps: float | None = None,
    flip: bool = True,
    boxes: str | Path | Mapping[str, Sequence[float]] | None = None,
    box_margin: float = 0.15,
    mean: Sequence[float] = RGB_MEAN,
    std: Sequence[float] = RGB_STD,
    box_pipeline: str = "margin",
    box_scale: Sequence[float] = (0.8, 1.25),
    box_ratio: Sequence[float] = (0.75, 1.33),
    box_shift: float = 0.3,
    color_jitter: tuple[float, float] | None = None,
) -> Compose:
    """The standard train or test pipeline.

    Train: T frames at a random offset -> [hand box] -> short edge ``resize`` ->
    random ``size`` crop -> random flip (label swap) -> normalize.
    Test: T centered frames (``frames=None``: the whole clip) -> [hand box] -> short
    edge ``resize`` -> center crop -> normalize.

    Args:
        train: training (random) or test (deterministic) pipeline.
        frames: clip length T (``None`` = whole clip, test only).
        size: square crop side.
        resize: short edge before cropping; default ``round(size * 8 / 7)`` (128 for 112,
            256 for 224).
        fps: temporal sampling rate; ``None`` keeps every source frame (NVGesture is
            30 fps; 15 halves the frames a clip spans).
        flip: random horizontal flips in training.
        boxes: hand-box file (see :func:`load_boxes`) to crop to the hand first.
        box_margin: margin around the hand box.
        mean, std: RGB normalization, in [0, 1] units.
        box_pipeline: ``"margin"`` (above: one box per clip from a ``hand_boxes.json``,
            grown by ``box_margin``) or ``"mmpose"`` (mmpose's box recipes, see
            :mod:`examples.data.boxes`): T frames -> per-frame boxes of the sampled frames
            merged -> crop jittered by ``box_scale``, ``box_ratio``, ``box_shift`` (train)
            or exactly at the box (test) -> resized straight to ``size`` -> [flip ->
            ``color_jitter`` (brightness, contrast)] -> normalize; ``resize`` is unused.
    """
    if train and frames is None:
        raise ValueError("frames=None (whole clip) is for test transforms; training batches need a fixed T")
    if box_pipeline == "mmpose":
        if boxes is None:
            raise ValueError("box_pipeline='mmpose' needs boxes (mmpose's bboxes.json, or clip -> merged box)")
        ops = [TemporalSample(frames, fps, random=train), MergeFrameBoxes(boxes)]
        if train:
            ops.append(BoxJitterCrop(size, box_scale, box_ratio, box_shift, random=True))
            if flip:
                ops.append(RandomHorizontalFlip())
            if color_jitter is not None:
                ops.append(ColorJitter(*color_jitter))
        else:
            ops.append(BoxJitterCrop(size, random=False))
        ops.append(Normalize(mean, std))
        return Compose(ops)
    if box_pipeline != "margin":
        raise ValueError(f"box_pipeline must be 'margin' or 'mmpose', got {box_pipeline!r}")
    resize = resize if resize is not None else round(size * 8 / 7)
    if resize < size:
        raise ValueError(f"resize ({resize}) must be >= size ({size})")
    ops: list[Transform] = [TemporalSample(frames, fps, random=train)]
    if boxes is not None:
        ops.append(HandBoxCrop(boxes, margin=box_margin))
    ops.append(Resize(resize))
    if train:
        ops.append(RandomCrop(size))
        if flip:
            ops.append(RandomHorizontalFlip())
    else:
        ops.append(CenterCrop(size))
    ops.append(Normalize(mean, std))
    return Compose(ops)
