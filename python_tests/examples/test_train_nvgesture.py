"""Training runs on a tiny synthetic dataset: outputs, exact resume, CLI errors, DDP (gloo)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from examples.train_nvgesture import main
from examples.training import train
from examples.training.checkpoint import load_checkpoint
from examples.training.data import build_datasets, split_by_subject, subject_of

from .helpers import TINY_MODEL_ARGS, tiny_config

REPO = Path(__file__).resolve().parents[2]


def test_run_writes_every_output(data_root, tmp_path):
    final = train(tiny_config(data_root, tmp_path / "run", plots=True))
    run = tmp_path / "run"
    for name in (
        "last.pt",
        "metrics.json",
        "metrics.csv",
        "final_eval.json",
        "loss.png",
        "accuracy.png",
        "confusion_test.png",
    ):
        assert (run / name).is_file(), name
    test = final["splits"]["test"]
    assert set(test["top1"]) == {"rgb", "depth", "fused"} and test["clips"] == 3
    assert all(sum(map(sum, m)) == 3 for m in test["confusion"].values())
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["train/ssa"] == 0 and rows[1]["train/ssa"] > 0  # SSA from epoch 2
    assert rows[0]["lr"] == pytest.approx(1e-2) and rows[1]["lr"] == pytest.approx(1e-3)
    assert json.loads((run / "final_eval.json").read_text())["splits"]["test"]["top1"] == test["top1"]
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("epoch,lr,train/loss")


def test_resume_continues_the_same_trajectory(data_root, tmp_path):
    straight = tiny_config(data_root, tmp_path / "straight")
    train(straight)
    train(dataclasses.replace(straight, out=str(tmp_path / "split"), epochs=1))
    train(dataclasses.replace(straight, out=str(tmp_path / "split")), resume=True)
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])

    # the training columns agree; the split run also evaluated test after its (then last) epoch 1
    def train_columns(rows):
        timing = ("train/seconds", "train/clips_per_s", "train/max_memory_mib")
        return [{k: v for k, v in r.items() if k not in timing and not k.startswith("test/")} for r in rows]

    assert train_columns(a["history"]) == train_columns(b["history"])
    assert "test/top1/rgb" in b["history"][0] and "test/top1/rgb" not in a["history"][0]


def test_resume_refuses_other_settings(data_root, tmp_path, capsys):
    cfg = tiny_config(data_root, tmp_path / "run", epochs=1, eval_every=0)
    train(cfg)
    with pytest.raises(ValueError, match="already holds a run"):
        train(cfg)
    with pytest.raises(ValueError, match="lr: checkpoint 0.01 vs now 0.1"):
        train(dataclasses.replace(cfg, lr=0.1, epochs=2), resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(dataclasses.replace(cfg, out=str(tmp_path / "other")), resume=True)
    with pytest.raises(SystemExit) as exit_info:
        main(["--data-root", str(data_root), "--out", str(tmp_path / "run"), "--preset", "cpu-small"])
    assert exit_info.value.code == 2
    assert "pass --resume" in capsys.readouterr().err


def test_validation_split_is_carved_by_subject(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path / "run", val_subjects=1)
    ds = build_datasets(cfg)
    assert len(ds["train"]) == 6 and len(ds["val"]) == 3 and len(ds["test"]) == 3
    base = ds["train"].dataset
    assert {subject_of(base.records[i].path) for i in ds["val"].indices} == {3}
    assert {subject_of(base.records[i].path) for i in ds["train"].indices} == {1, 2}
    with pytest.raises(ValueError, match="--val-subjects must be in 1..2"):
        split_by_subject(base, 3)


def test_cached_clips_equal_decoded_clips(data_root, tmp_path):
    cached = build_datasets(tiny_config(data_root, tmp_path, cache=True))["test"]
    plain = build_datasets(tiny_config(data_root, tmp_path, cache=False))["test"]
    for i in range(len(plain)):
        a, b = cached[i], plain[i]
        assert a["label"] == b["label"] and a["path"] == b["path"]
        for m in ("rgb", "depth"):
            torch.testing.assert_close(a[m], b[m], rtol=0, atol=0)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--data-root", "/nonexistent/nvgesture"], "is not a folder"),
        (["--modalities", "rgb", "thermal"], "unknown modality 'thermal'"),
        (["--amp", "fp16", "--device", "cpu"], "--amp fp16 needs a GPU"),
        (["--resize", "40", "--size", "48"], "--resize (40) must be >= --size (48)"),
        (["--ssa-endpoints", "Mixed_9z"], "--ssa-endpoints"),
        (["--pretrained", "/nonexistent/model_rgb.pth"], "is not a file"),
    ],
)
def test_cli_errors_name_the_argument(data_root, tmp_path, capsys, argv, message):
    args = [
        "--data-root",
        str(data_root),
        "--out",
        str(tmp_path / "run"),
        "--preset",
        "cpu-small",
        "--no-progress",
        *argv,
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.deep
def test_ddp_two_processes_gloo(data_root, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "examples.train_nvgesture",
        "--data-root",
        str(data_root),
        "--out",
        str(out),
        "--preset",
        "cpu-small",
        "--modalities",
        "rgb",
        "depth",
        "--epochs",
        "1",
        "--ssa-start",
        "1",
        "--batch-size",
        "2",
        *TINY_MODEL_ARGS,
        "--fps",
        "0",
        "--threads",
        "1",
        "--no-progress",
        "--no-plots",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "last.pt")
    assert len(ckpt["rng"]) == 2  # both processes' RNG states, for an exact resume
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    final = json.loads((out / "final_eval.json").read_text())
    assert final["splits"]["test"]["clips"] == 3  # shards of 2 + 1 clips gathered, none padded
    rows = json.loads((out / "metrics.json").read_text())
    assert rows[0]["train/ssa"] > 0
