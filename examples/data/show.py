"""An image grid of a few clips (RGB, depth, IR, flow over time), to look at the data."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .classes import CLASS_NAMES
from .dataset import NVGestureDataset
from .flow import farneback, flow_file


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """Color-code flow ``[..., 2]`` as uint8 RGB: hue = direction, brightness = speed
    relative to ``max_magnitude`` (default: the largest speed in ``flow``)."""
    mag, ang = cv2.cartToPolar(np.ascontiguousarray(flow[..., 0]), np.ascontiguousarray(flow[..., 1]))
    if max_magnitude is None:
        max_magnitude = float(mag.max())
    hsv = np.zeros((*flow.shape[:-1], 3), np.uint8)
    hsv[..., 0] = (ang * (90 / np.pi)).astype(np.uint8)
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(mag / max(max_magnitude, 1e-6) * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _pick(dataset: NVGestureDataset, clips: int) -> list[int]:
    """One clip per class first (in class order), then more, up to ``clips``."""
    first: dict[int, int] = {}
    for i, label in enumerate(dataset.labels):
        first.setdefault(label, i)
    picked = [first[c] for c in sorted(first)][:clips]
    rest = [i for i in range(len(dataset)) if i not in picked]
    return picked + rest[: clips - len(picked)]


def show(
    root: str | Path,
    out: str | Path,
    *,
    split: str = "train",
    clips: int = 4,
    frames: int = 8,
    modalities: tuple[str, ...] = ("rgb", "depth", "ir", "flow"),
) -> Path:
    """Save a PNG grid: for each of ``clips`` clips (one per class first), one row per
    modality, ``frames`` frames evenly spaced over the valid window.

    Flow is read from the precomputed files when the shown clips have them, otherwise
    computed on the fly from the RGB frames (Farnebäck), for display only.

    Returns:
        the written PNG path.
    """
    import matplotlib  # imported here: only this command needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(root)
    load = [m for m in modalities if m != "flow"]
    if "flow" in modalities:
        probe = NVGestureDataset(root, split, ("rgb",), check_videos=False)
        indices = _pick(probe, clips)
        have_files = all(
            flow_file(probe.records[i].clip_dir(root) / f"{probe.records[i].sensors['color'].file}.avi").is_file()
            for i in indices
        )
        load += ["flow"] if have_files else ([] if "rgb" in load else ["rgb"])
    dataset = NVGestureDataset(root, split, tuple(load), check_videos=False)
    indices = _pick(dataset, clips)

    rows: list[tuple[str, str, list[np.ndarray]]] = []  # (title, modality, images)
    for i in indices:
        sample = dataset.load(i)
        if "flow" in modalities and "flow" not in sample:
            flow = farneback(sample["rgb"])
            sample["flow"] = np.concatenate([flow, flow[-1:]])
        title = f"{dataset.records[i].key}   label {sample['label'] + 1}: {CLASS_NAMES[sample['label']]}"
        for m in modalities:
            x = sample[m]
            x = x[np.linspace(0, len(x) - 1, frames).round().astype(int)]
            if m == "flow":
                top = float(np.sqrt((x.astype(np.float32) ** 2).sum(-1)).max())  # one scale for the row
                images = [flow_to_rgb(f, top) for f in x]
            else:
                images = list(np.repeat(x, 3, axis=3) if x.shape[3] == 1 else x)
            rows.append((title if m == modalities[0] else "", m, images))

    h, w = rows[0][2][0].shape[:2]
    cell = 1.6  # inches per frame
    fig, axes = plt.subplots(
        len(rows),
        frames,
        figsize=(cell * frames + 0.4, (cell * h / w + 0.12) * len(rows) + 0.3),
        squeeze=False,
        gridspec_kw=dict(wspace=0.03, hspace=0.25),
    )
    for r, (title, m, images) in enumerate(rows):
        for c, img in enumerate(images):
            ax = axes[r][c]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(m, fontsize=9)
        if title:
            axes[r][0].set_title(title, fontsize=9, loc="left")
    fig.subplots_adjust(left=0.03, right=0.995, top=1 - 0.3 / fig.get_figheight(), bottom=0.01)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
