"""One network exported alone classifies exactly as the in-training evaluation did."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from examples.data.listfile import read_list
from examples.deploy import Deployed, export_network
from examples.export_nvgesture import main as export_main
from examples.infer_nvgesture import main as infer_main
from examples.training import train
from examples.training.evaluation import load_logits

from .helpers import tiny_config


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy") / "run"
    train(tiny_config(data_root, out, epochs=1, eval_every=0))
    return out


@pytest.mark.parametrize("modality,fmt", [("rgb", "export"), ("depth", "torchscript")])
def test_exported_network_equals_training_evaluation(data_root, trained, tmp_path, modality, fmt):
    path = tmp_path / ("net.pt2" if fmt == "export" else "net.ts")
    meta = export_network(trained / "last.pt", modality, path, fmt=fmt)
    assert meta["frames"] == 8 and meta["in_channels"] == (3 if modality == "rgb" else 1)
    assert json.loads(path.with_suffix(".json").read_text()) == meta
    net = Deployed(path)
    during = load_logits(trained / "evals" / "epoch001_test.npz")
    records, _ = read_list(data_root / "nvgesture_test_correct_cvpr2016_v2.lst")
    sensor = {"rgb": "color", "depth": "depth"}[modality]
    got = []
    for record in records:  # the network alone, on its own video file
        window = record.sensors[sensor]
        video = record.clip_dir(data_root) / f"{window.file}.avi"
        got.append(net.classify_video(video, (window.start, window.end)))
    expected = torch.from_numpy(during["logits"][modality])
    torch.testing.assert_close(torch.stack(got), expected, rtol=1e-5, atol=1e-5)
    assert [r.path for r in records] == during["paths"]
    # a batch of clips at once (torch.export keeps the batch dynamic)
    if fmt == "export":
        batch = torch.cat([net.prepare(*_frames(record, data_root, sensor)) for record in records])
        torch.testing.assert_close(net.logits(batch), expected, rtol=1e-5, atol=1e-5)


def _frames(record, root, sensor):
    from examples.data.video import read_window

    w = record.sensors[sensor]
    return read_window(record.clip_dir(root) / f"{w.file}.avi", w.start, w.end, gray=sensor == "depth")


def test_export_and_infer_command_lines(data_root, trained, tmp_path, capsys):
    out = tmp_path / "rgb.pt2"
    assert export_main(["--checkpoint", str(trained / "last.pt"), "--modality", "rgb", "--out", str(out)]) == 0
    records, _ = read_list(data_root / "nvgesture_test_correct_cvpr2016_v2.lst")
    w = records[0].sensors["color"]
    video = records[0].clip_dir(data_root) / "sk_color.avi"
    capsys.readouterr()
    assert infer_main(["--model", str(out), "--video", str(video), "--window", f"{w.start}:{w.end}", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    during = load_logits(trained / "evals" / "epoch001_test.npz")
    np.testing.assert_allclose(shown["logits"], during["logits"]["rgb"][0], rtol=1e-5, atol=1e-5)
    assert shown["top"][0]["class"] == int(np.argmax(during["logits"]["rgb"][0])) + 1
    with pytest.raises(SystemExit):
        export_main(["--checkpoint", str(trained / "last.pt"), "--modality", "flow", "--out", str(tmp_path / "x")])
    assert "the run trained rgb, depth" in capsys.readouterr().err
