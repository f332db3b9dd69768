"""Clip transforms on in-memory samples: temporal sampling, aligned crops, flips, boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from examples.data import (
    FLIP_LABEL_MAP,
    BadClipError,
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
from examples.data.transforms import RGB_MEAN, RGB_STD


def coords(t: int, h: int, w: int, channels: int = 3) -> np.ndarray:
    """uint8 [t, h, w, channels]: channel 0 = x, 1 = y, 2 = frame index."""
    f, y, x = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([x, y, f], axis=3)[..., :channels].astype(np.uint8)


def sample(t=20, h=60, w=80, label=0, fps=30.0, **extra) -> dict:
    s = {
        "rgb": coords(t, h, w),
        "depth": coords(t, h, w, 1),
        "label": label,
        "path": "./Video_data/class_01/s1_r0",
        "meta": {"fps": {"rgb": fps, "depth": fps}},
    }
    for m, arr in extra.items():
        s[m] = arr
        s["meta"]["fps"][m] = fps
    return s


def frame_ids(x: np.ndarray) -> list[int]:
    return x[:, 0, 0, 2].tolist()


class TestTemporalSample:
    def test_centered_for_test(self):
        s = TemporalSample(8, random=False)(sample(t=20))
        assert frame_ids(s["rgb"]) == list(range(6, 14))

    def test_random_offsets_stay_inside_and_vary(self):
        torch.manual_seed(0)
        starts = set()
        for _ in range(50):
            ids = frame_ids(TemporalSample(8, random=True)(sample(t=20))["rgb"])
            assert ids == list(range(ids[0], ids[0] + 8)) and 0 <= ids[0] <= 12
            starts.add(ids[0])
        assert len(starts) > 5

    def test_short_clip_is_padded_with_edge_frames(self):
        ids = frame_ids(TemporalSample(10, random=False)(sample(t=4))["rgb"])
        assert ids == [0, 0, 0, 0, 1, 2, 3, 3, 3, 3]
        torch.manual_seed(1)
        for _ in range(20):
            ids = frame_ids(TemporalSample(10, random=True)(sample(t=4))["rgb"])
            assert sorted(ids) == ids and set(ids) == {0, 1, 2, 3}

    def test_reference_fps_subsamples(self):
        ids = frame_ids(TemporalSample(5, fps=15, random=False)(sample(t=20))["rgb"])
        assert ids == [5, 7, 9, 11, 13]

    def test_whole_clip(self):
        assert frame_ids(TemporalSample(None, random=False)(sample(t=13))["rgb"]) == list(range(13))
        assert frame_ids(TemporalSample(None, fps=15, random=False)(sample(t=13))["rgb"]) == list(range(0, 13, 2))

    def test_one_draw_for_all_modalities(self):
        torch.manual_seed(2)
        for _ in range(20):
            s = TemporalSample(6, random=True)(sample(t=30, ir=coords(30, 60, 80)[..., 2:]))
            assert frame_ids(s["rgb"]) == s["ir"][:, 0, 0, 0].tolist()

    def test_modalities_of_different_length_share_the_relative_position(self):
        s = sample(t=10, ir=coords(20, 60, 80)[..., 2:])
        out = TemporalSample(4, random=False)(s)
        assert frame_ids(out["rgb"]) == [3, 4, 5, 6]
        assert out["ir"][:, 0, 0, 0].tolist() == [8, 9, 10, 11]

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="frames"):
            TemporalSample(0)
        with pytest.raises(ValueError, match="fps"):
            TemporalSample(4, fps=0)


class TestSpatial:
    def test_resize_short_edge_keeps_aspect_for_every_modality(self):
        s = Resize(30)(sample(h=60, w=80))
        assert s["rgb"].shape == (20, 30, 40, 3) and s["depth"].shape == (20, 30, 40, 1)
        s = Resize(120)(sample(h=60, w=80))
        assert s["rgb"].shape[1:3] == (120, 160) and s["rgb"].dtype == np.uint8

    def test_center_crop(self):
        s = CenterCrop(20)(sample(h=60, w=80))
        assert s["rgb"].shape == (20, 20, 20, 3)
        assert (s["rgb"][0, 0, 0, 0], s["rgb"][0, 0, 0, 1]) == (30, 20)

    def test_random_crop_is_the_same_box_in_every_modality(self):
        torch.manual_seed(3)
        boxes = set()
        for _ in range(40):
            s = RandomCrop((16, 24))(sample(h=60, w=80, flow=coords(20, 60, 80, 2).astype(np.float32)))
            x0, y0 = int(s["rgb"][0, 0, 0, 0]), int(s["rgb"][0, 0, 0, 1])
            assert s["rgb"].shape[1:3] == s["depth"].shape[1:3] == s["flow"].shape[1:3] == (16, 24)
            assert np.array_equal(s["depth"][..., 0], s["rgb"][..., 0])
            assert np.array_equal(s["flow"], s["rgb"][..., :2].astype(np.float32))
            assert np.array_equal(s["rgb"][0, :, :, 0], np.arange(x0, x0 + 24)[None].repeat(16, 0))
            assert np.array_equal(s["rgb"][0, :, :, 1], np.arange(y0, y0 + 16)[:, None].repeat(24, 1))
            boxes.add((x0, y0))
        assert len(boxes) > 10

    def test_crop_larger_than_frame(self):
        with pytest.raises(ValueError, match="larger than"):
            CenterCrop(100)(sample(h=60, w=80))

    def test_crop_needs_equal_sizes(self):
        s = sample(h=60, w=80)
        s["depth"] = s["depth"][:, :30]
        with pytest.raises(ValueError, match="differ in size"):
            RandomCrop(10)(s)


class TestFlip:
    def test_label_map(self):
        swaps = {i: j for i, j in enumerate(FLIP_LABEL_MAP) if i != j}
        assert swaps == {0: 1, 1: 0, 4: 5, 5: 4, 19: 20, 20: 19}
        assert all(FLIP_LABEL_MAP[FLIP_LABEL_MAP[i]] == i for i in range(25))

    @pytest.mark.parametrize("label, flipped", [(0, 1), (1, 0), (4, 5), (5, 4), (19, 20), (20, 19), (2, 2), (24, 24)])
    def test_hflip_swaps_mirrored_labels(self, label, flipped):
        assert hflip(sample(label=label))["label"] == flipped

    def test_hflip_mirrors_every_modality_and_negates_flow_dx(self):
        flow = np.stack(
            np.broadcast_arrays(np.float32(0.5), np.float32(-0.25), np.zeros((20, 60, 80), np.float32)), axis=3
        )[..., :2]
        s = hflip(sample(w=80, flow=flow.copy()))
        assert s["rgb"][0, 0, :, 0].tolist() == list(range(79, -1, -1))
        assert s["depth"][0, 0, :, 0].tolist() == list(range(79, -1, -1))
        assert np.all(s["flow"][..., 0] == -0.5) and np.all(s["flow"][..., 1] == -0.25)

    def test_transforms_do_not_write_into_their_input(self):
        s = sample(flow=np.ones((20, 60, 80, 2), np.float32))
        before = {m: s[m].copy() for m in ("rgb", "depth", "flow")}
        arrays = {m: s[m] for m in before}
        Compose([TemporalSample(None), hflip, Normalize()])(s)
        for m in before:
            assert np.array_equal(arrays[m], before[m])

    def test_random_flip_probability(self):
        torch.manual_seed(4)
        labels = [RandomHorizontalFlip(0.5)(sample(label=0))["label"] for _ in range(200)]
        assert 60 < labels.count(1) < 140
        assert all(RandomHorizontalFlip(0.0)(sample(label=0))["label"] == 0 for _ in range(20))


def test_normalize():
    s = Normalize()(sample(flow=np.full((20, 60, 80, 2), 0.5, np.float32)))
    assert all(s[m].dtype == np.float32 for m in ("rgb", "depth", "flow"))
    x = coords(20, 60, 80).astype(np.float32) / 255
    np.testing.assert_allclose(s["rgb"], (x - np.float32(RGB_MEAN)) / np.float32(RGB_STD), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s["depth"], x[..., :1], rtol=1e-6)
    assert s["depth"].min() >= 0 and s["depth"].max() <= 1
    assert np.all(s["flow"] == 0.5)


class TestHandBoxes:
    def test_load_and_crop(self, tmp_path):
        f = tmp_path / "boxes.json"
        f.write_text(json.dumps({"./Video_data/class_01/s1_r0": [0.25, 0.5, 0.5, 0.75]}))
        assert load_boxes(f) == {"Video_data/class_01/s1_r0": (0.25, 0.5, 0.5, 0.75)}
        s = HandBoxCrop(f, margin=0.0, square=False)(sample(h=60, w=80))
        assert s["rgb"].shape[1:3] == s["depth"].shape[1:3] == (15, 20)
        assert (s["rgb"][0, 0, 0, 0], s["rgb"][0, 0, 0, 1]) == (20, 30)

    def test_square_margin_and_clamping(self):
        crop = HandBoxCrop({"Video_data/class_01/s1_r0": [0.0, 0.0, 0.2, 0.1]}, margin=0.5)
        s = crop(sample(h=60, w=80))
        assert s["rgb"].shape[1] == s["rgb"].shape[2] == 32  # 16x6 px box + 50 % margin, squared
        assert (s["rgb"][0, 0, 0, 0], s["rgb"][0, 0, 0, 1]) == (0, 0)  # shifted back inside the frame

    def test_missing_clip_names_box_file(self, tmp_path):
        f = tmp_path / "boxes.json"
        f.write_text("{}")
        with pytest.raises(BadClipError, match=r"no hand box.*boxes\.json"):
            HandBoxCrop(f)(sample())

    @pytest.mark.parametrize("content", ['{"a": [0.5, 0, 0.4, 1]}', '{"a": [0, 0, 1]}', "[1, 2]", "not json"])
    def test_malformed_box_file(self, tmp_path, content):
        f = tmp_path / "boxes.json"
        f.write_text(content)
        with pytest.raises(ValueError, match="boxes.json"):
            load_boxes(f)


class TestBuildTransforms:
    def test_train_and_test_shapes(self):
        torch.manual_seed(5)
        for train in (True, False):
            s = build_transforms(train, frames=8, size=32)(sample(t=20, h=60, w=80))
            assert s["rgb"].shape == (8, 32, 32, 3) and s["depth"].shape == (8, 32, 32, 1)
            assert s["rgb"].dtype == s["depth"].dtype == np.float32

    def test_whole_clip_test_transform(self):
        s = build_transforms(False, frames=None, size=32)(sample(t=13))
        assert s["rgb"].shape == (13, 32, 32, 3)

    def test_with_boxes(self):
        t = build_transforms(False, frames=4, size=16, boxes={"Video_data/class_01/s1_r0": [0.5, 0.5, 1.0, 1.0]})
        assert isinstance(t.transforms[1], HandBoxCrop)
        assert t(sample())["rgb"].shape == (4, 16, 16, 3)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="fixed T"):
            build_transforms(True, frames=None)
        with pytest.raises(ValueError, match="resize"):
            build_transforms(True, size=112, resize=100)
