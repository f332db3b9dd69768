"""The NVGesture dataset (real or synthetic, same on-disk format)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .classes import CLASS_NAMES, NUM_CLASSES
from .errors import BadClipError, BadClipWarning, NVGestureDataError, UnknownModalityError, VideoError
from .flow import flow_file, flow_matches, load_flow
from .listfile import LIST_FILES, ClipRecord, find_list_file, read_list
from .modalities import MODALITIES
from .transforms import Transform
from .video import check_frames, probe_video, read_window

# Videos already decoded up to a frame: (path, size, mtime_ns) -> frames known good, so
# that a list read again (a validation split carved from the training list, the next run
# of a study) is not decoded again.
_DECODED: dict[tuple[str, int, int], int] = {}


def _decodable(path: Path, end: int) -> None:
    """:func:`check_frames` up to ``end``, once per file version and process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if _DECODED.get(key, 0) >= end:
        return
    check_frames(path, end)
    _DECODED[key] = end


class NVGestureDataset(Dataset):
    """NVGesture clips as dicts of ``[C, T, H, W]`` float32 tensors.

    Layout under ``root``: ``Video_data/class_XX/subjectN_rK/{sk_color,sk_depth,duo_left}.avi``
    and the list files ``nvgesture_{train,test}_correct_cvpr2016_v2.lst`` (see
    :mod:`examples.data.listfile`). Only each sensor's valid window ``[start, end)`` is
    read.

    Modalities: ``rgb`` (``sk_color.avi``, 3 channels, RGB order), ``depth``
    (``sk_depth.avi``, 1 channel), ``ir`` (``duo_left.avi``, 1 channel), ``flow``
    (``sk_color_flow.npz``, 2 channels, precomputed by ``python -m examples.data
    compute-flow``).

    An item is ``{"rgb": [3, T, H, W], "depth": [1, T, H, W], ..., "label": int,
    "path": str}`` with exactly the requested modalities; ``label`` is 0-based (0..24)
    and ``path`` the list's clip path. Without a transform the whole window is returned
    (each modality at its own length), videos scaled to ``[0, 1]`` and flow in
    ``[-1, 1]``; with :func:`~examples.data.transforms.build_transforms` every modality
    has the same T, H, W.

    Videos are opened inside ``__getitem__`` and closed before it returns, so the
    dataset works with any number of ``DataLoader`` workers.

    Args:
        root: dataset root.
        split: ``"train"`` or ``"test"`` (picks the standard list file, at the root or, as
            in mmpose's layout, under ``annotations/``).
        modalities: which modalities to return, in this order.
        transform: a callable on the sample dict (see :mod:`examples.data.transforms`).
        list_file: read this list file instead of the split's (relative paths are taken
            relative to ``root``).
        skip_bad: pass over bad lines and clips with a :class:`BadClipWarning` instead of
            raising; they are counted in :attr:`skipped`. Clips found bad only while
            decoding are replaced by the next good clip.
        check_videos: open every needed video header (and flow file) at construction,
            so windows outside a video or unreadable files are reported up front.
        check_frames: also decode every needed video up to its window's end at
            construction, so a truncated file is reported up front (passed over with
            ``skip_bad``), not when the clip is first read (training uses this).

    Raises:
        UnknownModalityError: a modality name not in ``rgb, depth, ir, flow``.
        FileNotFoundError: ``root`` or the list file does not exist.
        ListFormatError: a malformed list line (unless ``skip_bad``).
        BadClipError: a clip whose files are missing or do not fit its window (unless
            ``skip_bad``); at construction for what ``check_videos`` sees, else when
            the clip is loaded.
    """

    num_classes = NUM_CLASSES
    class_names = CLASS_NAMES

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        modalities: Sequence[str] = ("rgb", "depth"),
        transform: Transform | None = None,
        *,
        list_file: str | Path | None = None,
        skip_bad: bool = False,
        check_videos: bool = True,
        check_frames: bool = False,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"NVGesture root is not a folder: {self.root}")
        if isinstance(modalities, str):
            modalities = (modalities,)
        self.modalities = tuple(modalities)
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown:
            raise UnknownModalityError(
                f"unknown modality {unknown[0]!r} in modalities={list(self.modalities)}; known: {', '.join(MODALITIES)}"
            )
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be non-empty and without repeats, got {list(self.modalities)}")
        if list_file is None:
            if split not in LIST_FILES:
                raise ValueError(f"split must be one of {sorted(LIST_FILES)}, got {split!r}")
            list_file = find_list_file(self.root, split)
        else:
            list_file = Path(list_file)
            if not list_file.is_absolute() and not list_file.is_file():
                list_file = self.root / list_file
        self.split, self.list_file = split, Path(list_file)
        self.transform = transform
        self.skip_bad = skip_bad
        self.check_frames = check_frames

        records, self.skipped = read_list(self.list_file, skip_bad=skip_bad)
        self.records: list[ClipRecord] = []
        for record in records:
            try:
                self._check(record, check_videos)
            except BadClipError as e:
                self._skip_or_raise(e)
                continue
            self.records.append(record)

    @property
    def labels(self) -> list[int]:
        """0-based label of every clip, in order (for samplers and class counts)."""
        return [r.label for r in self.records]

    @property
    def num_skipped(self) -> int:
        """Bad lines and clips passed over so far (in this process)."""
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.records)

    def _skip_or_raise(self, error: NVGestureDataError) -> None:
        if not self.skip_bad:
            raise error
        warnings.warn(f"skipping bad clip: {error}", BadClipWarning, stacklevel=3)
        self.skipped.append(str(error))

    def _error(self, record: ClipRecord, reason: str, file: str | Path | None = None) -> BadClipError:
        return BadClipError(reason, clip=record.path, file=file, list_file=record.list_file, line_no=record.line_no)

    def _source(self, record: ClipRecord, modality: str) -> tuple[Path, int, int]:
        """(file, start, end) that ``modality`` reads for ``record``."""
        spec = MODALITIES[modality]
        window = record.sensors.get(spec.sensor)
        if window is None:
            raise self._error(record, f"list line has no {spec.sensor!r} field, needed for modality {modality!r}")
        video = record.clip_dir(self.root) / f"{window.file}.avi"
        return (flow_file(video) if spec.precomputed else video), window.start, window.end

    def _check(self, record: ClipRecord, open_files: bool) -> None:
        for m in self.modalities:
            path, start, end = self._source(record, m)
            if not path.is_file():
                hint = " (run `python -m examples.data compute-flow`)" if MODALITIES[m].precomputed else ""
                raise self._error(record, f"{m} file is missing{hint}", path)
            if not open_files:
                continue
            if MODALITIES[m].precomputed:
                if not flow_matches(path, start, end):
                    raise self._error(record, f"flow file is unreadable or not for window {start}:{end}", path)
                continue
            try:
                info = probe_video(path)
            except VideoError as e:
                raise self._error(record, e.reason, path) from None
            if end > info.frames:
                raise self._error(record, f"window {start}:{end} is outside the video's {info.frames} frames", path)
            if self.check_frames:
                try:
                    _decodable(path, end)
                except VideoError as e:
                    raise self._error(record, e.reason, path) from None

    def load(self, index: int) -> dict:
        """The untransformed sample of clip ``index``: uint8 ``[N, H, W, C]`` per video
        modality (float32 for flow), ``label``, ``path`` and ``meta`` (frame rates, window starts).

        Raises:
            BadClipError: a file is missing, unreadable, or shorter than its window.
        """
        record = self.records[index]
        sample: dict = {}
        fps: dict[str, float] = {}
        starts: dict[str, int] = {}
        for m in self.modalities:
            path, start, end = self._source(record, m)
            starts[m] = start
            try:
                if MODALITIES[m].precomputed:
                    sample[m], fps[m] = load_flow(path, start, end)
                else:
                    sample[m], fps[m] = read_window(path, start, end, gray=MODALITIES[m].channels == 1)
            except VideoError as e:
                raise self._error(record, e.reason, path) from None
            except (FileNotFoundError, ValueError) as e:
                raise self._error(record, str(e), path) from None
        # meta: each modality's frame rate and the video frame its window starts at (per-frame
        # hand boxes are indexed by video frame)
        sample.update(label=record.label, path=record.path, meta={"fps": fps, "start": starts})
        return sample

    def _item(self, index: int) -> dict:
        sample = self.load(index)
        if self.transform is not None:
            sample = self.transform(sample)
        item: dict = {}
        for m in self.modalities:
            x = sample[m]
            x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32, copy=False)
            item[m] = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 0, 1, 2)))
        item["label"] = int(sample["label"])
        item["path"] = sample["path"]
        return item

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        index %= len(self)
        if not self.skip_bad:
            return self._item(index)
        for attempt in range(len(self)):
            try:
                return self._item((index + attempt) % len(self))
            except NVGestureDataError as e:
                self._skip_or_raise(e)
        raise RuntimeError(f"every clip in {self.list_file} failed to load")

    def __repr__(self) -> str:
        return (
            f"NVGestureDataset(root={str(self.root)!r}, split={self.split!r}, modalities={self.modalities}, "
            f"clips={len(self)}, skipped={self.num_skipped})"
        )
