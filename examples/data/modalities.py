"""The modalities the dataset can return, where each comes from, and which a sample holds.

boxes.py and transforms.py both read a sample's modalities from here (neither imports the other's helpers).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Modality:
    """A modality: the list-file sensor field it reads and its channel count.

    ``flow`` reads the ``color`` window but from the precomputed flow file next to the
    color video (see :mod:`examples.data.flow`), not from a video.
    """

    name: str
    sensor: str
    channels: int
    precomputed: bool = False


MODALITIES: dict[str, Modality] = {
    "rgb": Modality("rgb", sensor="color", channels=3),
    "depth": Modality("depth", sensor="depth", channels=1),
    "ir": Modality("ir", sensor="duo_left", channels=1),
    "flow": Modality("flow", sensor="color", channels=2, precomputed=True),
}


def modalities_of(sample: dict) -> list[str]:
    """The modality keys present in ``sample``, in the sample's order."""
    return [k for k in sample if k in MODALITIES]
