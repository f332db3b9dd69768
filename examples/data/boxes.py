"""mmpose's hand-box pipeline: per-frame detector boxes (``bboxes.json``) merged over the
sampled frames, a randomly scaled, stretched and shifted crop around them, resized
straight to the input size; and the colour jitter of its 112x112 recipe.

This follows mmpose 0.x (``mmpose/datasets/datasets/gesture/nvgesture_dataset.py`` and
``mmpose/datasets/pipelines/gesture_transform.py``: ``MultiFrameBBoxMerge``,
``ResizedCropByBBox``, ``VideoColorJitter``), re-implemented with OpenCV and torch's RNG.

``bboxes.json`` (mmpose's format)
---------------------------------
A JSON object mapping a clip path (as in the list file, without the leading ``./``) to
one entry per frame of the *whole video* (frame ``i`` of ``sk_color.avi``); each entry
is a list of detections, the first of which is used, each ``{"bbox": [x0, y0, x1, y1],
...}`` in pixels of the video (320x240 for NVGesture); an empty list is a frame without
a detection::

    {"Video_data/class_01/subject13_r0": [[{"bbox": [141.0, 80.5, 215.2, 170.0], "score": 0.97}], [], ...]}

mmpose's own file was made with a hand detector that is not part of its release; the
synthetic generator writes one from its rendered hands (``python -m examples.data
make-synthetic``), so the whole pipeline is tested end to end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from .errors import BadClipError, read_json_object
from .listfile import normalize_clip_path
from .modalities import modalities_of

FRAME_BOXES_FILE = "bboxes.json"


def load_frame_boxes(path: str | Path) -> dict[str, np.ndarray]:
    """Read mmpose's ``bboxes.json`` (see the module doc).

    Returns:
        clip path (normalized, no ``./``) -> float32 ``[frames, 4]`` pixel boxes
        ``x0, y0, x1, y1`` of each video frame's first detection, NaN where the frame has
        none.

    Raises:
        ValueError: naming the file, clip and frame of a malformed entry (including a file
            in the per-clip ``hand_boxes.json`` format, which needs ``--box-pipeline margin``).
    """
    path = Path(path)
    raw = read_json_object(path, "clip path -> per-frame detections")
    out: dict[str, np.ndarray] = {}
    for clip, frames in raw.items():
        if not isinstance(frames, list) or (frames and all(isinstance(v, (int, float)) for v in frames)):
            raise ValueError(
                f"{path}: clip {clip}: expected one list of detections per frame (mmpose's bboxes.json); "
                "a single [x0, y0, x1, y1] per clip is the hand_boxes.json format (--box-pipeline margin)"
            )
        boxes = np.full((len(frames), 4), np.nan, np.float32)
        for i, dets in enumerate(frames):
            if not isinstance(dets, list):
                raise ValueError(f"{path}: clip {clip}: frame {i}: expected a list of detections, got {dets!r}")
            if not dets:
                continue
            det = dets[0]
            box = det.get("bbox") if isinstance(det, dict) else None
            ok = isinstance(box, list) and len(box) >= 4 and all(isinstance(v, (int, float)) for v in box[:4])
            if not ok or not (box[0] <= box[2] and box[1] <= box[3]):
                raise ValueError(
                    f"{path}: clip {clip}: frame {i}: detection {det!r} has no bbox [x0, y0, x1, y1] "
                    "with x0 <= x1, y0 <= y1"
                )
            boxes[i] = box[:4]
        out[normalize_clip_path(clip)] = boxes
    return out


def merge_boxes(boxes: np.ndarray, frames: Sequence[int]) -> np.ndarray | None:
    """Union ``[x0, y0, x1, y1]`` of the boxes of ``frames`` (NaN rows and frames past the
    table's end have no detection); ``None`` when none of them has one."""
    idx = np.asarray([f for f in frames if 0 <= f < len(boxes)], np.int64)
    rows = boxes[idx] if len(idx) else np.empty((0, 4), np.float32)
    rows = rows[~np.isnan(rows).any(axis=1)]
    if not len(rows):
        return None
    return np.array([rows[:, 0].min(), rows[:, 1].min(), rows[:, 2].max(), rows[:, 3].max()], np.float64)


class MergeFrameBoxes:
    """``sample["box"]``: the union of the hand boxes of the frames the clip was sampled at
    (mmpose's ``MultiFrameBBoxMerge``), as fractions of the frame ``[x0, y0, x1, y1]``.

    Place after :class:`~examples.data.transforms.TemporalSample` (it reads which frames
    were taken) and before any resize. The frames are those of the first modality: its
    window start plus the sampled indices index the per-frame table. A clip whose sampled
    frames have no detection gets the whole frame, as in mmpose.

    Args:
        boxes: a ``bboxes.json`` path, a loaded table (:func:`load_frame_boxes`), or a
            mapping clip path -> one merged box ``[x0, y0, x1, y1]`` as fractions (used as
            is: inference with a given box).

    Raises (when called):
        BadClipError: the clip is not in the table.
    """

    def __init__(self, boxes: str | Path | Mapping):
        if isinstance(boxes, (str, Path)):
            self.source = str(boxes)
            boxes = load_frame_boxes(boxes)
        else:
            self.source = "<boxes mapping>"
        self.boxes = {normalize_clip_path(k): v for k, v in boxes.items()}

    def __call__(self, sample: dict) -> dict:
        entry = self.boxes.get(normalize_clip_path(sample["path"]))
        if entry is None:
            raise BadClipError("no hand boxes for this clip", clip=sample["path"], file=self.source)
        ref = modalities_of(sample)[0]
        h, w = sample[ref].shape[1:3]
        entry = np.asarray(entry, np.float64)
        if entry.ndim == 1:  # one merged box, as fractions
            sample["box"] = tuple(float(v) for v in entry)
            return sample
        meta = sample["meta"]
        frames = meta.get("start", {}).get(ref, 0) + np.asarray(meta["indices"][ref])
        box = merge_boxes(entry, frames.tolist())
        sample["box"] = (0.0, 0.0, 1.0, 1.0) if box is None else (box[0] / w, box[1] / h, box[2] / w, box[3] / h)
        return sample

    def __repr__(self) -> str:
        return f"MergeFrameBoxes({self.source!r})"


class BoxJitterCrop:
    """Crop around ``sample["box"]`` and resize straight to ``size`` x ``size`` (mmpose's
    ``ResizedCropByBBox``): the same crop, in fractions of the frame, for every modality.

    With the box's top-left corner ``(x0, y0)`` and longer side ``L0`` (in pixels), one
    draw per clip of scale ``s`` in ``scale``, aspect ``r`` in ``ratio`` and shifts
    ``ux, uy`` in ``[-shift, shift]`` gives the crop ``x0 + ux L .. x0 + ux L + L`` by
    ``y0 + uy L .. y0 + uy L + r L`` with ``L = s L0``, clipped to the frame and truncated
    to whole pixels (the crop starts at the box's corner, as mmpose's does). The test
    pipeline uses ``scale = ratio = (1, 1)``, ``shift = 0``.
    """

    def __init__(
        self,
        size: int,
        scale: Sequence[float] = (1.0, 1.0),
        ratio: Sequence[float] = (1.0, 1.0),
        shift: float = 0.0,
        random: bool = True,
    ):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not (0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1] and shift >= 0):
            raise ValueError(
                f"need 0 < scale[0] <= scale[1], 0 < ratio[0] <= ratio[1], shift >= 0; got {scale}, {ratio}, {shift}"
            )
        self.size, self.scale, self.ratio, self.shift, self.random = size, tuple(scale), tuple(ratio), shift, random

    def draw(self) -> tuple[float, float, float, float]:
        """``(s, r, ux, uy)`` for one clip (fixed ``(1, 1, 0, 0)``-like values when not random)."""
        if not self.random:
            return 1.0, 1.0, 0.0, 0.0
        u = torch.rand(4).tolist()
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * u[0]
        r = self.ratio[0] + (self.ratio[1] - self.ratio[0]) * u[1]
        return s, r, self.shift * (2 * u[2] - 1), self.shift * (2 * u[3] - 1)

    @staticmethod
    def crop_box(box: Sequence[float], h: int, w: int, draw: Sequence[float]) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` pixel crop (inclusive ends) of a fractional ``box`` in an ``h x w`` frame."""
        s, r, ux, uy = draw
        bx0, by0, bx1, by1 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
        side = max(bx1 - bx0, by1 - by0) * s
        x, y = bx0 + ux * side, by0 + uy * side
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(max(0.0, x + side), float(w)), min(max(0.0, y + side * r), float(h))
        ix0, iy0 = min(int(x0), w - 1), min(int(y0), h - 1)
        ix1, iy1 = min(int(x1), w - 1), min(int(y1), h - 1)  # mmcv.imcrop: inclusive, clipped to the frame
        return ix0, iy0, max(ix0, ix1), max(iy0, iy1)

    def __call__(self, sample: dict) -> dict:
        if "box" not in sample:
            raise ValueError(f"BoxJitterCrop: clip {sample['path']} has no merged box; put MergeFrameBoxes first")
        draw = self.draw()
        for m in modalities_of(sample):
            x = sample[m]
            t, h, w, c = x.shape
            x0, y0, x1, y1 = self.crop_box(sample["box"], h, w, draw)
            crop = x[:, y0 : y1 + 1, x0 : x1 + 1]
            out = np.empty((t, self.size, self.size, c), x.dtype)
            for i in range(t):  # bilinear, as mmcv.imresize
                out[i] = cv2.resize(
                    np.ascontiguousarray(crop[i]), (self.size, self.size), interpolation=cv2.INTER_LINEAR
                ).reshape(self.size, self.size, c)
            sample[m] = out
        return sample

    def __repr__(self) -> str:
        return (
            f"BoxJitterCrop({self.size}, scale={self.scale}, ratio={self.ratio}, shift={self.shift}, "
            f"random={self.random})"
        )


class ColorJitter:
    """Random brightness then contrast of the RGB stream, one draw per clip (mmpose's
    ``VideoColorJitter``): ``b`` in ``[max(0, 1 - brightness), 1 + brightness]`` scales
    the pixels; ``c`` in ``[max(0, 1 - contrast), 1 + contrast]`` blends them with the
    clip's mean gray level, ``c x + (1 - c) mean``; results are clipped to 0..255 and
    truncated to uint8 after each step, as mmcv's ``adjust_brightness`` and
    ``adjust_contrast`` do. (mmcv's gray level uses BGR weights on what is RGB there; this
    uses the RGB weights.) Other modalities are untouched.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0):
        if brightness < 0 or contrast < 0:
            raise ValueError(f"brightness and contrast must be >= 0, got {brightness}, {contrast}")
        self.brightness, self.contrast = brightness, contrast

    def __call__(self, sample: dict) -> dict:
        if "rgb" not in sample:
            return sample
        u = torch.rand(2).tolist()
        lo_b, lo_c = max(0.0, 1 - self.brightness), max(0.0, 1 - self.contrast)
        b = lo_b + (1 + self.brightness - lo_b) * u[0]
        c = lo_c + (1 + self.contrast - lo_c) * u[1]
        x = np.clip(sample["rgb"].astype(np.float32) * b, 0, 255).astype(np.uint8)
        gray = x.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
        mean = float(np.rint(gray).mean())
        sample["rgb"] = np.clip(x.astype(np.float32) * c + mean * (1 - c), 0, 255).astype(np.uint8)
        return sample

    def __repr__(self) -> str:
        return f"ColorJitter(brightness={self.brightness}, contrast={self.contrast})"
