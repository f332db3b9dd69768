"""The study's pretext network and fit-then-align schedule: pretext data disjoint from the
target's (classes and subjects), its training refused otherwise, its export loaded into
both networks the way Kinetics weights are (stem adapted, classifier skipped), and the
recipe's schedule at its proportions."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from examples.data import SyntheticConfig, generate
from examples.data.listfile import TEST_LIST, TRAIN_LIST, read_list
from examples.data.synthetic import render_clip
from examples.models.weights import LOGITS_PREFIX, STEM_KEY
from examples.study.__main__ import main as study_main
from examples.study.pretext import PRETEXT_INFO, PRETEXT_WEIGHTS, check_disjoint, dataset_identity, pretext_data_config
from examples.training.checkpoint import load_checkpoint
from examples.training.config import PRESETS, RECIPE_LR_STEPS, RECIPE_SSA_START, recipe_schedule
from examples.training.data import subject_of
from examples.training.engine import build_model, seed_everything

from .helpers import TINY_RUN_DATA, tiny_config

TARGET = TINY_RUN_DATA  # classes 1, 2, 11; subjects 1..4
PRETEXT = pretext_data_config(TARGET, classes=(3, 4), subjects=3, clips_per_class=3)


@pytest.fixture(scope="module")
def roots(data_root, tmp_path_factory):
    """The target dataset (the training tests') and a pretext dataset beside it."""
    pretext = tmp_path_factory.mktemp("pretext_data")
    generate(pretext, PRETEXT, progress=False)
    return {"target": data_root, "pretext": pretext}


def test_first_subject_numbers_the_subjects(roots):
    assert (PRETEXT.first_subject, PRETEXT.subjects, PRETEXT.test_subjects) == (5, 3, 1)
    train, _ = read_list(roots["pretext"] / TRAIN_LIST)
    test, _ = read_list(roots["pretext"] / TEST_LIST)
    assert {subject_of(r.path) for r in train} == {5, 6}
    assert {subject_of(r.path) for r in test} == {7}
    assert {r.label for r in train + test} == {2, 3}  # 0-based classes 3 and 4
    # a clip depends on its subject's number, not on where the range starts
    moved = dataclasses.replace(PRETEXT, first_subject=1, subjects=7)
    a, b = render_clip(PRETEXT, 3, 6, 0), render_clip(moved, 3, 6, 0)
    assert all((x == y).all() for x, y in zip(a.color, b.color))
    assert SyntheticConfig().first_subject == 1
    with pytest.raises(ValueError, match="first_subject"):
        SyntheticConfig(first_subject=0)


def test_pretext_data_config_defaults_to_every_other_class():
    cfg = pretext_data_config(TARGET)
    assert set(cfg.classes).isdisjoint(TARGET.classes) and len(cfg.classes) == 25 - len(TARGET.classes)
    assert cfg.first_subject == TARGET.first_subject + TARGET.subjects
    assert (cfg.width, cfg.height, cfg.frames, cfg.rgb_difficulty, cfg.seed) == (
        TARGET.width,
        TARGET.height,
        TARGET.frames,
        TARGET.rgb_difficulty,
        TARGET.seed,
    )
    with pytest.raises(ValueError, match="target classes"):
        pretext_data_config(TARGET, classes=(1, 3))


def test_check_disjoint(roots, tmp_path):
    both = check_disjoint(roots["pretext"], roots["target"])
    assert both["target"]["subjects"] == [1, 2, 3, 4] and both["pretext"]["subjects"] == [5, 6, 7]
    with pytest.raises(ValueError, match=r"classes \[1, 2, 11\] \(1-based\) and subjects \[1, 2, 3, 4\]"):
        check_disjoint(roots["target"], roots["target"])
    # other classes, but a subject of the target's
    overlap = tmp_path / "overlap"
    generate(overlap, dataclasses.replace(PRETEXT, first_subject=4), progress=False)
    with pytest.raises(ValueError, match=r"shares subjects \[4\]"):
        check_disjoint(overlap, roots["target"])
    assert dataset_identity(overlap)["subjects"] == {4, 5, 6}


@pytest.fixture(scope="module")
def pretext_run(roots, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretext_run")
    cfg = tiny_config(roots["pretext"], out, modalities=("rgb",), ssa=False, epochs=1, lr_steps=())
    argv = [
        "pretext",
        "--data-root",
        str(roots["pretext"]),
        "--target-root",
        str(roots["target"]),
        "--out",
        str(out),
        "--config",
        str(out.parent / "pretext_cfg.json"),
    ]
    (out.parent / "pretext_cfg.json").write_text(
        json.dumps(
            {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in cfg.to_dict().items()
                if k not in ("data_root", "out", "preset")
            }
        )
    )
    assert study_main(argv) == 0
    return out, argv


def test_pretext_is_exported_for_pretrained(pretext_run, roots, tmp_path):
    out, _ = pretext_run
    weights = torch.load(out / PRETEXT_WEIGHTS, weights_only=True)
    trained = load_checkpoint(out / "last.pt")["model"]
    for k, v in weights.items():
        full = trained[f"nets.rgb.{k}"]
        if k.startswith(LOGITS_PREFIX):  # the classifier: only the pretext classes' rows
            assert torch.equal(v, full[[2, 3]])
        else:
            assert torch.equal(v, full)
    info = json.loads((out / PRETEXT_INFO).read_text())
    assert info["classes"] == [3, 4] and info["subjects"] == [5, 6, 7] and info["target_subjects"] == [1, 2, 3, 4]
    assert len(info["sha256"]) == 64 and "test" in info["top1"]

    # into both networks of a target run, as the recipe loads Kinetics weights
    cfg = tiny_config(roots["target"], tmp_path / "target", pretrained=(str(out / PRETEXT_WEIGHTS),), seed=7)
    seed_everything(cfg.seed)
    model = build_model(cfg, verbose=False)
    seed_everything(cfg.seed)
    fresh = build_model(dataclasses.replace(cfg, pretrained=()), verbose=False)
    for m in ("rgb", "depth"):
        state = model.nets[m].state_dict()
        for k, v in weights.items():
            if k.startswith(LOGITS_PREFIX):  # skipped: the run's own seeded initialization
                assert torch.equal(state[k], fresh.nets[m].state_dict()[k])
            elif k == STEM_KEY and m == "depth":
                assert torch.allclose(state[k], v.mean(1, keepdim=True))
            else:
                assert torch.equal(state[k], v), (m, k)


def test_pretext_rerun_reuses_and_refuses_overlap(pretext_run, roots, capsys):
    out, argv = pretext_run
    before = (out / PRETEXT_WEIGHTS).read_bytes()
    assert study_main(argv) == 0
    assert "reusing finished run" in capsys.readouterr().out
    assert (out / PRETEXT_WEIGHTS).read_bytes() == before
    bad = [a if a != str(roots["pretext"]) else str(roots["target"]) for a in argv]
    with pytest.raises(SystemExit) as e:
        study_main(bad)
    assert e.value.code == 2 and "never see the target's classes or subjects" in capsys.readouterr().err


def test_recipe_schedule():
    assert recipe_schedule(75) == {"epochs": 75, "lr_steps": RECIPE_LR_STEPS, "ssa_start": RECIPE_SSA_START}
    assert recipe_schedule(15) == {"epochs": 15, "lr_steps": (6, 10), "ssa_start": 13}
    for epochs in (10, 15, 20, 30):
        s = recipe_schedule(epochs)
        assert abs((s["ssa_start"] - 1) / epochs - 0.8) <= 0.5 / epochs  # SSA over the last ~20%
        assert s["lr_steps"][1] < s["ssa_start"]  # after both LR decays
    with pytest.raises(ValueError):
        recipe_schedule(4)
    study = PRESETS["cpu-study"]
    assert (study["epochs"], study["lr_steps"], study["ssa_start"]) == (15, (6, 10), 13)
    assert study.get("hand_boxes") is None and study["ssa_endpoints"] == ("Mixed_3c",) and study["lambda_"] == 5e-2
    pretext = PRESETS["cpu-pretext"]
    assert pretext["modalities"] == ("rgb",) and pretext["lr_steps"] == (4, 7)
    same = ("width", "frames", "size", "resize", "fps")
    assert {k: pretext[k] for k in same} == {k: study[k] for k in same}  # its weights fit the study's networks
