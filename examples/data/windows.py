"""One-off extraction of every clip's valid windows into a new NVGesture-format dataset.

A list line points into a long recording (``sk_color.avi`` frames ``138:218`` of a few
hundred); decoding starts from frame 0 each time, because frame-accurate seeking is not
guaranteed for every codec. ``python -m examples.data extract-windows`` decodes each
sensor's window once and writes it as its own video, so the new dataset has the same
layout and list files with every window starting at frame 0, and training decodes only
the frames it uses. ``bboxes.json`` is cut to the color window, ``hand_boxes.json`` (per
window) is copied, and flow files are rewritten for the new windows.

The codec is a trade-off (measured on 320x240 synthetic clips, docs/training.md):
``MJPG`` (default) decodes about as fast as MJPG recordings (0.5 ms a frame) at their
size, but re-encoding is lossy (mean absolute change ~1 grey level); lossless ``FFV1``
keeps every decoded frame identical but is ~5x larger and ~13x slower to decode, slower
than decoding a recording from frame 0 unless windows start very late.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .boxes import FRAME_BOXES_FILE
from .errors import BadClipError, BadClipWarning, VideoError
from .flow import flow_file, load_flow, save_flow
from .listfile import LIST_FILES, ClipRecord, SensorWindow, find_list_file, format_line, read_list
from .video import read_window

HAND_BOXES_FILE = "hand_boxes.json"


@dataclass
class ExtractStats:
    clips: int = 0
    failed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


def _write(path: Path, frames: np.ndarray, fps: float, codec: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), fps, (frames.shape[2], frames.shape[1]))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write {codec!r} AVI files here")
    try:
        for f in frames:
            f = np.repeat(f, 3, axis=2) if f.shape[2] == 1 else f[:, :, ::-1]  # gray stored 3-channel; RGB -> BGR
            writer.write(np.ascontiguousarray(f))
    finally:
        writer.release()
    tmp.replace(path)


def _clip_job(args: tuple[str, str, ClipRecord, str]) -> tuple[str, dict, int, int]:
    """Extract one clip's windows; returns (new list line or "", BadClip args or {}, bytes in, bytes out)."""
    root, out, record, codec = args
    src, dst = record.clip_dir(root), record.clip_dir(out)
    sensors: dict[str, SensorWindow] = {}
    bytes_in = bytes_out = 0
    for key, w in record.sensors.items():
        video = src / f"{w.file}.avi"
        try:
            frames, fps = read_window(video, w.start, w.end, gray=False)
        except VideoError as e:
            return (
                "",
                dict(
                    reason=e.reason, file=e.file, clip=record.path, list_file=record.list_file, line_no=record.line_no
                ),
                bytes_in,
                bytes_out,
            )
        target = dst / f"{w.file}.avi"
        _write(target, frames, fps, codec)
        bytes_in += video.stat().st_size
        bytes_out += target.stat().st_size
        sensors[key] = SensorWindow(w.file, 0, w.length)
        flow = flow_file(video)
        if flow.is_file():
            try:
                q, flow_fps = load_flow(flow, w.start, w.end)
            except ValueError:
                continue  # stale flow: recompute it on the new dataset
            with np.load(flow) as z:
                bound = float(z["bound"])
                method = str(z["method"]) if "method" in z else "farneback"
            raw = np.rint((q + 1.0) * 127.5).astype(np.uint8)
            save_flow(flow_file(target), raw, start=0, end=w.length, bound=bound, fps=flow_fps, method=method)
    return format_line(record.path, record.label, sensors), {}, bytes_in, bytes_out


def extract_windows(
    root: str | Path,
    out: str | Path,
    *,
    codec: str = "MJPG",
    workers: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
) -> ExtractStats:
    """Write the windows of every clip of both list files of ``root`` as a new dataset at ``out``.

    Raises:
        ValueError: ``out`` is ``root``.
        BadClipError: the first clip that cannot be read (unless ``skip_bad``: then it is
            left out of the new lists, with a warning).
    """
    root, out = Path(root), Path(out)
    if out.resolve() == root.resolve():
        raise ValueError("--out must be another folder than --root")
    stats = ExtractStats()
    out.mkdir(parents=True, exist_ok=True)
    frame_boxes = root / FRAME_BOXES_FILE
    boxes = json.loads(frame_boxes.read_text(encoding="utf-8")) if frame_boxes.is_file() else None
    new_boxes: dict[str, list] = {}
    for split, name in LIST_FILES.items():
        if not find_list_file(root, split).is_file():
            continue
        records, bad = read_list(find_list_file(root, split), skip_bad=skip_bad)
        stats.failed += len(bad)
        jobs = [(str(root), str(out), r, codec) for r in records]
        lines: dict[int, str] = {}
        bar = tqdm(total=len(jobs), desc=f"windows {split}", unit="clip", disable=not progress)
        ctx = get_context("spawn").Pool(workers) if workers > 1 else None
        try:
            results = ctx.imap(_clip_job, jobs) if ctx else map(_clip_job, jobs)
            for i, (line, error, b_in, b_out) in enumerate(results):
                bar.update(1)
                stats.bytes_in += b_in
                stats.bytes_out += b_out
                if error:
                    err = BadClipError(error.pop("reason"), **error)
                    if not skip_bad:
                        raise err
                    warnings.warn(f"skipping bad clip: {err}", BadClipWarning, stacklevel=2)
                    stats.failed += 1
                    continue
                lines[i] = line
                stats.clips += 1
                record = records[i]
                if boxes is not None and record.key in boxes and "color" in record.sensors:
                    w = record.sensors["color"]
                    new_boxes[record.key] = boxes[record.key][w.start : w.end]
        finally:
            bar.close()
            if ctx:
                ctx.close()
        (out / name).write_text("".join(lines[i] + "\n" for i in sorted(lines)), encoding="utf-8")
    if boxes is not None:
        (out / FRAME_BOXES_FILE).write_text(
            json.dumps(new_boxes, sort_keys=True, separators=(",", ":")) + "\n", encoding="utf-8"
        )
    for name in (HAND_BOXES_FILE, "rgb_hard.json"):  # per-clip sidecars, keyed by the list paths
        if (root / name).is_file():
            shutil.copyfile(root / name, out / name)
    return stats
