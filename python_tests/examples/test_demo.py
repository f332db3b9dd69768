"""The demo: a reduced paired study (pretext network, paired seeds, the paired table and an
honest reading), its settings, and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import json

import pytest

import examples.demo as demo
from examples.data.classes import NUM_CLASSES
from examples.study.pretext import pretext_data_config

from .helpers import TINY_RUN_DATA, tiny_config


def _test(mean, low, high):
    return {"mean": mean, "bootstrap_low": low, "bootstrap_high": high}


def test_reading_says_what_the_seeds_can_tell():
    few = demo.reading(_test(0.05, 0.02, 0.08), 2)
    assert "2 paired seeds cannot tell" in few and "[+0.020, +0.080]" in few and "docs/study/results.md" in few
    powered = demo.reading(_test(0.03, 0.01, 0.05), 10)
    assert "gained" in powered and "docs/study/results.md" in powered
    assert "lost" in demo.reading(_test(-0.03, -0.05, -0.01), 12)
    assert "includes 0" in demo.reading(_test(0.01, -0.01, 0.03), 10)
    short = demo.reading(_test(0.0, 0.0, 0.0), 2, rgb_at_branch=0.19)
    assert "cannot tell" in short and "nor is the paper's regime reached here (RGB training top-1 0.19" in short
    assert "regime" not in demo.reading(_test(0.0, 0.0, 0.0), 2, rgb_at_branch=0.97)


def test_demo_settings_are_the_study_in_small():
    target, pretext = demo.DEMO_DATA, demo.PRETEXT_DATA
    assert set(target.classes).isdisjoint(pretext.classes)
    assert set(pretext.classes) <= set(range(1, NUM_CLASSES + 1))
    assert pretext.first_subject > target.first_subject + target.subjects - 1  # no shared subject
    assert target.rgb_hard_p == 0.5
    run = demo.DEMO_RUN
    assert run.get("hand_boxes") is None  # no oracle hand crop
    assert run["lr_steps"][-1] < run["ssa_start"] - 1 and (run["ssa_start"] - 1) / run["epochs"] == 0.8
    assert run["ssa_endpoints"] == ("Mixed_3c",) and (run["epochs"], run["ssa_start"]) == (10, 9)
    same = ("width", "frames", "size", "resize", "fps")
    assert {k: run[k] for k in same} == {k: demo.PRETEXT_RUN[k] for k in same}
    assert demo.PRETEXT_RUN["modalities"] == ("rgb",) and demo.ARMS == ("ssa_off", "ssa_on")


@pytest.mark.deep  # trains pretext + two arms end to end: tens of seconds
def test_demo_end_to_end_tiny(tmp_path, monkeypatch, capsys):
    target = dataclasses.replace(TINY_RUN_DATA, rgb_hard_p=0.5)
    monkeypatch.setattr(demo, "DEMO_DATA", target)
    monkeypatch.setattr(demo, "PRETEXT_DATA", pretext_data_config(target, classes=(3, 4), subjects=2,
                                                                  clips_per_class=2))
    tiny = {k: v for k, v in tiny_config(tmp_path, tmp_path).to_dict().items()
            if k not in ("data_root", "out", "preset", "seed", "threads", "pretrained")}
    monkeypatch.setattr(demo, "PRETEXT_RUN", {**tiny, "modalities": ("rgb",), "ssa": False, "epochs": 1,
                                              "lr_steps": (), "eval_every": 0})
    monkeypatch.setattr(demo, "DEMO_RUN", {**tiny, "epochs": 3, "lr_steps": (1,), "ssa_start": 3, "eval_every": 0})
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--seeds", "0", "--split", "val"]) == 0
    printed = capsys.readouterr().out
    assert "| seed | rgb ssa_off | rgb ssa_on | gain |" in printed
    assert "Reading: 1 paired seed cannot tell" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["split"] == "val" and results["seeds"] == [0] and len(results["rows"]) == 1
    assert (out / "aggregate_val" / "paired.png").is_file() and (out / "pretext" / "pretext_rgb.pth").is_file()
    assert not (out / "pairs").exists()  # --split val: its own folder, the test split never built
    # the pairs started from the pretext weights, and a rerun reuses everything
    cfg = json.loads((out / "pairs-val" / "seed0" / "ssa_on" / "final_eval.json").read_text())["config"]
    assert cfg["pretrained"] == [str(out / "pretext" / "pretext_rgb.pth")] and cfg["eval_test"] is False
    assert demo.main(["--out", str(out), "--seeds", "0", "--split", "val"]) == 0
    again = capsys.readouterr().out
    assert "reusing finished run" in again and "finished, reused" in again


def test_demo_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        demo.main(["--seeds", "0", "0"])
    with pytest.raises(SystemExit):
        demo.main(["--threads", "0"])
