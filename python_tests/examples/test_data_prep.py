"""Real-data preparation: window extraction, the flow method (TV-L1 or Farneback), --skip-bad."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from examples.data import NVGestureDataset, build_transforms
from examples.data.__main__ import main as data_main
from examples.data.boxes import load_frame_boxes, merge_boxes
from examples.data.flow import flow_file, flow_matches, precompute_flow, tvl1_factory
from examples.data.listfile import TEST_LIST, TRAIN_LIST, read_list
from examples.data.windows import extract_windows
from examples.training.config import build_parser, config_from_args


def test_extracted_windows_decode_to_the_same_clips(tiny_synthetic, tmp_path):
    out = tmp_path / "windows"
    stats = extract_windows(tiny_synthetic, out, codec="FFV1", progress=False)
    assert stats.clips == 12 and stats.failed == 0
    for name in (TRAIN_LIST, TEST_LIST):
        old, _ = read_list(tiny_synthetic / name)
        new, _ = read_list(out / name)
        assert [r.path for r in new] == [r.path for r in old] and [r.label for r in new] == [r.label for r in old]
        for a, b in zip(old, new):
            assert {k: (0, w.length) for k, w in a.sensors.items()} == {
                k: (w.start, w.end) for k, w in b.sensors.items()
            }
    mods = ("rgb", "depth", "ir")
    for split in ("train", "test"):
        a, b = NVGestureDataset(tiny_synthetic, split, mods), NVGestureDataset(out, split, mods)
        for i in range(len(a)):
            x, y = a.load(i), b.load(i)
            for m in mods:
                np.testing.assert_array_equal(x[m], y[m])  # lossless: the same decoded frames
    # per-frame boxes follow the cut: merged over the new window = merged over the old one
    old_boxes, new_boxes = load_frame_boxes(tiny_synthetic / "bboxes.json"), load_frame_boxes(out / "bboxes.json")
    for r in read_list(tiny_synthetic / TRAIN_LIST)[0]:
        w = r.sensors["color"]
        np.testing.assert_array_equal(
            merge_boxes(old_boxes[r.key], list(range(w.start, w.end))),
            merge_boxes(new_boxes[r.key], list(range(w.length))),
        )
    # and the mmpose box pipeline gives the same test items on both
    t = build_transforms(False, frames=None, size=32, boxes=None, box_pipeline="margin")
    t_old = build_transforms(False, frames=None, size=32, boxes=tiny_synthetic / "bboxes.json", box_pipeline="mmpose")
    t_new = build_transforms(False, frames=None, size=32, boxes=out / "bboxes.json", box_pipeline="mmpose")
    assert torch.equal(
        NVGestureDataset(tiny_synthetic, "test", ("rgb",), t_old)[0]["rgb"],
        NVGestureDataset(out, "test", ("rgb",), t_new)[0]["rgb"],
    )
    assert t is not None
    assert (out / "hand_boxes.json").read_bytes() == (tiny_synthetic / "hand_boxes.json").read_bytes()


def test_extract_windows_command_line(tiny_synthetic, tmp_path, capsys):
    assert data_main(["extract-windows", "--root", str(tiny_synthetic), "--out", str(tmp_path / "w"), "--quiet"]) == 0
    assert "wrote 12 clips" in capsys.readouterr().out
    # the default MJPG re-encoding is lossy but close: the same clips, a grey level or so apart
    a, b = NVGestureDataset(tiny_synthetic, "test", ("rgb",)), NVGestureDataset(tmp_path / "w", "test", ("rgb",))
    for i in range(len(a)):
        x, y = a.load(i)["rgb"].astype(float), b.load(i)["rgb"].astype(float)
        assert x.shape == y.shape and np.abs(x - y).mean() < 3
    assert data_main(["extract-windows", "--root", str(tiny_synthetic), "--out", str(tiny_synthetic)]) == 1


def test_flow_method_is_recorded_and_tvl1_needs_contrib(coord_root, tmp_path):
    list_file = coord_root / TRAIN_LIST
    precompute_flow(coord_root, list_file, force=True, progress=False)
    record = read_list(list_file)[0][0]
    w = record.sensors["color"]
    path = flow_file(record.clip_dir(coord_root) / "sk_color.avi")
    with np.load(path) as z:
        assert str(z["method"]) == "farneback"
    assert flow_matches(path, w.start, w.end, method="farneback")
    assert not flow_matches(path, w.start, w.end, method="tvl1")  # a TV-L1 run recomputes it
    try:
        tvl1_factory()
    except RuntimeError as e:
        assert "opencv-contrib-python-headless" in str(e)
        with pytest.raises(RuntimeError, match="opencv-contrib"):
            precompute_flow(coord_root, list_file, method="tvl1", progress=False)
        assert data_main(["compute-flow", "--root", str(coord_root), "--method", "tvl1", "--quiet"]) == 1
    else:  # with opencv-contrib installed: TV-L1 runs
        stats = precompute_flow(coord_root, list_file, method="tvl1", progress=False)
        assert stats.computed == 2 and flow_matches(path, w.start, w.end, method="tvl1")


def test_skip_bad_on_the_training_command_line(tiny_synthetic, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for f in tiny_synthetic.iterdir():
        (root / f.name).symlink_to(f)
    lines = (tiny_synthetic / TRAIN_LIST).read_text().splitlines()
    (root / TRAIN_LIST).unlink()
    (root / TRAIN_LIST).write_text("\n".join([*lines, "path:./Video_data/class_01/missing label:1"]) + "\n")
    args = ["--data-root", str(root), "--out", str(tmp_path / "run"), "--preset", "cpu-small"]
    cfg = config_from_args(build_parser().parse_args([*args, "--skip-bad"]))
    assert cfg.skip_bad
    from examples.training.data import build_datasets

    with pytest.warns(Warning, match="skipping bad clip"):
        ds = build_datasets(cfg, splits=("train",))["train"]
    assert len(ds) == len(lines)
    cfg.skip_bad = False
    with warnings.catch_warnings(), pytest.raises(Exception, match="missing"):
        build_datasets(cfg, splits=("train",))


def test_list_files_in_mmposes_annotations_folder(tiny_synthetic, tmp_path):
    root = tmp_path / "mm"
    (root / "annotations").mkdir(parents=True)
    (root / "Video_data").symlink_to(tiny_synthetic / "Video_data")
    for name in (TRAIN_LIST, TEST_LIST, "bboxes.json"):
        (root / "annotations" / name).symlink_to(tiny_synthetic / name)
    assert len(NVGestureDataset(root, "train", ("rgb",))) == len(NVGestureDataset(tiny_synthetic, "train", ("rgb",)))
    cfg = config_from_args(
        build_parser().parse_args(["--data-root", str(root), "--preset", "mmpose-224-box", "--device", "cpu"])
    )
    assert cfg.hand_boxes == str(root / "annotations" / "bboxes.json")
