"""Fixtures for the examples.data tests: tiny NVGesture-format datasets on disk."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from examples.data import SyntheticConfig, generate
from examples.data.flow import flow_file, save_flow
from examples.data.listfile import TRAIN_LIST, SensorWindow, format_line

# Coordinate videos: small enough that x and y fit in one 8-bit channel.
COORD_W, COORD_H = 96, 64
COLOR_WINDOW, IR_WINDOW = (2, 12), (5, 15)
COLOR_FRAMES, IR_FRAMES = 14, 18
FRAME_STEP = 10  # pixel value per frame index in the channels that encode time


def write_avi(path: Path, frames: np.ndarray, codec: str = "FFV1", fps: float = 30.0) -> None:
    """Write uint8 frames ``[N, H, W, 3]`` (BGR) or ``[N, H, W]`` (gray, stored 3-channel)."""
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (frames.shape[2], frames.shape[1]))
    assert writer.isOpened(), f"cannot write {codec} video {path}"
    for f in frames:
        writer.write(np.ascontiguousarray(f))
    writer.release()


def coord_color(n: int = COLOR_FRAMES) -> np.ndarray:
    """RGB frames with R = x, G = y, B = frame index * FRAME_STEP (returned in BGR order)."""
    y, x = np.mgrid[0:COORD_H, 0:COORD_W].astype(np.uint8)
    frames = np.empty((n, COORD_H, COORD_W, 3), np.uint8)
    for t in range(n):
        frames[t] = np.stack([np.full_like(x, t * FRAME_STEP), y, x], axis=2)  # B, G, R
    return frames


def coord_depth(n: int = COLOR_FRAMES) -> np.ndarray:
    """Gray frames with value = x."""
    x = np.broadcast_to(np.arange(COORD_W, dtype=np.uint8), (n, COORD_H, COORD_W))
    return np.ascontiguousarray(x)


def time_ir(n: int = IR_FRAMES) -> np.ndarray:
    """Gray frames with value = frame index * FRAME_STEP."""
    return np.repeat(np.arange(n, dtype=np.uint8)[:, None, None] * FRAME_STEP, COORD_H * COORD_W).reshape(
        n, COORD_H, COORD_W
    )


def coord_flow(n: int) -> np.ndarray:
    """Quantized flow whose channels hold x and y (so crops can be checked)."""
    y, x = np.mgrid[0:COORD_H, 0:COORD_W].astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(np.stack([x, y], axis=2), (n, COORD_H, COORD_W, 2)))


def coord_line(rel: str, label0: int) -> str:
    sensors = {
        "depth": SensorWindow("sk_depth", *COLOR_WINDOW),
        "color": SensorWindow("sk_color", *COLOR_WINDOW),
        "duo_left": SensorWindow("duo_left", *IR_WINDOW),
    }
    return format_line(f"./{rel}", label0, sensors)


@pytest.fixture
def coord_root(tmp_path: Path) -> Path:
    """Two clips (labels 1 and 5, 1-based) of coordinate-encoding lossless videos with
    precomputed flow, listed in the train list."""
    lines = []
    for rel, label0 in (("Video_data/class_01/subject1_r0", 0), ("Video_data/class_05/subject2_r0", 4)):
        clip = tmp_path / rel
        write_avi(clip / "sk_color.avi", coord_color())
        write_avi(clip / "sk_depth.avi", coord_depth())
        write_avi(clip / "duo_left.avi", time_ir())
        n = COLOR_WINDOW[1] - COLOR_WINDOW[0]
        save_flow(
            flow_file(clip / "sk_color.avi"),
            coord_flow(n),
            start=COLOR_WINDOW[0],
            end=COLOR_WINDOW[1],
            bound=20.0,
            fps=30.0,
        )
        lines.append(coord_line(rel, label0))
    (tmp_path / TRAIN_LIST).write_text("\n".join(lines) + "\n")
    return tmp_path


TINY = SyntheticConfig(
    classes=(1, 2, 11), clips_per_class=4, subjects=2, test_subjects=1, frames=8, width=64, height=48, seed=3
)


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """A tiny synthetic dataset (3 classes x 4 clips, 64x48, ~8-frame gestures); read only."""
    root = tmp_path_factory.mktemp("tiny_synthetic")
    generate(root, TINY, progress=False)
    return root


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """The training tests' dataset (see ``helpers.TINY_RUN_DATA``): 9 train / 3 test clips; read only."""
    from .helpers import TINY_RUN_DATA

    root = tmp_path_factory.mktemp("nvgesture")
    generate(root, TINY_RUN_DATA, progress=False)
    return root


@pytest.fixture(scope="session")
def hard_data_root(tmp_path_factory) -> Path:
    """The training tests' dataset with RGB-hard clips (p = 0.5) and its sidecar; read only."""
    from dataclasses import replace

    from .helpers import TINY_RUN_DATA

    root = tmp_path_factory.mktemp("nvgesture_hard")
    generate(root, replace(TINY_RUN_DATA, rgb_hard_p=0.5), progress=False)
    return root
