"""The reader's recheck: the committed study's numbers from docs/study/per_seed.csv, and a
committed toy study (per-clip outputs included) whose numbers are worked out by hand."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest

from examples.study.__main__ import main as study_main
from examples.study.recheck import check, format_like

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "docs" / "study"
TOY = Path(__file__).resolve().parent / "study_toy"


def test_every_claim_of_the_committed_study_is_recomputed(capsys):
    lines, problems = check(STUDY)
    assert problems == []
    assert any(line.startswith("ok  gain.on.boot_low") for line in lines)
    assert "no per_clip.csv: clip-level numbers cannot be recomputed from these outputs" in lines
    assert study_main(["recheck", str(STUDY)]) == 0
    assert "every claim agrees" in capsys.readouterr().out


def test_every_claim_of_the_rerun_is_recomputed_from_its_per_clip_outputs(capsys):
    """docs/study/rerun: the registered test phase rerun with its per-clip outputs committed, so
    the clip-level intervals are rechecked too (and every top-1 of its table against them)."""
    lines, problems = check(STUDY / "rerun")
    assert problems == []
    assert any(line.startswith("ok  clip.on.crossed_low") for line in lines)
    assert study_main(["recheck", str(STUDY / "rerun")]) == 0
    assert "every claim agrees" in capsys.readouterr().out


def test_per_seed_csv_is_the_table_of_results_md():
    table = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in (STUDY / "results.md").read_text().splitlines()
        if re.match(r"^\| \d+ \|", line)
    ]
    with open(STUDY / "per_seed.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert len(table) == 10 and len(rows) == 11
    assert [[r[0], *r[2:]] for r in rows[1:]] == table  # the same cells, test_clips (192) added
    assert {r[1] for r in rows[1:]} == {"192"}


def test_the_toy_study_rechecks_to_its_hand_worked_numbers(tmp_path, capsys):
    assert study_main(["recheck", str(TOY)]) == 0
    out = capsys.readouterr().out
    assert "ok  clip.on.clip_se = 0.181621: printed 0.182" in out and "gain.on.p = 0.333333" in out

    toy = tmp_path / "toy"
    shutil.copytree(TOY, toy)
    claims = (toy / "claims.csv").read_text()
    (toy / "claims.csv").write_text(claims.replace("gain.on.t,0.500", "gain.on.t,0.501"))
    assert study_main(["recheck", str(toy)]) == 1
    assert "MISMATCH gain.on.t: printed 0.501, recomputed 0.500" in capsys.readouterr().out
    (toy / "claims.csv").write_text(claims + "gain.on.t_low,-0.634,0,\n")  # right, but not in the write-up
    _, problems = check(toy)
    assert problems == ["gain.on.t_low: -0.634 does not occur in " + str(toy / "results.md")]
    (toy / "claims.csv").write_text(claims + "clip.shuffled.fixed,1,0,\n")
    assert check(toy)[1] == ["clip.shuffled.fixed: the committed outputs do not determine it"]
    # a per-clip prediction that disagrees with the per-seed table is an error
    (toy / "claims.csv").write_text(claims)
    per_clip = (toy / "per_clip.csv").read_text()
    (toy / "per_clip.csv").write_text(
        per_clip.replace(
            "0,ssa_on,./Video_data/class_01/subject1_r3,0,1", "0,ssa_on,./Video_data/class_01/subject1_r3,0,0"
        )
    )
    with pytest.raises(ValueError, match="seed 0 ssa_on top-1 0.75, per_clip.csv gives 1.0000"):
        check(toy)


def test_top1_must_be_a_count_of_the_test_clips(tmp_path):
    toy = tmp_path / "toy"
    shutil.copytree(TOY, toy)
    (toy / "per_seed.csv").write_text("seed,test_clips,top1_ssa_off,top1_ssa_on\n0,4,0.500,0.600\n")
    with pytest.raises(ValueError, match="top1_ssa_on is not a count of 4 clips"):
        check(toy)


@pytest.mark.parametrize(
    "value,printed,expected",
    [
        (0.00208, "+0.0021", "+0.0021"),
        (-0.0356, "-3.5%", "-3.6%"),
        (0.892, "89%", "89%"),
        (5, "5", "5"),
        (0.2669, "0.27", "0.27"),
    ],
)
def test_format_like_takes_the_printed_digits_sign_and_percent(value, printed, expected):
    assert format_like(value, printed) == expected
