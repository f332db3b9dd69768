"""NVGesture data for the MTUT examples: dataset, transforms, flow, synthetic data.

Public API::

    from examples.data import NVGestureDataset, build_transforms
    ds = NVGestureDataset(root, split="train", modalities=("rgb", "depth"),
                          transform=build_transforms(train=True, frames=32, size=112))
    item = ds[0]  # {"rgb": [3, 32, 112, 112], "depth": [1, 32, 112, 112], "label": int, "path": str}

Command line: ``python -m examples.data {make-synthetic,compute-flow,show} --help``.
"""

from .classes import CLASS_NAMES, FLIP_LABEL_MAP, MIRROR_PAIRS_1BASED, NUM_CLASSES
from .dataset import NVGestureDataset
from .errors import (
    BadClipError,
    BadClipWarning,
    ListFormatError,
    NVGestureDataError,
    UnknownModalityError,
    VideoError,
)
from .flow import load_flow, precompute_flow
from .listfile import TEST_LIST, TRAIN_LIST, ClipRecord, SensorWindow, format_line, parse_line, read_list
from .modalities import MODALITIES
from .synthetic import DEFAULT_CLASSES, SyntheticConfig, generate
from .transforms import (
    CenterCrop,
    Compose,
    HandBoxCrop,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    TemporalSample,
    build_transforms,
    hflip,
    load_boxes,
)

__all__ = [
    "BadClipError",
    "BadClipWarning",
    "CLASS_NAMES",
    "CenterCrop",
    "ClipRecord",
    "Compose",
    "DEFAULT_CLASSES",
    "FLIP_LABEL_MAP",
    "HandBoxCrop",
    "ListFormatError",
    "MIRROR_PAIRS_1BASED",
    "MODALITIES",
    "NUM_CLASSES",
    "NVGestureDataError",
    "NVGestureDataset",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Resize",
    "SensorWindow",
    "SyntheticConfig",
    "TEST_LIST",
    "TRAIN_LIST",
    "TemporalSample",
    "UnknownModalityError",
    "VideoError",
    "build_transforms",
    "format_line",
    "generate",
    "hflip",
    "load_boxes",
    "load_flow",
    "parse_line",
    "precompute_flow",
    "read_list",
]
