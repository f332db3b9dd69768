"""The 25 NVGesture classes and the label swap under a horizontal flip.

Class names follow the NVGesture release (Molchanov et al., CVPR 2016); list files use
1-based labels, everything in Python uses 0-based labels.
"""

from __future__ import annotations

NUM_CLASSES = 25

CLASS_NAMES: tuple[str, ...] = (
    "move hand left",  # 1
    "move hand right",  # 2
    "move hand up",  # 3
    "move hand down",  # 4
    "two fingers left",  # 5
    "two fingers right",  # 6
    "two fingers up",  # 7
    "two fingers down",  # 8
    "click index finger",  # 9
    "call someone",  # 10
    "open hand",  # 11
    "shaking hand",  # 12
    "show index finger",  # 13
    "show two fingers",  # 14
    "show three fingers",  # 15
    "push hand up",  # 16
    "push hand down",  # 17
    "push hand out",  # 18
    "pull hand in",  # 19
    "rotate fingers CW",  # 20
    "rotate fingers CCW",  # 21
    "push two fingers away",  # 22
    "close hand two times",  # 23
    "thumb up",  # 24
    "okay gesture",  # 25
)

# Gestures that are each other's mirror image, in the 1-based labels of the list files.
MIRROR_PAIRS_1BASED: tuple[tuple[int, int], ...] = ((1, 2), (5, 6), (20, 21))


def _flip_map() -> tuple[int, ...]:
    table = list(range(NUM_CLASSES))
    for a, b in MIRROR_PAIRS_1BASED:
        table[a - 1], table[b - 1] = b - 1, a - 1
    return tuple(table)


# FLIP_LABEL_MAP[label] is the 0-based label of the horizontally flipped clip.
FLIP_LABEL_MAP: tuple[int, ...] = _flip_map()
