"""Precomputed dense optical flow (OpenCV Farnebäck, or Dual TV-L1 with opencv-contrib) for
the ``flow`` modality.

File format
-----------
For every clip, ``<clip>/sk_color_flow.npz`` next to ``sk_color.avi``: a NumPy ``.npz``
(zip, deflate) holding

``flow``   uint8 ``[N, H, W, 2]``: channel 0 is the horizontal motion ``dx``, channel 1
           the vertical ``dy``, in source pixels per frame, clipped to ``[-bound, bound]``
           and quantized as ``q = round((f + bound) * 255 / (2 * bound))``.
``bound``  float32 scalar, the clip bound in pixels (default 20, as in the usual I3D
           flow preprocessing).
``start``, ``end``  int64 scalars: the ``color`` window of the list line.
           ``flow[k]`` is the motion from frame ``start + k`` to ``start + k + 1``
           (the last one repeats when the video has no frame after the window).
``fps``    float64 scalar, the frame rate of ``sk_color.avi``.
``method`` str, ``farneback`` or ``tvl1`` (absent in older files: Farnebäck).

The dataset returns ``q / 127.5 - 1``, i.e. flow / bound in ``[-1, 1]``.

Files are written to a temporary name and renamed into place, so an interrupted run
leaves no half-written flow file; a rerun skips every clip whose file already matches
its list window.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .errors import BadClipError, BadClipWarning, VideoError
from .listfile import ClipRecord, read_list
from .video import probe_video, read_window

FLOW_SENSOR = "color"  # flow is computed from the list's color field (sk_color.avi)
FLOW_SUFFIX = "_flow.npz"
DEFAULT_BOUND = 20.0
# Farnebäck parameters (OpenCV's documented example values) for 320x240 hand videos.
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def flow_file(video: str | Path) -> Path:
    """``.../sk_color.avi`` -> ``.../sk_color_flow.npz``."""
    video = Path(video)
    return video.with_name(video.stem + FLOW_SUFFIX)


METHODS = ("farneback", "tvl1")


def tvl1_factory():
    """OpenCV's Dual TV-L1 optical flow constructor, from opencv-contrib (``cv2.optflow``).

    TV-L1 is what the Kinetics flow I3D was trained on (Carreira & Zisserman 2017); the
    plain ``opencv-python-headless`` wheel does not have it.

    Raises:
        RuntimeError: this OpenCV has no TV-L1, with the package that provides it.
    """
    import cv2 as _cv2

    for owner in (getattr(_cv2, "optflow", None), _cv2):
        create = getattr(owner, "DualTVL1OpticalFlow_create", None) if owner is not None else None
        if create is not None:
            return create
    raise RuntimeError(
        f"TV-L1 optical flow needs OpenCV's contrib modules (cv2.optflow), which this OpenCV "
        f"{_cv2.__version__} lacks: pip uninstall opencv-python-headless && pip install "
        "opencv-contrib-python-headless (or use --method farneback)"
    )


def tvl1(frames: np.ndarray) -> np.ndarray:
    """Dual TV-L1 flow between consecutive frames (OpenCV contrib, its default parameters);
    same shapes as :func:`farneback`."""
    algo = tvl1_factory()()
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) if f.shape[2] == 3 else f[:, :, 0] for f in frames]
    flows = [algo.calc(a, b, None) for a, b in zip(gray[:-1], gray[1:])]
    return np.stack(flows).astype(np.float32)


def farneback(frames: np.ndarray) -> np.ndarray:
    """Flow between consecutive frames.

    Args:
        frames: uint8 ``[N, H, W, C]`` (RGB or gray), N >= 2.

    Returns:
        float32 ``[N - 1, H, W, 2]`` (dx, dy) in pixels.
    """
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) if f.shape[2] == 3 else f[:, :, 0] for f in frames]
    flows = [cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK) for a, b in zip(gray[:-1], gray[1:])]
    return np.stack(flows).astype(np.float32)


def quantize(flow: np.ndarray, bound: float) -> np.ndarray:
    """Pixels -> uint8 as in the file format (values beyond ``bound`` are clipped)."""
    q = np.rint((np.clip(flow, -bound, bound) + bound) * (255.0 / (2.0 * bound)))
    return q.astype(np.uint8)


def dequantize(q: np.ndarray) -> np.ndarray:
    """uint8 -> float32 flow / bound in ``[-1, 1]``."""
    return q.astype(np.float32) / 127.5 - 1.0


def compute_clip_flow(
    video: str | Path, start: int, end: int, bound: float = DEFAULT_BOUND, method: str = "farneback"
) -> tuple[np.ndarray, float]:
    """Quantized flow for frames ``[start, end)`` of ``video`` (see the module doc).

    Returns:
        ``(q, fps)``: uint8 ``[end - start, H, W, 2]`` and the video's frame rate.

    Raises:
        VideoError: the video is missing, unreadable, or shorter than the window.
    """
    info = probe_video(video)
    stop = min(end + 1, info.frames)  # one frame past the window when the video has it
    frames, fps = read_window(video, start, stop)
    if len(frames) == 1:
        flow = np.zeros((1, *frames.shape[1:3], 2), np.float32)
    else:
        flow = (tvl1 if method == "tvl1" else farneback)(frames)
        if len(flow) < end - start:
            flow = np.concatenate([flow, flow[-1:]])
    return quantize(flow, bound), fps


def save_flow(
    path: str | Path, q: np.ndarray, *, start: int, end: int, bound: float, fps: float, method: str = "farneback"
) -> None:
    """Write a flow file atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                flow=q,
                bound=np.float32(bound),
                start=np.int64(start),
                end=np.int64(end),
                fps=np.float64(fps),
                method=np.array(method),
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def flow_method(z) -> str:
    """The method of an open flow file (files without one are Farneback: older versions)."""
    return str(z["method"]) if "method" in z else "farneback"


def flow_matches(path: str | Path, start: int, end: int, bound: float | None = None, method: str | None = None) -> bool:
    """Whether ``path`` is a readable flow file for window ``[start, end)`` (and ``bound``, ``method``)."""
    try:
        with np.load(path) as z:
            ok = int(z["start"]) == start and int(z["end"]) == end
            ok = ok and (method is None or flow_method(z) == method)
            return ok and (bound is None or float(z["bound"]) == np.float32(bound))
    except (OSError, KeyError, ValueError):
        return False


def load_flow(path: str | Path, start: int, end: int) -> tuple[np.ndarray, float]:
    """Read a flow file for window ``[start, end)``.

    Returns:
        ``(flow, fps)``: float32 ``[end - start, H, W, 2]`` in ``[-1, 1]`` (flow / bound).

    Raises:
        FileNotFoundError: no flow file (run ``python -m examples.data compute-flow``).
        ValueError: unreadable, or computed for another window.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: flow file is missing (run `python -m examples.data compute-flow`)")
    try:
        with np.load(path) as z:
            q, s, e, fps = z["flow"], int(z["start"]), int(z["end"]), float(z["fps"])
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path}: unreadable flow file ({err})") from None
    if (s, e) != (start, end) or q.ndim != 4 or q.shape[0] != end - start or q.shape[3] != 2 or q.dtype != np.uint8:
        raise ValueError(
            f"{path}: flow file covers {s}:{e} with shape {q.shape}, the list window is {start}:{end} "
            "(stale; rerun compute-flow)"
        )
    return dequantize(q), fps


@dataclass
class FlowStats:
    """What :func:`precompute_flow` did."""

    computed: int = 0
    skipped: int = 0  # already up to date
    failed: int = 0  # bad clips passed over with skip_bad


def _clip_job(args: tuple[str, ClipRecord, float, bool, str]) -> tuple[str, dict | None]:
    """Compute one clip's flow; returns (status, BadClipError arguments when it failed).

    Errors travel back as plain arguments because the exception classes take keyword
    arguments, which do not survive pickling between processes.
    """
    root, record, bound, force, method = args
    where = dict(clip=record.path, list_file=record.list_file, line_no=record.line_no)
    window = record.sensors.get(FLOW_SENSOR)
    if window is None:
        return "failed", dict(reason=f"list line has no {FLOW_SENSOR!r} field", **where)
    video = record.clip_dir(root) / f"{window.file}.avi"
    out = flow_file(video)
    if not force and flow_matches(out, window.start, window.end, bound, method):
        return "skipped", None
    try:
        q, fps = compute_clip_flow(video, window.start, window.end, bound, method)
    except VideoError as e:
        return "failed", dict(reason=e.reason, file=e.file, **where)
    save_flow(out, q, start=window.start, end=window.end, bound=bound, fps=fps, method=method)
    return "computed", None


def precompute_flow(
    root: str | Path,
    list_file: str | Path,
    *,
    bound: float = DEFAULT_BOUND,
    force: bool = False,
    skip_bad: bool = False,
    workers: int = 1,
    progress: bool = True,
    method: str = "farneback",
) -> FlowStats:
    """Compute ``sk_color_flow.npz`` for every clip of a list file.

    Resumable: clips whose flow file already matches their window and ``bound`` are
    skipped unless ``force``.

    Args:
        root: dataset root (the folder holding ``Video_data``).
        list_file: list file; a relative path is taken relative to ``root`` when it is
            not found as given.
        bound: clip bound in pixels per frame.
        force: recompute every clip.
        method: ``"farneback"`` (plain OpenCV) or ``"tvl1"`` (Dual TV-L1, needs
            opencv-contrib; what the Kinetics flow I3D was trained on). A file made with
            another method counts as stale.
        skip_bad: pass over bad clips with a warning (counted in ``failed``) instead of
            raising.
        workers: processes to use.
        progress: show a tqdm bar.

    Raises:
        ListFormatError / BadClipError: the first bad line or clip, unless ``skip_bad``.
    """
    if method not in METHODS:
        raise ValueError(f"flow method must be one of {METHODS}, got {method!r}")
    if method == "tvl1":
        tvl1_factory()  # fail before any work when this OpenCV has no TV-L1
    root = Path(root)
    list_path = Path(list_file)
    if not list_path.is_file() and not list_path.is_absolute() and (root / list_path).is_file():
        list_path = root / list_path
    records, bad_lines = read_list(list_path, skip_bad=skip_bad)
    stats = FlowStats(failed=len(bad_lines))
    jobs = [(str(root), r, float(bound), force, method) for r in records]
    bar = tqdm(total=len(jobs), desc="flow", unit="clip", disable=not progress)

    def account(status: str, error: dict | None) -> None:
        if error is not None:
            reason = error.pop("reason")
            err = BadClipError(reason, **error)
            if not skip_bad:
                raise err
            warnings.warn(f"skipping bad clip: {err}", BadClipWarning, stacklevel=3)
        setattr(stats, status, getattr(stats, status) + 1)
        bar.update(1)
        bar.set_postfix(computed=stats.computed, skipped=stats.skipped, failed=stats.failed)

    try:
        if workers <= 1:
            for job in jobs:
                account(*_clip_job(job))
        else:
            with get_context("spawn").Pool(workers) as pool:
                for result in pool.imap_unordered(_clip_job, jobs):
                    account(*result)
    finally:
        bar.close()
    return stats
