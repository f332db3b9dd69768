"""Synthetic NVGesture-format data: hand gestures rendered into real AVI files.

The output has exactly the NVGesture layout (see :mod:`examples.data.dataset`):
``Video_data/class_XX/subjectN_rK/{sk_color,sk_depth,duo_left}.avi``, the two list files
with per-sensor valid windows, plus ``hand_boxes.json`` (one box per clip, see
:func:`examples.data.transforms.load_boxes`), ``bboxes.json`` (per-frame boxes in
mmpose's format, see :mod:`examples.data.boxes`) and ``synthetic_info.json`` (the settings).

What is in a clip
-----------------
A hand (an elliptic palm and five fingers, each finger extended or curled) performs
its class's gesture inside the valid window and holds still (with a little tremor)
before and after it. Classes imitate the 25 NVGesture gestures with motion (left,
right, up, down, toward / away from the camera), rotation, and fingers opening and
closing; 2, 6 and 21 are the exact left-right mirror images of 1, 5 and 20, so a
horizontal flip turns one into the other as in the real data. Each *subject* has its
own hand size, skin tone, handedness (thumb side), pace, shirt and place in front of
the camera; each clip varies speed, position, scale and amplitude. All recordings
share one room, as the real ones do (the camera moves by a pixel or two between them).

* ``sk_depth``: clean. Dark far wall, the subject's torso mid-gray, the hand bright
  (brighter when closer). Stored as a 3-channel gray video, like the real one.
* ``sk_color``: harder, scaled by ``rgb_difficulty`` in ``[0, 1]``: background
  clutter (some of it skin-colored), the subject's face in the same skin tone as the
  hand, a distractor moving across the scene (in a fraction ``rgb_difficulty`` of the
  clips), the hand's color pulled toward the background (lower contrast), lighting
  that drifts and flickers, sensor noise. The hand is shaded (darker at its outline).
* RGB-hard clips (``rgb_hard_p > 0``): each clip is marked ``rgb_hard ~ Bernoulli(p)``
  before rendering, from its own generator, and the mark is written to ``rgb_hard.json``
  (a sidecar for analysis only: training never reads it as data). On a hard clip the RGB
  stream gets, scaled by ``rgb_hard_strength``: the hand's color pulled further toward
  the background around it, a second skin-toned hand moving near the hand (behind it,
  with its own motion, unrelated to the gesture), and a lighting dip during the gesture.
  Depth and IR are unchanged, and so is everything else in the clip: a hard clip
  re-rendered easy (``render_clip(..., rgb_hard=False)``) differs only by those three.
* ``duo_left``: an IR view from a second camera: gray, the hand bright, a few pixels
  of parallax, mild noise, and its own timeline (its window starts a few frames
  earlier or later and the video has a different length, as in the real lists).

The default (8 classes including the three mirrored pairs, 30 clips per class from
10 subjects with 3 held out for test, ~32-frame gestures in ~45-frame videos,
160x120) has 168 train / 72 test clips and is generated in well under a minute;
160x120 keeps the real 4:3 sensor aspect at a quarter of the pixels, which is all a
network sees after the usual resize to 112-128 pixels anyway. ``width=320, height=240``
and ``classes=range(1, 26)`` give the real sensor size and all 25 classes.

Generation is deterministic: every clip draws from its own generator seeded by
``(seed, class, subject, repetition)``, so the same seed gives byte-identical list and
JSON files and identical decoded frames, and a clip does not change when other
classes are added or removed.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .boxes import FRAME_BOXES_FILE
from .classes import CLASS_NAMES, NUM_CLASSES
from .listfile import TEST_LIST, TRAIN_LIST, SensorWindow, format_line

# Three mirrored pairs plus a shape change (open hand) and a depth motion (push out).
DEFAULT_CLASSES: tuple[int, ...] = (1, 2, 5, 6, 11, 18, 20, 21)
BOXES_FILE = "hand_boxes.json"
INFO_FILE = "synthetic_info.json"
HARD_FILE = "rgb_hard.json"  # the RGB-hard marks of rgb_hard_p > 0 (analysis only)
HARD_FORMAT = "mtut-rgb-hard/1"

# Hand model, in palm radii, local frame with +y toward the fingertips. Fingers are
# thumb, index, middle, ring, pinky: base point, direction (radians from +y, toward
# +x), full length, thickness.
_FINGER_BASE = np.array([[-0.80, 0.05], [-0.50, 0.80], [-0.17, 0.92], [0.17, 0.90], [0.48, 0.78]])
_FINGER_DIR = np.array([-0.95, -0.12, -0.03, 0.05, 0.16])
_FINGER_LEN = np.array([0.85, 1.05, 1.15, 1.05, 0.85])
_FINGER_WIDTH = np.array([0.38, 0.32, 0.32, 0.32, 0.30])
_CURLED = 0.3  # a curled finger keeps this fraction of its length (the knuckle)
_PALM_RADIUS = 0.085  # of the frame height, before per-subject and per-clip scaling

OPEN, FIST = (1, 1, 1, 1, 1), (0, 0, 0, 0, 0)
INDEX, TWO, THREE, THUMB = (0, 1, 0, 0, 0), (0, 1, 1, 0, 0), (0, 1, 1, 1, 0), (1, 0, 0, 0, 0)
_SKIN_TONES = np.array([[224, 190, 170], [205, 160, 130], [180, 130, 100], [140, 95, 70], [100, 70, 50]], np.float32)


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of a synthetic dataset (all sizes in frames and pixels).

    Attributes:
        classes: 1-based NVGesture classes to generate.
        clips_per_class: clips of each class; clip i is subject ``first_subject + i % subjects``,
            repetition ``i // subjects``.
        subjects: number of subjects; the last ``test_subjects`` form the test split.
        first_subject: the first subject's number (subjects are ``first_subject`` ..
            ``first_subject + subjects - 1``); a subject's look depends on its number and
            the seed only, so datasets with disjoint ranges share no subject (a pretext
            dataset beside a target one).
        test_subjects: subjects held out for the test list.
        frames: mean gesture (valid window) length; each clip varies it by its speed.
        width, height: frame size of every video.
        fps: frame rate written into the AVI headers.
        rgb_difficulty: 0 (as clean as depth) .. 1 (heavy clutter, noise, lighting).
        rgb_hard_p: probability that a clip is RGB-hard (see the module doc); 0 (the
            default) renders exactly what earlier versions rendered and writes no sidecar.
        rgb_hard_strength: 0 .. 1, how hard an RGB-hard clip is (1: hand color 60% of the
            way to its surroundings, the distractor at full opacity, light down to 45%).
        hand_scale: the hands' size relative to the default camera distance (2: a camera
            twice as close to the hands; the gestures' paths across the frame unchanged).
            At the study's 64x64 input the default hand is about 6 pixels of palm radius.
        codec: AVI FourCC; ``MJPG`` (compact) or a lossless one such as ``FFV1``.
        seed: base seed.
    """

    classes: tuple[int, ...] = DEFAULT_CLASSES
    clips_per_class: int = 30
    subjects: int = 10
    test_subjects: int = 3
    first_subject: int = 1
    frames: int = 32
    width: int = 160
    height: int = 120
    fps: float = 30.0
    rgb_difficulty: float = 0.5
    rgb_hard_p: float = 0.0
    rgb_hard_strength: float = 1.0
    hand_scale: float = 1.0
    codec: str = "MJPG"
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [c for c in self.classes if not 1 <= c <= NUM_CLASSES]
        if not self.classes or bad or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct 1-based labels in 1..{NUM_CLASSES}, got {self.classes}")
        if self.subjects < 2 or not 1 <= self.test_subjects < self.subjects:
            raise ValueError(
                f"need subjects >= 2 and 1 <= test_subjects < subjects, got {self.subjects}, {self.test_subjects}"
            )
        if self.first_subject < 1:
            raise ValueError(f"first_subject must be >= 1, got {self.first_subject}")
        if self.clips_per_class < 1:
            raise ValueError(f"clips_per_class must be >= 1, got {self.clips_per_class}")
        if self.frames < 4:
            raise ValueError(f"frames must be >= 4, got {self.frames}")
        if self.width < 32 or self.height < 32:
            raise ValueError(f"frame size must be at least 32x32, got {self.width}x{self.height}")
        if not 0 <= self.rgb_difficulty <= 1:
            raise ValueError(f"rgb_difficulty must be in [0, 1], got {self.rgb_difficulty}")
        if not 0 <= self.rgb_hard_p <= 1:
            raise ValueError(f"rgb_hard_p must be in [0, 1], got {self.rgb_hard_p}")
        if not 0 <= self.rgb_hard_strength <= 1:
            raise ValueError(f"rgb_hard_strength must be in [0, 1], got {self.rgb_hard_strength}")
        if not 0.25 <= self.hand_scale <= 4:
            raise ValueError(f"hand_scale must be in [0.25, 4], got {self.hand_scale}")
        if len(self.codec) != 4:
            raise ValueError(f"codec must be a 4-character FourCC, got {self.codec!r}")

    def check_splits(self) -> None:
        """Raise ``ValueError`` when these settings would leave the test list empty
        (:func:`generate` checks; a config that only renders clips need not)."""
        train_subjects = self.subjects - self.test_subjects
        if self.clips_per_class <= train_subjects:
            # clip i goes to subject i % subjects: the first clips fill the training subjects
            raise ValueError(
                f"clips_per_class {self.clips_per_class} with subjects {self.subjects} and "
                f"test_subjects {self.test_subjects} leaves the test list empty (clip i is subject "
                f"i % subjects; the last {self.test_subjects} subjects are test): give clips_per_class "
                f">= {train_subjects + 1}, or fewer subjects"
            )


# ----------------------------------------------------------------------------- gestures


def _ramp(p: np.ndarray) -> np.ndarray:
    """0 -> 1 with zero speed at both ends (smoothstep)."""
    return p * p * (3 - 2 * p)


def _bump(p: np.ndarray) -> np.ndarray:
    """0 -> 1 -> 0."""
    return np.sin(np.pi * p) ** 2


def _cycles(p: np.ndarray, k: float) -> np.ndarray:
    """0 -> 1 -> 0, ``k`` times."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * k * p)


def _fingers(p: np.ndarray, start, end, how=_ramp) -> np.ndarray:
    a, b = np.asarray(start, np.float64), np.asarray(end, np.float64)
    return a + (b - a) * how(p)[:, None]


def gesture(label: int, p: np.ndarray, amp: float = 1.0) -> dict[str, np.ndarray]:
    """Hand trajectory of 1-based class ``label`` at phases ``p`` in ``[0, 1]``.

    Returns offsets from the clip's rest position ``dx, dy`` (fractions of the frame
    height, image y downward), rotation ``theta`` (radians, clockwise on screen),
    closeness ``z`` (0 far .. 1 near) and finger extension ``ext`` ``[len(p), 5]``.
    """
    mirror = {2: 1, 6: 5, 21: 20}
    if label in mirror:  # the mirror image of its partner: negate x motion and rotation
        g = gesture(mirror[label], p, amp)
        g["dx"], g["theta"] = -g["dx"], -g["theta"]
        return g
    n = len(p)
    zero = np.zeros(n)
    r = _ramp(p)
    dx, dy, theta, z = zero.copy(), zero.copy(), zero.copy(), np.full(n, 0.5)
    ext = _fingers(p, OPEN, OPEN)
    a = amp
    if label == 1:  # move hand left
        dx, theta = 0.22 * a * (1 - 2 * r), -0.2 * _bump(p)
    elif label == 3:  # move hand up
        dy = 0.18 * a * (1 - 2 * r)
    elif label == 4:  # move hand down
        dy = -0.18 * a * (1 - 2 * r)
    elif label == 5:  # two fingers left: a swipe pivoting on the wrist
        ext, theta, dx = _fingers(p, TWO, TWO), 0.2 - 1.0 * a * r, 0.05 - 0.1 * a * r
    elif label == 7:  # two fingers up
        ext, dy = _fingers(p, (0, 0.6, 0.6, 0, 0), TWO), 0.08 - 0.16 * a * r
    elif label == 8:  # two fingers down
        ext, dy = _fingers(p, TWO, (0, 0.6, 0.6, 0, 0)), -0.08 + 0.16 * a * r
    elif label == 9:  # click index finger
        ext = _fingers(p, INDEX, (0, 0.2, 0, 0, 0), _bump)
    elif label == 10:  # call someone: beckon three times
        ext = _fingers(p, (0.7, 1, 1, 1, 1), (0.7, 0.1, 0.1, 0.1, 0.1), lambda q: _cycles(q, 3))
    elif label == 11:  # open hand
        ext, z = _fingers(p, FIST, OPEN), 0.5 + 0.1 * r
    elif label == 12:  # shaking hand
        dx, theta = 0.08 * a * np.sin(5 * np.pi * p) * _bump(p) ** 0.3, 0.35 * np.sin(5 * np.pi * p)
    elif label in (13, 14, 15):  # show one / two / three fingers
        ext, z = _fingers(p, FIST, {13: INDEX, 14: TWO, 15: THREE}[label]), 0.5 + 0.15 * r
    elif label == 16:  # push hand up and back
        dy, z = -0.25 * a * _bump(p), 0.5 + 0.1 * _bump(p)
    elif label == 17:  # push hand down and back
        dy, z = 0.25 * a * _bump(p), 0.5 + 0.1 * _bump(p)
    elif label == 18:  # push hand out (toward the camera)
        z = 0.15 + 0.8 * a * r
    elif label == 19:  # pull hand in
        z = 0.95 - 0.8 * a * r
    elif label == 20:  # rotate fingers clockwise, tracing a circle
        ang = 2 * np.pi * 0.9 * r
        ext, theta = _fingers(p, TWO, TWO), 1.6 * a * r
        dx, dy = 0.07 * a * np.sin(ang), 0.07 * a * (1 - np.cos(ang))
    elif label == 22:  # push two fingers away
        ext, z, dy = _fingers(p, TWO, TWO), 0.85 - 0.65 * a * r, -0.05 * r
    elif label == 23:  # close hand two times
        ext = _fingers(p, OPEN, (0.2, 0, 0, 0, 0), lambda q: _cycles(q, 2))
    elif label == 24:  # thumb up
        ext, theta, dy = _fingers(p, FIST, THUMB), -0.6 + 0.6 * r, -0.06 * r
    elif label == 25:  # okay gesture: thumb and index meet
        ext, z = _fingers(p, OPEN, (0.35, 0.35, 1, 1, 1)), 0.5 + 0.1 * r
    return {"dx": dx, "dy": dy, "theta": theta, "z": z, "ext": ext}


# ----------------------------------------------------------------------------- rendering


def draw_hand(
    height: int, width: int, cx: float, cy: float, radius: float, theta: float, ext: np.ndarray, chirality: int
) -> np.ndarray:
    """Antialiased hand mask, float32 ``[height, width]`` in ``[0, 1]``.

    ``(cx, cy)`` is the palm center in pixels, ``radius`` the palm radius in pixels,
    ``chirality`` +1 (right hand: thumb on the image left when fingers point up) or -1.
    """
    canvas = np.zeros((height, width), np.uint8)
    sh = 16  # 4 fractional bits for sub-pixel drawing
    c, s = math.cos(theta), math.sin(theta)

    def to_px(lx: float, ly: float) -> tuple[int, int]:
        # Local (x right, y toward fingers) -> image (y down), rotated clockwise by theta.
        x, y = chirality * lx * radius, -ly * radius
        return round((cx + c * x - s * y) * sh), round((cy + s * x + c * y) * sh)

    center = to_px(0.0, 0.0)
    axes = (round(0.85 * radius * sh), round(radius * sh))
    cv2.ellipse(canvas, center, axes, math.degrees(theta), 0, 360, 255, -1, cv2.LINE_AA, 4)
    for i in range(5):
        length = _FINGER_LEN[i] * (_CURLED + (1 - _CURLED) * float(np.clip(ext[i], 0, 1)))
        d = _FINGER_DIR[i]
        bx, by = _FINGER_BASE[i]
        tip = to_px(bx + length * math.sin(d), by + length * math.cos(d))
        thick = max(1, round(_FINGER_WIDTH[i] * radius))
        cv2.line(canvas, to_px(bx, by), tip, 255, thick, cv2.LINE_AA, 4)
    return canvas.astype(np.float32) / 255.0


@dataclass(frozen=True)
class _Subject:
    skin: np.ndarray  # RGB, 0..255
    shirt: np.ndarray
    hand_scale: float
    chirality: int
    pace: float
    body_x: float
    ir_shift: tuple[float, float]


def _subject(seed: int, subject: int) -> _Subject:
    rng = np.random.default_rng([seed, 7919, subject])
    skin = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] + rng.normal(0, 8, 3)
    return _Subject(
        skin=np.clip(skin, 30, 250).astype(np.float32),
        shirt=rng.uniform(20, 235, 3).astype(np.float32),
        hand_scale=float(rng.uniform(0.85, 1.15)),
        chirality=1 if rng.random() < 0.8 else -1,
        pace=float(rng.uniform(0.85, 1.2)),
        body_x=float(rng.uniform(0.35, 0.65)),
        ir_shift=(float(rng.uniform(3, 8)), float(rng.uniform(-2, 2))),
    )


@functools.lru_cache(maxsize=4)
def _scene(seed: int, h: int, w: int, difficulty: float) -> np.ndarray:
    """The static RGB background shared by every clip (one room, as in the real
    recordings): a wall with random shapes, some of them skin-colored. Read-only."""
    rng = np.random.default_rng([seed, 104729])
    wall = rng.uniform(90, 170, 3)
    grad = np.linspace(0.85, 1.15, h, dtype=np.float32)[:, None, None]
    img = np.ascontiguousarray(np.broadcast_to(wall * grad, (h, w, 3)), np.float32)
    for _ in range(round(4 + 16 * difficulty)):
        if rng.random() < 0.3 * difficulty:
            color = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] + rng.normal(0, 15, 3)
        else:
            color = rng.uniform(0, 255, 3)
        color = tuple(float(v) for v in np.clip(color, 0, 255))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = int(rng.integers(max(2, h // 20), max(3, h // 4)))
        kind = rng.integers(3)
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + size, y + int(rng.integers(2, size + 2))), color, -1)
        elif kind == 1:
            cv2.circle(img, (x, y), size // 2, color, -1, cv2.LINE_AA)
        else:
            end = (x + int(rng.integers(-size, size)), y + int(rng.integers(-size, size)))
            cv2.line(img, (x, y), end, color, max(1, size // 6), cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (0, 0), 0.8)
    img.flags.writeable = False
    return img


def _person(h: int, w: int, body_x: float) -> tuple[np.ndarray, np.ndarray]:
    """Masks ``[h, w]`` of the subject's torso and face (behind the hand)."""
    torso = np.zeros((h, w), np.uint8)
    face = np.zeros((h, w), np.uint8)
    cx = round(body_x * w)
    cv2.ellipse(torso, (cx, h + h // 6), (round(0.32 * w), round(0.42 * h)), 0, 0, 360, 255, -1, cv2.LINE_AA)
    cv2.ellipse(face, (cx, round(0.3 * h)), (round(0.07 * w), round(0.12 * h)), 0, 0, 360, 255, -1, cv2.LINE_AA)
    return torso.astype(np.float32) / 255, face.astype(np.float32) / 255


def _blend(img: np.ndarray, mask: np.ndarray, value) -> np.ndarray:
    m = mask[:, :, None] if img.ndim == 3 else mask
    return img * (1 - m) + np.asarray(value, np.float32) * m


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Zero-mean uniform noise of standard deviation ``std`` (random bytes are several
    times faster to draw than normals, and the look is the same)."""
    raw = np.frombuffer(rng.bytes(math.prod(shape)), np.uint8).reshape(shape).astype(np.float32)
    return (raw - np.float32(127.5)) * np.float32(std * math.sqrt(12) / 256)


def _shift(mask: np.ndarray, dx: float, dy: float) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(mask, m, (mask.shape[1], mask.shape[0]), flags=cv2.INTER_LINEAR)


@dataclass
class _Clip:
    """One rendered clip: frames of each video and its windows."""

    color: list[np.ndarray] = field(default_factory=list)
    depth: list[np.ndarray] = field(default_factory=list)
    ir: list[np.ndarray] = field(default_factory=list)
    window: tuple[int, int] = (0, 0)
    ir_window: tuple[int, int] = (0, 0)
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    rgb_hard: bool = False
    # mmpose's bboxes.json entry: per color-video frame, [] or [{"bbox": [x0, y0, x1, y1] px, "score"}]
    frame_boxes: list[list[dict]] = field(default_factory=list)


def _hard_rng(cfg: SyntheticConfig, label: int, subject: int, rep: int) -> np.random.Generator:
    """The generator of a clip's RGB-hard mark and hard-clip effects: its own stream, so
    that the rest of the clip is drawn exactly as without them."""
    return np.random.default_rng([cfg.seed, label, subject, rep, 3])


def is_rgb_hard(cfg: SyntheticConfig, label: int, subject: int, rep: int) -> bool:
    """The clip's RGB-hard mark, ``Bernoulli(cfg.rgb_hard_p)`` (what :func:`render_clip` draws)."""
    return bool(_hard_rng(cfg, label, subject, rep).random() < cfg.rgb_hard_p)


def render_clip(cfg: SyntheticConfig, label: int, subject: int, rep: int, rgb_hard: bool | None = None) -> _Clip:
    """Render the three videos of one clip (``label`` 1-based) deterministically.

    ``rgb_hard`` forces the clip's RGB-hard mark (default: drawn, :func:`is_rgb_hard`);
    the hard effects' own draws do not depend on it, so forcing a hard clip easy renders
    the same clip without them.
    """
    hard_rng = _hard_rng(cfg, label, subject, rep)
    drawn = bool(hard_rng.random() < cfg.rgb_hard_p)
    hard = drawn if rgb_hard is None else bool(rgb_hard)
    rng = np.random.default_rng([cfg.seed, label, subject, rep])
    sub = _subject(cfg.seed, subject)
    h, w, diff = cfg.height, cfg.width, cfg.rgb_difficulty

    # Timeline: rest, gesture (the valid window), rest.
    n = int(np.clip(round(cfg.frames / (sub.pace * rng.uniform(0.85, 1.15))), 0.6 * cfg.frames, 1.6 * cfg.frames))
    pre, post = int(rng.integers(3, 12)), int(rng.integers(3, 12))
    length = pre + n + post
    t = np.arange(length)
    g = gesture(label, np.clip((t - pre) / (n - 1), 0, 1), amp=float(rng.uniform(0.8, 1.2)))
    # Slow tremor so the rest frames are not frozen.
    tremor = [np.convolve(rng.normal(0, 1, length + 8), np.ones(9) / 9, "valid") for _ in range(3)]

    x0, y0 = rng.uniform(0.38, 0.62) * w, rng.uniform(0.42, 0.6) * h
    radius0 = _PALM_RADIUS * h * cfg.hand_scale * sub.hand_scale * rng.uniform(0.9, 1.1)
    masks = []
    for i in range(length):
        zscale = 0.75 + 0.5 * g["z"][i]
        cx = x0 + (g["dx"][i] + 0.006 * tremor[0][i]) * h
        cy = y0 + (g["dy"][i] + 0.006 * tremor[1][i]) * h
        theta = g["theta"][i] + 0.03 * tremor[2][i]
        masks.append(draw_hand(h, w, cx, cy, radius0 * zscale, theta, g["ext"][i], sub.chirality))

    clip = _Clip(window=(pre, pre + n), rgb_hard=hard)
    masks = np.stack(masks)[..., None]  # [L, H, W, 1], frames on the first axis
    torso, face = _person(h, w, sub.body_x)
    z = g["z"].astype(np.float32)[:, None, None, None]

    # Depth: clean. Far wall ~25, torso ~70, hand 120..230 by closeness.
    wall = 20 + 10 * np.linspace(0, 1, w, dtype=np.float32)[None, :] + np.zeros((h, 1), np.float32)
    depth_bg = _blend(_blend(wall, torso, 70), face, 80)[None, :, :, None]
    depth = depth_bg * (1 - masks) + (120 + 110 * z) * masks
    clip.depth = list(np.repeat(_to_uint8(depth), 3, axis=3))

    # RGB: clutter, face in skin tone, moving distractor, low contrast, lighting, noise.
    # The camera is re-placed a little between recordings.
    move = np.float32([[1, 0, rng.normal(0, 1.5)], [0, 1, rng.normal(0, 1)]])
    bg = cv2.warpAffine(_scene(cfg.seed, h, w, diff), move, (w, h), borderMode=cv2.BORDER_REFLECT)
    bg = _blend(_blend(bg, torso, sub.shirt), face, sub.skin)
    hand_rgb = sub.skin * (1 - 0.3 * diff) + bg.mean(axis=(0, 1)) * 0.3 * diff
    if hard:  # camouflage: the hand's color pulled toward the background where it moves
        reach = cv2.dilate((masks[..., 0].max(axis=0) > 0.1).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        hand_rgb = hand_rgb + (bg[reach].mean(axis=0) - hand_rgb) * 0.6 * cfg.rgb_hard_strength
    frames = np.repeat(bg[None], length, axis=0)
    d_color = tuple(float(v) for v in rng.uniform(0, 255, 3))
    d_start, d_vel = rng.uniform([0, 0], [w, h]), rng.uniform(-1, 1, 2) * (w / 160)
    d_radius = max(2, round(rng.uniform(0.04, 0.08) * h))
    if rng.random() < diff:  # something else moves in the scene
        for i in range(length):
            px, py = d_start + d_vel * i
            cv2.circle(frames[i], (round(px) % w, round(py) % h), d_radius, d_color, -1, cv2.LINE_AA)
    if hard:  # a second skin-toned hand moving near the hand, behind it, with its own motion
        s = cfg.rgb_hard_strength
        tone = _SKIN_TONES[hard_rng.integers(len(_SKIN_TONES))] + hard_rng.normal(0, 10, 3)
        tone = np.clip(0.5 * tone + 0.5 * sub.skin, 0, 255).astype(np.float32)
        orbit = radius0 * hard_rng.uniform(2.0, 3.0)
        angle0, speed = hard_rng.uniform(0, 2 * np.pi), hard_rng.choice([-1, 1]) * hard_rng.uniform(0.08, 0.2)
        d_ext = hard_rng.uniform(0, 1, 5)
        d_theta0, d_wobble = hard_rng.uniform(-0.6, 0.6), hard_rng.uniform(0.1, 0.5)
        d_scale = radius0 * hard_rng.uniform(0.8, 1.1)
        for i in range(length):
            ang = angle0 + speed * i
            fake = draw_hand(
                h,
                w,
                x0 + orbit * math.cos(ang),
                y0 + 0.7 * orbit * math.sin(ang),
                d_scale,
                d_theta0 + d_wobble * math.sin(0.3 * i),
                d_ext,
                -sub.chirality,
            )
            frames[i] += (tone - frames[i]) * (s * fake)[..., None]
    # Rounded shading, darker toward the outline, as a real hand under a lamp; it
    # gives the hand luminance edges whatever its color against the wall.
    sigma = max(1.0, radius0 * 0.4)
    shade = np.stack([cv2.GaussianBlur(m, (0, 0), sigma) for m in masks[..., 0]])[..., None]
    frames += (hand_rgb.astype(np.float32) * (0.55 + 0.45 * shade) - frames) * masks
    period, phase = rng.uniform(15, 40), rng.uniform(0, 2 * np.pi)
    flicker = rng.normal(0, 1, length)
    gain = 1 + diff * (0.2 * np.sin(2 * np.pi * t / period + phase) + 0.03 * flicker)
    if hard:  # the light dips during the gesture
        center, width = pre + n * hard_rng.uniform(0.3, 0.7), n * hard_rng.uniform(0.2, 0.35)
        gain = gain * (1 - 0.55 * cfg.rgb_hard_strength * np.exp(-0.5 * ((t - center) / width) ** 2))
    noise_rng = np.random.default_rng([cfg.seed, label, subject, rep, 1])
    frames *= gain.astype(np.float32)[:, None, None, None]
    frames += _noise(noise_rng, frames.shape, 1 + 5 * diff)
    clip.color = list(np.ascontiguousarray(_to_uint8(frames)[..., ::-1]))  # OpenCV writes BGR

    # IR (duo_left): second camera, shifted view, own timeline and window.
    lead = int(rng.integers(-2, 9))  # IR frame j shows color-timeline frame j - lead
    ir_length = length + max(lead, 0) + int(rng.integers(0, 5))
    src = np.clip(np.arange(ir_length) - lead, 0, length - 1)
    ir_bg = _blend(np.full((h, w), 18, np.float32), _shift(torso, *sub.ir_shift), 60)[None, :, :, None]
    ir_masks = np.stack([_shift(masks[i, :, :, 0], *sub.ir_shift) for i in range(length)])[src][..., None]
    ir = ir_bg * (1 - ir_masks) + (150 + 80 * z[src]) * ir_masks
    ir_rng = np.random.default_rng([cfg.seed, label, subject, rep, 2])
    ir += _noise(ir_rng, ir.shape, 3)
    clip.ir = list(np.repeat(_to_uint8(ir), 3, axis=3))
    clip.ir_window = (pre + lead, pre + lead + n)

    # Hand box over the valid window, as fractions of the frame (the whole frame in the
    # odd case of a hand that never enters it, e.g. a very narrow frame).
    ys, xs = np.nonzero(masks[pre : pre + n, :, :, 0].max(axis=0) > 0.1)
    if len(xs):
        clip.box = tuple(
            round(float(v), 4) for v in (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)
        )
    # Per-frame "detections" in mmpose's bboxes.json format (pixels, end exclusive), none
    # where the hand is out of the frame, as a hand detector would report them.
    for i in range(length):
        ys, xs = np.nonzero(masks[i, :, :, 0] > 0.1)
        clip.frame_boxes.append(
            [{"bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1], "score": 1.0}]
            if len(xs)
            else []
        )
    return clip


def _write_video(path: Path, frames: list[np.ndarray], fps: float, codec: str) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write {codec!r} AVI files here")
    try:
        for f in frames:
            writer.write(f)
    finally:
        writer.release()


def generate(out: str | Path, cfg: SyntheticConfig = SyntheticConfig(), *, progress: bool = True) -> dict:
    """Write a synthetic NVGesture dataset under ``out``.

    Existing files of the same names are overwritten. Settings that would leave the
    test list empty are refused (``ValueError``) before anything is written.

    Returns:
        a summary: ``{"train": clips, "test": clips, "seconds": wall time}``.
    """
    cfg.check_splits()
    out = Path(out)
    started = time.perf_counter()
    lines: dict[str, list[str]] = {"train": [], "test": []}
    boxes: dict[str, list[float]] = {}
    frame_boxes: dict[str, list] = {}
    hard: dict[str, bool] = {}
    jobs = [
        (label, cfg.first_subject + i % cfg.subjects, i // cfg.subjects)
        for label in sorted(cfg.classes)
        for i in range(cfg.clips_per_class)
    ]
    first_test = cfg.first_subject + cfg.subjects - cfg.test_subjects
    for label, subject, rep in tqdm(jobs, desc="synthetic", unit="clip", disable=not progress):
        clip = render_clip(cfg, label, subject, rep)
        rel = f"Video_data/class_{label:02d}/subject{subject}_r{rep}"
        folder = out / rel
        folder.mkdir(parents=True, exist_ok=True)
        _write_video(folder / "sk_color.avi", clip.color, cfg.fps, cfg.codec)
        _write_video(folder / "sk_depth.avi", clip.depth, cfg.fps, cfg.codec)
        _write_video(folder / "duo_left.avi", clip.ir, cfg.fps, cfg.codec)
        sensors = {
            "depth": SensorWindow("sk_depth", *clip.window),
            "color": SensorWindow("sk_color", *clip.window),
            "duo_left": SensorWindow("duo_left", *clip.ir_window),
        }
        split = "test" if subject >= first_test else "train"
        lines[split].append(format_line(f"./{rel}", label - 1, sensors))
        boxes[f"./{rel}"] = list(clip.box)
        hard[f"./{rel}"] = clip.rgb_hard
        frame_boxes[rel] = clip.frame_boxes
    for split, name in (("train", TRAIN_LIST), ("test", TEST_LIST)):
        (out / name).write_text("".join(line + "\n" for line in lines[split]), encoding="utf-8")
    (out / BOXES_FILE).write_text(json.dumps(boxes, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    (out / FRAME_BOXES_FILE).write_text(
        json.dumps(frame_boxes, sort_keys=True, separators=(",", ":")) + "\n", encoding="utf-8"
    )
    if cfg.rgb_hard_p > 0:
        sidecar = {
            "format": HARD_FORMAT,
            "p": cfg.rgb_hard_p,
            "strength": cfg.rgb_hard_strength,
            "seed": cfg.seed,
            "clips": dict(sorted(hard.items())),
        }
        (out / HARD_FILE).write_text(json.dumps(sidecar, indent=1) + "\n", encoding="utf-8")
    info = asdict(cfg) | {"class_names": {c: CLASS_NAMES[c - 1] for c in sorted(cfg.classes)}}
    (out / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return {
        "train": len(lines["train"]),
        "test": len(lines["test"]),
        "hard": sum(hard.values()),
        "seconds": time.perf_counter() - started,
    }


def load_hard_clips(root: str | Path) -> dict[str, bool] | None:
    """The RGB-hard marks of a synthetic dataset (``{list path: hard}``) from
    ``root/rgb_hard.json``, or ``None`` where there is no such file. For analysis only."""
    path = Path(root) / HARD_FILE if Path(root).is_dir() else Path(root)
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != HARD_FORMAT or not isinstance(data.get("clips"), dict):
        raise ValueError(f"{path}: not an RGB-hard sidecar of format {HARD_FORMAT!r}")
    return {str(k): bool(v) for k, v in data["clips"].items()}
