"""Issue 31: what a run refuses, how it stops and what it keeps (bad data, divergence,
interruption), and the records it writes. Each test reproduces an observed failure."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from examples import evaluate_nvgesture, export_nvgesture, infer_nvgesture
from examples.data.errors import BadClipError, EmptySplitError, VideoError
from examples.data.listfile import TEST_LIST, TRAIN_LIST, parse_line
from examples.data.video import check_frames
from examples.deploy import check_video_modality
from examples.mtut_model import MTUTModel
from examples.train_nvgesture import main
from examples.training import Trainer, train
from examples.training.checkpoint import load_checkpoint
from examples.training.config import default_workers, schedule_warnings
from examples.training.engine import check_resumable
from examples.training.runlog import DivergenceError

from .helpers import TINY_MODEL_ARGS, tiny_config


def _copy(data_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    return root


def _truncate_first_clip(root: Path, list_name: str) -> str:
    """Cut the first listed clip's colour video short, before its window's end, with its
    header intact (it still promises every frame); returns the clip's path."""
    record = parse_line((root / list_name).read_text().splitlines()[0])
    video = root / record.key / "sk_color.avi"
    data = video.read_bytes()
    for percent in range(90, 10, -5):
        video.write_bytes(data[: len(data) * percent // 100])
        try:
            check_frames(video, record.sensors["color"].end)
        except VideoError as e:
            if "video ends at frame" in str(e):
                return record.path
    raise AssertionError("no cut keeps the header and loses the window's end")


# ---------------------------------------------------------------------- refusing what cannot be meant


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_empty_list_is_refused(data_root, tmp_path, split):
    # observed: an empty train list trained "loss 0.000" and exited 0; an empty test list printed "rgb nan"
    root = _copy(data_root, tmp_path)
    (root / (TRAIN_LIST if split == "train" else TEST_LIST)).write_text("")
    with pytest.raises(EmptySplitError, match=f"the {split} split has no clips: its list file .* lists no clip"):
        train(tiny_config(root, tmp_path / "run", epochs=1))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_skip_bad_that_leaves_nothing_is_refused(data_root, tmp_path, capsys):
    # observed: --skip-bad with Video_data/ missing skipped all 32 clips and exited 0
    root = _copy(data_root, tmp_path)
    shutil.rmtree(root / "Video_data")
    args = [
        "--data-root",
        str(root),
        "--out",
        str(tmp_path / "run"),
        "--preset",
        "cpu-small",
        "--no-progress",
        "--skip-bad",
        "--epochs",
        "1",
    ]
    with pytest.warns(UserWarning):
        assert main(args) == 1
    err = capsys.readouterr().err
    assert "the train split has no clips: --skip-bad passed over every one of its 9 entries" in err
    assert "Traceback" not in err


def test_ssa_after_the_last_epoch_and_late_lr_steps_are_named(data_root, tmp_path, capsys):
    # observed: the default preset's SSA start (61) with --epochs 3 trained two plain networks without a word
    cfg = tiny_config(data_root, tmp_path / "run", epochs=3, ssa_start=61, lr_steps=(30, 2), preset="full")
    warnings = schedule_warnings(cfg)
    assert len(warnings) == 2
    assert (
        "SSA never runs: --ssa-start 61 (the value of preset 'full') is after the last epoch (--epochs 3)"
        in warnings[0]
    )
    assert "--lr-steps 30 (as given)" in warnings[1]
    assert schedule_warnings(dataclasses.replace(cfg, ssa_start=3, lr_steps=(2,))) == []
    assert schedule_warnings(dataclasses.replace(cfg, ssa=False, lr_steps=(2,))) == []  # SSA off is said
    Trainer(cfg)
    assert "WARNING: SSA never runs" in capsys.readouterr().err
    assert "SSA never runs" in (tmp_path / "run" / "train.log").read_text()


# ---------------------------------------------------------------------- divergence


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data_root, tmp_path, monkeypatch):
    # observed: --lr 50 went 1.8e9 then nan, trained on, wrote a NaN last.pt and exited 0
    loss = MTUTModel.loss
    calls = {"n": 0}

    def diverging(self, *args, **kwargs):
        out = loss(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 3:  # epoch 1 has 3 steps (9 clips, batch 4); epoch 2's first step diverges
            out = dataclasses.replace(out, total=out.total * float("nan"))
        return out

    monkeypatch.setattr(MTUTModel, "loss", diverging)
    with pytest.raises(DivergenceError, match=r"loss is nan at epoch 2, step 1 .*last.pt keeps epoch 1"):
        train(tiny_config(data_root, tmp_path / "run", eval_every=0))
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


# ---------------------------------------------------------------------- no lost epochs


def test_a_truncated_clip_is_found_before_training(data_root, tmp_path):
    # observed: only headers were read at start-up; a truncated test video crashed epoch 2's evaluation
    root = _copy(data_root, tmp_path)
    clip = _truncate_first_clip(root, TEST_LIST)
    with pytest.raises(BadClipError, match=f"clip {clip}: video ends at frame"):
        Trainer(tiny_config(root, tmp_path / "run"))
    with pytest.warns(UserWarning, match="video ends at frame"):
        trainer = Trainer(tiny_config(root, tmp_path / "skip", skip_bad=True))
    assert len(trainer.datasets["test"]) == 2 and len(trainer.datasets_skipped) == 1


def test_the_checkpoint_is_written_before_evaluation(data_root, tmp_path, monkeypatch):
    # observed: a crash in epoch 2's evaluation left last.pt at epoch 1; every retry lost the epoch
    cfg = tiny_config(data_root, tmp_path / "run", epochs=2, eval_every=0)
    evaluate = Trainer.evaluate

    def failing(self, split, epoch):
        raise BadClipError("video ends at frame 7, its header says 24", clip="./x")

    monkeypatch.setattr(Trainer, "evaluate", failing)
    with pytest.raises(BadClipError):
        train(cfg)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["pending_eval"] == ["test"]
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    trained = []
    monkeypatch.setattr(Trainer, "train_epoch", lambda self, epoch: trained.append(epoch))
    final = train(cfg, resume=True)  # evaluates the saved epoch 2, trains nothing
    assert trained == [] and final["splits"]["test"]["clips"] == 3
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["pending_eval"] == [] and "test/top1/rgb" in ckpt["history"][-1]


def test_an_unwritable_out_fails_before_any_work(data_root, tmp_path):
    # observed: OSError for ro_out/evals after the first epoch
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="--out .*file/run: cannot write there"):
        Trainer(tiny_config(data_root, tmp_path / "file" / "run"))


# ---------------------------------------------------------------------- entry points


def test_interrupt_says_how_to_resume_and_the_folder_alone_resumes(data_root, tmp_path, monkeypatch, capsys):
    # observed: a KeyboardInterrupt traceback; --out X --resume needed the whole command again
    out = tmp_path / "run"
    args = [
        "--data-root",
        str(data_root),
        "--out",
        str(out),
        "--preset",
        "cpu-small",
        "--no-progress",
        "--epochs",
        "2",
        "--ssa-start",
        "2",
        "--lr-steps",
        "1",
        *TINY_MODEL_ARGS,
        "--fps",
        "0",
        "--batch-size",
        "4",
        "--no-plots",
        "--no-tensorboard",
        "--keep-every",
        "1",
    ]
    train_epoch = Trainer.train_epoch

    def interrupted(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return train_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert f"interrupted after epoch 1: {out}/last.pt holds it; resume with " in err
    assert f"--out {out} --resume" in err and "Traceback" not in err
    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    assert main(["--out", str(out), "--resume", "--no-progress"]) == 0
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["preset"] == "cpu-small"
    # the bookkeeping of the run: settings, environment, text log, kept epochs, file modes
    assert json.loads((out / "config.json").read_text())["lr_steps"] == [1]
    env = json.loads((out / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and "git_commit" in env
    log = (out / "train.log").read_text()
    assert "epoch 1 |" in log and "resumed" in log and "test top-5" in log
    assert load_checkpoint(out / "epoch001.pt")["epoch"] == 1 and (out / "epoch002.pt").is_file()
    umask = os.umask(0)
    os.umask(umask)
    for name in ("last.pt", "metrics.json", "final_eval.json", "config.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name
    final = json.loads((out / "final_eval.json").read_text())["splits"]["test"]
    assert set(final["top5"]) == {"rgb", "depth", "fused"} and all(0 <= v <= 1 for v in final["mean_class"].values())


@pytest.mark.parametrize(
    "setting,message",
    [
        ({"lr": "0.1"}, "'lr': expected a number, got '0.1' (str)"),
        ({"epochs": 2.5}, "'epochs': expected an integer, got 2.5"),
        ({"modalities": "rgb"}, "'modalities': expected a list of str, e.g. [\"rgb\", \"depth\"], got 'rgb'"),
    ],
)
def test_config_files_follow_the_command_lines_rules(data_root, tmp_path, capsys, setting, message):
    # observed: TypeError '>' not supported; --print-config passing epochs 2.5; "unknown modality 'r'"
    path = tmp_path / "c.json"
    path.write_text(json.dumps(setting))
    with pytest.raises(SystemExit) as exit_info:
        main(["--data-root", str(data_root), "--config", str(path), "--print-config"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_wrong_weight_files_get_a_checkpoint_error_with_the_fix(data_root, tmp_path, capsys):
    # observed: --pretrained hand_boxes.json gave torch's UnpicklingError; --pretrained last.pt a 44 KB key dump
    cfg = tiny_config(data_root, tmp_path / "run", epochs=1, eval_every=0, eval_test=False)
    train(cfg)
    base = ["--data-root", str(data_root), "--out", str(tmp_path / "x"), "--preset", "cpu-small", "--no-progress"]
    with pytest.raises(SystemExit):
        main([*base, "--pretrained", str(data_root / "hand_boxes.json")])
    err = capsys.readouterr().err
    assert "hand_boxes.json: not a torch checkpoint file" in err and "weights_only=False" not in err
    with pytest.raises(SystemExit):
        main([*base, "--width", "0.125", "--pretrained", str(tmp_path / "run" / "last.pt")])
    err = capsys.readouterr().err
    assert "a training checkpoint of this package" in err and "--init-from" in err and len(err) < 1000
    # infer with a training checkpoint, or a video of another modality
    with pytest.raises(SystemExit):
        infer_nvgesture.main(["--model", str(tmp_path / "run" / "last.pt"), "--video", "x.avi"])
    assert "is a training checkpoint, not an exported network" in capsys.readouterr().err
    with pytest.raises(
        ValueError,
        match="by its name a depth video, but the network classifies rgb "
        r"\(NVGesture's rgb video is sk_color.avi\)",
    ):
        check_video_modality("clips/x/sk_depth.avi", "rgb")
    check_video_modality("clips/x/sk_color.avi", "rgb")
    check_video_modality("my_clip.avi", "depth")  # a name that says nothing is not checked
    with pytest.raises(SystemExit):  # observed: --out x.onnx wrote a torch.export archive
        export_nvgesture.main(
            ["--checkpoint", str(tmp_path / "run" / "last.pt"), "--modality", "rgb", "--out", str(tmp_path / "x.onnx")]
        )
    assert "is written as .pt2" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()


def test_evaluate_skips_bad_clips_when_asked(data_root, tmp_path, capsys):
    # observed: evaluate_nvgesture.py had no --skip-bad
    root = _copy(data_root, tmp_path)
    train(tiny_config(root, tmp_path / "run", epochs=1, eval_every=0, eval_test=False))
    _truncate_first_clip(root, TEST_LIST)
    args = ["--checkpoint", str(tmp_path / "run" / "last.pt"), "--split", "test", "--no-progress", "--no-plots"]
    assert evaluate_nvgesture.main(args) == 1
    assert "video ends at frame" in capsys.readouterr().err
    with pytest.warns(UserWarning):
        assert evaluate_nvgesture.main([*args, "--skip-bad"]) == 0
    report = json.loads((tmp_path / "run" / "eval_last_test" / "eval.json").read_text())
    assert report["clips"] == 2 and len(report["skipped"]) == 1 and "top5" in report


def test_workers_default_leaves_a_core():
    # observed: --workers 4 on a 2-core machine (torch warns twice per run)
    assert 0 <= default_workers() <= max(0, len(os.sched_getaffinity(0)) - 1)


def test_skip_bad_may_be_switched_on_at_resume(tmp_path):
    # observed: --resume --skip-bad was refused (skip_bad: checkpoint False vs now True)
    cfg = tiny_config(tmp_path, tmp_path / "run")
    check_resumable(cfg.to_dict(), dataclasses.replace(cfg, skip_bad=True, keep_every=2))
    with pytest.raises(ValueError, match="lr: checkpoint"):
        check_resumable(cfg.to_dict(), dataclasses.replace(cfg, skip_bad=True, lr=0.5))


def test_divergence_ends_the_command_with_one_line(data_root, tmp_path, monkeypatch, capsys):
    # observed: training went on after nan and exited 0
    loss = MTUTModel.loss
    monkeypatch.setattr(
        MTUTModel,
        "loss",
        lambda self, *a, **kw: dataclasses.replace(loss(self, *a, **kw), total=torch.tensor(float("inf"))),
    )
    args = [
        "--data-root",
        str(data_root),
        "--out",
        str(tmp_path / "run"),
        "--preset",
        "cpu-small",
        "--no-progress",
        "--epochs",
        "1",
        *TINY_MODEL_ARGS,
        "--batch-size",
        "4",
        "--no-tensorboard",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "error: training diverged: the loss is inf at epoch 1, step 1" in err and "no epoch was saved" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "last.pt").exists()
