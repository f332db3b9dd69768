"""The generator's RGB-hard clips: the sidecar matches the rendering, depth is untouched,
the proportion is p, everything is deterministic, and p = 0 changes nothing."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from examples.data import SyntheticConfig, generate
from examples.data.__main__ import main as data_main
from examples.data.synthetic import HARD_FILE, INFO_FILE, is_rgb_hard, load_hard_clips, render_clip

from .conftest import TINY

HARD = replace(TINY, rgb_hard_p=0.5, seed=11)


def _stack(frames) -> np.ndarray:
    return np.stack(frames).astype(np.float64)


@pytest.fixture(scope="module")
def hard_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard")
    summary = generate(root, HARD, progress=False)
    return root, summary


def test_sidecar_matches_the_rendering(hard_root):
    root, summary = hard_root
    table = load_hard_clips(root)
    assert len(table) == summary["train"] + summary["test"] == 12
    assert sum(table.values()) == summary["hard"]
    assert 0 < summary["hard"] < 12  # this seed has both kinds (else the test below checks nothing)
    for path, hard in table.items():
        cls, subject_rep = path.split("/")[2:4]
        label, subject, rep = int(cls[6:]), int(subject_rep[7:].split("_r")[0]), int(subject_rep.split("_r")[1])
        assert is_rgb_hard(HARD, label, subject, rep) == hard
        drawn = render_clip(HARD, label, subject, rep)
        assert drawn.rgb_hard == hard
        other = render_clip(HARD, label, subject, rep, rgb_hard=not hard)
        hard_clip, easy_clip = (drawn, other) if hard else (other, drawn)
        # depth and IR untouched by the hard effects, and the windows too
        for a, b in ((hard_clip.depth, easy_clip.depth), (hard_clip.ir, easy_clip.ir)):
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
        assert (hard_clip.window, hard_clip.box) == (easy_clip.window, easy_clip.box)
        color_h, color_e = _stack(hard_clip.color), _stack(easy_clip.color)
        assert np.abs(color_h - color_e).mean() > 3  # measurably different RGB
        # the lighting dip: some frame of the window is much darker than its easy render
        lo, hi = hard_clip.window
        ratio = color_h[lo:hi].mean(axis=(1, 2, 3)) / color_e[lo:hi].mean(axis=(1, 2, 3))
        assert ratio.min() < 0.8
        # the hand (bright in the untouched depth) is closer in color to its surroundings
        depth = _stack(hard_clip.depth)[..., 0]
        hand = depth > 110
        ring = np.zeros_like(hand)
        for i in range(len(hand)):  # pixels near the hand but not on it
            ys, xs = np.nonzero(hand[i])
            if len(xs):
                y0, y1, x0, x1 = max(ys.min() - 4, 0), ys.max() + 5, max(xs.min() - 4, 0), xs.max() + 5
                ring[i, y0:y1, x0:x1] = True
        ring &= ~hand
        # (frames scaled to a common brightness, against the easy render's surroundings,
        # where no distractor is: the camouflage itself, not the dip or the distractor)
        norm_h = color_h / color_h.mean(axis=(1, 2, 3), keepdims=True)
        norm_e = color_e / color_e.mean(axis=(1, 2, 3), keepdims=True)
        surroundings = norm_e[ring].mean(0)
        assert (
            np.abs(norm_h[hand].mean(0) - surroundings).sum() < 0.8 * np.abs(norm_e[hand].mean(0) - surroundings).sum()
        )


def test_hard_clips_have_a_skin_toned_distractor_near_the_hand():
    cfg = replace(HARD, rgb_difficulty=0.0)  # no other distractor, no flicker: the difference is the hard effects'
    hard, easy = render_clip(cfg, 1, 1, 0, rgb_hard=True), render_clip(cfg, 1, 1, 0, rgb_hard=False)
    h, e = _stack(hard.color), _stack(easy.color)
    gain = h.mean(axis=(1, 2, 3), keepdims=True) / e.mean(axis=(1, 2, 3), keepdims=True)
    lit = gain.ravel() > 0.9  # frames outside the lighting dip (in the dip everything is dim)
    assert lit.sum() >= 5
    changed = np.abs(h - e * gain).max(axis=3) > 25  # beyond the lighting change
    hand = _stack(hard.depth)[..., 0] > 110
    off_hand = (changed & ~hand)[lit]
    assert off_hand.sum(axis=(1, 2)).min() >= 20  # in every lit frame something hand-sized beside the hand
    for frame, hand_mask in zip(off_hand, hand[lit]):
        ys, xs = np.nonzero(frame)
        hy, hx = np.nonzero(hand_mask)
        assert np.hypot(ys.mean() - hy.mean(), xs.mean() - hx.mean()) < 0.5 * cfg.height  # near the hand
    # skin-toned: its color is within the skin tones' range (red > green > blue)
    pixels = h[lit][off_hand]
    assert (pixels[:, 2] > pixels[:, 1]).mean() > 0.8 and (pixels[:, 1] > pixels[:, 0]).mean() > 0.8  # BGR


def test_proportion_is_near_p_and_marks_are_deterministic():
    for p in (0.2, 0.7):
        cfg = replace(HARD, rgb_hard_p=p)
        marks = [
            is_rgb_hard(cfg, label, subject, rep)
            for label in range(1, 26)
            for subject in range(1, 21)
            for rep in range(4)
        ]
        assert abs(np.mean(marks) - p) < 4 * np.sqrt(p * (1 - p) / len(marks))  # 2000 draws: within 4 sd
        assert marks == [
            is_rgb_hard(cfg, label, subject, rep)
            for label in range(1, 26)
            for subject in range(1, 21)
            for rep in range(4)
        ]
        other_seed = [
            is_rgb_hard(replace(cfg, seed=cfg.seed + 1), label, subject, rep)
            for label in range(1, 26)
            for subject in range(1, 21)
            for rep in range(4)
        ]
        assert marks != other_seed
    assert not any(is_rgb_hard(replace(HARD, rgb_hard_p=0.0), 1, s, 0) for s in range(1, 50))


def test_same_seed_same_sidecar_and_p0_renders_as_before(tmp_path, hard_root):
    root, _ = hard_root
    generate(tmp_path / "again", HARD, progress=False)
    assert (tmp_path / "again" / HARD_FILE).read_bytes() == (root / HARD_FILE).read_bytes()
    sidecar = json.loads((root / HARD_FILE).read_text())
    assert sidecar["p"] == 0.5 and sidecar["seed"] == HARD.seed and sidecar["format"] == "mtut-rgb-hard/1"
    # p = 0: no sidecar, and every clip is the same as a hard-less render (the old generator)
    generate(tmp_path / "p0", TINY, progress=False)
    assert not (tmp_path / "p0" / HARD_FILE).exists() and load_hard_clips(tmp_path / "p0") is None
    clip = render_clip(TINY, 11, 2, 1)
    forced = render_clip(TINY, 11, 2, 1, rgb_hard=False)
    assert not clip.rgb_hard and all(np.array_equal(a, b) for a, b in zip(clip.color, forced.color))
    info = json.loads((tmp_path / "p0" / INFO_FILE).read_text())
    assert info["rgb_hard_p"] == 0.0


def test_options_are_validated_and_on_the_command_line(tmp_path, capsys):
    with pytest.raises(ValueError, match="rgb_hard_p"):
        SyntheticConfig(rgb_hard_p=1.5)
    with pytest.raises(ValueError, match="rgb_hard_strength"):
        SyntheticConfig(rgb_hard_strength=-0.1)
    assert (
        data_main(
            [
                "make-synthetic",
                "--out",
                str(tmp_path / "d"),
                "--classes",
                "1,2",
                "--clips-per-class",
                "3",
                "--subjects",
                "3",
                "--test-subjects",
                "1",
                "--frames",
                "6",
                "--size",
                "48x32",
                "--rgb-hard-p",
                "0.5",
                "--hand-scale",
                "1.5",
                "--seed",
                "5",
                "--quiet",
            ]
        )
        == 0
    )
    assert "RGB-hard" in capsys.readouterr().out
    assert json.loads((tmp_path / "d" / INFO_FILE).read_text())["hand_scale"] == 1.5
    assert len(load_hard_clips(tmp_path / "d")) == 6
    (tmp_path / "bad.json").write_text('{"clips": {}}')
    with pytest.raises(ValueError, match="not an RGB-hard sidecar"):
        load_hard_clips(tmp_path / "bad.json")
