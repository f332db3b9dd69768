"""Decoding AVI windows with OpenCV.

Each call opens its own ``cv2.VideoCapture`` and releases it before returning, so the
functions are safe in ``DataLoader`` workers (no decoder state crosses a fork).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import VideoError

# NVGesture's sensors record at 30 fps; used when a file's header gives no usable rate.
DEFAULT_FPS = 30.0


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says: frame count, frame rate, frame size."""

    frames: int
    fps: float
    width: int
    height: int


def _open(path: Path) -> cv2.VideoCapture:
    if not path.is_file():
        raise VideoError(path, "video file is missing")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise VideoError(path, "cannot open video (corrupt or not a video)")
    return cap


def _info(cap: cv2.VideoCapture, path: Path) -> VideoInfo:
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = cap.get(cv2.CAP_PROP_FPS)
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if frames <= 0 or width <= 0 or height <= 0:
        raise VideoError(path, f"video header is unusable ({frames} frames, {width}x{height})")
    if not math.isfinite(fps) or fps <= 0:
        fps = DEFAULT_FPS
    return VideoInfo(frames, float(fps), width, height)


def probe_video(path: str | Path) -> VideoInfo:
    """Read a video's header (no frames are decoded).

    Raises:
        VideoError: the file is missing, cannot be opened, or has an empty header.
    """
    path = Path(path)
    cap = _open(path)
    try:
        return _info(cap, path)
    finally:
        cap.release()


def check_frames(path: str | Path, end: int) -> None:
    """Decode (without colour conversion) frames ``[0, end)`` of a video, so that a file
    truncated before ``end`` is found before training rather than when the clip is read.

    Raises:
        VideoError: missing or unreadable file, or fewer than ``end`` decodable frames.
    """
    path = Path(path)
    cap = _open(path)
    try:
        info = _info(cap, path)
        for i in range(end):
            if not cap.grab():
                raise VideoError(path, f"video ends at frame {i}, its header says {info.frames} (truncated?)")
    finally:
        cap.release()


def read_window(path: str | Path, start: int, end: int, *, gray: bool = False) -> tuple[np.ndarray, float]:
    """Decode frames ``[start, end)`` of a video.

    Args:
        path: the video file.
        start, end: the window, 0-based, end exclusive.
        gray: keep one channel (for depth / IR videos stored as gray or 3-channel gray).

    Returns:
        ``(frames, fps)``: uint8 ``[end - start, H, W, C]`` with C = 3 (RGB order) or 1,
        and the video's frame rate.

    Raises:
        VideoError: missing or unreadable file, a window outside the video's frame
            count, or a video that decodes to fewer frames than the window needs.
    """
    path = Path(path)
    cap = _open(path)
    try:
        info = _info(cap, path)
        if not 0 <= start < end <= info.frames:
            raise VideoError(path, f"window {start}:{end} is outside the video's {info.frames} frames")
        # Decode from the beginning rather than seek: frame-accurate seeking is not
        # guaranteed for every codec, and grab() skips the colour conversion.
        for i in range(start):
            if not cap.grab():
                raise VideoError(path, f"video ends at frame {i}, its header says {info.frames} (truncated?)")
        frames = []
        for i in range(start, end):
            ok, frame = cap.read()
            if not ok or frame is None:
                raise VideoError(path, f"video ends at frame {i}, its header says {info.frames} (truncated?)")
            if frame.ndim == 2:
                frame = frame[:, :, None]
            if gray:
                frame = frame[:, :, :1]
            elif frame.shape[2] == 1:
                frame = np.repeat(frame, 3, axis=2)
            else:
                frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            frames.append(frame)
        return np.ascontiguousarray(np.stack(frames)), info.fps
    finally:
        cap.release()
