"""mmpose's hand-box pipeline: bboxes.json, merging over the sampled frames, the jittered
crop (ranges, the same box for every modality), colour jitter, and the presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from examples.data import NVGestureDataset, TemporalSample
from examples.data.boxes import BoxJitterCrop, ColorJitter, MergeFrameBoxes, load_frame_boxes, merge_boxes
from examples.data.listfile import TRAIN_LIST, read_list
from examples.data.transforms import build_transforms, load_boxes
from examples.data.video import probe_video
from examples.training import PRESETS, train
from examples.training.config import build_parser, config_from_args

from .helpers import tiny_config


def coords(t: int, h: int, w: int, channels: int = 3) -> np.ndarray:
    """uint8 [t, h, w, channels]: channel 0 = x, 1 = y, 2 = frame index."""
    f, y, x = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([x, y, f], axis=3)[..., :channels].astype(np.uint8)


def sample(t=20, h=60, w=80, start=0) -> dict:
    return {
        "rgb": coords(t, h, w),
        "depth": coords(t, h, w, 1),
        "label": 0,
        "path": "./Video_data/class_01/s1_r0",
        "meta": {"fps": {"rgb": 30.0, "depth": 30.0}, "start": {"rgb": start, "depth": start}},
    }


def test_merge_uses_exactly_the_sampled_frames():
    n, start = 40, 10
    table = np.full((n, 4), np.nan, np.float32)
    for i in range(n):  # frame i's box; frames 20..29 have none
        if not 20 <= i < 30:
            table[i] = [i, 2 * i % 50, i + 5, 2 * i % 50 + 3]
    merge = MergeFrameBoxes({"Video_data/class_01/s1_r0": table})
    s = TemporalSample(8, fps=15.0, random=False)(sample(t=20, start=start))  # every 2nd frame of the window
    frames = start + s["meta"]["indices"]["rgb"]
    out = merge(s)
    rows = table[[f for f in frames if not np.isnan(table[f]).any()]]
    expected = (rows[:, 0].min() / 80, rows[:, 1].min() / 60, rows[:, 2].max() / 80, rows[:, 3].max() / 60)
    assert out["box"] == pytest.approx(expected)
    assert len(set(frames.tolist())) == 8 and 20 in frames.tolist()  # a frame without a box was sampled
    # a clip whose sampled frames have no detection gets the whole frame (mmpose's rule)
    assert merge_boxes(table, list(range(20, 30))) is None
    empty = MergeFrameBoxes({"Video_data/class_01/s1_r0": np.full((40, 4), np.nan, np.float32)})
    assert empty(TemporalSample(8, random=False)(sample()))["box"] == (0.0, 0.0, 1.0, 1.0)


def test_jittered_crop_ranges_and_formula():
    crop = BoxJitterCrop(32, scale=(0.8, 1.25), ratio=(0.75, 1.33), shift=0.3)
    torch.manual_seed(0)
    draws = np.array([crop.draw() for _ in range(4000)])
    for col, (lo, hi) in enumerate([(0.8, 1.25), (0.75, 1.33), (-0.3, 0.3), (-0.3, 0.3)]):
        assert draws[:, col].min() >= lo and draws[:, col].max() <= hi
        assert draws[:, col].min() < lo + 0.02 * (hi - lo) and draws[:, col].max() > hi - 0.02 * (hi - lo)
    # the crop starts at the box's corner, side = scale x the longer side, height x aspect
    box = (0.25, 0.5, 0.5, 0.75)  # 80x60 frame: x 20..40, y 30..45 -> longer side 20 px
    assert BoxJitterCrop.crop_box(box, 60, 80, (1.0, 1.0, 0.0, 0.0)) == (20, 30, 40, 50)
    assert BoxJitterCrop.crop_box(box, 60, 80, (1.25, 0.8, 0.2, -0.1)) == (25, 27, 50, 47)
    assert BoxJitterCrop.crop_box(box, 60, 80, (1.25, 1.33, 0.3, 0.3)) == (27, 37, 52, 59)  # clipped to the frame


def test_every_modality_gets_the_same_box():
    torch.manual_seed(1)
    crop = BoxJitterCrop(24, scale=(0.8, 1.25), ratio=(0.75, 1.33), shift=0.3)
    for _ in range(20):
        s = sample(t=4, h=60, w=80)
        s["box"] = (0.2, 0.3, 0.55, 0.7)
        out = crop(s)
        assert out["rgb"].shape == (4, 24, 24, 3) and out["depth"].shape == (4, 24, 24, 1)
        np.testing.assert_array_equal(out["rgb"][..., 0], out["depth"][..., 0])  # both encode x: same crop


def test_color_jitter_changes_rgb_only_within_its_range():
    torch.manual_seed(2)
    s = sample(t=3)
    rgb, depth = s["rgb"].copy(), s["depth"].copy()
    out = ColorJitter(0.4, 0.3)(s)
    assert np.array_equal(out["depth"], depth) and not np.array_equal(out["rgb"], rgb)
    assert np.array_equal(ColorJitter(0.0, 0.0)({**sample(t=3)})["rgb"], rgb)  # factors 1: unchanged


def test_frame_boxes_of_the_synthetic_data(tiny_synthetic):
    table = load_frame_boxes(tiny_synthetic / "bboxes.json")
    per_clip = load_boxes(tiny_synthetic / "hand_boxes.json")
    records, _ = read_list(tiny_synthetic / TRAIN_LIST)
    assert set(table) == set(per_clip) and len(table) == 12
    for r in records:
        video = probe_video(r.clip_dir(tiny_synthetic) / "sk_color.avi")
        boxes = table[r.key]
        assert len(boxes) == video.frames
        w = r.sensors["color"]
        merged = merge_boxes(boxes, list(range(w.start, w.end)))
        # the union of the per-frame boxes over the valid window is the clip's box
        frac = (merged[0] / video.width, merged[1] / video.height, merged[2] / video.width, merged[3] / video.height)
        assert frac == pytest.approx(per_clip[r.key], abs=1e-4)


def test_bboxes_json_errors(tmp_path):
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"./Video_data/c/s1_r0": [0.1, 0.2, 0.3, 0.4]}))
    with pytest.raises(ValueError, match="hand_boxes.json format"):
        load_frame_boxes(bad)
    bad.write_text(json.dumps({"./Video_data/c/s1_r0": [[], [{"bbox": [5, 5, 1, 9]}]]}))
    with pytest.raises(ValueError, match="frame 1"):
        load_frame_boxes(bad)


def test_box_pipeline_through_the_dataset(tiny_synthetic):
    transform = build_transforms(
        True,
        frames=6,
        size=32,
        fps=15.0,
        boxes=tiny_synthetic / "bboxes.json",
        box_pipeline="mmpose",
        color_jitter=(0.4, 0.3),
    )
    ds = NVGestureDataset(tiny_synthetic, "train", ("rgb", "depth"), transform)
    item = ds[0]
    assert item["rgb"].shape == (3, 6, 32, 32) and item["depth"].shape == (1, 6, 32, 32)
    test = build_transforms(
        False, frames=None, size=32, fps=15.0, boxes=tiny_synthetic / "bboxes.json", box_pipeline="mmpose"
    )
    a = NVGestureDataset(tiny_synthetic, "test", ("rgb",), test)[0]["rgb"]
    b = NVGestureDataset(tiny_synthetic, "test", ("rgb",), test)[0]["rgb"]
    assert torch.equal(a, b)  # the test pipeline is deterministic


# Values transcribed from mmpose 0.x configs/hand/gesture_sview_rgbd_vid/mtut/nvgesture/*.py
MMPOSE = {
    "mmpose-224": dict(
        lr=1e-2,
        lr_steps=(30, 50),
        epochs=75,
        ssa_start=61,
        lambda_=5e-3,
        beta=2.0,
        frames=64,
        fps=30.0,
        size=224,
        resize=256,
        batch_size=6,
        momentum=0.9,
        weight_decay=0.0,
        box_pipeline="margin",
        hand_boxes=None,
        color_jitter=None,
        test_frames=None,
        eval_every=5,
    ),
    "mmpose-224-box": dict(
        lr=1e-2,
        lr_steps=(30, 50),
        epochs=75,
        ssa_start=61,
        lambda_=5e-3,
        beta=2.0,
        frames=64,
        fps=30.0,
        size=224,
        batch_size=6,
        momentum=0.9,
        weight_decay=0.0,
        box_pipeline="mmpose",
        box_scale=(0.8, 1.25),
        box_ratio=(0.75, 1.33),
        box_shift=0.3,
        color_jitter=None,
        test_frames=None,
        eval_every=5,
    ),
    "mmpose-112-box-fps15": dict(
        lr=1e-1,
        lr_steps=(30, 60, 90, 110),
        epochs=130,
        ssa_start=111,
        lambda_=1e-3,
        beta=2.0,
        frames=16,
        fps=15.0,
        size=112,
        batch_size=6,
        momentum=0.9,
        weight_decay=0.0,
        box_pipeline="mmpose",
        box_scale=(0.8, 1.25),
        box_ratio=(0.75, 1.33),
        box_shift=0.3,
        color_jitter=(0.4, 0.3),
        test_frames=None,
        eval_every=5,
    ),
}


@pytest.mark.parametrize("preset", sorted(MMPOSE))
def test_presets_are_mmposes_recipes(tiny_synthetic, tmp_path, preset):
    argv = ["--data-root", str(tiny_synthetic), "--out", str(tmp_path / "r"), "--preset", preset, "--device", "cpu"]
    cfg = config_from_args(build_parser().parse_args(argv))
    for key, value in MMPOSE[preset].items():
        assert getattr(cfg, key) == value, key
    assert cfg.modalities == ("rgb", "depth") and cfg.pair_cap == 10.0 and cfg.ssa_endpoints == ("Mixed_5c",)
    if preset != "mmpose-224":  # found the generated per-frame boxes
        assert cfg.hand_boxes == str(tiny_synthetic / "bboxes.json")
    # everything on the command line wins over the preset
    cfg = config_from_args(build_parser().parse_args([*argv, "--lr", "0.5", "--color-jitter", "0", "0"]))
    assert cfg.lr == 0.5 and cfg.color_jitter is None and PRESETS[preset]["lr"] != 0.5


def test_box_presets_need_frame_boxes(data_root, tmp_path, capsys):
    from examples.train_nvgesture import main

    (tmp_path / "nobox").mkdir()
    for f in data_root.iterdir():
        if f.name != "bboxes.json":
            (tmp_path / "nobox" / f.name).symlink_to(f)
    with pytest.raises(SystemExit):
        main(["--data-root", str(tmp_path / "nobox"), "--preset", "mmpose-224-box", "--device", "cpu"])
    assert "give mmpose's bboxes.json with --hand-boxes" in capsys.readouterr().err


def test_training_with_the_box_pipeline(data_root, tmp_path):
    final = train(
        tiny_config(
            data_root,
            tmp_path / "run",
            epochs=1,
            eval_every=0,
            box_pipeline="mmpose",
            hand_boxes=str(data_root / "bboxes.json"),
            color_jitter=(0.4, 0.3),
            resize=None,
        )
    )
    assert final["splits"]["test"]["clips"] == 3


def test_both_box_readers_name_the_file_of_bad_json(tmp_path):
    from examples.data.boxes import load_frame_boxes
    from examples.data.transforms import load_boxes

    broken, listed = tmp_path / "broken.json", tmp_path / "list.json"
    broken.write_text("{not json")
    listed.write_text("[1, 2]")
    for reader in (load_frame_boxes, load_boxes):
        with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
            reader(broken)
        with pytest.raises(ValueError, match=r"list\.json: expected a JSON object mapping clip path -> "):
            reader(listed)
