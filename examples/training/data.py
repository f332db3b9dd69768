"""Datasets and loaders for training: transforms, an in-memory clip cache, a
subject-wise validation split carved from the training list."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from examples.data import Compose, HandBoxCrop, NVGestureDataset, Resize, build_transforms
from examples.data.errors import EmptySplitError

from .config import TrainConfig

_SUBJECT = re.compile(r"subject(\d+)_r\d+")


class CachedNVGesture(NVGestureDataset):
    """An :class:`~examples.data.NVGestureDataset` that decodes every clip once.

    The decoded window goes through ``prepare`` (deterministic steps: hand-box crop,
    resize) and stays in memory, so each epoch only pays for the random steps of the
    transform. Meant for small datasets (the synthetic one is ~100 MB cached at 72
    pixels); fill it with :meth:`preload` before starting DataLoader workers so that
    they share it.
    """

    def __init__(self, *args, prepare=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.prepare = prepare
        self._cache: dict[int, dict] = {}

    def load(self, index: int) -> dict:
        if index not in self._cache:
            sample = super().load(index)
            self._cache[index] = self.prepare(sample) if self.prepare is not None else sample
        sample = self._cache[index]
        # Transforms replace the dict's entries (never the arrays in place): a shallow copy suffices.
        return {**sample, "meta": {k: dict(v) for k, v in sample["meta"].items()}}

    def preload(self, indices: Sequence[int] | None = None, progress: bool = False) -> None:
        """Decode and cache ``indices`` (default: every clip)."""
        indices = range(len(self)) if indices is None else indices
        for i in tqdm(indices, desc=f"caching {self.split}", unit="clip", disable=not progress, leave=False):
            self.load(i)


def subject_of(clip_path: str) -> int:
    """The subject number of a clip path ``.../subjectN_rK``."""
    match = _SUBJECT.search(clip_path)
    if match is None:
        raise ValueError(f"clip path {clip_path!r} does not name a subject (subjectN_rK)")
    return int(match.group(1))


def split_by_subject(dataset: NVGestureDataset, held_out: int) -> tuple[list[int], list[int]]:
    """Indices of (kept, held-out) clips, holding out the ``held_out`` highest-numbered subjects."""
    subjects = [subject_of(r.path) for r in dataset.records]
    distinct = sorted(set(subjects))
    if not 0 < held_out < len(distinct):
        raise ValueError(
            f"--val-subjects must be in 1..{len(distinct) - 1} (the training list has "
            f"{len(distinct)} subjects), got {held_out}"
        )
    val = set(distinct[-held_out:])
    return [i for i, s in enumerate(subjects) if s not in val], [i for i, s in enumerate(subjects) if s in val]


def transforms_of(cfg: TrainConfig, train: bool, boxes=None, resize: int | None = None):
    """The run's train or test pipeline (``boxes``: a loaded box table, default the file)."""
    return build_transforms(
        train,
        frames=cfg.frames if train else cfg.test_frames,
        size=cfg.size,
        resize=cfg.resize if resize is None else resize,
        fps=cfg.fps,
        flip=cfg.flip,
        boxes=cfg.hand_boxes if boxes is None else boxes,
        box_pipeline=cfg.box_pipeline,
        box_scale=cfg.box_scale,
        box_ratio=cfg.box_ratio,
        box_shift=cfg.box_shift,
        color_jitter=cfg.color_jitter if train else None,
    )


def _dataset(cfg: TrainConfig, split: str, train: bool) -> NVGestureDataset:
    # check_frames: every clip decoded once here, so a truncated video stops (or, with
    # --skip-bad, is passed over) before the first epoch, not in an evaluation after it
    frames = cfg.frames if train else cfg.test_frames
    if not cfg.cache or cfg.box_pipeline == "mmpose":
        # The mmpose box pipeline crops before resizing, differently every epoch: a cache
        # (when asked for) holds the decoded windows as they are.
        transform = transforms_of(cfg, train)
        if cfg.cache:
            return CachedNVGesture(
                cfg.data_root, split, cfg.modalities, transform, skip_bad=cfg.skip_bad, check_frames=True
            )
        return NVGestureDataset(
            cfg.data_root, split, cfg.modalities, transform, skip_bad=cfg.skip_bad, check_frames=True
        )
    # The cache holds clips already cropped to the hand and resized; the per-epoch
    # transform's Resize is then a no-op and it only samples, crops, flips, normalizes.
    resize = cfg.resize if cfg.resize is not None else round(cfg.size * 8 / 7)
    prepare = Compose(([HandBoxCrop(cfg.hand_boxes)] if cfg.hand_boxes else []) + [Resize(resize)])
    transform = build_transforms(train, frames=frames, size=cfg.size, resize=resize, fps=cfg.fps, flip=cfg.flip)
    return CachedNVGesture(
        cfg.data_root, split, cfg.modalities, transform, prepare=prepare, skip_bad=cfg.skip_bad, check_frames=True
    )


def build_datasets(cfg: TrainConfig, splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, Dataset]:
    """``{"train": ..., ["val": ...,] "test": ...}`` (those of ``splits`` that exist).

    With ``cfg.val_subjects`` the validation split is the last subjects of the training
    list, with test transforms, and they are removed from training. Without it there is
    no ``"val"``.
    """
    out: dict[str, Dataset] = {}
    if "train" in splits or ("val" in splits and cfg.val_subjects):
        train = _dataset(cfg, "train", train=True) if "train" in splits else None
        if cfg.val_subjects:
            evaluation = _dataset(cfg, "train", train=False)
            keep, held = split_by_subject(evaluation, cfg.val_subjects)
            if "val" in splits:
                out["val"] = Subset(evaluation, held)
            if train is not None:
                out["train"] = Subset(train, keep)
        elif train is not None:
            out["train"] = train
    if "test" in splits:
        out["test"] = _dataset(cfg, "test", train=False)
    return {k: out[k] for k in ("train", "val", "test") if k in out}


def require_clips(datasets: dict[str, Dataset]) -> None:
    """Raise :class:`EmptySplitError` for a split without clips: a run on it would train
    on nothing (loss 0) or report an accuracy of 0 clips."""
    for name, ds in datasets.items():
        if len(ds):
            continue
        base = ds.dataset if isinstance(ds, Subset) else ds
        skipped = getattr(base, "skipped", [])
        if skipped:
            why = (
                f"--skip-bad passed over every one of its {len(skipped)} entries (first: {skipped[0]}); "
                "fix or restore the data, the warnings above say what is wrong with each"
            )
        else:
            why = f"its list file {getattr(base, 'list_file', '?')} lists no clip"
        hint = " (--no-eval-test trains without it)" if name == "test" else ""
        raise EmptySplitError(f"the {name} split has no clips: {why}{hint}")


def skipped_entries(datasets: dict[str, Dataset]) -> list[str]:
    """What ``--skip-bad`` passed over in building ``datasets`` (each list read once)."""
    seen, out = set(), []
    for ds in datasets.values():
        base = ds.dataset if isinstance(ds, Subset) else ds
        if id(base) not in seen and (base.split, str(base.list_file)) not in seen:
            seen |= {id(base), (base.split, str(base.list_file))}
            out += list(getattr(base, "skipped", []))
    return out


def preload(datasets: dict[str, Dataset], progress: bool = False) -> None:
    """Fill the cache of every cached dataset (only the clips each split uses)."""
    for ds in datasets.values():
        base, indices = (ds.dataset, ds.indices) if isinstance(ds, Subset) else (ds, None)
        if isinstance(base, CachedNVGesture):
            base.preload(indices, progress)


def train_loader(ds: Dataset, cfg: TrainConfig, rank: int, world: int) -> tuple[DataLoader, DistributedSampler]:
    """Shuffled loader; the sampler's order depends only on (seed, epoch): call ``set_epoch``."""
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(
        ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=cfg.device.startswith("cuda"),
        persistent_workers=False,
    )
    return loader, sampler


def eval_loader(ds: Dataset, cfg: TrainConfig, rank: int, world: int) -> DataLoader:
    """This process's shard (every ``world``-th clip, no padding) in order; whole clips
    (``test_frames`` None) have different lengths and go one at a time."""
    shard = Subset(ds, list(range(rank, len(ds), world)))
    batch = cfg.batch_size if cfg.test_frames is not None else 1
    # Its own generator: evaluating must not draw from the global RNG the training run
    # continues with (an exact resume may evaluate at other epochs than the first run).
    return DataLoader(
        shard,
        batch_size=batch,
        shuffle=False,
        num_workers=cfg.workers,
        pin_memory=cfg.device.startswith("cuda"),
        generator=torch.Generator().manual_seed(0),
    )
