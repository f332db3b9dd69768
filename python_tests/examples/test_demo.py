"""The demo: the op against mmpose's code, a paired training run in which SSA acts, the
study's answer quoted, an honest reading and valid JSON (tiny shapes here)."""

from __future__ import annotations

import json

import pytest

import examples.demo as demo

from .helpers import TINY_RUN_DATA


def _pair(change: float, differ: int = 3) -> dict:
    off = [0.10, 0.10, 0.10, 0.10]
    on = [0.10, 0.10, 0.10, 0.10 * (1 + change)]
    return {
        "corr_distance": {"ssa_off": off, "ssa_on": on},
        "epochs": [1, 2, 3, 4],
        "ssa_start": 3,
        "identical_before_ssa": True,
        "final_corr_distance_rel_change": change,
        "rgb_predictions_differ": differ,
        "test_clips": 8,
    }


def test_reading_says_what_the_pair_shows_and_what_it_cannot():
    # issue 31: the old demo printed identical arms and empty intervals without saying so
    acts = demo.reading(_pair(-0.25))
    assert acts.startswith("SSA acts") and "25% lower" in acts and "3 of 8 test clips" in acts
    assert "not a result about accuracy" in acts and "registered study" in acts
    assert demo.reading(_pair(0.27)).startswith("SSA moved the networks' features apart")
    assert demo.reading(_pair(0.01)).startswith("SSA barely moved")


def test_study_answer_is_quoted_or_its_absence_said(tmp_path):
    answer = demo.study_answer()
    assert answer is None or answer.startswith("**Answer")
    assert demo.study_answer(tmp_path / "missing.md") is None
    page = demo.report(
        None,
        {
            **_pair(-0.2),
            "endpoint": "Mixed_3c",
            "lambda": 10.0,
            "focal": "constant",
            "test_top1": {a: {"rgb": 0.5} for a in demo.ARMS},
        },
        None,
    )
    assert "No study results are committed" in page


def test_op_comparison_agrees_with_mmpose(monkeypatch):
    monkeypatch.setattr(demo, "MIXED_4F", (16, (2, 3, 3)))
    op = demo.op_comparison(clips=2, log=lambda *a: None)
    assert op["loss_rel_diff"] < 1e-5  # the same loss: float32 sums over 18 positions
    assert op["mmpose"]["seconds"] > 0 and op["mtut_ops"]["peak_mib"] >= 0
    assert op["mixed3c_naive_gib"] == pytest.approx(4 * 6 * 25088**2 * 4 / 2**30, rel=1e-3)  # (M + 2) N d^2 fp32


@pytest.mark.deep  # trains pretext + two arms end to end: tens of seconds
def test_demo_end_to_end_tiny(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "DATA", TINY_RUN_DATA)
    monkeypatch.setattr(demo, "RUN", {**demo.RUN, "epochs": 3, "ssa_start": 2, "frames": 8, "test_frames": 8})
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--skip-op"]) == 0
    printed = capsys.readouterr().out
    assert "## 2. SSA acting in training" in printed and "Reading: SSA" in printed
    results = json.loads((out / "results.json").read_text())  # strict JSON: no NaN
    pair = results["training"]
    assert pair["epochs"] == [1, 2, 3] and pair["identical_before_ssa"] is True
    assert pair["corr_distance"]["ssa_on"][-1] != pair["corr_distance"]["ssa_off"][-1]  # SSA changed the features
    assert results["op"] is None and (out / "corr_distance.png").is_file()
    assert demo.main(["--out", str(out), "--skip-op"]) == 0
    assert "reusing" in capsys.readouterr().out


def test_demo_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        demo.main(["--threads", "0"])
