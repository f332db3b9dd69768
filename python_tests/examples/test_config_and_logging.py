"""Settings files, --print-config, defaults in --help, LR scaling, TensorBoard scalars."""

from __future__ import annotations

import json

import pytest

from examples.train_nvgesture import main
from examples.training import train
from examples.training.config import TrainConfig, build_parser, config_from_args
from examples.training.engine import effective_lr

from .helpers import tiny_config


def test_help_shows_the_defaults():
    text = " ".join(build_parser().format_help().split())
    text = text[text.index("options:") :]  # past the usage line
    for option, default in [
        ("--lr LR", "[0.01]"),
        ("--lr-steps [EPOCH ...]", "[30 50]"),
        ("--epochs EPOCHS", "[75]"),
        ("--ssa-start EPOCH", "[61]"),
        ("--batch-size BATCH_SIZE", "[6]"),
        ("--ssa-fp32, --no-ssa-fp32", "[on]"),
        ("--pair-cap PAIR_CAP", "[10.0]"),
    ]:
        start = text.index(option)
        assert default in text[start : text.index(" --", start + len(option))], option


def test_print_config_round_trips_through_a_config_file(data_root, tmp_path, capsys):
    base = ["--data-root", str(data_root), "--out", str(tmp_path / "run")]
    assert main([*base, "--preset", "cpu-small", "--lr", "0.05", "--lr-steps", "3", "7", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["lr"] == 0.05 and printed["lr_steps"] == [3, 7] and printed["width"] == 0.25
    (tmp_path / "cfg.json").write_text(json.dumps(printed))
    again = config_from_args(build_parser().parse_args(["--config", str(tmp_path / "cfg.json")]))
    assert json.loads(json.dumps(again.to_dict())) == printed
    # preset < file < command line
    (tmp_path / "small.json").write_text(
        json.dumps({"preset": "cpu-small", "epochs": 3, "lambda": 1e-4, "data-root": str(data_root)})
    )
    cfg = config_from_args(build_parser().parse_args(["--config", str(tmp_path / "small.json"), "--epochs", "5"]))
    assert (cfg.preset, cfg.width, cfg.lambda_, cfg.epochs) == ("cpu-small", 0.25, 1e-4, 5)
    (tmp_path / "bad.json").write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(SystemExit):
        main([*base, "--config", str(tmp_path / "bad.json")])
    assert "unknown setting 'learning_rate'" in capsys.readouterr().err


def test_yaml_config_or_a_clear_message(data_root, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(f"data_root: {data_root}\nepochs: 4\npreset: cpu-small\n")
    try:
        import yaml  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit):
            main(["--config", str(tmp_path / "c.yaml"), "--print-config"])
        assert "reading YAML needs PyYAML" in capsys.readouterr().err
    else:
        assert main(["--config", str(tmp_path / "c.yaml"), "--print-config"]) == 0
        assert json.loads(capsys.readouterr().out)["epochs"] == 4


def test_linear_lr_scaling():
    cfg = TrainConfig(lr=0.01, batch_size=6, lr_scaling="linear", lr_reference_batch=6)
    assert effective_lr(cfg, 4) == pytest.approx(0.04) and effective_lr(cfg, 1) == pytest.approx(0.01)
    assert effective_lr(TrainConfig(lr=0.01, batch_size=6), 4) == 0.01  # off by default


def _tensorboard_scalars(logdir) -> dict[int, dict[str, float]]:
    """``{step: {tag: value}}`` as TensorBoard's own reader reads the run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    by_step: dict[int, dict[str, float]] = {}
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            by_step.setdefault(event.step, {})[tag] = event.value
    return by_step


def test_tensorboard_scalars_per_iteration(data_root, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = tiny_config(
        data_root,
        tmp_path / "run",
        epochs=1,
        eval_every=0,
        lr=0.01,
        lr_scaling="linear",
        lr_reference_batch=2,
        lr_steps=(),
    )
    train(cfg)
    assert len(list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))) == 1
    by_step = _tensorboard_scalars(tmp_path / "run" / "tb")
    # 9 training clips in batches of 4: iterations 1, 2, 3 of 4, 4, 1 clips
    assert [s for s in sorted(by_step) if "train/loss" in by_step[s]] == [1, 2, 3]
    for step in (1, 2, 3):
        got = by_step[step]
        assert got["train/lr"] == pytest.approx(0.02)  # 0.01 x batch 4 / reference 2
        assert got["perf/clips_per_s"] > 0 and got["perf/max_memory_mib"] > 0 and got["perf/step_seconds"] > 0
        assert {"train/ce/rgb", "train/ce/depth", "train/ssa"} <= set(got)
    row = json.loads((tmp_path / "run" / "metrics.json").read_text())[0]
    # event files hold float32 (simple_value): 2^-24 relative each, far inside 1e-6
    mean = sum(by_step[s]["train/loss"] * n for s, n in ((1, 4), (2, 4), (3, 1))) / 9
    assert mean == pytest.approx(row["train/loss"], rel=1e-6)
    assert by_step[3]["epoch/train/loss"] == pytest.approx(row["train/loss"], rel=1e-6)
    assert row["lr"] == pytest.approx(0.02) and row["train/clips_per_s"] > 0


def test_training_goes_on_without_the_tensorboard_package(data_root, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    train(tiny_config(data_root, tmp_path / "run", epochs=1, eval_every=0, lr_steps=()))
    out = capsys.readouterr().out
    assert "pip install tensorboard" in out and out.count("[tensorboard]") == 1
    assert not (tmp_path / "run" / "tb").exists()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())[0]["epoch"] == 1
