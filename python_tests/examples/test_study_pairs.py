"""Branching a run into paired arms: the shared prefix, the same data order and random
streams after the branch, the SSA-off arm equal to an un-branched SSA-off run, resume,
and what the runs record for the study (focal-weight statistics, correlation distances)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mtut_ops
from examples.study.__main__ import main as study_main
from examples.study.pairs import arm_config, run_pair
from examples.training import train
from examples.training.checkpoint import load_checkpoint
from examples.training.data import build_datasets
from examples.training.engine import Trainer, build_model, focal_statistics
from examples.training.evaluation import load_logits, load_train_ce

from .helpers import TINY_MODEL_ARGS, tiny_config

EPOCHS, SSA_START, BRANCH = 4, 3, 2
ARMS = ("ssa_off", "ssa_on", "ssa_shuffled", "ssa_constant")
TIMING = ("train/seconds", "train/clips_per_s", "train/max_memory_mib")


def _base(data_root: Path, out: Path, **kw):
    return tiny_config(data_root, out, epochs=EPOCHS, ssa_start=SSA_START, val_subjects=1, eval_every=1, **kw)


def _train_columns(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def study(hard_data_root, tmp_path_factory):
    """An un-branched SSA-off run, and one seed of a study with four arms; every batch
    each run trained on is recorded (its clips and a hash of its inputs)."""
    root = tmp_path_factory.mktemp("study")
    batches: dict[str, list] = {}
    original = Trainer._inputs

    def spy(self, batch):
        digest = hashlib.sha256(batch["rgb"].numpy().tobytes() + batch["depth"].numpy().tobytes()).hexdigest()
        batches.setdefault(Path(self.cfg.out).name, []).append((tuple(batch["path"]), digest))
        return original(self, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_inputs", spy)
        train(_base(hard_data_root, root / "straight", ssa=False))
        base = _base(hard_data_root, root / "unused")
        summary = run_pair(base, seed=0, out=root / "study", arms=ARMS, log=lambda *a: None)
        # SSA on with lambda 0 must be the SSA-off arm exactly: same batches, same random streams
        zero = dataclasses.replace(arm_config(base, "ssa_on", 0, root / "lambda0"), lambda_=0.0)
        Trainer(zero, branch_from=root / "study" / "seed0" / "trunk" / "last.pt").run()
    return {"root": root, "study": root / "study" / "seed0", "batches": batches, "summary": summary, "base": base}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_ssa_off_arm_equals_an_unbranched_ssa_off_run(study):
    straight = load_checkpoint(study["root"] / "straight" / "last.pt")
    off = load_checkpoint(study["study"] / "ssa_off" / "last.pt")
    assert straight["epoch"] == off["epoch"] == EPOCHS
    for k, v in straight["model"].items():
        assert torch.equal(v, off["model"][k]), k
    for a, b in zip(straight["optimizer"]["state"].values(), off["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert _train_columns(straight["history"]) == _train_columns(off["history"])
    # the final evaluations are the same clips with the same logits
    a = load_logits(study["root"] / "straight" / "evals" / f"epoch{EPOCHS:03d}_test.npz")
    b = load_logits(study["study"] / "ssa_off" / "evals" / f"epoch{EPOCHS:03d}_test.npz")
    np.testing.assert_array_equal(a["logits"]["rgb"], b["logits"]["rgb"])


def test_every_arm_shares_the_prefix_and_the_data_order(study):
    trunk = load_checkpoint(study["study"] / "trunk" / "last.pt")
    straight = load_checkpoint(study["root"] / "straight" / "last.pt")
    assert trunk["epoch"] == BRANCH and not (study["study"] / "trunk" / "final_eval.json").exists()
    # the trunk is the un-branched run's first BRANCH epochs (same losses, same validation)
    assert _train_columns(trunk["history"]) == _train_columns(straight["history"][:BRANCH])
    steps = len(study["batches"]["trunk"]) // BRANCH
    assert study["batches"]["trunk"] == study["batches"]["straight"][: BRANCH * steps]
    after = study["batches"]["straight"][BRANCH * steps :]
    for arm in (*ARMS, "lambda0"):
        assert study["batches"][arm] == after, arm  # same clips, same augmented inputs, same order
        ckpt = load_checkpoint((study["root"] / "lambda0" if arm == "lambda0" else study["study"] / arm) / "last.pt")
        assert ckpt["history"][:BRANCH] == trunk["history"]
        assert ckpt["branched_from"]["epoch"] == BRANCH
        assert ckpt["config"]["seed"] == 0
        # the prefix's evaluations are in every arm's folder
        assert (Path(ckpt["config"]["out"]) / "evals" / "epoch001_val.npz").is_file()
    # lambda 0 is the SSA-off arm bit for bit: nothing else differs after the branch
    off, zero = _weights(study["study"] / "ssa_off" / "last.pt"), _weights(study["root"] / "lambda0" / "last.pt")
    assert all(torch.equal(v, zero[k]) for k, v in off.items())
    # SSA on changes the RGB network from the branch on, and each control changes it differently
    finals = {a: _weights(study["study"] / a / "last.pt")["nets.rgb.conv3d_1a_7x7.conv3d.weight"] for a in ARMS}
    for i, a in enumerate(ARMS):
        for b in ARMS[i + 1 :]:
            assert not torch.equal(finals[a], finals[b]), (a, b)
    rows = json.loads((study["study"] / "ssa_on" / "metrics.json").read_text())
    assert [r["train/ssa"] > 0 for r in rows] == [False, False, True, True]


def test_branching_refuses_what_would_break_the_prefix(study, hard_data_root, tmp_path):
    trunk = study["study"] / "trunk" / "last.pt"
    base = study["base"]
    with pytest.raises(ValueError, match="lr: checkpoint"):
        Trainer(dataclasses.replace(arm_config(base, "ssa_on", 0, tmp_path / "a"), lr=0.1), branch_from=trunk)
    with pytest.raises(ValueError, match="seed: checkpoint"):
        Trainer(arm_config(base, "ssa_on", 1, tmp_path / "b"), branch_from=trunk)
    with pytest.raises(ValueError, match="--ssa-start must be > 2"):
        Trainer(dataclasses.replace(arm_config(base, "ssa_on", 0, tmp_path / "c"), ssa_start=2), branch_from=trunk)
    # a run that had SSA on before the branch point is no trunk
    ssa_run = study["study"] / "ssa_on" / "last.pt"
    with pytest.raises(ValueError, match="had SSA on from epoch 3"):
        Trainer(
            dataclasses.replace(arm_config(base, "ssa_on", 0, tmp_path / "d"), epochs=5, ssa_start=5),
            branch_from=ssa_run,
        )
    with pytest.raises(ValueError, match="must come before SSA starts"):
        run_pair(base, 0, tmp_path / "e", branch_epoch=SSA_START)


def test_an_interrupted_pair_resumes_to_the_same_result(study, hard_data_root, tmp_path, monkeypatch):
    class Interrupt(Exception):
        pass

    original = Trainer._save
    stops = {("trunk", 1), ("ssa_on", 3)}  # after the trunk's epoch 1, and the arm's first epoch

    def save_then_stop(self, epoch, best=False):
        original(self, epoch, best)
        if (Path(self.cfg.out).name, epoch) in stops:
            stops.discard((Path(self.cfg.out).name, epoch))
            raise Interrupt

    monkeypatch.setattr(Trainer, "_save", save_then_stop)
    out = tmp_path / "study"
    for _ in range(2):
        with pytest.raises(Interrupt):
            run_pair(study["base"], 0, out, arms=("ssa_on",), log=lambda *a: None)
    assert load_checkpoint(out / "seed0" / "ssa_on" / "last.pt")["epoch"] == SSA_START
    summary = run_pair(study["base"], 0, out, arms=("ssa_on",), log=lambda *a: None)
    assert not stops and summary["branch_epoch"] == BRANCH
    ours, theirs = _weights(out / "seed0" / "ssa_on" / "last.pt"), _weights(study["study"] / "ssa_on" / "last.pt")
    assert all(torch.equal(v, theirs[k]) for k, v in ours.items())
    # a finished pair is reused, not retrained
    called = []
    monkeypatch.setattr(Trainer, "run", lambda self, **kw: called.append(self.cfg.out))
    run_pair(study["base"], 0, out, arms=("ssa_on",), log=lambda *a: None)
    assert called == []


def test_focal_weight_statistics_are_logged_per_epoch(study, hard_data_root):
    hard = json.loads((hard_data_root / "rgb_hard.json").read_text())["clips"]
    rows = json.loads((study["study"] / "ssa_on" / "metrics.json").read_text())
    for row in rows:
        record = load_train_ce(study["study"] / "ssa_on" / "evals" / f"epoch{row['epoch']:03d}_train_ce.npz")
        assert record["modalities"] == ["rgb", "depth"] and len(record["paths"]) == 6  # 9 clips - 3 validation
        expected = focal_statistics(record["ce"], record["paths"], ("rgb", "depth"), 2.0, hard)
        assert {k: row[k] for k in expected} == pytest.approx(expected)
        assert 0 <= row["train/focal/rgb/hard_share"] <= 1 and row["train/hard_fraction"] == pytest.approx(
            np.mean([hard[p] for p in record["paths"]])
        )
        assert row["train/ce/rgb"] == pytest.approx(record["ce"][:, 0].mean(), rel=1e-6)


def test_focal_statistics_on_a_toy_epoch():
    # rgb CE, depth CE per clip; beta 1: rgb's weight exp(max(0, l_rgb - l_depth)) - 1
    ce = np.array([[2.0, 0.0], [0.5, 0.5], [0.0, 1.0], [1.0, 0.0]] + [[0.1, 0.1]] * 6)
    paths = [f"c{i}" for i in range(10)]
    hard = {p: i in (0, 2) for i, p in enumerate(paths)}
    out = focal_statistics(ce, paths, ("rgb", "depth"), 1.0, hard)
    w_rgb = np.array([np.e**2 - 1, 0, 0, np.e - 1] + [0] * 6)
    w_depth = np.array([0, 0, np.e - 1, 0] + [0] * 6)
    assert out["train/focal/rgb/mean"] == pytest.approx(w_rgb.mean())
    assert out["train/focal/depth/mean"] == pytest.approx(w_depth.mean())
    assert out["train/focal/rgb/top10_share"] == pytest.approx((np.e**2 - 1) / w_rgb.sum())  # 1 clip of 10
    assert out["train/focal/rgb/hard_share"] == pytest.approx((np.e**2 - 1) / w_rgb.sum())
    assert out["train/focal/depth/hard_share"] == pytest.approx(1.0)
    assert out["train/hard_fraction"] == pytest.approx(0.2)
    assert focal_statistics(ce, paths, ("rgb", "depth"), 0.0)["train/focal/rgb/top10_share"] is None


def test_evaluations_record_the_correlation_distance(study, hard_data_root):
    run = study["study"] / "ssa_on"
    ckpt = load_checkpoint(run / "last.pt")
    data = load_logits(run / "evals" / f"epoch{EPOCHS:03d}_test.npz")
    S, d = data["sqdist"]["Mixed_5c"], data["positions"]["Mixed_5c"]
    assert S.shape == (3, 2, 2) and (S[:, 0, 1] > 0).all() and np.allclose(S[:, 0, 1], S[:, 1, 0])
    final = json.loads((run / "final_eval.json").read_text())
    assert final["splits"]["test"]["corr_dist"]["Mixed_5c"] == pytest.approx(np.mean(np.sqrt(S[:, 0, 1]) / d))
    rows = json.loads((run / "metrics.json").read_text())
    assert rows[-1]["test/corr_dist/Mixed_5c"] == final["splits"]["test"]["corr_dist"]["Mixed_5c"]
    assert all("val/corr_dist/Mixed_5c" in r for r in rows)
    # recomputed independently: the model's features of the first test clip, K built explicitly
    cfg = arm_config(study["base"], "ssa_on", 0, run)
    model = build_model(dataclasses.replace(cfg, init_from=None), verbose=False)
    model.load_state_dict(ckpt["model"])
    model.eval()
    item = build_datasets(cfg, ("test",))["test"][0]
    with torch.no_grad():
        out = model({m: item[m][None] for m in ("rgb", "depth")})
    feats = [out.features[m]["Mixed_5c"].double() for m in ("rgb", "depth")]
    K = [mtut_ops.correlation(f, backend="reference") for f in feats]
    expected = float(((K[0] - K[1]) ** 2).sum())
    assert data["paths"][0] == item["path"]
    assert S[0, 0, 1] == pytest.approx(expected, rel=1e-4)
    assert d[0] == np.prod(feats[0].shape[2:])


def test_pair_and_aggregate_on_the_command_line_never_touch_test(hard_data_root, tmp_path, capsys, monkeypatch):
    built = []
    original = build_datasets

    def spy(cfg, splits=("train", "val", "test")):
        built.append(tuple(splits))
        return original(cfg, splits)

    monkeypatch.setattr("examples.training.engine.D.build_datasets", spy)
    out = tmp_path / "val_study"
    args = [
        "pair",
        "--data-root",
        str(hard_data_root),
        "--out",
        str(out),
        "--preset",
        "cpu-small",
        "--epochs",
        "2",
        "--ssa-start",
        "2",
        "--seeds",
        "0",
        "1",
        "--val-subjects",
        "1",
        "--no-eval-test",
        "--eval-every",
        "1",
        *TINY_MODEL_ARGS,
        "--fps",
        "0",
        "--batch-size",
        "4",
        "--no-progress",
        "--no-plots",
        "--no-tensorboard",
    ]
    assert study_main(args) == 0
    assert built and all("test" not in s for s in built)
    for seed in (0, 1):
        assert sorted(p.name for p in (out / f"seed{seed}" / "ssa_on" / "evals").iterdir()) == [
            "epoch001_train_ce.npz",
            "epoch001_val.npz",
            "epoch002_train_ce.npz",
            "epoch002_val.npz",
        ]
    capsys.readouterr()
    assert study_main(["aggregate", str(out), "--split", "val", "--resamples", "500"]) == 0
    printed = capsys.readouterr().out
    assert "ssa_on vs ssa_off" in printed and "one-sided p" in printed
    stats = json.loads((out / "aggregate_val" / "stats.json").read_text())
    assert stats["seeds"] == [0, 1] and stats["hard_clips"] and stats["tests"]["ssa_on"]["gain"]["n"] == 2
    assert (out / "aggregate_val" / "paired.png").is_file()
    with pytest.raises(SystemExit):
        study_main(["aggregate", str(out), "--split", "test"])
    assert "no evaluation of the test split" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study_main([*args[:-3], "--seed", "3"])
