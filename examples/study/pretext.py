"""The study's pretext network: a stand-in for the recipe's Kinetics weights.

In the recipe both networks start from an I3D trained on Kinetics, data that share no
class and no person with NVGesture. Here the stand-in is an RGB I3D trained once on a
*pretext* synthetic dataset: other gesture classes performed by other subjects than the
target dataset's (:func:`pretext_data_config` makes its generator settings from the
target's, :func:`check_disjoint` verifies the two list-file pairs share no class and no
subject, and :func:`train_pretext` refuses to train otherwise). The target split is never
read, only its list files' labels and subject numbers.

Its weights are written as ``pretext_rgb.pth``, a state dict in the converted Kinetics
layout with the classifier restricted to the pretext classes, so that ``--pretrained
PRETEXT/pretext_rgb.pth`` loads it into both networks of a target run exactly as the
recipe loads the Kinetics file: the stem adapted for depth (``--stem``), the classifier
(another number of classes) skipped, each run's classifier its own seeded initialization.

    python -m examples.data make-synthetic --out runs/study/pretext-data \\
        --classes 3,4,7,8,9,10,12,13,14,15,16,17,19,22,23,24,25 --first-subject 101 ...
    python -m examples.study pretext --data-root runs/study/pretext-data \\
        --target-root runs/study/data --out runs/study/pretext --preset cpu-pretext
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch

from examples.data.classes import NUM_CLASSES
from examples.data.listfile import LIST_FILES, find_list_file, read_list
from examples.data.synthetic import SyntheticConfig
from examples.models.weights import LOGITS_PREFIX
from examples.training.checkpoint import load_checkpoint, write_json_atomic
from examples.training.config import TrainConfig, validate
from examples.training.data import subject_of
from examples.training.engine import Trainer

PRETEXT_WEIGHTS = "pretext_rgb.pth"
PRETEXT_INFO = "pretext.json"


def pretext_data_config(
    target: SyntheticConfig,
    *,
    classes: Iterable[int] | None = None,
    subjects: int | None = None,
    clips_per_class: int | None = None,
    test_subjects: int = 1,
) -> SyntheticConfig:
    """Generator settings of a pretext dataset for the ``target`` dataset: the same
    rendering (size, frames, RGB difficulty and hard clips, seed), ``classes`` (default:
    every NVGesture class the target does not have) and subjects numbered right after
    the target's (``subjects`` of them, default as many as the target)."""
    chosen = (
        tuple(sorted(classes))
        if classes is not None
        else tuple(c for c in range(1, NUM_CLASSES + 1) if c not in target.classes)
    )
    shared = sorted(set(chosen) & set(target.classes))
    if shared:
        raise ValueError(f"pretext classes {shared} are target classes")
    return dataclasses.replace(
        target,
        classes=chosen,
        first_subject=target.first_subject + target.subjects,
        subjects=target.subjects if subjects is None else subjects,
        test_subjects=test_subjects,
        clips_per_class=target.clips_per_class if clips_per_class is None else clips_per_class,
    )


def dataset_identity(root: str | Path) -> dict[str, set[int]]:
    """``{"labels": 0-based labels, "subjects": subject numbers}`` over both list files of
    a dataset (only the list lines are read, never a clip)."""
    labels: set[int] = set()
    subjects: set[int] = set()
    for split in LIST_FILES:
        path = find_list_file(root, split)
        if not path.is_file():
            continue
        records, _ = read_list(path)
        labels.update(r.label for r in records)
        subjects.update(subject_of(r.path) for r in records)
    if not labels:
        raise FileNotFoundError(f"{root}: no NVGesture list files")
    return {"labels": labels, "subjects": subjects}


def check_disjoint(pretext_root: str | Path, target_root: str | Path) -> dict:
    """Raise ``ValueError`` unless the pretext dataset shares no class and no subject
    with the target dataset (either split); returns both identities as sorted lists."""
    pre, tgt = dataset_identity(pretext_root), dataset_identity(target_root)
    problems = []
    if pre["labels"] & tgt["labels"]:
        problems.append(f"classes {sorted(c + 1 for c in pre['labels'] & tgt['labels'])} (1-based)")
    if pre["subjects"] & tgt["subjects"]:
        problems.append(f"subjects {sorted(pre['subjects'] & tgt['subjects'])}")
    if problems:
        raise ValueError(
            f"the pretext dataset {pretext_root} shares {' and '.join(problems)} with the target "
            f"dataset {target_root}: a pretext network must never see the target's classes or "
            "subjects (make it with other --classes and a disjoint --first-subject)"
        )
    return {"pretext": {k: sorted(v) for k, v in pre.items()}, "target": {k: sorted(v) for k, v in tgt.items()}}


def export_pretext(checkpoint: str | Path, out: str | Path, labels: Iterable[int], modality: str = "rgb") -> Path:
    """Write the ``modality`` network of a training checkpoint as a converted-layout
    state dict with its classifier restricted to ``labels`` (0-based, the pretext
    classes, in order), so that loading it into a target network skips the classifier."""
    state = load_checkpoint(checkpoint)["model"]
    prefix = f"nets.{modality}."
    net = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not net:
        raise ValueError(f"{checkpoint}: no {modality} network (keys {prefix}*)")
    rows = torch.tensor(sorted(labels))
    if len(rows) >= NUM_CLASSES:
        raise ValueError("a pretext network trained on every class would leave the target none")
    for key in [k for k in net if k.startswith(LOGITS_PREFIX)]:
        net[key] = net[key].index_select(0, rows).clone()
    out = Path(out)
    torch.save(net, out)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_pretext(cfg: TrainConfig, target_root: str | Path, log=print) -> Path:
    """Train (or reuse, or resume) the pretext network of ``cfg`` (RGB alone, on a dataset
    disjoint from ``target_root``'s) and export it; returns ``OUT/pretext_rgb.pth``.

    ``OUT/pretext.json`` records the datasets' classes and subjects, the pretext
    network's final evaluation on its own splits and the weights' SHA-256.
    """
    if tuple(cfg.modalities) != ("rgb",):
        raise ValueError(f"the pretext network is an RGB network (--modalities rgb), got {list(cfg.modalities)}")
    validate(cfg)
    identity = check_disjoint(cfg.data_root, target_root)
    out = Path(cfg.out)
    weights, info_path = out / PRETEXT_WEIGHTS, out / PRETEXT_INFO
    ckpt = out / "last.pt"
    final_path = out / "final_eval.json"
    done = int(load_checkpoint(ckpt)["epoch"]) if ckpt.is_file() else None
    if done == cfg.epochs and final_path.is_file():
        log(f"pretext: reusing finished run {out}")
        final = json.loads(final_path.read_text())
    else:
        log(
            f"pretext: training RGB on {cfg.data_root} ({len(identity['pretext']['labels'])} classes, subjects "
            f"{identity['pretext']['subjects'][0]}..{identity['pretext']['subjects'][-1]})"
        )
        final = Trainer(cfg, resume=done is not None).run()
    export_pretext(ckpt, weights, identity["pretext"]["labels"])
    info = {
        "weights": PRETEXT_WEIGHTS,
        "sha256": _sha256(weights),
        "data_root": str(cfg.data_root),
        "target_root": str(target_root),
        "classes": [c + 1 for c in identity["pretext"]["labels"]],
        "subjects": identity["pretext"]["subjects"],
        "target_classes": [c + 1 for c in identity["target"]["labels"]],
        "target_subjects": identity["target"]["subjects"],
        "top1": {split: res["top1"] for split, res in final.get("splits", {}).items()},
        "config": cfg.to_dict(),
    }
    write_json_atomic(info, info_path)
    log(f"pretext: wrote {weights} (load it into both networks with --pretrained {weights})")
    return weights
