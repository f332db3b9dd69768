"""NVGestureDataset on coordinate-encoding videos: windows, shapes, aligned crops, bad data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from examples.data import (
    BadClipError,
    BadClipWarning,
    Compose,
    ListFormatError,
    NVGestureDataset,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    TemporalSample,
    UnknownModalityError,
    build_transforms,
)
from examples.data.flow import flow_file, save_flow
from examples.data.listfile import TRAIN_LIST

from .conftest import COLOR_FRAMES, COLOR_WINDOW, FRAME_STEP, IR_WINDOW, coord_color, coord_line, write_avi

ALL = ("rgb", "depth", "ir", "flow")


def as255(x: torch.Tensor) -> np.ndarray:
    return np.rint(x.numpy() * 255).astype(int)


def test_item_without_transform_is_the_window(coord_root):
    ds = NVGestureDataset(coord_root, "train", ALL)
    assert len(ds) == 2 and ds.labels == [0, 4] and ds.num_skipped == 0
    item = ds[0]
    assert set(item) == {*ALL, "label", "path"}
    n, n_ir = COLOR_WINDOW[1] - COLOR_WINDOW[0], IR_WINDOW[1] - IR_WINDOW[0]
    assert item["rgb"].shape == (3, n, 64, 96) and item["depth"].shape == (1, n, 64, 96)
    assert item["ir"].shape == (1, n_ir, 64, 96) and item["flow"].shape == (2, n, 64, 96)
    assert all(item[m].dtype == torch.float32 for m in ALL)
    assert item["label"] == 0 and isinstance(item["label"], int)
    assert item["path"] == "./Video_data/class_01/subject1_r0"
    # Channels in RGB order (R = x, G = y, B = frame index) and the window's frames.
    rgb = as255(item["rgb"])
    assert rgb[0, 0, 0, :].tolist() == list(range(96)) and rgb[1, 0, :, 0].tolist() == list(range(64))
    assert rgb[2, :, 0, 0].tolist() == [FRAME_STEP * i for i in range(*COLOR_WINDOW)]
    assert as255(item["ir"])[0, :, 0, 0].tolist() == [FRAME_STEP * i for i in range(*IR_WINDOW)]
    assert as255(item["depth"])[0, 0, 0, :].tolist() == list(range(96))
    # Flow is q / 127.5 - 1 with the fixture's q = (x, y).
    np.testing.assert_allclose(item["flow"][0, 0, 0, :].numpy(), np.arange(96) / 127.5 - 1, atol=1e-6)


@pytest.mark.parametrize("modalities", [("rgb",), ("depth",), ("flow", "rgb"), ("ir", "depth", "rgb")])
def test_exactly_the_requested_modalities(coord_root, modalities):
    item = NVGestureDataset(coord_root, modalities=modalities, transform=build_transforms(True, frames=4, size=32))[1]
    assert set(item) == {*modalities, "label", "path"}
    channels = {"rgb": 3, "depth": 1, "ir": 1, "flow": 2}
    for m in modalities:
        assert item[m].shape == (channels[m], 4, 32, 32) and item[m].dtype == torch.float32


def test_crops_flips_and_time_are_aligned_across_modalities(coord_root):
    ds = NVGestureDataset(
        coord_root,
        modalities=ALL,
        transform=Compose([TemporalSample(5, random=True), Resize(64), RandomCrop((24, 32)), RandomHorizontalFlip()]),
    )
    torch.manual_seed(0)
    seen_x0, flips = set(), 0
    for _ in range(12):
        item = ds[0]
        rgb, depth, ir = as255(item["rgb"]), as255(item["depth"]), as255(item["ir"])
        assert np.array_equal(depth[0], rgb[0])  # the same crop (and flip) in depth and RGB
        flow_x = (item["flow"][0].numpy() + 1) * 127.5
        flipped = item["label"] == 1
        flips += flipped
        # Flow: same box, and a flip negates dx (then (v + 1) * 127.5 = 255 - x).
        np.testing.assert_allclose(255 - flow_x if flipped else flow_x, rgb[0], atol=0.51)
        # Time: IR frame = color frame + (IR start - color start) in every sample.
        shift = IR_WINDOW[0] - COLOR_WINDOW[0]
        assert (ir[0, :, 0, 0] - rgb[2, :, 0, 0]).tolist() == [shift * FRAME_STEP] * 5
        row = rgb[0, 0, 0, :]
        assert np.all(np.diff(row) == (-1 if flipped else 1))
        seen_x0.add(int(row.min()))
    assert len(seen_x0) > 3 and 0 < flips < 12


def test_dataloader_with_workers(coord_root):
    ds = NVGestureDataset(coord_root, modalities=("rgb", "depth"), transform=build_transforms(True, frames=4, size=32))
    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=2)))
    assert batch["rgb"].shape == (2, 3, 4, 32, 32) and batch["depth"].shape == (2, 1, 4, 32, 32)
    assert batch["label"].tolist() in ([0, 4], [1, 4], [0, 5], [1, 5])
    assert len(batch["path"]) == 2


def test_list_file_argument_and_split_validation(coord_root):
    (coord_root / "custom.lst").write_text((coord_root / TRAIN_LIST).read_text().splitlines()[1] + "\n")
    assert NVGestureDataset(coord_root, list_file="custom.lst").labels == [4]
    with pytest.raises(ValueError, match="split"):
        NVGestureDataset(coord_root, split="val")
    with pytest.raises(FileNotFoundError, match="nvgesture_test"):
        NVGestureDataset(coord_root, split="test")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        NVGestureDataset(coord_root / "nope")


def test_unknown_modality(coord_root):
    with pytest.raises(UnknownModalityError, match="'thermal'.*known: rgb, depth, ir, flow"):
        NVGestureDataset(coord_root, modalities=("rgb", "thermal"))
    with pytest.raises(ValueError, match="without repeats"):
        NVGestureDataset(coord_root, modalities=("rgb", "rgb"))


# ----------------------------------------------------------------------------- bad data

CLIP0 = "Video_data/class_01/subject1_r0"
LIST_RE = r"nvgesture_train_correct_cvpr2016_v2\.lst:1: clip \./Video_data/class_01/subject1_r0: "


def _break(root, how: str):
    clip = root / CLIP0
    if how == "missing":
        (clip / "sk_depth.avi").unlink()
        return "depth file is missing", "sk_depth.avi"
    if how == "corrupt":
        (clip / "sk_depth.avi").write_bytes(b"RIFF not really a video" * 50)
        return "cannot open video", "sk_depth.avi"
    if how == "window":
        lines = (root / TRAIN_LIST).read_text().splitlines()
        lines[0] = lines[0].replace("depth:sk_depth:2:12", "depth:sk_depth:2:15")
        (root / TRAIN_LIST).write_text("\n".join(lines) + "\n")
        return "window 2:15 is outside the video's 14 frames", "sk_depth.avi"
    if how == "no_sensor":
        lines = (root / TRAIN_LIST).read_text().splitlines()
        lines[0] = lines[0].replace("depth:sk_depth:2:12 ", "")
        (root / TRAIN_LIST).write_text("\n".join(lines) + "\n")
        return "list line has no 'depth' field, needed for modality 'depth'", None
    if how == "no_flow":
        flow_file(clip / "sk_color.avi").unlink()
        return "flow file is missing.*compute-flow", "sk_color_flow.npz"
    if how == "stale_flow":
        save_flow(
            flow_file(clip / "sk_color.avi"), np.zeros((3, 64, 96, 2), np.uint8), start=0, end=3, bound=20.0, fps=30.0
        )
        return "flow file is unreadable or not for window 2:12", "sk_color_flow.npz"
    raise AssertionError(how)


BAD = ["missing", "corrupt", "window", "no_sensor", "no_flow", "stale_flow"]


@pytest.mark.parametrize("how", BAD)
def test_bad_clip_raises_naming_list_line_and_file(coord_root, how):
    reason, file = _break(coord_root, how)
    with pytest.raises(BadClipError, match=LIST_RE + reason) as e:
        NVGestureDataset(coord_root, modalities=("rgb", "depth", "flow"))
    assert e.value.line_no == 1 and e.value.clip == "./" + CLIP0
    assert (e.value.file is None) if file is None else e.value.file.endswith(file)


@pytest.mark.parametrize("how", BAD)
def test_bad_clip_skipped_with_warning_and_count(coord_root, how):
    _break(coord_root, how)
    with pytest.warns(BadClipWarning, match="subject1_r0"):
        ds = NVGestureDataset(coord_root, modalities=("rgb", "depth", "flow"), skip_bad=True)
    assert len(ds) == 1 and ds.num_skipped == 1 and ds.labels == [4]
    assert ds[0]["label"] == 4


@pytest.mark.parametrize("how", ["corrupt", "window"])
def test_bad_clip_found_at_load_time_when_not_checked(coord_root, how):
    reason, _ = _break(coord_root, how)
    ds = NVGestureDataset(coord_root, modalities=("rgb", "depth"), check_videos=False)
    assert len(ds) == 2
    with pytest.raises(BadClipError, match=LIST_RE + reason):
        ds[0]
    assert ds[1]["label"] == 4


def test_truncated_video_is_an_error_then_skipped(coord_root):
    # A header promising more frames than decode: cut the file after its header and a few frames.
    color = coord_root / CLIP0 / "sk_color.avi"
    write_avi(color, coord_color(), codec="MJPG")
    data = color.read_bytes()
    color.write_bytes(data[: len(data) * 3 // 5])
    ds = NVGestureDataset(coord_root, modalities=("rgb",))  # the header still says 14 frames
    with pytest.raises(BadClipError, match=LIST_RE + "video ends at frame .*header says 14"):
        ds[0]
    skipping = NVGestureDataset(coord_root, modalities=("rgb",), skip_bad=True)
    with pytest.warns(BadClipWarning, match="video ends at frame"):
        item = skipping[0]
    assert item["label"] == 4 and skipping.num_skipped == 1


def test_malformed_list_line(coord_root):
    with open(coord_root / TRAIN_LIST, "a") as f:
        f.write("path:./Video_data/class_03/subject3_r0 color:sk_color:1 label:3\n")
    with pytest.raises(ListFormatError, match=r"v2\.lst:3: sensor field 'color' is not color:file:start:end"):
        NVGestureDataset(coord_root)
    with pytest.warns(BadClipWarning, match=r"v2\.lst:3:"):
        ds = NVGestureDataset(coord_root, skip_bad=True)
    assert len(ds) == 2 and ds.num_skipped == 1


def test_every_clip_bad_with_skip_bad(coord_root):
    for clip in ("class_01/subject1_r0", "class_05/subject2_r0"):
        (coord_root / "Video_data" / clip / "sk_color.avi").write_bytes(b"junk")
    ds = NVGestureDataset(coord_root, modalities=("rgb",), skip_bad=True, check_videos=False)
    with pytest.warns(BadClipWarning), pytest.raises(RuntimeError, match="every clip"):
        ds[0]


def test_index_out_of_range(coord_root):
    ds = NVGestureDataset(coord_root, modalities=("rgb",))
    assert ds[-1]["label"] == 4
    with pytest.raises(IndexError):
        ds[2]


def test_video_frame_count_matches_fixture(coord_root):
    # Guards the fixture the bad-data tests rely on.
    from examples.data.video import probe_video

    assert probe_video(coord_root / CLIP0 / "sk_depth.avi").frames == COLOR_FRAMES
    assert coord_line(CLIP0, 0).startswith("path:./Video_data/class_01/subject1_r0 depth:sk_depth:2:12")
