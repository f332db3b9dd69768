"""Optical flow precompute (resumable, atomic), the flow modality, and the CLI."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from examples.data import BadClipError, BadClipWarning, NVGestureDataset, build_transforms, precompute_flow
from examples.data import flow as flowmod
from examples.data.__main__ import main
from examples.data.flow import dequantize, farneback, flow_file, flow_matches, load_flow, quantize
from examples.data.listfile import TEST_LIST, TRAIN_LIST, read_list


@pytest.fixture
def data(tiny_synthetic, tmp_path):
    """A private copy of the tiny synthetic dataset (these tests write flow files into it)."""
    root = tmp_path / "data"
    shutil.copytree(tiny_synthetic, root)
    return root


def flow_files(root):
    return sorted(root.glob("Video_data/*/*/sk_color_flow.npz"))


def test_farneback_sees_a_translation():
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (60, 100), np.uint8)
    texture = np.asarray(np.kron(texture, np.ones((4, 4))), np.uint8)  # smooth enough to track
    frames = np.stack([texture[40:160, 40:200], texture[40:160, 37:197]])[..., None]  # moves 3 px right
    flow = farneback(frames)
    assert flow.shape == (1, 120, 160, 2)
    inner = flow[0, 20:-20, 20:-20]
    assert abs(np.median(inner[..., 0]) - 3) < 0.3 and abs(np.median(inner[..., 1])) < 0.3


def test_quantization_round_trip():
    f = np.linspace(-25, 25, 101, dtype=np.float32)
    back = dequantize(quantize(f, 20.0)) * 20
    np.testing.assert_allclose(back, np.clip(f, -20, 20), atol=20 / 127.5)


def test_precompute_is_resumable_and_atomic(data, monkeypatch):
    records, _ = read_list(data / TRAIN_LIST)
    stats = precompute_flow(data, TRAIN_LIST, progress=False)
    assert (stats.computed, stats.skipped, stats.failed) == (6, 0, 0)
    files = flow_files(data)
    assert len(files) == 6
    w = records[0].sensors["color"]
    q, fps = load_flow(flow_file(records[0].clip_dir(data) / "sk_color.avi"), w.start, w.end)
    assert q.shape == (w.length, 48, 64, 2) and q.dtype == np.float32 and fps == 30.0
    assert q.min() >= -1 and q.max() <= 1 and np.abs(q).max() > 0.05  # the hand moves

    mtimes = {f: f.stat().st_mtime_ns for f in files}
    stats = precompute_flow(data, data / TRAIN_LIST, progress=False)
    assert (stats.computed, stats.skipped) == (0, 6)
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes

    # Interrupted run: the 2nd write dies. The 1st clip is done, nothing half-written remains.
    for f in files:
        f.unlink()
    real_savez, calls = np.savez_compressed, []

    def dying_savez(f, **arrays):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"partial")
            raise KeyboardInterrupt
        real_savez(f, **arrays)

    monkeypatch.setattr(flowmod.np, "savez_compressed", dying_savez)
    with pytest.raises(KeyboardInterrupt):
        precompute_flow(data, TRAIN_LIST, progress=False)
    monkeypatch.setattr(flowmod.np, "savez_compressed", real_savez)
    assert len(flow_files(data)) == 1
    assert not list(data.glob("Video_data/*/*/*.tmp*"))
    stats = precompute_flow(data, TRAIN_LIST, progress=False)
    assert (stats.computed, stats.skipped) == (5, 1)

    # A changed window makes the file stale: recomputed, others kept.
    lines = (data / TRAIN_LIST).read_text().splitlines()
    w = records[0].sensors["color"]
    lines[0] = lines[0].replace(f"color:sk_color:{w.start}:{w.end}", f"color:sk_color:{w.start}:{w.end - 1}")
    (data / TRAIN_LIST).write_text("\n".join(lines) + "\n")
    stats = precompute_flow(data, TRAIN_LIST, progress=False)
    assert (stats.computed, stats.skipped) == (1, 5)
    assert flow_matches(flow_file(records[0].clip_dir(data) / "sk_color.avi"), w.start, w.end - 1)
    stats = precompute_flow(data, TRAIN_LIST, progress=False, force=True)
    assert stats.computed == 6


def test_precompute_bad_clip(data):
    records, _ = read_list(data / TEST_LIST)
    (records[1].clip_dir(data) / "sk_color.avi").unlink()
    with pytest.raises(BadClipError, match=r"v2\.lst:2: clip .*video file is missing.*sk_color\.avi"):
        precompute_flow(data, TEST_LIST, progress=False)
    with pytest.warns(BadClipWarning, match="video file is missing"):
        stats = precompute_flow(data, TEST_LIST, progress=False, skip_bad=True)
    assert (stats.computed, stats.skipped, stats.failed) == (4, 1, 1)  # clip 1 was done before the error


def test_precompute_with_workers(data):
    stats = precompute_flow(data, TEST_LIST, progress=False, workers=2)
    assert stats.computed == 6 and len(flow_files(data)) == 6


def test_flow_modality(data):
    precompute_flow(data, TRAIN_LIST, progress=False)
    ds = NVGestureDataset(data, "train", ("rgb", "flow"), build_transforms(True, frames=5, size=32))
    torch.manual_seed(0)
    item = ds[0]
    assert item["flow"].shape == (2, 5, 32, 32) and item["flow"].dtype == torch.float32
    assert item["flow"].abs().max() <= 1


def test_cli(tmp_path, capsys):
    root = tmp_path / "cli"
    args = [
        "make-synthetic",
        "--out",
        str(root),
        "--classes",
        "1,2",
        "--clips-per-class",
        "2",
        "--subjects",
        "2",
        "--test-subjects",
        "1",
        "--frames",
        "6",
        "--size",
        "48x36",
        "--quiet",
    ]
    assert main(args) == 0
    assert "wrote 2 train / 2 test clips" in capsys.readouterr().out
    assert main(["compute-flow", "--root", str(root), "--list", TRAIN_LIST, "--quiet"]) == 0
    assert "2 computed, 0 already done, 0 bad" in capsys.readouterr().out
    assert main(["compute-flow", "--root", str(root), "--quiet"]) == 0  # both lists, train already done
    out = capsys.readouterr().out
    assert "0 computed, 2 already done" in out and "2 computed, 0 already done" in out
    png = tmp_path / "grid.png"
    assert main(["show", "--root", str(root), "--out", str(png), "--clips", "2", "--frames", "3"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["show", "--root", str(root), "--out", str(png), "--split", "test", "--modalities", "depth,flow"]) == 0


def test_cli_errors(tmp_path, capsys):
    assert main(["compute-flow", "--root", str(tmp_path), "--list", "missing.lst", "--quiet"]) == 1
    assert "missing.lst" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["make-synthetic", "--out", str(tmp_path), "--size", "big"])
    with pytest.raises(SystemExit):
        main(["show", "--root", str(tmp_path), "--modalities", "rgb,thermal"])
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
