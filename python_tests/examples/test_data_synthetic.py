"""The synthetic NVGesture-format generator: layout, read-back, determinism, content."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from examples.data import NVGestureDataset, SensorWindow, SyntheticConfig, build_transforms, generate, read_list
from examples.data.listfile import TEST_LIST, TRAIN_LIST
from examples.data.synthetic import BOXES_FILE, INFO_FILE, gesture, render_clip
from examples.data.video import probe_video, read_window

from .conftest import TINY


def test_layout_and_lists(tiny_synthetic):
    train, _ = read_list(tiny_synthetic / TRAIN_LIST)
    test, _ = read_list(tiny_synthetic / TEST_LIST)
    # 2 subjects, subject 2 held out: 2 train + 2 test clips per class.
    assert len(train) == len(test) == 6
    assert {r.label for r in train} == {r.label for r in test} == {0, 1, 10}
    assert {r.key.split("/")[2].split("_")[0] for r in train} == {"subject1"}
    assert {r.key.split("/")[2].split("_")[0] for r in test} == {"subject2"}
    ir_differs = 0
    for r in train + test:
        assert r.key.startswith(f"Video_data/class_{r.label + 1:02d}/subject")
        assert list(r.sensors) == ["depth", "color", "duo_left"]
        color = r.sensors["color"]
        assert color.file == "sk_color" and r.sensors["depth"] == SensorWindow("sk_depth", color.start, color.end)
        for w in r.sensors.values():
            info = probe_video(r.clip_dir(tiny_synthetic) / f"{w.file}.avi")
            assert 0 < w.start < w.end < info.frames  # rest frames on both sides of the gesture
            assert (info.width, info.height, info.fps) == (64, 48, 30.0)
        ir_differs += r.sensors["duo_left"].start != r.sensors["color"].start
    assert ir_differs > 0
    boxes = json.loads((tiny_synthetic / BOXES_FILE).read_text())
    assert set(boxes) == {r.path for r in train + test}
    assert all(0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1 for b in boxes.values())
    info = json.loads((tiny_synthetic / INFO_FILE).read_text())
    assert info["seed"] == TINY.seed and info["class_names"]["11"] == "open hand"


def test_read_back_through_the_dataset(tiny_synthetic):
    mods = ("rgb", "depth", "ir")
    ds = NVGestureDataset(tiny_synthetic, "train", mods, build_transforms(True, frames=6, size=32, resize=36))
    assert len(ds) == 6 and ds.num_skipped == 0
    for i in range(len(ds)):
        item = ds[i]
        assert [item[m].shape[0] for m in mods] == [3, 1, 1]
        assert all(item[m].shape[1:] == (6, 32, 32) for m in mods)
    boxed = NVGestureDataset(
        tiny_synthetic, "test", mods, build_transforms(False, frames=6, size=32, boxes=tiny_synthetic / BOXES_FILE)
    )
    assert boxed[0]["rgb"].shape == (3, 6, 32, 32)


def test_hand_is_inside_its_box_and_brighter_in_depth(tiny_synthetic):
    ds = NVGestureDataset(tiny_synthetic, "train", ("depth",))
    boxes = json.loads((tiny_synthetic / BOXES_FILE).read_text())
    for i in range(len(ds)):
        depth = ds.load(i)["depth"][..., 0]
        x0, y0, x1, y1 = boxes[ds.records[i].path]
        hand = depth > 110
        ys, xs = np.nonzero(hand.any(axis=0))
        assert xs.min() >= np.floor(x0 * 64) - 1 and xs.max() <= np.ceil(x1 * 64)
        assert ys.min() >= np.floor(y0 * 48) - 1 and ys.max() <= np.ceil(y1 * 48)


def test_same_seed_same_bytes_and_frames(tmp_path, tiny_synthetic):
    cfg = replace(TINY, classes=(1, 11))
    generate(tmp_path, cfg, progress=False)
    # The tiny_synthetic clips of classes 1 and 11 are the same: clips do not depend on the other classes.
    for name in (TRAIN_LIST, TEST_LIST):
        ours = (tmp_path / name).read_text().splitlines()
        theirs = [line for line in (tiny_synthetic / name).read_text().splitlines() if "class_02" not in line]
        assert ours == theirs
    for rel in ("Video_data/class_01/subject1_r0", "Video_data/class_11/subject2_r1"):
        for video in ("sk_color", "sk_depth", "duo_left"):
            a, b = tmp_path / rel / f"{video}.avi", tiny_synthetic / rel / f"{video}.avi"
            n = probe_video(a).frames
            assert np.array_equal(read_window(a, 0, n)[0], read_window(b, 0, n)[0])
    again = tmp_path / "again"
    generate(again, cfg, progress=False)
    for name in (TRAIN_LIST, TEST_LIST, BOXES_FILE, INFO_FILE):
        assert (again / name).read_bytes() == (tmp_path / name).read_bytes()


def test_other_seed_other_data():
    a = render_clip(TINY, 1, 1, 0)
    b = render_clip(replace(TINY, seed=TINY.seed + 1), 1, 1, 0)
    assert a.window != b.window or not np.array_equal(a.color[0], b.color[0])


def test_mirror_pairs_are_mirror_images():
    p = np.linspace(0, 1, 17)
    for a, b in ((1, 2), (5, 6), (20, 21)):
        ga, gb = gesture(a, p), gesture(b, p)
        np.testing.assert_allclose(gb["dx"], -ga["dx"])
        np.testing.assert_allclose(gb["theta"], -ga["theta"])
        for k in ("dy", "z", "ext"):
            np.testing.assert_allclose(gb[k], ga[k])
        assert np.ptp(ga["dx"]) > 0.05 or np.ptp(ga["theta"]) > 0.5  # they move


def test_classes_differ():
    p = np.linspace(0, 1, 33)
    trajectories = [np.concatenate([np.ravel(v) for v in gesture(c, p).values()]) for c in range(1, 26)]
    for i in range(25):
        for j in range(i):
            assert not np.allclose(trajectories[i], trajectories[j]), (i + 1, j + 1)


def test_every_class_renders():
    cfg = replace(TINY, width=32, height=32, frames=4)
    for label in range(1, 26):
        clip = render_clip(cfg, label, 1, 0)
        assert len(clip.color) == len(clip.depth) and clip.window[1] <= len(clip.color)
        assert clip.ir_window[1] <= len(clip.ir)


def test_depth_is_clean_rgb_is_not():
    clip = render_clip(TINY, 11, 1, 0)
    depth, color = np.stack(clip.depth).astype(float), np.stack(clip.color).astype(float)
    corner = (slice(None), slice(0, 6), slice(0, 6))  # wall, away from the person and the hand
    assert depth[corner].std(axis=0).max() == 0
    assert color[corner].std(axis=0).mean() > 1
    easy = render_clip(replace(TINY, rgb_difficulty=0.0), 11, 1, 0)
    hard = render_clip(replace(TINY, rgb_difficulty=1.0), 11, 1, 0)
    noise = [np.stack(c.color)[corner].astype(float).std(axis=0).mean() for c in (easy, hard)]
    assert noise[1] > 2 * noise[0]


def test_hand_scale_moves_the_camera_closer():
    # The hand is the only thing nearer than the torso in depth (> 100): its area grows with
    # the square of hand_scale (drawn outlines and frame borders make it a little less
    # than 4x at 2), the gesture's window and the default rendering are unchanged.
    cfg = replace(TINY, width=160, height=120)

    def hand_area(clip):
        return (np.stack(clip.depth)[..., 0] > 100).sum(axis=(1, 2)).mean()

    base, near = render_clip(cfg, 11, 1, 0), render_clip(replace(cfg, hand_scale=2.0), 11, 1, 0)
    assert near.window == base.window
    assert 3.0 < hand_area(near) / hand_area(base) < 4.5
    same = render_clip(replace(cfg, hand_scale=1.0), 11, 1, 0)
    assert all(np.array_equal(a, b) for a, b in zip(same.color, base.color))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(classes=(0,)), "classes"),
        (dict(classes=(1, 1)), "classes"),
        (dict(subjects=3, test_subjects=3), "test_subjects"),
        (dict(clips_per_class=0), "clips_per_class"),
        (dict(frames=2), "frames"),
        (dict(width=16), "frame size"),
        (dict(rgb_difficulty=1.5), "rgb_difficulty"),
        (dict(hand_scale=0.0), "hand_scale"),
        (dict(hand_scale=5.0), "hand_scale"),
        (dict(codec="MJPEG"), "FourCC"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        SyntheticConfig(**kw)


@pytest.mark.parametrize("clips, match", [(3, "leaves the test list empty"), (7, "clips_per_class >= 8")])
def test_settings_that_leave_the_test_list_empty_are_refused(tmp_path, clips, match):
    # issue 31: 3 clips of 10 subjects reach only subjects 1..3, none of the test subjects 8..10;
    # make-synthetic wrote "24 train / 0 test clips" without a word
    cfg = SyntheticConfig(clips_per_class=clips, subjects=10, test_subjects=3)
    with pytest.raises(ValueError, match=match):
        generate(tmp_path / "d", cfg, progress=False)
    assert not (tmp_path / "d").exists()
    SyntheticConfig(clips_per_class=8, subjects=10, test_subjects=3).check_splits()
