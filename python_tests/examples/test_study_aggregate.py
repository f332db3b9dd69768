"""The aggregate over paired runs, on a fixed toy input whose answers are worked out by hand."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.study.aggregate import aggregate
from examples.study.stats import bootstrap_ci
from examples.training.evaluation import EvalResult, save_logits

N_EASY, N_HARD = 6, 4
PATHS = [f"./Video_data/class_01/subject1_r{i}" for i in range(N_EASY + N_HARD)]  # the last 4 are hard
LABELS = torch.tensor([i % 3 for i in range(N_EASY + N_HARD)])
# per seed: correct easy clips and correct hard clips, (ssa_off, ssa_on); the first k of each kind are right
TOY = {0: ((5, 1), (5, 2)), 1: ((6, 2), (6, 2)), 2: ((4, 0), (3, 2)), 3: ((5, 3), (5, 4)), 4: ((6, 1), (5, 1))}
GAINS = [0.1, 0.0, 0.1, 0.1, -0.1]  # (7-6)/10, (8-8)/10, (5-4)/10, (9-8)/10, (6-7)/10
HARD_GAINS = [0.25, 0.0, 0.5, 0.25, 0.0]
EASY_GAINS = [0.0, 0.0, -1 / 6, 0.0, -1 / 6]


def _write_eval(folder: Path, easy: int, hard: int, sqdist: float, epoch: int = 5, paths: list[str] = PATHS) -> None:
    correct = torch.tensor([i < easy for i in range(N_EASY)] + [i < hard for i in range(N_HARD)])
    pred = torch.where(correct, LABELS, (LABELS + 1) % 25)
    rgb = torch.nn.functional.one_hot(pred, 25).float() * 5
    depth = torch.nn.functional.one_hot(LABELS, 25).float() * 5  # depth always right
    S = torch.zeros(len(paths), 2, 2)
    S[:, 0, 1] = S[:, 1, 0] = sqdist
    result = EvalResult(
        "test",
        ("rgb", "depth"),
        {"rgb": rgb, "depth": depth, "fused": (rgb + depth) / 2},
        LABELS,
        list(paths),
        "softmax",
        {"Mixed_4f": S},
        {"Mixed_4f": torch.full((len(paths),), 4, dtype=torch.long)},
    )
    save_logits(result, folder / "evals" / f"epoch{epoch:03d}_test.npz", epoch)


@pytest.fixture
def toy(tmp_path):
    root = tmp_path / "study"
    for seed, (off, on) in TOY.items():
        _write_eval(root / f"seed{seed}" / "ssa_off", *off, sqdist=4.0)  # distance sqrt(4) / 4 = 0.5
        _write_eval(root / f"seed{seed}" / "ssa_on", *on, sqdist=1.0)  # 0.25
        # an older evaluation that must not be picked (the last epoch is)
        _write_eval(root / f"seed{seed}" / "ssa_on", 0, 0, sqdist=9.0, epoch=3)
    _write_eval(root / "seed5" / "ssa_off", 6, 4, sqdist=4.0)  # no ssa_on: an incomplete pair
    sidecar = tmp_path / "rgb_hard.json"
    sidecar.write_text(
        json.dumps({"format": "mtut-rgb-hard/1", "p": 0.4, "clips": {p: i >= N_EASY for i, p in enumerate(PATHS)}})
    )
    return root, sidecar


def test_paired_table_and_statistics_on_a_toy_input(toy, tmp_path):
    root, sidecar = toy
    out = tmp_path / "agg"
    stats = aggregate([root], out, hard_clips=sidecar, resamples=4000, bootstrap_seed=2)
    assert stats["seeds"] == [0, 1, 2, 3, 4] and stats["incomplete_seeds"] == {5: ["ssa_on"]}
    assert stats["arms"] == ["ssa_on"] and stats["modality"] == "rgb"
    rows = {r["seed"]: r for r in stats["rows"]}
    assert [rows[s]["gain"] for s in range(5)] == pytest.approx(GAINS)
    assert [rows[s]["hard_gain"] for s in range(5)] == pytest.approx(HARD_GAINS)
    assert [rows[s]["easy_gain"] for s in range(5)] == pytest.approx(EASY_GAINS)
    assert (rows[2]["fixed"], rows[2]["broken"]) == (2, 1) and (rows[4]["fixed"], rows[4]["broken"]) == (0, 1)
    assert rows[0]["base"] == pytest.approx(0.6) and rows[0]["arm_top1"] == pytest.approx(0.7)
    assert rows[0]["depth_arm"] == 1.0 and rows[0]["epoch"] == 5
    assert rows[0]["corr_dist_Mixed_4f_change"] == pytest.approx(-0.25)

    gain = stats["tests"]["ssa_on"]["gain"]
    # by hand: mean 0.04, deviations .06 -.04 .06 .06 -.14, sum of squares 0.032, sd sqrt(0.008),
    # se = sd / sqrt(5) = 0.04, t = 1; p = 1 - F_4(1), F_4(t) = 1/2 + (3/4) s (1 - s^2/3), s = t / sqrt(4 + t^2)
    s = 1 / math.sqrt(5)
    assert gain["mean"] == pytest.approx(0.04) and gain["se"] == pytest.approx(0.04) and gain["t"] == pytest.approx(1)
    assert gain["p_one_sided"] == pytest.approx(1 - (0.5 + 0.75 * s * (1 - s * s / 3)), rel=1e-9)
    assert (gain["bootstrap_low"], gain["bootstrap_high"]) == pytest.approx(bootstrap_ci(GAINS, 4000, 2))
    assert (gain["positive"], gain["zero"], gain["negative"]) == (3, 1, 1)
    assert stats["tests"]["ssa_on"]["hard_gain"]["mean"] == pytest.approx(0.2)
    assert stats["tests"]["ssa_on"]["easy_gain"]["mean"] == pytest.approx(-1 / 15)
    assert stats["tests"]["ssa_on"]["hard_minus_easy_gain"]["mean"] == pytest.approx(0.2 + 1 / 15)
    closer = stats["tests"]["ssa_on"]["corr_dist_Mixed_4f_change_decrease"]
    assert closer["mean"] == pytest.approx(0.25) and closer["p_one_sided"] == 0.0  # every seed 0.25 closer

    # clip level, by hand from TOY: clip 7 fixed in seeds 0 and 2, clips 6 and 9 in seeds 2
    # and 3; clip 3 broken in seed 2, clip 5 in seed 4. Clip means over the 5 seeds:
    # -0.2, -0.2, +0.2, +0.4, +0.2 and 0 on 5 clips; mean 0.04; population variance
    # (3 x 0.04 + 0.16 + 0.04) / 10 - 0.04^2 = 0.0304; clip-bootstrap SE sqrt(0.0304 / 10)
    clip = stats["clip_level"]["ssa_on"]
    assert clip["fixed_per_seed"] == [1, 0, 2, 1, 0] and clip["broken_per_seed"] == [0, 0, 1, 0, 1]
    assert [rows[s]["fixed"] for s in range(5)] == clip["fixed_per_seed"]
    assert (
        clip["clips_changed_in_some_seed"],
        clip["clips_fixed_in_some_seed"],
        clip["clips_broken_in_some_seed"],
    ) == (5, 3, 2)
    assert clip["mean"] == pytest.approx(0.04) and clip["clip_bootstrap"]["se"] == pytest.approx(math.sqrt(0.00304))
    assert clip["crossed_bootstrap"]["low"] < 0.04 < clip["crossed_bootstrap"]["high"]
    with open(out / "per_clip.csv") as f:
        per_clip = list(csv.DictReader(f))
    assert len(per_clip) == 5 * 2 * 10  # seeds x arms x clips
    seed2_on = [r for r in per_clip if r["seed"] == "2" and r["arm"] == "ssa_on"]
    assert [r["pred"] == r["label"] for r in seed2_on] == [True] * 3 + [False] * 3 + [True] * 2 + [False] * 2
    assert "crossed clip x seed bootstrap" in (out / "paired.md").read_text()

    with open(out / "paired.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(r["gain"]) for r in table] == pytest.approx(GAINS)
    md = (out / "paired.md").read_text()
    assert "| 2 | 0.400 | 0.500 | +0.100 | 2 | 1 | +0.500 | -0.167 |" in md
    assert "4000 resamples, seed 2" in md and "left out (incomplete)" in md
    assert json.loads((out / "stats.json").read_text())["tests"]["ssa_on"]["gain"]["t"] == pytest.approx(1)
    assert (out / "paired.png").stat().st_size > 0


def test_without_a_sidecar_there_is_no_hard_split(toy, tmp_path):
    root, _ = toy
    stats = aggregate([root], tmp_path / "agg", hard_clips=None, plot=False, resamples=100)
    assert not stats["hard_clips"] and set(stats["tests"]["ssa_on"]) == {"gain", "corr_dist_Mixed_4f_change_decrease"}
    assert not (tmp_path / "agg" / "paired.png").exists()


def test_pairs_must_be_the_same_clips_and_epoch(tmp_path):
    root = tmp_path / "study"
    _write_eval(root / "seed0" / "ssa_off", 3, 1, 1.0)
    _write_eval(root / "seed0" / "ssa_on", 3, 1, 1.0, paths=PATHS[::-1])
    with pytest.raises(ValueError, match="evaluated different clips"):
        aggregate([root], tmp_path / "a", hard_clips=None)
    _write_eval(root / "seed0" / "ssa_on", 3, 1, 1.0, epoch=6)
    with pytest.raises(ValueError, match="different epochs"):
        aggregate([root], tmp_path / "a", hard_clips=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no runs"):
        aggregate([tmp_path / "empty"], tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="no study folder"):
        aggregate([tmp_path / "missing"], tmp_path / "b")
    # the same seed under two roots would make the pairs ambiguous
    _write_eval(tmp_path / "other" / "seed0" / "ssa_off", 3, 1, 1.0)
    with pytest.raises(ValueError, match="in two folders"):
        aggregate([root, tmp_path / "other"], tmp_path / "a", hard_clips=None)


def test_a_control_arm_is_paired_with_the_same_baseline(toy, tmp_path):
    root, sidecar = toy
    for seed, (off, _) in TOY.items():
        _write_eval(root / f"seed{seed}" / "ssa_shuffled", *off, sqdist=4.0)  # a control that changes nothing
    stats = aggregate([root], tmp_path / "agg", hard_clips=sidecar, resamples=200, plot=False)
    assert stats["arms"] == ["ssa_on", "ssa_shuffled"]
    shuffled = stats["tests"]["ssa_shuffled"]["gain"]
    assert shuffled["mean"] == 0 and math.isnan(shuffled["p_one_sided"]) and shuffled["zero"] == 5
    assert np.allclose([r["gain"] for r in stats["rows"] if r["arm"] == "ssa_on"], GAINS)


def test_only_the_chosen_seeds(toy, tmp_path):
    root, sidecar = toy
    stats = aggregate([root], tmp_path / "agg", hard_clips=sidecar, resamples=200, plot=False, seeds=[0, 2, 5])
    assert stats["seeds"] == [0, 2] and stats["incomplete_seeds"] == {5: ["ssa_on"]}
    assert [r["gain"] for r in stats["rows"]] == pytest.approx([GAINS[0], GAINS[2]])
    with pytest.raises(ValueError, match="no runs"):
        aggregate([root], tmp_path / "none", hard_clips=None, plot=False, seeds=[9])


def test_per_seed_table_as_the_recheck_reads_it():
    """per_seed.csv: one row per seed, the baseline's top-1 once, each arm's beside it, rounded as
    printed; the regime at the branch from the first row that has it."""
    from examples.study.aggregate import per_seed_rows

    rows = [
        {
            "seed": 1,
            "arm": "ssa_on",
            "clips": 4,
            "base": 0.5,
            "arm_top1": 0.75,
            "at_branch_top1_rgb": 0.666,
            "corr_dist_Mixed_3c_base": 0.05,
            "corr_dist_Mixed_3c_arm": 0.04,
            "ssa_epochs_focal_hard_share": 0.914,
        },
        {"seed": 0, "arm": "ssa_on", "clips": 4, "base": 0.25, "arm_top1": 0.25},
        {"seed": 0, "arm": "ssa_shuffled", "clips": 4, "base": 0.25, "arm_top1": 0.0},
    ]
    table = per_seed_rows(rows)
    assert table == [
        {"seed": 0, "test_clips": 4, "top1_ssa_off": "0.250", "top1_ssa_on": "0.250", "top1_ssa_shuffled": "0.000"},
        {
            "seed": 1,
            "test_clips": 4,
            "rgb_train_top1_at_branch": "0.67",
            "top1_ssa_off": "0.500",
            "top1_ssa_on": "0.750",
            "corr_dist_ssa_off": "0.0500",
            "corr_dist_ssa_on": "0.0400",
            "focal_on_hard_ssa_on": "0.91",
        },
    ]
