"""The evaluation protocol: best.pt by validation only, evaluate-only, per-clip logits, --init-from."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from examples.evaluate_nvgesture import evaluate_checkpoint
from examples.evaluate_nvgesture import main as evaluate_main
from examples.training import train
from examples.training.checkpoint import load_checkpoint
from examples.training.engine import Trainer
from examples.training.evaluation import load_logits, top1_from_logits

from .helpers import tiny_config


@pytest.fixture
def evaluated_splits(monkeypatch):
    """Records (epoch, split) of every evaluation the trainer makes."""
    calls: list[tuple[int, str]] = []
    original = Trainer.evaluate

    def spy(self, split, epoch):
        calls.append((epoch, split))
        return original(self, split, epoch)

    monkeypatch.setattr(Trainer, "evaluate", spy)
    return calls


def test_best_checkpoint_is_chosen_on_validation_never_on_test(data_root, tmp_path, evaluated_splits):
    cfg = tiny_config(data_root, tmp_path / "run", epochs=3, val_subjects=1, eval_every=1, lr=0.05)
    final = train(cfg)
    # the test split is evaluated once, after the last epoch; validation after every epoch
    assert evaluated_splits == [(1, "val"), (2, "val"), (3, "val"), (3, "test")]
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert not any(k.startswith("test/") for r in rows[:-1] for k in r)
    val = [r["val/top1/rgb"] for r in rows]
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    expected_epoch = 1 + int(np.argmax(val))  # first maximum
    assert best["best"] == {"metric": "val/top1/rgb", "value": max(val), "epoch": expected_epoch}
    assert best["epoch"] == expected_epoch and final["best"]["epoch"] == expected_epoch
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 3 and last["best"] == best["best"]
    # one logits file per evaluation, in list order, matching the logged top-1
    for epoch, split in evaluated_splits:
        data = load_logits(tmp_path / "run" / "evals" / f"epoch{epoch:03d}_{split}.npz")
        assert data["epoch"] == epoch and data["split"] == split and data["modalities"] == ["rgb", "depth"]
        logged = rows[epoch - 1]
        assert top1_from_logits(data) == {k: logged[f"{split}/top1/{k}"] for k in ("rgb", "depth", "fused")}
    test = load_logits(tmp_path / "run" / "evals" / "epoch003_test.npz")
    listed = [
        line.split()[0].removeprefix("path:")
        for line in (data_root / "nvgesture_test_correct_cvpr2016_v2.lst").read_text().splitlines()
    ]
    assert test["paths"] == listed and test["logits"]["rgb"].shape == (3, 25)


def test_without_validation_nothing_is_evaluated_before_the_end(data_root, tmp_path, evaluated_splits):
    train(tiny_config(data_root, tmp_path / "run", epochs=2, eval_every=1))
    assert evaluated_splits == [(2, "test")]
    assert not (tmp_path / "run" / "best.pt").exists()
    evaluated_splits.clear()
    train(tiny_config(data_root, tmp_path / "watch", epochs=2, eval_every=1, watch_test=True))
    assert evaluated_splits == [(1, "test"), (2, "test")]
    assert not (tmp_path / "watch" / "best.pt").exists()  # watching test never selects a checkpoint


def test_evaluate_only_reproduces_the_final_evaluation(data_root, tmp_path, capsys):
    final = train(tiny_config(data_root, tmp_path / "run", epochs=1, val_subjects=1))
    report = evaluate_checkpoint(tmp_path / "run" / "last.pt", "test", tmp_path / "ev", progress=False)
    assert report["top1"] == final["splits"]["test"]["top1"]
    assert report["confusion"] == final["splits"]["test"]["confusion"] and report["epoch"] == 1
    ours = load_logits(tmp_path / "ev" / "logits.npz")
    during = load_logits(tmp_path / "run" / "evals" / "epoch001_test.npz")
    for m in ("rgb", "depth"):
        np.testing.assert_array_equal(ours["logits"][m], during["logits"][m])
    assert ours["paths"] == during["paths"] and np.array_equal(ours["labels"], during["labels"])
    assert (tmp_path / "ev" / "confusion.png").is_file() and (tmp_path / "ev" / "eval.json").is_file()
    # the command line, on the validation split
    assert (
        evaluate_main(
            [
                "--checkpoint",
                str(tmp_path / "run" / "last.pt"),
                "--split",
                "val",
                "--out",
                str(tmp_path / "ev_val"),
                "--no-progress",
                "--no-plots",
            ]
        )
        == 0
    )
    assert "val top-1 (3 clips, epoch 1)" in capsys.readouterr().out
    # a run without a validation split has none to evaluate
    train(tiny_config(data_root, tmp_path / "noval", epochs=1, eval_every=0, modalities=("rgb",)))
    with pytest.raises(SystemExit):
        evaluate_main(["--checkpoint", str(tmp_path / "noval" / "last.pt"), "--split", "val"])
    assert "no validation split" in capsys.readouterr().err


def test_init_from_copies_weights_only(data_root, tmp_path):
    train(tiny_config(data_root, tmp_path / "a", epochs=1, eval_every=0))
    source = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    # an RGB-only run started from the RGB network of an RGB+depth run: epoch 1, fresh optimizer
    cfg = tiny_config(
        data_root,
        tmp_path / "b",
        epochs=1,
        eval_every=0,
        modalities=("rgb",),
        lr=1e-12,
        init_from=str(tmp_path / "a" / "last.pt"),
    )
    trainer = Trainer(cfg)
    assert trainer.start_epoch == 1 and not trainer.optimizer.state
    for k, v in trainer.model.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, source[k]), k
    bad = dataclasses.replace(cfg, out=str(tmp_path / "c"), width=0.25)
    with pytest.raises(ValueError, match="of another shape"):
        Trainer(bad)
